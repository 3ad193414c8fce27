//! Policy 2, split: a region too large, with too many keys, or too busy is split in two.
//!
//! The split key is left to the leader, which knows the data; PD only knows totals. A
//! region too large or with too many keys is split at its midpoint by size (`Split { key:
//! None }`); a hot one where its recent requests halve (`SplitByLoad`: the leader samples
//! the keys its requests touch). A region with fewer than two keys cannot be split
//! and is left alone however large or busy it is.

use super::plan::{operator, Plan};
use super::{OperatorKind, Reason};

/// Plans splits for every free region with a usable leader, by region id.
pub(super) fn plan(plan: &mut Plan<'_>) {
    let config = plan.config();
    for region in plan.regions() {
        if !plan.is_free(region.descriptor.id) || plan.usable_leader(region).is_none() || region.approximate_keys < 2 {
            continue;
        }
        let reason = if region.approximate_size > config.split_bytes {
            Reason::SplitSize
        } else if region.approximate_keys > config.split_keys {
            Reason::SplitKeys
        } else if region.read_qps.saturating_add(region.write_qps) > config.hot_qps {
            Reason::SplitHot
        } else {
            continue;
        };
        plan.push(operator(region, OperatorKind::Split { key: None }, reason));
    }
}
