//! Placement-driver requests and responses.

use crate::{NodeId, Peer, RegionDescriptor, RegionEpoch, RegionId};

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
    /// Liveness: [`NodeState::Down`] also while it reports [`Self::storage_failure`].
    pub state: NodeState,
    /// Milliseconds since PD last heard from it healthy: a node reporting a storage failure
    /// is counted down from its last heartbeat before the failure.
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
    /// An operator asked for the node to be emptied (`tessera admin drain`): its replicas
    /// are moved away and it receives none.
    pub draining: bool,
    /// SHA-256 of its current WebTransport certificate, as of its last heartbeat; browsers
    /// pin it (`serverCertificateHashes`). `None` when it serves no browsers.
    pub web_cert_hash: Option<Vec<u8>>,
    /// [`NodeStats::host_cpu_busy_pct`] of its last heartbeat.
    pub host_cpu_busy_pct: Option<u8>,
    /// Why the node's storage fail-stopped ([`NodeStats::storage_failure`]), as it last
    /// reported; `None` once it registers again after a restart, and unknown to a PD leader
    /// elected after its last report until its next one.
    pub storage_failure: Option<String>,
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
    /// SHA-256 of the node's current browser (WebTransport) certificate, if it serves
    /// browsers: what a browser pins to reach it.
    pub web_cert_hash: Option<Vec<u8>>,
    /// How busy the CPUs of the node's host were over about the last 10 s, in percent of
    /// their time (every process of the host counts, not only the node). `None` where the
    /// node cannot tell (not Linux, or too soon after its start). PD splits a region for
    /// its load only while some node's host has CPU time to spare.
    pub host_cpu_busy_pct: Option<u8>,
    /// Set when the node's storage fail-stopped (a failed `fsync`, a full disk): it serves
    /// nothing until restarted, and goes on heartbeating only to say why, at most
    /// [`MAX_FAILURE_REASON`] bytes. PD counts it down from its last heartbeat before, and
    /// sends it nothing to create or destroy.
    pub storage_failure: Option<String>,
}

/// Longest [`NodeStats::storage_failure`] a node sends, in bytes.
pub const MAX_FAILURE_REASON: usize = 512;

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
    /// Non-voting replicas (learners catching up), not in `region.peers`.
    pub learners: Vec<Peer>,
    /// Writes per second the leader served since its previous report.
    pub write_qps: u64,
    /// Reads per second the leader served since its previous report.
    pub read_qps: u64,
    /// Regions recently split off this one, as of their split: PD learns them at once,
    /// before their own leaders report, so no key goes without a route meanwhile.
    pub split_off: Vec<RegionDescriptor>,
    /// Set while the region is prepared to merge into its left neighbour (it refuses reads
    /// and writes until the neighbour absorbs it, or the merge is rolled back).
    pub merging: Option<MergeReport>,
}

/// A region prepared to merge, as its leader reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MergeReport {
    /// The region absorbing this one.
    pub target: RegionId,
    /// The target's epoch the merge was prepared against: the target absorbs this region
    /// only at that epoch, and once the target's epoch moved past it without absorbing,
    /// the merge can be rolled back.
    pub target_epoch: RegionEpoch,
    /// Log index of the prepare in this region's log.
    pub prepare_index: u64,
}

impl RegionStats {
    /// A report by `leader` at `term` of `region`, with no size, load, learners or
    /// split-off regions (set the fields that apply).
    pub fn new(region: RegionDescriptor, leader: Peer, term: u64) -> RegionStats {
        RegionStats {
            region,
            leader,
            term,
            approximate_size: 0,
            approximate_keys: 0,
            learners: Vec::new(),
            write_qps: 0,
            read_qps: 0,
            split_off: Vec::new(),
            merging: None,
        }
    }
}

/// One step of a region's reconfiguration, sent by PD to the region's leader in the answer
/// to its region heartbeat. The leader refuses it if the region's epoch is no longer
/// `epoch` (the step was planned against a state that no longer holds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionCommand {
    /// PD's operator id, for logs.
    pub op_id: u64,
    /// The region.
    pub region_id: RegionId,
    /// The epoch the step was planned against.
    pub epoch: RegionEpoch,
    /// What to do.
    pub kind: RegionCommandKind,
}

/// What a [`RegionCommand`] does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RegionCommandKind {
    /// Add `peer` as a learner; its node creates the replica empty and receives a snapshot.
    AddLearner {
        /// The new replica (id allocated by PD).
        peer: Peer,
    },
    /// Make the learner `peer` a voter.
    PromoteLearner {
        /// The learner.
        peer: Peer,
    },
    /// Remove the voter or learner `peer`.
    RemovePeer {
        /// The replica removed.
        peer: Peer,
    },
    /// Hand leadership to the voter `to`.
    TransferLeader {
        /// The new leader.
        to: Peer,
    },
    /// Split the region at `key` (`None`: the leader picks the key that halves its size).
    /// The right half becomes region `new_region_id` with `new_peers`, one per voter of the
    /// region, on the same nodes.
    Split {
        /// First key of the right half.
        key: Option<Vec<u8>>,
        /// Id of the new (right) region.
        new_region_id: RegionId,
        /// Its replicas, one on each node hosting a voter of the region.
        new_peers: Vec<Peer>,
    },
    /// Split a hot region where its recent load halves: the leader picks the key from a
    /// sample of the keys its requests touched (the size midpoint if it has too few
    /// samples). Otherwise as [`RegionCommandKind::Split`]. (A variant of its own, appended,
    /// so that older nodes fail to decode only this step.)
    SplitByLoad {
        /// Id of the new (right) region.
        new_region_id: RegionId,
        /// Its replicas, one on each node hosting a voter of the region.
        new_peers: Vec<Peer>,
    },
    /// Prepare to merge into `target`, the region's left neighbour with voters on the
    /// same nodes: the region stops serving reads and writes, so its state is final.
    PrepareMerge {
        /// The region that will absorb this one.
        target: RegionId,
        /// The target's epoch, as PD knows it.
        target_epoch: RegionEpoch,
    },
    /// Absorb `source`, the right neighbour prepared to merge into this region at this
    /// region's current epoch (the command's `epoch`). Each replica waits for its local
    /// replica of `source` to apply the prepare, then takes over its range.
    CommitMerge {
        /// The source as its prepared leader reported it.
        source: RegionDescriptor,
        /// Log index of the prepare in the source's log.
        prepare_index: u64,
    },
    /// The target's epoch moved on without absorbing this prepared region: serve again.
    RollbackMerge {
        /// Log index of the prepare being rolled back.
        prepare_index: u64,
    },
}

/// A region with its roles and statistics, for `tessera status --regions`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionInfo {
    /// The region (its `peers` are the voters).
    pub region: RegionDescriptor,
    /// Learners.
    pub learners: Vec<Peer>,
    /// The leader as last reported.
    pub leader: Option<Peer>,
    /// Approximate bytes of keys and values (0 until the leader reports).
    pub approximate_size: u64,
    /// Approximate number of keys.
    pub approximate_keys: u64,
}

/// Where an operator is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OperatorState {
    /// Sent to (or waiting for) the region's leader.
    Running,
    /// The region reached the operator's goal.
    Succeeded,
    /// The goal was not reached in time; PD gave up (the scheduler may plan it again).
    TimedOut,
    /// Given up: the region changed under it, or an operator asked.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// An operator PD runs or ran, for `tessera admin operators`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OperatorInfo {
    /// Operator id.
    pub id: u64,
    /// The region changed.
    pub region_id: RegionId,
    /// What it does, e.g. `add-learner peer 12 on node 4`.
    pub kind: String,
    /// Why it was planned, e.g. `balance regions: node 1 -> node 4`.
    pub reason: String,
    /// Where it is.
    pub state: OperatorState,
    /// Milliseconds since it started.
    pub started_ms_ago: u64,
    /// How long it ran, once finished.
    pub took_ms: Option<u64>,
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
        /// Regions it hosts that merged into a neighbour it also hosts, whose commit it
        /// applied: it destroys them once PD says every node hosting them did.
        merged: Vec<RegionDescriptor>,
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
    /// Every node and every region with roles and statistics.
    GetClusterStatus,
    /// Split the region containing `key` at `key` (admin). Answered once the split is
    /// planned, with the operator id; `GetOperators` tells when it finished.
    SplitRegion {
        /// First key of the right half.
        key: Vec<u8>,
    },
    /// Move every replica off `node_id` (admin); it then receives none.
    DrainNode {
        /// The node emptied.
        node_id: NodeId,
    },
    /// Forget `node_id` (admin). Refused while it still hosts replicas: drain it first.
    RemoveNode {
        /// The node forgotten.
        node_id: NodeId,
    },
    /// Running and recently finished operators.
    GetOperators,
    /// Merge the region containing `key` into its left neighbour (admin). Answered once
    /// the merge is planned, with the operator id. Refused unless both regions have
    /// their voters on the same nodes and no learners.
    MergeRegion {
        /// A key of the region merged away (the right one).
        key: Vec<u8>,
    },
    /// Revoke a scoped token (admin). Nodes learn it with their next heartbeat answer and
    /// refuse the token from then on, on connections already open too.
    RevokeToken {
        /// The token's id.
        id: u64,
        /// The token's expiry (seconds since the Unix epoch): PD forgets the revocation
        /// after it, since the token is refused anyway.
        expires_at: u64,
    },
}

/// A PD response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PdResponse {
    /// Acknowledgement with no data.
    Ok,
    /// Answer to `NodeHeartbeat`: regions to create and to destroy locally.
    NodeHeartbeat {
        /// Regions assigned to the node that it did not report hosting.
        create: Vec<RegionDescriptor>,
        /// Addresses of all nodes, so peers can be dialled.
        nodes: Vec<NodeInfo>,
        /// Regions the node reported hosting whose newest descriptor no longer has a
        /// replica on it: the node destroys its replica if its own descriptor is older.
        destroy: Vec<RegionDescriptor>,
        /// Regions merged away that every node hosting them reported in `merged`: their
        /// groups are no longer needed by any replica, and the node destroys them.
        destroy_merged: Vec<RegionId>,
        /// Ids of every revoked token not yet expired: the node's full list.
        revoked_tokens: Vec<u64>,
    },
    /// One region.
    Region(RegionRoute),
    /// Several regions.
    Regions(Vec<RegionRoute>),
    /// Nodes.
    Nodes(Vec<NodeInfo>),
    /// A session id.
    Session(crate::SessionId),
    /// Answer to `RegionHeartbeat`: steps for the leader to take.
    RegionCommands(Vec<RegionCommand>),
    /// Answer to `GetClusterStatus`.
    ClusterStatus {
        /// Nodes.
        nodes: Vec<NodeInfo>,
        /// Regions in key order.
        regions: Vec<RegionInfo>,
    },
    /// An operator was planned.
    OperatorStarted {
        /// Its id.
        op_id: u64,
    },
    /// Answer to `GetOperators`: running ones first, then finished ones, newest first.
    Operators(Vec<OperatorInfo>),
}
