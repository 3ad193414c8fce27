//! Cluster tests: a real PD and three nodes on loopback QUIC with mutual TLS.
//!
//! One test binary, one module per behaviour. Each test starts its own cluster in a
//! temporary directory, on random ports below the ephemeral range (`ports.rs`).

mod bad_input;
mod elastic;
mod exactly_once;
mod failover;
mod full_disk;
mod harness;
mod init;
mod kv_ops;
mod limits;
pub(crate) mod linearizable;
#[path = "../common/ports.rs"]
mod ports;
mod replication;
mod restart;
mod routing;
mod web;
