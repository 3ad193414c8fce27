//! Per-stage timings of the write and read paths, for profiling and benchmarks.
//!
//! Each stage accumulates a count and a total duration (lock-free). The node logs the
//! averages of every stage that saw work at most every [`REPORT_EVERY`] (target
//! `tessera_node::metrics`, level info), so a benchmark run shows where a request's time
//! goes: `kv_write` (a write request, received to answered, on the leader) contains
//! `raft_log_queue` + `raft_log_sync` of the leader, the `append_rpc` to the followers
//! (which contains their `follower_append`), and `apply`.
//!
//! The counters are process-wide: with several nodes in one process (`tessera dev`) they
//! add up every node's work.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Longest interval between two reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A count and a total duration.
#[derive(Debug, Default)]
pub struct Stage {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl Stage {
    const fn new() -> Stage {
        Stage { count: AtomicU64::new(0), nanos: AtomicU64::new(0) }
    }

    /// Records one occurrence that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// (count, total nanoseconds) so far.
    pub fn read(&self) -> (u64, u64) {
        (self.count.load(Relaxed), self.nanos.load(Relaxed))
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
    /// Applying a batch of committed entries to the state machine (redb commit included).
    pub apply: Stage,
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
};

impl Stages {
    fn all(&self) -> [(&'static str, &Stage); 7] {
        [
            ("kv_write", &self.kv_write),
            ("read_index", &self.read_index),
            ("raft_log_queue", &self.raft_log_queue),
            ("raft_log_sync", &self.raft_log_sync),
            ("append_rpc", &self.append_rpc),
            ("follower_append", &self.follower_append),
            ("apply", &self.apply),
        ]
    }

    /// (name, count, total nanoseconds) of every stage.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64)> {
        self.all()
            .iter()
            .map(|(n, s)| {
                let (c, t) = s.read();
                (*n, c, t)
            })
            .collect()
    }
}

/// Formats the averages of the stages that changed between two snapshots, e.g.
/// `kv_write=1520×812µs raft_log_sync=…`; empty if nothing changed.
pub fn describe(before: &[(&'static str, u64, u64)], after: &[(&'static str, u64, u64)]) -> String {
    let mut out = Vec::new();
    for ((name, c0, t0), (_, c1, t1)) in before.iter().zip(after) {
        let n = c1 - c0;
        if n > 0 {
            out.push(format!("{name}={n}×{:.0}µs", (t1 - t0) as f64 / n as f64 / 1000.0));
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
            tracing::info!(target: "tessera_node::metrics", stages = %line, "write path stages (count × mean)");
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_reports_the_mean_of_what_changed_only() {
        let before = vec![("a", 10, 10_000), ("b", 5, 5_000)];
        let after = vec![("a", 14, 30_000), ("b", 5, 5_000)];
        assert_eq!(describe(&before, &after), "a=4×5µs");
        assert_eq!(describe(&after, &after), "");
    }
}
