//! Tessera's placement driver (PD): cluster metadata, the routing table, bootstrap and id
//! allocation.
//!
//! Nodes register with the PD and heartbeat to it; region leaders report their regions;
//! clients and nodes look regions up by key or id. The PD answers over the QUIC transport of
//! `tessera-wire`, with mutual TLS under the cluster CA ([`PdServer`]).
//!
//! # Main types
//!
//! * [`PdServer`] / [`PdConfig`]: the running process and its settings.
//! * [`ClusterMeta`]: the metadata as an I/O-free, clock-free state machine (time is an
//!   input). A later replicated PD drives the same state machine from a Raft log.
//! * Storage: one redb file, `<data_dir>/pd.redb`, holding versioned on-disk records. Every
//!   mutation is committed (fsynced) before the request is answered; after a storage error
//!   the PD fail-stops and answers every request with `StorageUnavailable`.
//!
//! # Bootstrap rule
//!
//! The cluster bootstraps once, when `replicas` live nodes have registered. It creates
//! `initial_regions` = N regions split at the single-byte keys `[(256*i/N) as u8]` for `i` in
//! `1..N`: the first region starts at `b""`, the last is unbounded (`end_key` empty). Each
//! region has `replicas` peers on distinct nodes, assigned round-robin over the live nodes
//! sorted by id (with exactly `replicas` nodes, every node hosts a peer of every region);
//! region and peer ids are fresh, and the epoch is `{conf_ver: 1, version: 1}`. Nodes learn
//! which regions to create from their heartbeat answers. Ids are never reused, also across
//! restarts. Until bootstrap, region lookups fail with `NotBootstrapped`.
//!
//! # Authorization
//!
//! `RegisterNode`, `NodeHeartbeat` and `RegionHeartbeat` are accepted only from a peer
//! authenticated as `Role::Node(n)` with `n` equal to the request's `node_id`; lookups and
//! `AllocSession` from any authenticated peer.
//!
//! # Example
//!
//! The bootstrap rule on the state machine alone:
//!
//! ```
//! use std::time::Duration;
//! use tessera_pd::{ClusterMeta, MetaConfig};
//! use tessera_wire::NodeId;
//!
//! let mut meta = ClusterMeta::new(MetaConfig { initial_regions: 4, ..MetaConfig::default() });
//! let now = Duration::from_secs(1);
//! for id in 1..=3 {
//!     let changes = meta.register_node(NodeId(id), format!("10.0.0.{id}:7000"), 1 << 40, now);
//!     // A driver persists `changes` here, before answering.
//!     let _ = changes;
//! }
//! assert!(meta.is_bootstrapped());
//! let route = meta.get_region(&[0x90, 1, 2]).unwrap();
//! assert_eq!((route.region.start_key, route.region.end_key), (vec![128], vec![192]));
//! assert_eq!(route.region.peers.len(), 3);
//! ```
//!
//! Running a PD:
//!
//! ```no_run
//! use tessera_pd::{PdConfig, PdServer};
//! use tessera_certs::{ensure_dev_certs, TlsFiles};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let certs = std::path::Path::new("/var/lib/tessera/certs");
//! ensure_dev_certs(certs, &[])?;
//! let cfg = PdConfig::new("0.0.0.0:2379".parse()?, "/var/lib/tessera/pd", TlsFiles::pd(certs));
//! let pd = PdServer::start(cfg).await?;
//! println!("PD listening on {}", pd.local_addr());
//! // ...
//! pd.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod config;
mod meta;
pub mod operators;
pub mod scheduler;
mod server;
mod service;
mod store;

pub use config::{PdConfig, PdError, MAX_INITIAL_REGIONS};
pub use meta::{
    split_keys, ClusterMeta, IdAllocatorState, MetaChanges, MetaConfig, MetaError, NodeAssignments, NodeRegistration,
    PersistedMeta, RegionPlacement, RegionReport,
};
pub use server::{PdServer, DB_FILE};
pub use store::StoreError;
