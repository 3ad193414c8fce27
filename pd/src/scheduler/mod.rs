//! The PD scheduler: a pure function from a cluster snapshot to the operators to start.
//!
//! [`schedule`] reads a [`ClusterSnapshot`] (nodes, regions, operators in flight) and a
//! [`SchedulerConfig`] and returns new [`Operator`]s. It does no I/O, reads no clock (time
//! arrives as durations in the snapshot: `down_for_ms`, `since_split_ms`) and uses no
//! randomness: the same input always gives the same operators in the same order. Executing
//! them, allocating peer ids for new learners, and refusing operators whose epoch went
//! stale are the operator controller's job.
//!
//! # Policies
//!
//! In priority order, each over the regions by id (merge: in key order):
//!
//! 1. Replica repair: replace voters on nodes down longer than `max_down_time_ms` or
//!    draining; restore `replicas` voters; finish moves.
//! 2. Split by size, by key count, or by load.
//! 3. Merge adjacent small regions with identical voter sets.
//! 4. Balance region counts across up, non-draining nodes.
//! 5. Balance leader counts across them.
//!
//! # Limits
//!
//! * One operator per region: a region with an operator in flight gets nothing new, and a
//!   pass plans at most one operator per region (a merge occupies both regions).
//! * At most `max_ops_per_node` operators, in flight and new together, touch a node as source
//!   or target ([`Operator::touched_nodes`]). Higher-priority policies use the budget first.
//! * A region without a usable leader (unknown, not a voter, or on a node that is not up)
//!   gets nothing: every operator is proposed through the leader.
//! * Replicas and leaders only go to schedulable nodes: up, not draining, and not full
//!   (`used_bytes >= capacity_bytes`, when a capacity is reported).
//! * Node counts start from the heartbeats and include the expected effect of in-flight and
//!   planned operators, so one pass spreads its repairs instead of piling them on one node.
//!
//! Membership changes go one replica at a time through a learner: `AddLearner`, then
//! `PromoteLearner`, then `RemovePeer` of the replaced voter, each on a later pass once the
//! previous one shows in the snapshot.
//!
//! # Example
//!
//! ```
//! use tessera_pd::scheduler::{schedule, ClusterSnapshot, NodeView, OperatorKind, RegionView, SchedulerConfig};
//! use tessera_wire::{NodeId, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId};
//!
//! let node = |id: u64, up: bool| NodeView {
//!     id: NodeId(id),
//!     up,
//!     down_for_ms: if up { 0 } else { 2 * 60 * 60 * 1000 },
//!     draining: false,
//!     region_count: 1,
//!     leader_count: 0,
//!     used_bytes: 0,
//!     capacity_bytes: 0,
//!     host_cpu_busy_pct: None,
//! };
//! let peers: Vec<Peer> = (1..=3).map(|i| Peer { id: PeerId(i), node_id: NodeId(i) }).collect();
//! let region = RegionView {
//!     descriptor: RegionDescriptor {
//!         id: RegionId(1),
//!         start_key: vec![],
//!         end_key: vec![],
//!         epoch: RegionEpoch { conf_ver: 1, version: 1 },
//!         peers: peers.clone(),
//!     },
//!     learners: vec![],
//!     leader: Some(peers[0]),
//!     approximate_size: 1 << 20,
//!     approximate_keys: 1_000,
//!     write_qps: 0,
//!     read_qps: 0,
//!     since_split_ms: 0,
//! };
//! let snapshot = ClusterSnapshot {
//!     nodes: vec![node(1, true), node(2, true), node(3, false), node(4, true)],
//!     regions: vec![region],
//!     in_flight: vec![],
//! };
//! let ops = schedule(&snapshot, &SchedulerConfig::default());
//! // Node 3 has been down for two hours: its voter is replaced by a learner on node 4.
//! assert_eq!(ops.len(), 1);
//! assert_eq!(ops[0].kind, OperatorKind::AddLearner { node: NodeId(4) });
//! ```

mod balance;
mod config;
mod merge;
mod operator;
mod plan;
mod repair;
mod snapshot;
mod split;

#[cfg(test)]
mod convergence_tests;
#[cfg(test)]
mod fixtures;

pub use config::{SchedulerConfig, SchedulerConfigError, DEFAULT_SPLIT_MAX_HOST_BUSY_PCT};
pub use operator::{Operator, OperatorKind, Reason};
pub use snapshot::{BadNode, ClusterSnapshot, NodeView, RegionView};

use plan::Plan;

/// The operators to start now, given the cluster `snapshot`, in priority order.
///
/// Pure and deterministic. `config` should have passed [`SchedulerConfig::validate`]; an
/// invalid one gives well-defined but unhelpful results (a tolerance of 0 oscillates).
#[must_use = "the planned operators must be handed to the operator controller"]
pub fn schedule(snapshot: &ClusterSnapshot, config: &SchedulerConfig) -> Vec<Operator> {
    let mut plan = Plan::new(snapshot, config);
    repair::plan(&mut plan);
    split::plan(&mut plan);
    merge::plan(&mut plan);
    balance::plan_regions(&mut plan);
    balance::plan_leaders(&mut plan);
    plan.into_operators()
}
