//! A region replica hosted by this node: its Raft handle and shared state.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use openraft::async_runtime::watch::WatchReceiver;

use tessera_wire::{LeaderHint, Peer, RegionId};

use crate::raft::network::AddressBook;
use crate::raft::types::Raft;
use crate::storage::state_machine::ChangeSignal;
use crate::storage::{Engine, RegionShared};

/// A snapshot being received in chunks, written to a file as they arrive.
#[derive(Debug, Default)]
pub struct IncomingSnapshot {
    /// Transfer being assembled.
    pub transfer_id: u64,
    /// The file (deleted if the transfer is abandoned) and its open handle.
    pub file: Option<(crate::storage::snapshot::SnapshotFile, tokio::fs::File)>,
    /// Bytes written so far.
    pub received: u64,
}

/// One replica of a region on this node.
pub struct Region {
    /// Region id.
    pub id: RegionId,
    /// This node's peer of the region.
    pub peer: Peer,
    /// The Raft group handle.
    pub raft: Raft,
    /// Proposes the region's client writes, in batches when several are in progress.
    pub proposer: crate::raft::proposer::Proposer,
    /// Descriptor and statistics.
    pub shared: Arc<RegionShared>,
    /// Snapshot being received (an async lock: chunks are written to disk under it).
    pub incoming: tokio::sync::Mutex<IncomingSnapshot>,
    /// Pipelined replication streams from the region's leader (when a follower).
    pub append_streams: Arc<crate::raft::append_stream::AppendStreams>,
    /// A step PD asked for (membership change, split, ...) is being proposed.
    pub admin_busy: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("id", &self.id).field("peer", &self.peer).finish()
    }
}

impl Region {
    /// The leader as this replica knows it, with its node's address.
    pub fn leader_hint(&self, book: &AddressBook) -> Option<LeaderHint> {
        let leader = self.raft.server_metrics().borrow_watched().current_leader?;
        let peer = self.shared.descriptor().peer(tessera_wire::PeerId(leader))?;
        let addr = book.get(peer.node_id)?;
        Some(LeaderHint { peer, addr })
    }

    /// True when this replica currently believes it leads the region. (From openraft's
    /// server metrics, the node's source of leadership changes: see `node::open_region`.)
    pub fn is_leader(&self) -> bool {
        self.raft.server_metrics().borrow_watched().current_leader == Some(self.peer.id.0)
    }
}

/// The regions hosted by this node.
#[derive(Debug, Default)]
pub struct RegionMap {
    regions: RwLock<HashMap<RegionId, Arc<Region>>>,
}

impl RegionMap {
    /// The region with `id`.
    pub fn get(&self, id: RegionId) -> Option<Arc<Region>> {
        self.regions.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Adds a region.
    pub fn insert(&self, region: Arc<Region>) {
        self.regions.write().unwrap_or_else(|p| p.into_inner()).insert(region.id, region);
    }

    /// Removes a region.
    pub fn remove(&self, id: RegionId) -> Option<Arc<Region>> {
        self.regions.write().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// All regions.
    pub fn all(&self) -> Vec<Arc<Region>> {
        self.regions.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Ids of all regions.
    pub fn ids(&self) -> Vec<RegionId> {
        self.regions.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }
}

/// Engine-level context every region shares.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// The state machines' database.
    pub engine: Engine,
    /// The Raft log of every region.
    pub wal: crate::storage::wal::LogEngine,
    /// Node addresses.
    pub book: AddressBook,
    /// Hosted regions.
    pub regions: Arc<RegionMap>,
    /// Snapshots received from leaders and installed.
    pub snapshots_installed: Arc<std::sync::atomic::AtomicU64>,
    /// The node's change signal (see [`ChangeSignal`]).
    pub changes: ChangeSignal,
    /// Peers whose storage fail-stopped, from their answers to Raft messages.
    pub peer_failures: crate::raft::network::PeerFailures,
    /// Keeps a CPU awake while requests arrive (`NodeConfig::idle_poll`); `None` when off.
    pub(crate) idle_poll: Option<Arc<crate::idle_poll::IdlePoller>>,
}

impl NodeContext {
    /// Signals a change of node state to [`NodeContext::changes`] subscribers.
    pub fn changed(&self) {
        self.changes.bump();
    }

    /// Why the node's storage fail-stopped, if it did: its database's first failed commit
    /// or its Raft log's first failed write. It then serves nothing until restarted.
    pub fn storage_failure(&self) -> Option<String> {
        match self.engine.failure() {
            Some(failure) => Some(failure.to_string()),
            None => self.wal.check().err().map(|e| e.to_string()),
        }
    }

    /// The write path's cumulative counters (durable log syncs and what they carried).
    pub fn write_path_stats(&self) -> tessera_wire::WritePathStats {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.wal.stats();
        tessera_wire::WritePathStats {
            log_syncs: stats.syncs.load(Relaxed),
            log_entries: stats.entries.load(Relaxed),
            log_bytes: stats.bytes.load(Relaxed),
        }
    }
}
