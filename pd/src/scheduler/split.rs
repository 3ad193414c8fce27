//! Policy 2, split: a region too large, with too many keys, or too busy is split in two.
//!
//! The split key is left to the leader, which knows the data; PD only knows totals. A
//! region too large or with too many keys is split at its midpoint by size (`Split { key:
//! None }`); a hot one where its recent requests halve (`SplitByLoad`: the leader samples
//! the keys its requests touch). A region with fewer than two keys cannot be split
//! and is left alone however large or busy it is.
//!
//! A load split is for spreading load, which the balancer does by moving leaders between
//! nodes. So a region over `hot_qps` is split only while all three hold:
//! - its leader's node leads more than its share of the cluster's requests, by a quarter
//!   ([`OVER_FAIR_SHARE`]): a node that carries no more than its share gives the others
//!   nothing to take, however its load is cut (so a one-node cluster never splits by
//!   load);
//! - the region carries more than half of the requests its leader's node leads
//!   ([`HOT_SHARE`]): then no leader move evens the load out without halving the region
//!   first;
//! - some up node's host has CPU time to spare: it was busy less than
//!   `split_max_host_busy_pct` of the time in every heartbeat of the last 10 s (each the
//!   node's own average over 10 s, `NodeStats::host_cpu_busy_pct`), or its node cannot
//!   tell. When every host is that busy, no node can take a half's requests, and the
//!   halves only cost more rounds: on the 2-core benchmark machine, whose three nodes
//!   share one host at 87-97% busy under load, the preset's load splits (4 regions to 7)
//!   raised workload A's server CPU per operation from 85-89 to 105-110 us (issue 6's
//!   notes, twenty-first session). On a host with idle cores the halves can also use
//!   them: that counts as time to spare.
//!
//! Past that, more regions spread nothing and cost every write round (each region
//! replicates, syncs and applies its own batch: the same puts run 1.57 times faster on one
//! region than on eight, issue 6's notes), and they stay for `split_merge_interval_ms`
//! before merging back. A hot region is also left whole when its leader finds no key that
//! splits its recent requests evenly (one key carries most of them:
//! `node/src/load_sample.rs`); PD asks again after the step times out.

use std::collections::BTreeMap;

use tessera_wire::NodeId;

use super::plan::{operator, Plan};
use super::{OperatorKind, Reason, RegionView};

/// A hot region splits only while it carries more than `1 / HOT_SHARE` of the requests
/// of the regions its leader's node leads.
pub const HOT_SHARE: u64 = 2;

/// A hot region splits only while its leader's node leads more than `numerator /
/// denominator` times its fair share of the requests: the total over every region's
/// leader, divided by the up and not draining nodes.
pub const OVER_FAIR_SHARE: (u64, u64) = (5, 4);

/// Plans splits for every free region with a usable leader, by region id.
pub(super) fn plan(plan: &mut Plan<'_>) {
    let config = plan.config();
    let qps = |r: &RegionView| r.read_qps.saturating_add(r.write_qps);
    let mut led: BTreeMap<NodeId, u64> = BTreeMap::new();
    for region in plan.regions() {
        if let Some(leader) = region.leader {
            let total = led.entry(leader.node_id).or_default();
            *total = total.saturating_add(qps(region));
        }
    }
    let cluster_qps = led.values().fold(0u64, |sum, q| sum.saturating_add(*q));
    let nodes = plan.active_nodes().len() as u64;
    // node_qps / (cluster_qps / nodes) > numerator / denominator, without division.
    let (numerator, denominator) = OVER_FAIR_SHARE;
    let over_share = |node_qps: u64| {
        node_qps.saturating_mul(nodes).saturating_mul(denominator) > cluster_qps.saturating_mul(numerator)
    };
    let spare_cpu = config.split_max_host_busy_pct >= 100
        || plan
            .active_nodes()
            .into_iter()
            .filter_map(|id| plan.node(id))
            .any(|n| n.host_cpu_busy_pct.is_none_or(|busy| busy < config.split_max_host_busy_pct));
    for region in plan.regions() {
        let Some(leader) = plan.usable_leader(region) else { continue };
        if !plan.is_free(region.descriptor.id) || region.approximate_keys < 2 {
            continue;
        }
        let node_qps = led.get(&leader.node_id).copied().unwrap_or(0);
        let reason = if region.approximate_size > config.split_bytes {
            Reason::SplitSize
        } else if region.approximate_keys > config.split_keys {
            Reason::SplitKeys
        } else if qps(region) > config.hot_qps
            && qps(region).saturating_mul(HOT_SHARE) > node_qps
            && over_share(node_qps)
            && spare_cpu
        {
            Reason::SplitHot
        } else {
            continue;
        };
        plan.push(operator(region, OperatorKind::Split { key: None }, reason));
    }
}
