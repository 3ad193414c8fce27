//! The comparison matrix: which rows `tessera-bench compare` runs, and the per-run record
//! each run leaves.

use crate::fsync_probe::FsyncProbe;
use crate::runner::RunOutput;
use crate::target::System;
use crate::workload::Workload;
use crate::zipf::Distribution;

/// How a row is summarized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowKind {
    /// Latency of put, get and scan-10 with one operation in flight.
    Sequential,
    /// Throughput, latency and CPU under load.
    Throughput,
    /// Rows scanned per second (workload E).
    Scan,
}

/// One row of the matrix.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowSpec {
    /// Stable identifier (used in results.json).
    pub id: String,
    /// What the row is, for tables.
    pub title: String,
    /// Summary kind.
    pub kind: RowKind,
    /// Operation mix.
    pub workload: Workload,
    /// Operations in flight.
    pub concurrency: usize,
    /// Value size in bytes (`None`: the run's default).
    pub value_size: Option<usize>,
    /// Stale (Tessera) / serializable (etcd) reads.
    pub stale_reads: bool,
    /// Tessera only, on a fresh cluster bootstrapped with this many regions.
    pub regions: Option<u32>,
}

impl RowSpec {
    fn new(id: &str, title: &str, kind: RowKind, workload: Workload, concurrency: usize) -> RowSpec {
        RowSpec {
            id: id.into(),
            title: title.into(),
            kind,
            workload,
            concurrency,
            value_size: None,
            stale_reads: false,
            regions: None,
        }
    }

    /// The systems the row runs on.
    pub fn systems(&self) -> &'static [System] {
        if self.regions.is_some() {
            &[System::Tessera]
        } else {
            &[System::Tessera, System::Etcd]
        }
    }
}

fn puts(c: usize) -> RowSpec {
    RowSpec::new(&format!("put-c{c}"), &format!("puts, {c} in flight"), RowKind::Throughput, Workload::W, c)
}

fn gets(c: usize) -> RowSpec {
    RowSpec::new(
        &format!("get-c{c}"),
        &format!("linearizable gets, {c} in flight"),
        RowKind::Throughput,
        Workload::C,
        c,
    )
}

fn sequential() -> RowSpec {
    RowSpec::new("seq", "sequential, 1 in flight", RowKind::Sequential, Workload::S, 1)
}

fn stale_gets(c: usize) -> RowSpec {
    RowSpec {
        stale_reads: true,
        ..RowSpec::new(
            &format!("stale-get-c{c}"),
            &format!("stale gets (etcd: serializable), {c} in flight"),
            RowKind::Throughput,
            Workload::C,
            c,
        )
    }
}

fn mixed(w: Workload, c: usize) -> RowSpec {
    let name = match w {
        Workload::A => "workload A (50% reads, 50% updates)",
        Workload::B => "workload B (95% reads, 5% updates)",
        _ => "workload",
    };
    RowSpec::new(
        &format!("{}-c{c}", w.to_string().to_lowercase()),
        &format!("{name}, {c} in flight"),
        RowKind::Throughput,
        w,
        c,
    )
}

/// The pair of rows comparing Tessera with 8 and with 1 initial region(s).
pub fn region_rows(c: usize) -> [RowSpec; 2] {
    [8, 1].map(|r| RowSpec {
        regions: Some(r),
        ..RowSpec::new(
            &format!("put-c{c}-r{r}"),
            &format!("puts, {c} in flight, {r} region{}", if r == 1 { "" } else { "s" }),
            RowKind::Throughput,
            Workload::W,
            c,
        )
    })
}

/// The `--quick` matrix (regions rows excluded: see [`region_rows`]).
pub fn quick_rows() -> Vec<RowSpec> {
    vec![sequential(), puts(64), puts(256), gets(64), stale_gets(64), mixed(Workload::A, 64)]
}

/// The `--full` matrix (regions rows excluded), with the concurrency sweep for puts and
/// gets.
pub fn full_rows() -> Vec<RowSpec> {
    let mut rows = vec![sequential()];
    rows.extend([1, 16, 64, 256].map(puts));
    rows.extend([1, 16, 64, 256].map(gets));
    rows.push(stale_gets(64));
    rows.push(mixed(Workload::A, 64));
    rows.push(mixed(Workload::B, 64));
    rows.push(RowSpec::new(
        "e-c64",
        "workload E (95% scans of 1-100, 5% inserts), 64 in flight",
        RowKind::Scan,
        Workload::E,
        64,
    ));
    // Last: its updates rewrite the loaded records at 1 KiB, and every row after it would
    // read those instead of the value size it names (workload E had scanned 1 KiB rows).
    rows.push(RowSpec {
        value_size: Some(1024),
        ..RowSpec::new("put1k-c256", "1 KiB puts, 256 in flight", RowKind::Throughput, Workload::W, 256)
    });
    rows
}

/// The parameters of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunParams {
    /// Operation mix.
    pub workload: Workload,
    /// Operations in flight.
    pub concurrency: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Records loaded.
    pub records: u64,
    /// Key choice.
    pub distribution: Distribution,
    /// Stale / serializable reads.
    pub stale_reads: bool,
    /// Warm-up, seconds.
    pub warmup_secs: f64,
    /// Measured interval, seconds.
    pub duration_secs: f64,
    /// Tessera's initial regions.
    pub regions: Option<u32>,
    /// etcd client connections.
    pub etcd_connections: Option<usize>,
}

/// Log syncs of one server over a whole run (warm-up included).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeSyncs {
    /// Server name (`node-1`, `e1`, ...).
    pub node: String,
    /// Log fsyncs (Tessera: Raft log syncs; etcd: WAL fsyncs).
    pub fsyncs: u64,
    /// Tessera: Raft log entries made durable by them.
    pub log_entries: Option<u64>,
    /// Tessera: bytes of log records written.
    pub log_bytes: Option<u64>,
    /// etcd: backend (bbolt) commits.
    pub backend_commits: Option<u64>,
    /// Successful client writes of the run per fsync of this server.
    pub writes_per_fsync: Option<f64>,
}

/// Everything about one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRecord {
    /// System under test.
    pub system: System,
    /// Row id ([`RowSpec::id`]; `load` for the initial load).
    pub row: String,
    /// Repeat number, from 0.
    pub repeat: usize,
    /// 0, or 1 for the rerun of a contended attempt.
    pub attempt: usize,
    /// The fsync probe before it was slow: the machine was busy with something else.
    pub contended: bool,
    /// Parameters.
    pub params: RunParams,
    /// Probe before the run.
    pub fsync_probe: Option<FsyncProbe>,
    /// Measurements.
    pub output: RunOutput,
    /// Per-server log syncs.
    pub syncs: Vec<NodeSyncs>,
    /// Tessera: every node had reported its counters after the run ended (they travel in
    /// PD heartbeats); `false` means the sync counts may miss the run's last syncs.
    pub syncs_complete: bool,
    /// Tessera: the regions PD knew right after the run. Load splits (PD's
    /// `--region-split-qps`) can raise it during a long run.
    pub regions_after: Option<usize>,
}

impl RunRecord {
    /// The median over servers of writes per fsync.
    pub fn writes_per_fsync(&self) -> Option<f64> {
        let v: Vec<f64> = self.syncs.iter().filter_map(|s| s.writes_per_fsync).collect();
        crate::stats::Spread::of(&v).map(|s| s.median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn row_ids_are_unique_and_the_quick_matrix_is_a_subset_of_the_full_one() {
        let full = full_rows();
        let ids: HashSet<&str> = full.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), full.len());
        for r in quick_rows() {
            assert!(ids.contains(r.id.as_str()), "{} not in --full", r.id);
        }
        assert!(full.iter().any(|r| r.kind == RowKind::Scan) && full.iter().any(|r| r.value_size == Some(1024)));
    }

    #[test]
    fn no_row_runs_over_records_another_row_rewrote_at_another_value_size() {
        // Rows share the records loaded at the default value size; a row writing another
        // size rewrites them, so only rows of that size (or none) may follow it.
        for rows in [quick_rows(), full_rows()] {
            if let Some(first) = rows.iter().position(|r| r.value_size.is_some()) {
                let size = rows[first].value_size;
                assert!(
                    rows[first..].iter().all(|r| r.value_size == size),
                    "a row follows one that rewrote the records at {size:?} bytes: {:?}",
                    rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn region_rows_run_on_tessera_only() {
        let [eight, one] = region_rows(256);
        assert_eq!((eight.regions, one.regions), (Some(8), Some(1)));
        assert_eq!(eight.systems(), &[System::Tessera]);
        assert_eq!(puts(64).systems().len(), 2);
        assert_ne!(eight.id, one.id);
    }
}
