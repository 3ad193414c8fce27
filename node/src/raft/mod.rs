//! Raft integration: type configuration and the node-to-node network.

pub mod append_stream;
pub mod network;
pub mod proposer;
pub mod types;
