//! The scheduler's policy knobs.

/// One MiB, for the size defaults.
const MIB: u64 = 1024 * 1024;

/// Default of [`SchedulerConfig::split_max_host_busy_pct`]: a host busier than this has
/// too little CPU time left to take over half of a hot region's requests.
pub const DEFAULT_SPLIT_MAX_HOST_BUSY_PCT: u8 = 80;

/// Policy knobs of [`super::schedule`].
///
/// The limits must fit together (see [`SchedulerConfig::validate`]): two regions that may
/// merge must not make a region that splits again at once, and a tolerance of 0 would move
/// a replica or a leader back and forth between two nodes whose counts differ by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Voters per region.
    pub replicas: usize,
    /// A node down for longer than this (in milliseconds) has its voters replaced. A shorter
    /// outage (a restart, a network blip) is waited out.
    pub max_down_time_ms: u64,
    /// Largest tolerated difference of region counts between two up, non-draining nodes.
    pub region_tolerance: u64,
    /// Largest tolerated difference of leader counts between two up, non-draining nodes.
    pub leader_tolerance: u64,
    /// A region larger than this (approximate bytes) is split.
    pub split_bytes: u64,
    /// A region with more keys than this (approximate) is split.
    pub split_keys: u64,
    /// Two adjacent regions both smaller than this (bytes) may merge...
    pub merge_bytes: u64,
    /// ...when both also have fewer keys than this.
    pub merge_keys: u64,
    /// A region split less than this long ago (milliseconds) does not merge, so a fresh
    /// split is not undone before its halves have grown.
    pub split_merge_interval_ms: u64,
    /// A region whose read plus write rate exceeds this (requests per second) is split.
    pub hot_qps: u64,
    /// ...but only while some node's host is busy less than this share of its CPU time
    /// (percent; see `split.rs`). 100 or more: whatever the hosts' CPU.
    pub split_max_host_busy_pct: u8,
    /// Most operators (in flight and new together) touching one node, as source or target.
    pub max_ops_per_node: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            replicas: 3,
            max_down_time_ms: 30 * 60 * 1000,
            region_tolerance: 4,
            leader_tolerance: 2,
            split_bytes: 96 * MIB,
            split_keys: 960_000,
            merge_bytes: 20 * MIB,
            merge_keys: 200_000,
            split_merge_interval_ms: 60 * 60 * 1000,
            hot_qps: 3_000,
            split_max_host_busy_pct: DEFAULT_SPLIT_MAX_HOST_BUSY_PCT,
            max_ops_per_node: 4,
        }
    }
}

/// A [`SchedulerConfig`] whose limits do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerConfigError {
    /// `replicas` is 0.
    #[error("replicas must be at least 1")]
    NoReplicas,
    /// `region_tolerance` or `leader_tolerance` is 0: balancing would oscillate.
    #[error("region and leader tolerances must be at least 1")]
    ZeroTolerance,
    /// Two mergeable regions together would exceed a split threshold.
    #[error("merge thresholds must be at most half the split thresholds")]
    MergeAboveSplit,
    /// `max_ops_per_node` is 0: nothing could ever be scheduled.
    #[error("max_ops_per_node must be at least 1")]
    NoOperators,
}

impl SchedulerConfig {
    /// Checks that the limits fit together.
    pub fn validate(&self) -> Result<(), SchedulerConfigError> {
        if self.replicas == 0 {
            return Err(SchedulerConfigError::NoReplicas);
        }
        if self.region_tolerance == 0 || self.leader_tolerance == 0 {
            return Err(SchedulerConfigError::ZeroTolerance);
        }
        if self.merge_bytes.saturating_mul(2) > self.split_bytes || self.merge_keys.saturating_mul(2) > self.split_keys
        {
            return Err(SchedulerConfigError::MergeAboveSplit);
        }
        if self.max_ops_per_node == 0 {
            return Err(SchedulerConfigError::NoOperators);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(SchedulerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn limits_that_do_not_fit_are_rejected() {
        let base = SchedulerConfig::default();
        let cases = [
            (SchedulerConfig { replicas: 0, ..base.clone() }, SchedulerConfigError::NoReplicas),
            (SchedulerConfig { leader_tolerance: 0, ..base.clone() }, SchedulerConfigError::ZeroTolerance),
            (SchedulerConfig { region_tolerance: 0, ..base.clone() }, SchedulerConfigError::ZeroTolerance),
            (
                SchedulerConfig { merge_bytes: base.split_bytes / 2 + 1, ..base.clone() },
                SchedulerConfigError::MergeAboveSplit,
            ),
            (SchedulerConfig { merge_keys: base.split_keys, ..base.clone() }, SchedulerConfigError::MergeAboveSplit),
            (SchedulerConfig { max_ops_per_node: 0, ..base.clone() }, SchedulerConfigError::NoOperators),
        ];
        for (config, expected) in cases {
            assert_eq!(config.validate(), Err(expected));
        }
    }
}
