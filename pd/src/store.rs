//! Durable PD metadata in redb.
//!
//! # Layout
//!
//! One redb file, `<data_dir>/pd.redb`, with three tables. Every value is a postcard-encoded
//! *record*: a dedicated on-disk type whose first byte is its version (the enum variant
//! index), never a wire or in-memory type.
//!
//! | table     | key            | value            |
//! |-----------|----------------|------------------|
//! | `nodes`   | node id (u64)  | [`NodeRecord`]   |
//! | `regions` | region id (u64)| [`RegionRecord`] |
//! | `cluster` | `"allocator"`  | [`AllocatorRecord`] |
//! | `cluster` | `"flags"`      | [`ClusterRecord`] |
//! | `cluster` | `"revoked_tokens"` | [`RevokedRecord`] |
//!
//! A node record holds its registration only; heartbeat statistics (region and leader
//! counts, used bytes) are soft state, rebuilt by the next heartbeat after a restart.
//!
//! # Invariants
//!
//! - Every mutation of [`ClusterMeta`] is written, as named by its [`MetaChanges`], in one
//!   write transaction, and the request is answered only after the commit returned (redb's
//!   default durability fsyncs on commit).
//! - A failed transaction or commit is never retried: the store fail-stops and refuses every
//!   later call with [`StoreError::FailStopped`]. Memory may then be ahead of disk, which is
//!   why nothing may be answered from it; a restart reloads the last committed state.
//! - An unknown record version is an error on load, not a silently skipped entry.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tessera_wire::{NodeId, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId};

use crate::meta::{ClusterMeta, IdAllocatorState, MetaChanges, NodeRegistration, PersistedMeta, RegionPlacement};

const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const REGIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("regions");
const CLUSTER: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster");
const ALLOCATOR_KEY: &str = "allocator";
const FLAGS_KEY: &str = "flags";
const REVOKED_KEY: &str = "revoked_tokens";

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("open PD database: {source}")]
    Open {
        /// The redb failure.
        #[source]
        source: BoxError,
    },
    /// Reading the stored metadata failed.
    #[error("read PD metadata: {source}")]
    Read {
        /// The redb failure.
        #[source]
        source: BoxError,
    },
    /// A stored record cannot be decoded (corruption or an unknown record version).
    #[error("corrupt {what} record: {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoding failure.
        reason: String,
    },
    /// A write transaction or its commit failed; the store is now fail-stopped.
    #[error("write PD metadata: {source}")]
    Write {
        /// The redb failure.
        #[source]
        source: BoxError,
    },
    /// An earlier write failed; the store refuses work until the process restarts.
    #[error("PD storage fail-stopped after an earlier error: {reason}")]
    FailStopped {
        /// The first failure.
        reason: String,
    },
}

/// On-disk node registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum NodeRecord {
    V1 {
        addr: String,
        capacity_bytes: u64,
    },
    /// With the draining flag (`tessera admin drain`).
    V2 {
        addr: String,
        capacity_bytes: u64,
        draining: bool,
    },
}

/// On-disk peer (part of [`RegionRecord::V1`]'s layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PeerRecordV1 {
    peer_id: u64,
    node_id: u64,
}

/// On-disk region placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum RegionRecord {
    V1 {
        start_key: Vec<u8>,
        end_key: Vec<u8>,
        conf_ver: u64,
        version: u64,
        peers: Vec<PeerRecordV1>,
        leader: Option<PeerRecordV1>,
        term: u64,
    },
}

/// On-disk id allocator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum AllocatorRecord {
    V1 { next_region: u64, next_peer: u64, next_session: u64 },
}

/// On-disk cluster flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum ClusterRecord {
    V1 { bootstrapped: bool },
}

/// On-disk list of revoked tokens: (id, expiry in seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum RevokedRecord {
    V1 { tokens: Vec<(u64, u64)> },
}

impl From<Peer> for PeerRecordV1 {
    fn from(p: Peer) -> Self {
        PeerRecordV1 { peer_id: p.id.0, node_id: p.node_id.0 }
    }
}

impl From<PeerRecordV1> for Peer {
    fn from(p: PeerRecordV1) -> Self {
        Peer { id: PeerId(p.peer_id), node_id: NodeId(p.node_id) }
    }
}

impl From<&NodeRegistration> for NodeRecord {
    fn from(n: &NodeRegistration) -> Self {
        NodeRecord::V2 { addr: n.addr.clone(), capacity_bytes: n.capacity_bytes, draining: n.draining }
    }
}

impl NodeRecord {
    fn into_registration(self, id: NodeId) -> NodeRegistration {
        match self {
            NodeRecord::V1 { addr, capacity_bytes } => NodeRegistration { id, addr, capacity_bytes, draining: false },
            NodeRecord::V2 { addr, capacity_bytes, draining } => {
                NodeRegistration { id, addr, capacity_bytes, draining }
            }
        }
    }
}

impl From<&RegionPlacement> for RegionRecord {
    fn from(p: &RegionPlacement) -> Self {
        RegionRecord::V1 {
            start_key: p.region.start_key.clone(),
            end_key: p.region.end_key.clone(),
            conf_ver: p.region.epoch.conf_ver,
            version: p.region.epoch.version,
            peers: p.region.peers.iter().copied().map(PeerRecordV1::from).collect(),
            leader: p.leader.map(PeerRecordV1::from),
            term: p.term,
        }
    }
}

impl RegionRecord {
    fn into_placement(self, id: RegionId) -> RegionPlacement {
        match self {
            RegionRecord::V1 { start_key, end_key, conf_ver, version, peers, leader, term } => RegionPlacement {
                region: RegionDescriptor {
                    id,
                    start_key,
                    end_key,
                    epoch: RegionEpoch { conf_ver, version },
                    peers: peers.into_iter().map(Peer::from).collect(),
                },
                leader: leader.map(Peer::from),
                term,
            },
        }
    }
}

impl From<IdAllocatorState> for AllocatorRecord {
    fn from(a: IdAllocatorState) -> Self {
        AllocatorRecord::V1 { next_region: a.next_region, next_peer: a.next_peer, next_session: a.next_session }
    }
}

impl From<AllocatorRecord> for IdAllocatorState {
    fn from(r: AllocatorRecord) -> Self {
        match r {
            AllocatorRecord::V1 { next_region, next_peer, next_session } => {
                IdAllocatorState { next_region, next_peer, next_session }
            }
        }
    }
}

fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    // Encoding plain records into a Vec cannot fail; treat a failure as a write error.
    postcard::to_allocvec(record).map_err(|e| StoreError::Write { source: Box::new(e) })
}

fn decode<T: for<'de> Deserialize<'de>>(what: impl FnOnce() -> String, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { what: what(), reason: e.to_string() })
}

fn read_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Read { source: Box::new(e.into()) }
}

/// The PD's durable metadata store.
#[derive(Debug)]
pub(crate) struct Store {
    db: Database,
    /// Set on the first failed write; from then on every call fails.
    failed: Option<String>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open { source: Box::new(e) })?;
        Store::init(db)
    }

    fn init(db: Database) -> Result<Store, StoreError> {
        // Create the tables so that read transactions find them.
        let init = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(NODES)?;
            txn.open_table(REGIONS)?;
            txn.open_table(CLUSTER)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(|e| StoreError::Open { source: Box::new(e) })?;
        Ok(Store { db, failed: None })
    }

    /// The first write failure, once fail-stopped.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn check(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(reason) => Err(StoreError::FailStopped { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// Loads everything durable.
    pub(crate) fn load(&self) -> Result<PersistedMeta, StoreError> {
        self.check()?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let mut state = PersistedMeta::default();

        let nodes = txn.open_table(NODES).map_err(read_err)?;
        for item in nodes.iter().map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            let id = NodeId(k.value());
            let record: NodeRecord = decode(|| format!("node {id}"), v.value())?;
            state.nodes.push(record.into_registration(id));
        }

        let regions = txn.open_table(REGIONS).map_err(read_err)?;
        for item in regions.iter().map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            let id = RegionId(k.value());
            let record: RegionRecord = decode(|| format!("region {id}"), v.value())?;
            state.regions.push(record.into_placement(id));
        }

        let cluster = txn.open_table(CLUSTER).map_err(read_err)?;
        if let Some(v) = cluster.get(ALLOCATOR_KEY).map_err(read_err)? {
            let record: AllocatorRecord = decode(|| "allocator".into(), v.value())?;
            state.allocator = record.into();
        }
        if let Some(v) = cluster.get(FLAGS_KEY).map_err(read_err)? {
            let ClusterRecord::V1 { bootstrapped } = decode(|| "cluster flags".into(), v.value())?;
            state.bootstrapped = bootstrapped;
        }
        Ok(state)
    }

    /// The revoked token ids with their expiry (seconds since the Unix epoch).
    pub(crate) fn load_revoked(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        self.check()?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let cluster = txn.open_table(CLUSTER).map_err(read_err)?;
        match cluster.get(REVOKED_KEY).map_err(read_err)? {
            Some(v) => {
                let RevokedRecord::V1 { tokens } = decode(|| "revoked tokens".into(), v.value())?;
                Ok(tokens)
            }
            None => Ok(Vec::new()),
        }
    }

    /// Durably replaces the revoked token list. On failure the store fail-stops.
    pub(crate) fn save_revoked(&mut self, tokens: Vec<(u64, u64)>) -> Result<(), StoreError> {
        self.check()?;
        let record = encode(&RevokedRecord::V1 { tokens })?;
        let write = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            txn.open_table(CLUSTER)?.insert(REVOKED_KEY, record.as_slice())?;
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| {
            let reason = e.to_string();
            tracing::error!(error = %reason, "PD storage write failed; fail-stopping");
            self.failed = Some(reason);
            StoreError::Write { source: Box::new(e) }
        })
    }

    /// Writes the keys named by `changes`, with their current values in `meta`, in one
    /// durable transaction. A no-op for empty changes. On failure the store fail-stops.
    pub(crate) fn persist(&mut self, meta: &ClusterMeta, changes: &MetaChanges) -> Result<(), StoreError> {
        self.check()?;
        if changes.is_empty() {
            return Ok(());
        }
        match self.write(meta, changes) {
            Ok(()) => Ok(()),
            Err(WriteFailure::Encode(e)) => Err(e),
            Err(WriteFailure::Redb(e)) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "PD storage write failed; fail-stopping");
                self.failed = Some(reason);
                Err(StoreError::Write { source: Box::new(e) })
            }
        }
    }

    fn write(&self, meta: &ClusterMeta, changes: &MetaChanges) -> Result<(), WriteFailure> {
        let txn = self.db.begin_write()?;
        {
            let mut nodes = txn.open_table(NODES)?;
            for id in &changes.nodes {
                match meta.node_registration(*id) {
                    Some(n) => {
                        nodes.insert(id.0, encode(&NodeRecord::from(&n))?.as_slice())?;
                    }
                    None => {
                        nodes.remove(id.0)?;
                    }
                }
            }
            let mut regions = txn.open_table(REGIONS)?;
            for id in &changes.removed_regions {
                regions.remove(id.0)?;
            }
            for id in &changes.regions {
                match meta.region_placement(*id) {
                    Some(p) => {
                        regions.insert(id.0, encode(&RegionRecord::from(&p))?.as_slice())?;
                    }
                    None => {
                        regions.remove(id.0)?;
                    }
                }
            }
            let mut cluster = txn.open_table(CLUSTER)?;
            if changes.allocator {
                cluster.insert(ALLOCATOR_KEY, encode(&AllocatorRecord::from(meta.allocator()))?.as_slice())?;
            }
            if changes.cluster {
                let flags = ClusterRecord::V1 { bootstrapped: meta.is_bootstrapped() };
                cluster.insert(FLAGS_KEY, encode(&flags)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

enum WriteFailure {
    Encode(StoreError),
    Redb(redb::Error),
}

impl From<StoreError> for WriteFailure {
    fn from(e: StoreError) -> Self {
        WriteFailure::Encode(e)
    }
}

impl<E: Into<redb::Error>> From<E> for WriteFailure {
    fn from(e: E) -> Self {
        WriteFailure::Redb(e.into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use tessera_wire::{NodeStats, RegionStats};

    use super::*;
    use crate::meta::MetaConfig;

    fn config() -> MetaConfig {
        MetaConfig { initial_regions: 4, replicas: 3, node_down_after: Duration::from_secs(30) }
    }

    fn register_three(meta: &mut ClusterMeta, store: &mut Store) {
        for id in 1..=3u64 {
            let c = meta.register_node(NodeId(id), format!("127.0.0.1:{}", 7000 + id), 1 << 30, Duration::ZERO);
            store.persist(meta, &c).unwrap();
        }
    }

    #[test]
    fn reopen_recovers_nodes_regions_and_allocator() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pd.redb");
        let mut meta = ClusterMeta::new(config());
        let (session, before) = {
            let mut store = Store::open(&path).unwrap();
            assert_eq!(store.load().unwrap(), PersistedMeta::default());
            register_three(&mut meta, &mut store);
            assert!(meta.is_bootstrapped());

            // A leader report and a session allocation are persisted too.
            let region = meta.get_region(b"a").unwrap().region;
            let leader = region.peer_on(NodeId(2)).unwrap();
            let report =
                RegionStats { approximate_size: 1, approximate_keys: 1, ..RegionStats::new(region, leader, 7) };
            let (_, c) = meta.region_heartbeat(NodeId(2), &[report], Duration::ZERO).unwrap();
            store.persist(&meta, &c).unwrap();
            let (session, c) = meta.alloc_session();
            store.persist(&meta, &c).unwrap();
            (session, meta.snapshot())
        };

        let store = Store::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded, before);
        let mut restored = ClusterMeta::restore(config(), loaded, Duration::from_secs(1));
        assert!(restored.is_bootstrapped());
        assert_eq!(restored.scan_regions(b"", b"", 0).unwrap().len(), 4);
        let route = restored.get_region(b"a").unwrap();
        assert_eq!(route.leader.map(|p| p.node_id), Some(NodeId(2)));
        assert_eq!(restored.nodes(Duration::from_secs(1)).len(), 3);
        assert!(restored.alloc_session().0 > session);
    }

    #[test]
    fn split_removal_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pd.redb");
        let mut meta = ClusterMeta::new(MetaConfig { initial_regions: 1, ..config() });
        let mut store = Store::open(&path).unwrap();
        register_three(&mut meta, &mut store);
        let parent = meta.get_region(b"a").unwrap().region;
        let mut right = parent.clone();
        right.id = RegionId(50);
        right.start_key = b"m".to_vec();
        right.epoch.version = 2;
        let leader = right.peer_on(NodeId(1)).unwrap();
        let report = RegionStats::new(right, leader, 1);
        let (_, c) = meta.region_heartbeat(NodeId(1), &[report], Duration::ZERO).unwrap();
        store.persist(&meta, &c).unwrap();
        drop(store);

        let loaded = Store::open(&path).unwrap().load().unwrap();
        let ids: Vec<RegionId> = loaded.regions.iter().map(|p| p.region.id).collect();
        assert_eq!(ids, vec![RegionId(50)]);
        let restored = ClusterMeta::restore(MetaConfig { initial_regions: 1, ..config() }, loaded, Duration::ZERO);
        assert!(restored.allocator().next_region > 50);
    }

    #[test]
    fn unknown_record_version_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pd.redb");
        {
            let store = Store::open(&path).unwrap();
            let txn = store.db.begin_write().unwrap();
            txn.open_table(NODES).unwrap().insert(1, [9u8, 0, 0].as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path).unwrap().load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn write_failure_fail_stops() {
        let (mut store, fail) = testing::failing_store();
        let mut meta = ClusterMeta::new(config());
        let c = meta.register_node(NodeId(1), "a:1".into(), 1, Duration::ZERO);
        store.persist(&meta, &c).unwrap();

        fail.store(true, Ordering::SeqCst);
        let c = meta.register_node(NodeId(2), "b:1".into(), 1, Duration::ZERO);
        let err = store.persist(&meta, &c).unwrap_err();
        assert!(matches!(err, StoreError::Write { .. }), "{err}");
        assert!(store.failure().is_some());

        // The disk recovers, but the store stays stopped: no retry of a failed fsync.
        fail.store(false, Ordering::SeqCst);
        let (_, c) = meta.alloc_session();
        assert!(matches!(store.persist(&meta, &c), Err(StoreError::FailStopped { .. })));
        assert!(matches!(store.load(), Err(StoreError::FailStopped { .. })));
        let _ = meta.node_heartbeat(NodeId(1), NodeStats::default(), &[], Duration::ZERO);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use redb::backends::InMemoryBackend;
    use redb::{Database, StorageBackend};

    use super::Store;

    /// An in-memory backend whose writes and syncs fail once `fail` is set.
    #[derive(Debug)]
    pub(crate) struct FailingBackend {
        inner: InMemoryBackend,
        fail: Arc<AtomicBool>,
    }

    impl FailingBackend {
        fn io(&self) -> Result<(), std::io::Error> {
            if self.fail.load(Ordering::SeqCst) {
                Err(std::io::Error::other("injected I/O failure"))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for FailingBackend {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.io()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.io()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.io()?;
            self.inner.write(offset, data)
        }
    }

    /// An in-memory store whose disk fails once the returned flag is set.
    pub(crate) fn failing_store() -> (Store, Arc<AtomicBool>) {
        let fail = Arc::new(AtomicBool::new(false));
        let backend = FailingBackend { inner: InMemoryBackend::new(), fail: fail.clone() };
        let db = Database::builder().create_with_backend(backend).unwrap();
        (Store::init(db).unwrap(), fail)
    }
}
