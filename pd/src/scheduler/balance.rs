//! Policies 4 and 5: balance replicas, then leaders, over the up, non-draining nodes.
//!
//! Both repeat one step while some pair of nodes differs by more than the tolerance: take
//! the most loaded node as source and the least loaded as target (ties: lowest id), falling
//! back to less extreme pairs that still differ by more than the tolerance when no region
//! can move between the extremes (all busy, or the per-node limit reached). Every step
//! changes the counts the next step sees, so one pass plans several moves but never
//! overshoots.
//!
//! A replica move is only its first step, `AddLearner` on the target: repair later promotes
//! the learner and then, with `replicas + 1` voters, removes the voter on the most loaded
//! node, normally the source.

use std::cmp::Reverse;

use tessera_wire::NodeId;

use super::plan::{operator, Plan};
use super::{Operator, OperatorKind, Reason, RegionView};

/// Plans replica moves from the nodes with the most regions to those with the fewest.
pub(super) fn plan_regions(plan: &mut Plan<'_>) {
    while let Some(op) = next_region_move(plan) {
        if !plan.push(op) {
            break;
        }
    }
}

/// Plans leader transfers from the nodes with the most leaders to those with the fewest.
pub(super) fn plan_leaders(plan: &mut Plan<'_>) {
    while let Some(op) = next_leader_move(plan) {
        if !plan.push(op) {
            break;
        }
    }
}

fn next_region_move(plan: &Plan<'_>) -> Option<Operator> {
    let tolerance = i64::try_from(plan.config().region_tolerance).unwrap_or(i64::MAX);
    let load = |n: NodeId| plan.region_load(n);
    for (from, to) in pairs(plan, load, tolerance, |n| plan.is_schedulable(n)) {
        let mut candidates: Vec<&RegionView> = plan
            .regions()
            .into_iter()
            .filter(|r| {
                r.descriptor.peer_on(from).is_some()
                    && !r.is_on(to)
                    && plan.is_free(r.descriptor.id)
                    && plan.usable_leader(r).is_some()
                    && plan.is_settled(r)
            })
            .collect();
        // Prefer regions not led from the source: their voter there can be removed without
        // a leader transfer.
        candidates.sort_by_key(|r| (r.leader.is_some_and(|l| l.node_id == from), r.descriptor.id));
        let reason = Reason::BalanceRegion { from, to };
        let found = candidates
            .into_iter()
            .map(|r| operator(r, OperatorKind::AddLearner { node: to }, reason))
            .find(|op| plan.fits(op));
        if found.is_some() {
            return found;
        }
    }
    None
}

fn next_leader_move(plan: &Plan<'_>) -> Option<Operator> {
    let tolerance = i64::try_from(plan.config().leader_tolerance).unwrap_or(i64::MAX);
    let load = |n: NodeId| plan.leader_load(n);
    for (from, to) in pairs(plan, load, tolerance, |n| plan.is_schedulable(n)) {
        let reason = Reason::BalanceLeader { from, to };
        let found = plan
            .regions()
            .into_iter()
            .filter(|r| plan.is_free(r.descriptor.id) && plan.usable_leader(r).is_some_and(|l| l.node_id == from))
            .filter_map(|r| Some(operator(r, OperatorKind::TransferLeader { to: r.descriptor.peer_on(to)? }, reason)))
            .find(|op| plan.fits(op));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// `(source, target)` pairs of active nodes whose loads differ by more than `tolerance`,
/// most unbalanced sources first, and for each source the least loaded targets first.
fn pairs(
    plan: &Plan<'_>,
    load: impl Fn(NodeId) -> i64,
    tolerance: i64,
    can_receive: impl Fn(NodeId) -> bool,
) -> Vec<(NodeId, NodeId)> {
    let mut sources = plan.active_nodes();
    sources.sort_by_key(|n| (Reverse(load(*n)), *n));
    let mut targets: Vec<NodeId> = sources.iter().copied().filter(|n| can_receive(*n)).collect();
    targets.sort_by_key(|n| (load(*n), *n));
    let mut pairs = Vec::new();
    for &from in &sources {
        for &to in &targets {
            if load(from).saturating_sub(load(to)) <= tolerance {
                break;
            }
            pairs.push((from, to));
        }
    }
    pairs
}
