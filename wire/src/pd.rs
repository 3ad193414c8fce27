//! Placement-driver requests and responses.

use crate::{NodeId, Peer, RegionDescriptor, RegionId};

/// Liveness of a node as PD sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NodeState {
    /// Heartbeating.
    Up,
    /// No heartbeat for longer than the down threshold.
    Down,
}

/// A node's registration and status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// Address clients and peers dial (`host:port`).
    pub addr: String,
    /// Capacity the node reported, in bytes.
    pub capacity_bytes: u64,
    /// Liveness.
    pub state: NodeState,
    /// Milliseconds since PD last heard from it.
    pub last_heartbeat_ms_ago: u64,
    /// Regions whose replica it hosts (last heartbeat).
    pub region_count: u64,
    /// Regions it leads (last heartbeat).
    pub leader_count: u64,
    /// Bytes it reported using, [`NodeStats::used_bytes`] of its last heartbeat. 0 until
    /// PD hears its first heartbeat, also after a PD restart: node statistics are not
    /// persisted by PD.
    pub used_bytes: u64,
    /// Write-path counters of its last heartbeat ([`NodeStats::write_path`]).
    pub write_path: WritePathStats,
}

/// Cumulative counters of a node's write path since it started, for benchmarks and
/// `tessera status`: how many durable log syncs (`fdatasync`) it made, and how many Raft log
/// entries they made durable. Their ratio is the group commit's entries per sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct WritePathStats {
    /// Durable syncs of the Raft log.
    pub log_syncs: u64,
    /// Raft log entries made durable by them.
    pub log_entries: u64,
    /// Bytes of log records written.
    pub log_bytes: u64,
}

/// Node-level statistics sent in store heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    /// Replicas hosted.
    pub region_count: u64,
    /// Regions led.
    pub leader_count: u64,
    /// Approximate bytes of the keys and values held by the replicas the node hosts (the
    /// sum of their region sizes; not the size of the files in its data directory).
    pub used_bytes: u64,
    /// Write-path counters, cumulative since the node started.
    pub write_path: WritePathStats,
}

/// Per-region statistics sent by the region leader.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionStats {
    /// The region as the leader knows it.
    pub region: RegionDescriptor,
    /// The leader replica (the sender).
    pub leader: Peer,
    /// The leader's Raft term.
    pub term: u64,
    /// Approximate bytes of keys and values.
    pub approximate_size: u64,
    /// Approximate number of keys.
    pub approximate_keys: u64,
}

/// A region with its leader and the leader's address, for routing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionRoute {
    /// The region.
    pub region: RegionDescriptor,
    /// Its leader as last reported, if any.
    pub leader: Option<Peer>,
    /// Addresses of the nodes hosting its peers, in `region.peers` order.
    pub peer_addrs: Vec<String>,
}

/// A PD request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PdRequest {
    /// A node announces itself (on every start). The node id must match its certificate.
    RegisterNode {
        /// Node id.
        node_id: NodeId,
        /// Address to dial it at.
        addr: String,
        /// Capacity in bytes.
        capacity_bytes: u64,
    },
    /// Store heartbeat. The answer lists regions the node must host but does not yet.
    NodeHeartbeat {
        /// Sender.
        node_id: NodeId,
        /// Stats.
        stats: NodeStats,
        /// Regions it hosts now.
        hosted: Vec<RegionId>,
    },
    /// Region heartbeats from a node, for the regions it leads.
    RegionHeartbeat {
        /// Sender.
        node_id: NodeId,
        /// One entry per led region.
        regions: Vec<RegionStats>,
    },
    /// The region containing `key`.
    GetRegion {
        /// Key.
        key: Vec<u8>,
    },
    /// A region by id.
    GetRegionById {
        /// Id.
        region_id: RegionId,
    },
    /// Regions overlapping `[start, end)` in key order, at most `limit`.
    ScanRegions {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end; empty for unbounded.
        end: Vec<u8>,
        /// Most regions returned (0: no limit).
        limit: u32,
    },
    /// All nodes.
    GetNodes,
    /// A fresh, never-reused client session id.
    AllocSession,
}

/// A PD response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PdResponse {
    /// Acknowledgement with no data.
    Ok,
    /// Answer to `NodeHeartbeat`: regions to create locally.
    NodeHeartbeat {
        /// Regions assigned to the node that it did not report hosting.
        create: Vec<RegionDescriptor>,
        /// Addresses of all nodes, so peers can be dialled.
        nodes: Vec<NodeInfo>,
    },
    /// One region.
    Region(RegionRoute),
    /// Several regions.
    Regions(Vec<RegionRoute>),
    /// Nodes.
    Nodes(Vec<NodeInfo>),
    /// A session id.
    Session(crate::SessionId),
}
