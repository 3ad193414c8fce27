//! Policy 3, merge: two small, adjacent, settled regions with the same voters become one.
//!
//! Regions are paired in key order: `left` and `right` with `left.end_key ==
//! right.start_key`. Both must be below `merge_bytes` *and* `merge_keys`, split at least
//! `split_merge_interval_ms` ago, not hot, free, led, and settled (exactly `replicas` voters
//! on up, non-draining nodes, no learners). `right` merges into `left`. A region merges
//! with at most one neighbour per pass.
//!
//! The voters of both regions must be on the same nodes, because a merge runs in place on
//! each node hosting both. Regions whose voter sets differ are not merged here; aligning
//! them first (moving one region's replicas onto the other's nodes) is left to the operator
//! controller, after which a later pass merges them.

use std::collections::BTreeSet;

use tessera_wire::NodeId;

use super::plan::Plan;
use super::{Operator, OperatorKind, Reason, RegionView};

/// Plans merges of adjacent pairs, in key order.
pub(super) fn plan(plan: &mut Plan<'_>) {
    let mut by_key = plan.regions();
    by_key.sort_by(|a, b| a.descriptor.start_key.cmp(&b.descriptor.start_key));
    for pair in by_key.windows(2) {
        let (left, right) = (pair[0], pair[1]);
        let adjacent = !left.descriptor.end_key.is_empty() && left.descriptor.end_key == right.descriptor.start_key;
        if !adjacent || !mergeable(plan, left) || !mergeable(plan, right) || voter_nodes(left) != voter_nodes(right) {
            continue;
        }
        plan.push(Operator {
            region_id: right.descriptor.id,
            epoch: right.descriptor.epoch,
            kind: OperatorKind::Merge { source: right.descriptor.id, target: left.descriptor.id },
            reason: Reason::MergeSmall,
        });
    }
}

fn mergeable(plan: &Plan<'_>, region: &RegionView) -> bool {
    let config = plan.config();
    region.approximate_size < config.merge_bytes
        && region.approximate_keys < config.merge_keys
        && region.since_split_ms >= config.split_merge_interval_ms
        && region.read_qps.saturating_add(region.write_qps) <= config.hot_qps
        && plan.is_free(region.descriptor.id)
        && plan.usable_leader(region).is_some()
        && plan.is_settled(region)
}

fn voter_nodes(region: &RegionView) -> BTreeSet<NodeId> {
    region.descriptor.peers.iter().map(|p| p.node_id).collect()
}
