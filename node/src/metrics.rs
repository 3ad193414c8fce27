//! Per-stage timings of the write and read paths, for profiling and benchmarks.
//!
//! Each stage accumulates a count, a total duration and a histogram of durations
//! (lock-free). The node logs, for every stage that saw work, the count, mean, 99th
//! percentile and maximum at most every [`REPORT_EVERY`] (target `tessera_node::metrics`, level info),
//! so a benchmark run shows where a request's time goes, in the middle and in the tail:
//! `kv_write` (a write request, received to answered, on the leader) contains
//! `raft_log_queue` + `raft_log_sync` of the leader, the `append_rpc` to the followers
//! (which contains their `follower_append`), and `apply`.
//!
//! The counters are process-wide: with several nodes in one process (`tessera dev`) they
//! add up every node's work.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Longest interval between two reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Sub-buckets per power of two of the histogram: a bucket spans at most a quarter of its
/// lower bound, so a percentile read from it is within 25% of the true value.
const SUB_BITS: u32 = 2;
const SUBS: usize = 1 << SUB_BITS;

/// Histogram buckets: exact below `SUBS` µs, then `SUBS` per power of two up to 2^40 µs.
const BUCKETS: usize = SUBS + (40 - SUB_BITS as usize) * SUBS;

/// The bucket of a duration of `micros` µs.
fn bucket(micros: u64) -> usize {
    if micros < SUBS as u64 {
        return micros as usize;
    }
    let log = 63 - micros.leading_zeros(); // >= SUB_BITS
    let sub = (micros >> (log - SUB_BITS)) as usize & (SUBS - 1);
    (SUBS + (log - SUB_BITS) as usize * SUBS + sub).min(BUCKETS - 1)
}

/// The smallest duration in µs that falls in bucket `b` (its lower bound).
fn bucket_floor(b: usize) -> u64 {
    if b < SUBS {
        return b as u64;
    }
    let log = (b - SUBS) / SUBS + SUB_BITS as usize;
    let sub = ((b - SUBS) % SUBS) as u64;
    (1u64 << log) + (sub << (log - SUB_BITS as usize))
}

/// A count, a total duration and a histogram of durations.
#[derive(Debug)]
pub struct Stage {
    count: AtomicU64,
    nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Stage {
    fn default() -> Self {
        Stage::new()
    }
}

/// What a stage had recorded at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSnapshot {
    /// Occurrences.
    pub count: u64,
    /// Their total duration in nanoseconds.
    pub nanos: u64,
    /// Occurrences per histogram bucket.
    pub buckets: Vec<u64>,
}

impl StageSnapshot {
    /// What was recorded between `earlier` and this snapshot.
    pub fn since(&self, earlier: &StageSnapshot) -> StageSnapshot {
        StageSnapshot {
            count: self.count.saturating_sub(earlier.count),
            nanos: self.nanos.saturating_sub(earlier.nanos),
            buckets: self.buckets.iter().zip(&earlier.buckets).map(|(a, b)| a.saturating_sub(*b)).collect(),
        }
    }

    /// Mean duration in µs (0 with no occurrence).
    pub fn mean_micros(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.nanos as f64 / self.count as f64 / 1000.0
        }
    }

    /// The `q` quantile (0..=1) in µs, as the lower bound of the bucket holding it: at most
    /// 25% below the true value. 0 with no occurrence.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        // The rank of the quantile, 1-based: the smallest value with at least q of all at
        // or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_floor(b);
            }
        }
        bucket_floor(BUCKETS - 1)
    }
}

impl Stage {
    const fn new() -> Stage {
        Stage { count: AtomicU64::new(0), nanos: AtomicU64::new(0), buckets: [const { AtomicU64::new(0) }; BUCKETS] }
    }

    /// Records one occurrence that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(micros)].fetch_add(1, Relaxed);
    }

    /// Everything recorded so far.
    pub fn snapshot(&self) -> StageSnapshot {
        StageSnapshot {
            count: self.count.load(Relaxed),
            nanos: self.nanos.load(Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
        }
    }
}

/// Every stage.
#[derive(Debug)]
pub struct Stages {
    /// A write request on the leader, from its arrival to its answer.
    pub kv_write: Stage,
    /// A linearizable read's read-index round.
    pub read_index: Stage,
    /// A Raft log job waiting for the log writer (group-commit wait).
    pub raft_log_queue: Stage,
    /// One group commit of the Raft log: `pwrite` and `fdatasync`.
    pub raft_log_sync: Stage,
    /// An `AppendEntries` with entries, sent by a leader until its answer.
    pub append_rpc: Stage,
    /// An `AppendEntries` with entries handled by a follower (its log append included).
    pub follower_append: Stage,
    /// A job of the redb writer (an apply that could not be staged, a split, a snapshot
    /// install, ...) waiting from its submission until its transaction begins.
    pub redb_queue: Stage,
    /// Applying a batch of committed entries to the state machine (redb commit included).
    pub apply: Stage,
    /// Writing the data overlay into redb's `data` table inside a commit, under the
    /// engine's commit lock (`storage/overlay.rs`).
    pub overlay_flush: Stage,
    /// Writing the overlay's frozen rows into the `data` table outside the commit lock
    /// (`storage/engine.rs`, `write_out`), its commit not included.
    pub overlay_write_out: Stage,
    /// A durable redb commit (`Durability::Immediate`: the pages dirtied since the last one
    /// written out, and synced), the overlay's write-out before it not included.
    pub redb_durable_commit: Stage,
}

/// The process's stages.
pub static STAGES: Stages = Stages {
    kv_write: Stage::new(),
    read_index: Stage::new(),
    raft_log_queue: Stage::new(),
    raft_log_sync: Stage::new(),
    append_rpc: Stage::new(),
    follower_append: Stage::new(),
    apply: Stage::new(),
    redb_queue: Stage::new(),
    overlay_flush: Stage::new(),
    overlay_write_out: Stage::new(),
    redb_durable_commit: Stage::new(),
};

impl Stages {
    fn all(&self) -> [(&'static str, &Stage); 11] {
        [
            ("kv_write", &self.kv_write),
            ("read_index", &self.read_index),
            ("raft_log_queue", &self.raft_log_queue),
            ("raft_log_sync", &self.raft_log_sync),
            ("append_rpc", &self.append_rpc),
            ("follower_append", &self.follower_append),
            ("apply", &self.apply),
            ("redb_queue", &self.redb_queue),
            ("overlay_flush", &self.overlay_flush),
            ("overlay_write_out", &self.overlay_write_out),
            ("redb_durable_commit", &self.redb_durable_commit),
        ]
    }

    /// (name, what it recorded) of every stage.
    pub fn snapshot(&self) -> Vec<(&'static str, StageSnapshot)> {
        self.all().iter().map(|(n, s)| (*n, s.snapshot())).collect()
    }
}

/// Formats the count, mean, 99th percentile and maximum (the floor of its bucket) of the
/// stages that changed between two snapshots, e.g.
/// `kv_write=1520×812µs/p99=2048µs/max=6144µs raft_log_sync=…`; empty if nothing changed.
pub fn describe(before: &[(&'static str, StageSnapshot)], after: &[(&'static str, StageSnapshot)]) -> String {
    let mut out = Vec::new();
    for ((name, b), (_, a)) in before.iter().zip(after) {
        let d = a.since(b);
        if d.count > 0 {
            out.push(format!(
                "{name}={}×{:.0}µs/p99={}µs/max={}µs",
                d.count,
                d.mean_micros(),
                d.quantile_micros(0.99),
                d.quantile_micros(1.0)
            ));
        }
    }
    out.join(" ")
}

/// Logs the stage averages every [`REPORT_EVERY`] while there is work, until `shutdown`.
/// One node per process reports (the counters are process-wide).
pub async fn report_loop(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    static REPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if REPORTING.swap(true, Relaxed) {
        return;
    }
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            REPORTING.store(false, Relaxed);
        }
    }
    let _release = Release;
    let mut last = STAGES.snapshot();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPORT_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let now = STAGES.snapshot();
        let line = describe(&last, &now);
        if !line.is_empty() {
            tracing::info!(target: "tessera_node::metrics", stages = %line, "write path stages (count × mean / p99 / max)");
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_holds_the_durations_from_its_floor_to_the_next_floor() {
        for b in 0..BUCKETS - 1 {
            let (lo, hi) = (bucket_floor(b), bucket_floor(b + 1));
            assert!(lo < hi, "bucket {b}");
            assert_eq!(bucket(lo), b, "floor of bucket {b}");
            assert_eq!(bucket(hi - 1), b, "top of bucket {b}");
            // At most a quarter wide (exact below SUBS µs).
            assert!(hi - lo <= (lo / 4).max(1), "bucket {b}: {lo}..{hi}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn the_p99_finds_a_tail_the_mean_hides() {
        let stage = Stage::new();
        let before = stage.snapshot();
        for _ in 0..980 {
            stage.record(Duration::from_micros(300));
        }
        for _ in 0..20 {
            stage.record(Duration::from_millis(5));
        }
        let d = stage.snapshot().since(&before);
        assert_eq!(d.count, 1000);
        assert!((d.mean_micros() - 394.0).abs() < 1.0, "{}", d.mean_micros());
        let p50 = d.quantile_micros(0.5);
        assert!((256..=300).contains(&p50), "p50 {p50}");
        let p99 = d.quantile_micros(0.99);
        assert!((4096..=5000).contains(&p99), "p99 {p99}");
        assert_eq!(d.quantile_micros(0.98), p50, "the 980th of 1000 is still 300 µs");
        assert_eq!(d.quantile_micros(1.0), p99, "the maximum, in the same bucket");
    }

    #[test]
    fn describe_reports_what_changed_only() {
        let stage = Stage::new();
        let quiet = Stage::new();
        let before = vec![("a", stage.snapshot()), ("b", quiet.snapshot())];
        for us in [3, 5, 7, 5] {
            stage.record(Duration::from_micros(us));
        }
        let after = vec![("a", stage.snapshot()), ("b", quiet.snapshot())];
        assert_eq!(describe(&before, &after), "a=4×5µs/p99=7µs/max=7µs");
        assert_eq!(describe(&after, &after), "");
    }

    #[test]
    fn an_empty_stage_has_no_percentile() {
        let s = Stage::new().snapshot();
        assert_eq!((s.quantile_micros(0.99), s.mean_micros()), (0, 0.0));
    }
}
