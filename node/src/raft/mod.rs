//! Raft integration: type configuration and the node-to-node network.

pub mod network;
pub mod types;
