//! The working state of one scheduling pass: what is already planned, and what it costs.

use std::collections::{BTreeMap, BTreeSet};

use tessera_wire::{NodeId, Peer, RegionId};

use super::{BadNode, ClusterSnapshot, NodeView, Operator, OperatorKind, Reason, RegionView, SchedulerConfig};

/// One pass over a snapshot. Policies read the snapshot through it and add operators with
/// [`Plan::push`], which enforces the two limits: one operator per region, and
/// `max_ops_per_node` operators touching a node.
///
/// Region and leader counts start from the nodes' heartbeats and include the expected
/// effect of every operator in flight or planned (a learner added counts on its node at
/// once; a replica moved by balancing leaves its source at once), so that one pass does
/// not send every repair to the same emptiest node.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    config: &'a SchedulerConfig,
    nodes: BTreeMap<NodeId, &'a NodeView>,
    /// The snapshot's regions sorted by id.
    regions: Vec<&'a RegionView>,
    leaders: BTreeMap<RegionId, Peer>,
    region_load: BTreeMap<NodeId, i64>,
    leader_load: BTreeMap<NodeId, i64>,
    ops_per_node: BTreeMap<NodeId, usize>,
    busy: BTreeSet<RegionId>,
    planned: Vec<Operator>,
}

impl<'a> Plan<'a> {
    /// Starts a pass, charging the operators already in flight.
    pub(super) fn new(snapshot: &'a ClusterSnapshot, config: &'a SchedulerConfig) -> Plan<'a> {
        let mut regions: Vec<&RegionView> = snapshot.regions.iter().collect();
        regions.sort_by_key(|r| r.descriptor.id);
        let mut plan = Plan {
            config,
            nodes: snapshot.nodes.iter().map(|n| (n.id, n)).collect(),
            leaders: regions.iter().filter_map(|r| Some((r.descriptor.id, r.leader?))).collect(),
            regions,
            region_load: snapshot.nodes.iter().map(|n| (n.id, saturating_i64(n.region_count))).collect(),
            leader_load: snapshot.nodes.iter().map(|n| (n.id, saturating_i64(n.leader_count))).collect(),
            ops_per_node: BTreeMap::new(),
            busy: BTreeSet::new(),
            planned: Vec::new(),
        };
        for op in &snapshot.in_flight {
            plan.charge(op);
        }
        plan
    }

    /// The policy knobs.
    pub(super) fn config(&self) -> &'a SchedulerConfig {
        self.config
    }

    /// The snapshot's regions, sorted by id.
    pub(super) fn regions(&self) -> Vec<&'a RegionView> {
        self.regions.clone()
    }

    /// A node of the snapshot.
    pub(super) fn node(&self, id: NodeId) -> Option<&'a NodeView> {
        self.nodes.get(&id).copied()
    }

    /// Up, not draining nodes (full ones included), sorted by id.
    pub(super) fn active_nodes(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|n| n.up && !n.draining).map(|n| n.id).collect()
    }

    /// The node is known and up. An unknown node counts as down, but not for long enough to
    /// replace its replicas: the scheduler never acts on a node it knows nothing about.
    pub(super) fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|n| n.up)
    }

    /// The node may receive replicas and leaders.
    pub(super) fn is_schedulable(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(NodeView::is_schedulable)
    }

    /// Why replicas on the node must be replaced, if they must.
    pub(super) fn bad(&self, id: NodeId) -> Option<BadNode> {
        self.node(id).and_then(|n| n.replace_reason(self.config.max_down_time_ms))
    }

    /// Replicas on the node, with the effect of planned operators.
    pub(super) fn region_load(&self, id: NodeId) -> i64 {
        self.region_load.get(&id).copied().unwrap_or(0)
    }

    /// Leaders on the node, with the effect of planned operators.
    pub(super) fn leader_load(&self, id: NodeId) -> i64 {
        self.leader_load.get(&id).copied().unwrap_or(0)
    }

    /// No operator is in flight or planned for the region.
    pub(super) fn is_free(&self, id: RegionId) -> bool {
        !self.busy.contains(&id)
    }

    /// The region's leader, if it can run an operator: it is known, a voter of the current
    /// descriptor and on an up node. Every operator is proposed through the leader, so a
    /// region without one gets nothing.
    pub(super) fn usable_leader(&self, region: &RegionView) -> Option<Peer> {
        let leader = region.leader?;
        (region.descriptor.peer(leader.id) == Some(leader) && self.is_up(leader.node_id)).then_some(leader)
    }

    /// The region is in its steady shape: exactly `replicas` voters, all on up, non-draining
    /// nodes, and no learners. Only such regions are merged or moved by balancing.
    pub(super) fn is_settled(&self, region: &RegionView) -> bool {
        region.learners.is_empty()
            && region.descriptor.peers.len() == self.config.replicas
            && region.descriptor.peers.iter().all(|p| self.node(p.node_id).is_some_and(|n| n.up && !n.draining))
    }

    /// The operator's regions are free and every node it touches is below the limit.
    pub(super) fn fits(&self, op: &Operator) -> bool {
        op.regions().iter().all(|id| self.is_free(*id))
            && op
                .touched_nodes()
                .iter()
                .all(|n| self.ops_per_node.get(n).copied().unwrap_or(0) < self.config.max_ops_per_node)
    }

    /// `op` if it [fits](Plan::fits).
    pub(super) fn fitting(&self, op: Operator) -> Option<Operator> {
        self.fits(&op).then_some(op)
    }

    /// Adds `op` to the plan if it fits. Returns whether it was added.
    pub(super) fn push(&mut self, op: Operator) -> bool {
        if !self.fits(&op) {
            return false;
        }
        self.charge(&op);
        self.planned.push(op);
        true
    }

    /// The planned operators, in the order they were planned.
    pub(super) fn into_operators(self) -> Vec<Operator> {
        self.planned
    }

    /// Occupies the operator's regions and nodes, and applies its expected effect on the
    /// counts.
    fn charge(&mut self, op: &Operator) {
        self.busy.extend(op.regions());
        for node in op.touched_nodes() {
            *self.ops_per_node.entry(node).or_default() += 1;
        }
        match op.kind {
            OperatorKind::AddLearner { node } => {
                *self.region_load.entry(node).or_default() += 1;
                if let Reason::BalanceRegion { from, .. } = op.reason {
                    *self.region_load.entry(from).or_default() -= 1;
                }
            }
            OperatorKind::TransferLeader { to } => {
                if let Some(from) = self.leaders.get(&op.region_id).map(|l| l.node_id) {
                    if from != to.node_id {
                        *self.leader_load.entry(from).or_default() -= 1;
                        *self.leader_load.entry(to.node_id).or_default() += 1;
                    }
                }
            }
            OperatorKind::PromoteLearner { .. }
            | OperatorKind::RemovePeer { .. }
            | OperatorKind::Split { .. }
            | OperatorKind::Merge { .. } => {}
        }
    }
}

/// An operator on `region`, planned against its current epoch.
pub(super) fn operator(region: &RegionView, kind: OperatorKind, reason: Reason) -> Operator {
    Operator { region_id: region.descriptor.id, epoch: region.descriptor.epoch, kind, reason }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
