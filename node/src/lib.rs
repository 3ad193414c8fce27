//! The Tessera storage node.
//!
//! A node hosts many regions; each region is one openraft group replicated on three nodes.
//! All regions share one Raft log engine (a write-ahead log of their entries and votes,
//! `storage::wal`), one redb database of their state machines, each written by a single
//! group-commit writer, and one QUIC endpoint through which clients, peers and PD reach the
//! node.
//!
//! ```no_run
//! # async fn run() -> Result<(), tessera_node::NodeError> {
//! use tessera_node::{Node, NodeConfig};
//! use tessera_wire::NodeId;
//! let dir = std::path::Path::new("./data");
//! let tls = tessera_certs::TlsFiles::node(&dir.join("certs"), NodeId(1));
//! let cfg = NodeConfig::new(NodeId(1), "127.0.0.1:0".parse().unwrap(), dir.join("node-1"), vec!["127.0.0.1:7379".into()], tls);
//! let node = Node::start(cfg).await?;
//! println!("listening on {}", node.local_addr());
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Main types: [`Node`], [`NodeConfig`]. Internals: [`storage`] (the redb engine, log store,
//! state machine), `raft` (type configuration and network), `service` (request handling).

mod admin;
mod config;
mod error;
mod host_cpu;
mod idle_poll;
mod load_sample;
pub mod metrics;
mod node;
mod pd_client;
pub mod raft;
mod region;
mod service;
mod snapshot_policy;
pub mod storage;

pub use config::{Admission, Faults, NodeConfig, RaftTiming, DEFAULT_IDLE_POLL};
pub use error::NodeError;
pub use idle_poll::kernel_halt_poll_ns;
pub use node::{Node, RAFT_LOG_DIR};

/// Locks `m`, taking the data of a poisoned lock as it is: every lock in the node guards
/// state that stays consistent between statements, so a panic elsewhere does not spread.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
