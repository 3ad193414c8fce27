//! The scheduler's input: a snapshot of the cluster as PD sees it.
//!
//! These are the scheduler's own types, built by the driver from [`crate::ClusterMeta`] and
//! the heartbeats; they are not wire types and are never serialized.

use tessera_wire::{NodeId, Peer, RegionDescriptor};

use super::Operator;

/// A storage node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node id.
    pub id: NodeId,
    /// Heartbeating ([`tessera_wire::NodeState::Up`]).
    pub up: bool,
    /// How long the node has been down, in milliseconds (ignored when `up`).
    pub down_for_ms: u64,
    /// The operator asked for the node to be emptied: its replicas are moved away and it
    /// receives none.
    pub draining: bool,
    /// Replicas (voters and learners) it hosts, from its last heartbeat.
    pub region_count: u64,
    /// Regions it leads, from its last heartbeat.
    pub leader_count: u64,
    /// Approximate bytes it holds, from its last heartbeat.
    pub used_bytes: u64,
    /// Capacity it reported, in bytes (0: unknown, no limit).
    pub capacity_bytes: u64,
    /// How busy its host's CPUs were lately, in percent: the largest share
    /// (`NodeStats::host_cpu_busy_pct`) its heartbeats of the last 10 s gave; `None` when
    /// none of them told.
    pub host_cpu_busy_pct: Option<u8>,
}

impl NodeView {
    /// A node that is up, not draining, with no replicas, leaders or reported capacity yet.
    pub fn up(id: NodeId) -> NodeView {
        NodeView {
            id,
            up: true,
            down_for_ms: 0,
            draining: false,
            region_count: 0,
            leader_count: 0,
            used_bytes: 0,
            capacity_bytes: 0,
            host_cpu_busy_pct: None,
        }
    }

    /// May receive replicas and leaders: up, not draining, not full.
    pub fn is_schedulable(&self) -> bool {
        self.up && !self.draining && !self.is_full()
    }

    /// Its used bytes reached its reported capacity.
    pub fn is_full(&self) -> bool {
        self.capacity_bytes != 0 && self.used_bytes >= self.capacity_bytes
    }

    /// Why its replicas must be replaced, if they must: it has been down for longer than
    /// `max_down_time_ms`, or it is draining.
    pub fn replace_reason(&self, max_down_time_ms: u64) -> Option<BadNode> {
        if !self.up && self.down_for_ms > max_down_time_ms {
            Some(BadNode::Down)
        } else if self.draining {
            Some(BadNode::Draining)
        } else {
            None
        }
    }
}

/// Why a node's replicas are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadNode {
    /// Down for longer than the configured maximum.
    Down,
    /// Being drained.
    Draining,
}

/// A region as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionView {
    /// The descriptor with the newest accepted epoch; its `peers` are the voters.
    pub descriptor: RegionDescriptor,
    /// Non-voting replicas catching up (added by an earlier operator).
    pub learners: Vec<Peer>,
    /// The leader as last reported.
    pub leader: Option<Peer>,
    /// Approximate bytes of keys and values.
    pub approximate_size: u64,
    /// Approximate number of keys.
    pub approximate_keys: u64,
    /// Writes per second.
    pub write_qps: u64,
    /// Reads per second.
    pub read_qps: u64,
    /// Milliseconds since the region was created by a split (or, for a region never split,
    /// since PD first saw it).
    pub since_split_ms: u64,
}

impl RegionView {
    /// Voters and learners, in that order.
    pub fn all_peers(&self) -> impl Iterator<Item = &Peer> {
        self.descriptor.peers.iter().chain(self.learners.iter())
    }

    /// Some peer (voter or learner) is hosted on `node`.
    pub fn is_on(&self, node: NodeId) -> bool {
        self.all_peers().any(|p| p.node_id == node)
    }
}

/// Everything [`super::schedule`] decides from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// Registered nodes.
    pub nodes: Vec<NodeView>,
    /// Known regions.
    pub regions: Vec<RegionView>,
    /// Operators started earlier and not finished: their regions get nothing new, and they
    /// count against the per-node limit.
    pub in_flight: Vec<Operator>,
}
