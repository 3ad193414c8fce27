//! When a region builds a snapshot, and with it how much Raft log it keeps.
//!
//! Building a snapshot writes nothing: it takes the region's applied state as of its last
//! commit, and openraft then purges the log up to it, less `keep_after_snapshot` entries
//! (`RegionSnapshotBuilder`). A snapshot is written to a file only when a follower needs
//! one, and that copies every row of the region. So this policy decides how far behind a
//! follower can fall and still catch up from the log instead. openraft's own policy
//! (`LogsSinceLast`) builds one every fixed number of entries, whatever the region's size:
//! a region of a million keys would then send a million rows to a follower that missed
//! 10,000 writes. Here a region builds one once the entries since its last snapshot reach
//! `snapshot_every` or half its keys, whichever is more, so its log holds at least about
//! half as many entries as it has keys. The half, not all of them: under inserts only every
//! entry adds a key, so "entries ≥ keys" would never hold again; with half, snapshots come
//! at doubling sizes.
//!
//! The node runs [`snapshot_loop`] with openraft's policy set to `Never`. The log is never
//! purged past state that is durable in redb (docs/storage.md).
//!
//! The loop also runs a purge that a leader postponed and then never ran: a leader does not
//! purge entries a replication to some follower still has in flight, and retries only as
//! replication makes progress. If it steps down meanwhile, openraft purges again only after
//! its next snapshot, which an idle region may never build, so the log it kept stays on
//! disk. [`postponed_purge`] finds such a region.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use crate::region::NodeContext;

/// How often every region is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Whether a region whose last snapshot is `since` entries behind its applied index, and
/// which holds about `keys` keys (an estimate that may be briefly negative), should build
/// a snapshot, with the configured `snapshot_every`.
pub fn snapshot_due(since: u64, keys: i64, snapshot_every: u64) -> bool {
    let half_keys = u64::try_from(keys).unwrap_or(0) / 2;
    since >= snapshot_every.max(half_keys).max(1)
}

/// Where to purge a replica's log that has not been purged as far as its last snapshot
/// and `keep` (openraft's `max_in_snapshot_log_to_keep`) allow, with `snapshot` and
/// `purged` the last indexes of its snapshot and of its purge; `None` for a leader (whose
/// postponed purge runs once replication no longer needs the entries) or when nothing is
/// behind.
///
/// The answer is one past the point openraft's policy purges to (`snapshot - keep`):
/// openraft takes a purge request only beyond the purge it has scheduled, which is that
/// point for a postponed one.
pub fn postponed_purge(leader: bool, snapshot: Option<u64>, purged: Option<u64>, keep: u64) -> Option<u64> {
    let policy = snapshot?.checked_sub(keep)?;
    if leader || purged.is_some_and(|p| p >= policy) {
        return None;
    }
    Some(policy + 1)
}

/// Asks `raft` to purge its log if [`postponed_purge`] finds it behind; true if it asked.
pub async fn purge_if_postponed(raft: &crate::raft::types::Raft, region_id: u64, keep: u64) -> bool {
    let (leader, snapshot, purged) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        (m.state == openraft::ServerState::Leader, m.snapshot.map(|l| l.index), m.purged.map(|l| l.index))
    };
    let Some(upto) = postponed_purge(leader, snapshot, purged, keep) else { return false };
    tracing::info!(region_id, upto, ?purged, "purging the log up to the snapshot, a purge postponed while leading");
    if let Err(error) = raft.trigger().purge_log(upto).await {
        tracing::debug!(region_id, %error, "purge not triggered: raft stopped");
        return false;
    }
    true
}

/// Checks every hosted region each [`CHECK_EVERY`] and asks the due ones to build a
/// snapshot (openraft ignores the request while a build is running), and a region whose
/// purge was postponed while it led to purge ([`postponed_purge`]), until `shutdown`.
pub async fn snapshot_loop(
    ctx: NodeContext,
    snapshot_every: u64,
    keep_after_snapshot: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for region in ctx.regions.all() {
            let (applied, snapshot) = {
                let m = region.raft.metrics();
                let m = m.borrow_watched();
                (m.last_applied.map_or(0, |l| l.index), m.snapshot.map_or(0, |l| l.index))
            };
            let since = applied.saturating_sub(snapshot);
            let keys = region.shared.approx.keys();
            if snapshot_due(since, keys, snapshot_every) {
                tracing::debug!(region_id = region.id.0, since, keys, "snapshot due");
                if let Err(error) = region.raft.trigger().snapshot().await {
                    tracing::debug!(region_id = region.id.0, %error, "snapshot not triggered: raft stopped");
                }
            } else {
                purge_if_postponed(&region.raft, region.id.0, keep_after_snapshot).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_region_builds_a_snapshot_every_snapshot_every_entries() {
        assert!(!snapshot_due(9_999, 2_500, 10_000));
        assert!(snapshot_due(10_000, 2_500, 10_000));
        assert!(snapshot_due(10_000, 20_000, 10_000), "up to twice snapshot_every keys");
    }

    #[test]
    fn a_large_region_waits_for_half_its_keys_in_entries() {
        // A million keys: a snapshot after 500,000 entries, not after 10,000.
        assert!(!snapshot_due(10_000, 1_000_000, 10_000));
        assert!(!snapshot_due(499_999, 1_000_000, 10_000));
        assert!(snapshot_due(500_000, 1_000_000, 10_000));
    }

    #[test]
    fn under_inserts_only_snapshots_still_come_at_doubling_sizes() {
        // Every entry inserts a key. Snapshot at k0 keys; the next is due once the entries
        // since reach half the keys then held: k0 + n keys after n entries.
        let every = 100;
        let mut keys = 0i64;
        let mut last = 0u64;
        let mut taken = Vec::new();
        for entry in 1..=100_000u64 {
            keys += 1;
            if snapshot_due(entry - last, keys, every) {
                taken.push(entry);
                last = entry;
            }
        }
        // Never stalls (the last one is recent) and grows geometrically (few of them).
        assert!(*taken.last().unwrap() >= 50_000, "{taken:?}");
        assert!(taken.len() <= 12, "{taken:?}");
        assert!(taken.windows(2).all(|w| w[1] >= 2 * w[0] - 1 || w[1] - w[0] == every), "{taken:?}");
    }

    #[test]
    fn a_purge_behind_the_snapshot_is_asked_of_followers_only() {
        // Snapshot at 100, keep 5: the policy purges to 95.
        assert_eq!(postponed_purge(false, Some(100), Some(40), 5), Some(96));
        assert_eq!(postponed_purge(false, Some(100), None, 5), Some(96));
        assert_eq!(postponed_purge(true, Some(100), Some(40), 5), None, "a leader's own retry runs it");
        assert_eq!(postponed_purge(false, Some(100), Some(95), 5), None, "purged as far as the policy");
        assert_eq!(postponed_purge(false, Some(100), Some(100), 5), None, "purged past it (a snapshot installed)");
        assert_eq!(postponed_purge(false, Some(4), None, 5), None, "the snapshot is within what is kept");
        assert_eq!(postponed_purge(false, None, None, 5), None, "no snapshot");
        assert_eq!(postponed_purge(false, Some(100), Some(40), 0), Some(101), "keep 0: openraft stops at 100");
    }

    #[test]
    fn a_negative_key_estimate_or_zero_setting_never_means_always() {
        assert!(!snapshot_due(0, -5, 0), "nothing new since the last snapshot");
        assert!(snapshot_due(1, -5, 0));
        assert!(snapshot_due(100, -5, 100));
    }
}
