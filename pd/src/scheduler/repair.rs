//! Policy 1, replica repair: every region gets back to `replicas` voters on healthy nodes.
//!
//! A region takes one step per pass, in this order of preference:
//!
//! 1. A voter on a *bad* node (down longer than `max_down_time_ms`, or draining; down nodes
//!    first, then by node id) is replaced: a learner on a schedulable node is promoted;
//!    otherwise, with more than `replicas` voters, the bad voter is removed; otherwise a
//!    learner is added on the best target.
//! 2. Fewer than `replicas` voters: promote a healthy learner, or add one.
//! 3. More than `replicas` voters, all on up nodes: remove the voter on the node with the most
//!    regions (ties: lowest node id).
//! 4. A learner on a bad node is removed.
//! 5. A learner on a schedulable node is promoted (the second step of a move).
//!
//! Removing a voter never leaves fewer voters on up nodes than a majority of the remaining
//! voters, and never removes the leader: leadership is transferred first (to the remaining
//! voter on a schedulable node with the fewest leaders), and the removal follows on a later
//! pass.
//!
//! The best target for a learner is a schedulable node not hosting the region, with the
//! fewest regions (ties: lowest id) and room under the per-node limit.

use std::cmp::Reverse;

use tessera_wire::Peer;

use super::plan::{operator, Plan};
use super::{BadNode, Operator, OperatorKind, Reason, RegionView};

/// Plans repairs for every free region with a usable leader, by region id.
pub(super) fn plan(plan: &mut Plan<'_>) {
    for region in plan.regions() {
        if !plan.is_free(region.descriptor.id) {
            continue;
        }
        let Some(leader) = plan.usable_leader(region) else { continue };
        if let Some(op) = repair_region(plan, region, leader) {
            plan.push(op);
        }
    }
}

fn repair_region(plan: &Plan<'_>, region: &RegionView, leader: Peer) -> Option<Operator> {
    let replicas = plan.config().replicas;
    let voters = sorted_by_node(&region.descriptor.peers);
    let learners = sorted_by_node(&region.learners);
    let healthy_learner = learners.iter().copied().find(|l| plan.is_schedulable(l.node_id));
    let promote = |peer: Peer, reason| plan.fitting(operator(region, OperatorKind::PromoteLearner { peer }, reason));

    if let Some((voter, why)) = bad_voter(plan, &voters) {
        let reason = match why {
            BadNode::Down => Reason::DownVoter { node: voter.node_id },
            BadNode::Draining => Reason::DrainingVoter { node: voter.node_id },
        };
        if let Some(learner) = healthy_learner {
            return promote(learner, reason);
        }
        if voters.len() > replicas {
            return remove_voter(plan, region, &voters, leader, voter, reason);
        }
        return add_learner(plan, region, reason);
    }
    if voters.len() < replicas {
        if let Some(learner) = healthy_learner {
            return promote(learner, Reason::MissingReplica);
        }
        return add_learner(plan, region, Reason::MissingReplica);
    }
    if voters.len() > replicas {
        // Wait for every voter to be up: removing a healthy voter while another is briefly
        // away would cut the region's margin twice.
        if !voters.iter().all(|v| plan.is_up(v.node_id)) {
            return None;
        }
        let victim = *voters.iter().max_by_key(|v| (plan.region_load(v.node_id), Reverse(v.node_id)))?;
        let reason = Reason::ExcessReplica { node: victim.node_id };
        return remove_voter(plan, region, &voters, leader, victim, reason);
    }
    if let Some(learner) = learners.iter().copied().find(|l| plan.bad(l.node_id).is_some()) {
        let reason = Reason::BadLearner { node: learner.node_id };
        return plan.fitting(operator(region, OperatorKind::RemovePeer { peer: learner }, reason));
    }
    healthy_learner.and_then(|learner| promote(learner, Reason::CompleteMove))
}

/// The voter to replace first: on a node down too long, else on a draining node; lowest
/// node id first.
fn bad_voter(plan: &Plan<'_>, voters: &[Peer]) -> Option<(Peer, BadNode)> {
    let of_kind = |kind| voters.iter().copied().find(|v| plan.bad(v.node_id) == Some(kind)).map(|v| (v, kind));
    of_kind(BadNode::Down).or_else(|| of_kind(BadNode::Draining))
}

/// Removes `victim`, or first moves leadership off it. `None` when the removal would leave
/// fewer up voters than a majority, or nothing fits.
fn remove_voter(
    plan: &Plan<'_>,
    region: &RegionView,
    voters: &[Peer],
    leader: Peer,
    victim: Peer,
    reason: Reason,
) -> Option<Operator> {
    let remaining: Vec<Peer> = voters.iter().copied().filter(|v| v.id != victim.id).collect();
    let up = remaining.iter().filter(|v| plan.is_up(v.node_id)).count();
    if up < remaining.len() / 2 + 1 {
        return None;
    }
    if victim == leader {
        let to = remaining
            .iter()
            .copied()
            .filter(|v| plan.is_schedulable(v.node_id))
            .min_by_key(|v| (plan.leader_load(v.node_id), v.node_id))?;
        return plan.fitting(operator(region, OperatorKind::TransferLeader { to }, reason));
    }
    plan.fitting(operator(region, OperatorKind::RemovePeer { peer: victim }, reason))
}

/// A learner on the best target that fits under the per-node limit.
fn add_learner(plan: &Plan<'_>, region: &RegionView, reason: Reason) -> Option<Operator> {
    let mut targets: Vec<_> =
        plan.active_nodes().into_iter().filter(|n| plan.is_schedulable(*n) && !region.is_on(*n)).collect();
    targets.sort_by_key(|n| (plan.region_load(*n), *n));
    targets.into_iter().map(|node| operator(region, OperatorKind::AddLearner { node }, reason)).find(|op| plan.fits(op))
}

fn sorted_by_node(peers: &[Peer]) -> Vec<Peer> {
    let mut peers = peers.to_vec();
    peers.sort_by_key(|p| (p.node_id, p.id));
    peers
}
