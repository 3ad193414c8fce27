//! `tessera-bench compare`: both clusters side by side, the matrix run interleaved
//! (Tessera, etcd, Tessera, etcd, ...), only one system loaded at a time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_benches::fsync_probe::{self, FsyncProbe};
use tessera_benches::matrix::{full_rows, quick_rows, region_rows, RowSpec, RunParams, RunRecord};
use tessera_benches::procstat::BlockDevice;
use tessera_benches::report::{comparison, markdown_table, regions_comparison};
use tessera_benches::runner::{self, InsertCounter, RunSpec};
use tessera_benches::{plot, CrashReport, Distribution, EtcdTarget, Machine, System, TableLine, TesseraTarget};

use crate::etcd_cluster::{find_etcd, EtcdCluster};
use crate::procs::find_binary;
use crate::tessera_cluster::{TesseraCluster, NODES};
use crate::{counters, crash};

/// Options of `tessera-bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Reduced matrix (sequential, puts at 64 and 256, gets and stale gets at 64, workload
    /// A, 8 vs 1 regions), 2 s warm-up + 4 s measured per run, 10,000 records: about five
    /// minutes on an idle machine. Without --quick or --full: every row of the goal table,
    /// 3 s + 10 s per run, 100,000 records.
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Every row plus the 1/16/64/256 concurrency sweep for puts and gets, 5 s + 20 s per run.
    #[arg(long)]
    pub full: bool,
    /// Output directory for results.json, results.md, throughput.svg and p99.svg
    /// (default: ./bench-results/<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where both clusters keep their data (one subdirectory per run, removed at the end
    /// unless --keep). Put it on the file system you want to measure.
    #[arg(long, default_value = "./tessera-bench-data")]
    pub base_dir: PathBuf,
    /// Keep the data directories and server logs after the run (the node logs carry each
    /// node's per-stage write-path timings every 10 s: count, mean, p99).
    #[arg(long)]
    pub keep: bool,
    /// Warm-up seconds per run (overrides the preset).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Measured seconds per run (overrides the preset).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Repeats per row and system (overrides the preset of 3).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Records loaded into both systems before the rows run (default: 10,000 with --quick,
    /// else 100,000).
    #[arg(long)]
    pub records: Option<u64>,
    /// Value size in bytes (rows with their own size, like 1 KiB puts, keep it).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Key choice.
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,
    /// Tessera's initial regions for the main cluster.
    #[arg(long, default_value_t = 4)]
    pub regions: u32,
    /// Skip the rows comparing Tessera with 8 and 1 initial regions (they restart Tessera,
    /// with PD's load splits off so that the region counts hold for the whole run).
    #[arg(long)]
    pub no_regions_rows: bool,
    /// Only these rows (comma-separated ids, e.g. seq,put-c256,put-c256-r8; see results.json).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// gRPC connections to etcd, used round-robin (etcd's benchmark tool also spreads its
    /// clients over several connections).
    #[arg(long, default_value_t = 8)]
    pub etcd_conns: usize,
    /// Skip the crash check (kill -9 of every Tessera node, then read back every
    /// acknowledged put).
    #[arg(long)]
    pub no_crash_check: bool,
    /// A run whose fsync probe median exceeds this many ms is marked contended and run once
    /// more. Default: 0.3 ms, or twice the idle probe's median on a disk slower than that.
    #[arg(long)]
    pub contended_fsync_ms: Option<f64>,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The `tessera` binary (default: next to this executable, else on PATH).
    #[arg(long)]
    pub tessera_bin: Option<PathBuf>,
    /// The `etcd` binary (default: on PATH).
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
    /// Worker threads of each Tessera server it starts (PD and nodes): their
    /// `--worker-threads`. Default: the machine's cores shared out among the three nodes
    /// (cores / 3, at least 1), as servers sharing a machine would be set up; 0: the
    /// servers' own default, one per core each (on 2 cores, 8 workers for PD and three
    /// nodes). etcd keeps its defaults either way.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub server_threads: Option<u16>,
}

/// The worker threads of each Tessera server (`None`: the servers' own default, one per
/// core): `--server-threads` if given (0 for the servers' default), else the cores shared
/// out among the nodes. Three servers with a worker per core each oversubscribe a small
/// machine, and a task woken on a busy core waits behind another server's thread: on the
/// 2-core VM of issue 6, one worker per server gave the sequential put a lower p50, and
/// workload A more throughput at less CPU per operation, in two interleaved pairs, while
/// etcd run with `GOMAXPROCS=1` moved only its CPU (the thirty-first note).
fn server_threads_for(arg: Option<u16>, cores: usize) -> Option<u16> {
    match arg {
        Some(0) => None,
        Some(n) => Some(n),
        None => Some(u16::try_from((cores / NODES as usize).max(1)).unwrap_or(u16::MAX)),
    }
}

/// Each Tessera server's worker threads (`None`: their default), in words.
fn server_threads_text(threads: Option<u16>) -> String {
    match threads {
        Some(1) => "1 worker thread per Tessera server".to_string(),
        Some(n) => format!("{n} worker threads per Tessera server"),
        None => "one worker thread per core in each Tessera server".to_string(),
    }
}

/// Syncs timed by each fsync probe.
const PROBE_SAMPLES: usize = 200;
/// Pause before each probe.
const PROBE_SETTLE: Duration = Duration::from_millis(300);
/// The threshold of the brief, for fast (NVMe-class) disks.
const DEFAULT_CONTENDED_MS: f64 = 0.3;

struct Preset {
    name: &'static str,
    rows: Vec<RowSpec>,
    warmup: f64,
    duration: f64,
    records: u64,
}

/// The preset the flags ask for; an error names any `--rows` id it does not have.
fn preset(args: &CompareArgs) -> anyhow::Result<Preset> {
    let (name, mut rows, warmup, duration, records) = if args.quick {
        ("quick", quick_rows(), 2.0, 4.0, 10_000)
    } else if args.full {
        ("full", full_rows(), 5.0, 20.0, 100_000)
    } else {
        // The goal table: every row once, without the concurrency sweep.
        let keep = ["seq", "put-c256", "get-c64", "stale-get-c64", "a-c64", "b-c64", "put1k-c256", "e-c64"];
        ("default", full_rows().into_iter().filter(|r| keep.contains(&r.id.as_str())).collect(), 3.0, 10.0, 100_000)
    };
    if !args.no_regions_rows {
        rows.extend(region_rows(256));
    }
    if !args.rows.is_empty() {
        let unknown: Vec<&str> =
            args.rows.iter().filter(|id| !rows.iter().any(|r| &r.id == *id)).map(String::as_str).collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            bail!("--rows: the {name} preset has no row {}; its rows are {}", unknown.join(", "), known.join(", "));
        }
        rows.retain(|r| args.rows.contains(&r.id));
    }
    Ok(Preset {
        name,
        rows,
        warmup: args.warmup.unwrap_or(warmup),
        duration: args.duration.unwrap_or(duration),
        records: args.records.unwrap_or(records),
    })
}

/// Removes the output directory on the way out if nothing was written to it (an
/// interrupted or failed run).
struct RemoveIfEmpty(PathBuf);

impl Drop for RemoveIfEmpty {
    fn drop(&mut self) {
        // Fails, harmlessly, unless the directory is empty.
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Everything `compare` produced, for the output files.
#[derive(Debug, serde::Serialize)]
struct Results {
    preset: &'static str,
    machine: Machine,
    settings: Settings,
    idle_fsync_probe: FsyncProbe,
    rows: Vec<RowSpec>,
    comparison: Vec<TableLine>,
    regions: Vec<TableLine>,
    crash_check: Option<CrashReport>,
    runs: Vec<RunRecord>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Settings {
    warmup_secs: f64,
    duration_secs: f64,
    repeats: usize,
    records: u64,
    value_size: usize,
    distribution: Distribution,
    regions: u32,
    /// Worker threads of each Tessera server; `None`: the servers' default, one per core each.
    server_threads: Option<u16>,
    etcd_connections: usize,
    contended_fsync_ms: f64,
    seed: u64,
}

/// The progress bar, and one line per finished run (printed above the bar, or to stderr
/// when there is no terminal to draw it on).
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar }
    }

    fn line(&self, s: String) {
        if self.bar.is_hidden() {
            eprintln!("{s}");
        } else {
            self.bar.println(s);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// The systems, and what measuring each needs.
struct Systems {
    tessera: TesseraCluster,
    tessera_target: TesseraTarget,
    tessera_inserts: InsertCounter,
    etcd: Option<EtcdCluster>,
    etcd_target: Option<EtcdTarget>,
    etcd_inserts: InsertCounter,
}

struct Ctx<'a> {
    args: &'a CompareArgs,
    preset: &'a Preset,
    repeats: usize,
    threshold_ms: f64,
    data: PathBuf,
    /// The data directory's block device, whose writes each run counts.
    disk: Option<BlockDevice>,
    progress: Progress,
    runs: Vec<RunRecord>,
}

impl Ctx<'_> {
    fn params(&self, row: &RowSpec, system: System, regions: u32) -> RunParams {
        RunParams {
            workload: row.workload,
            concurrency: row.concurrency,
            value_size: row.value_size.unwrap_or(self.args.value_size),
            records: self.preset.records,
            distribution: self.args.distribution,
            stale_reads: row.stale_reads,
            warmup_secs: self.preset.warmup,
            duration_secs: self.preset.duration,
            regions: (system == System::Tessera).then_some(regions),
            etcd_connections: (system == System::Etcd).then_some(self.args.etcd_conns),
        }
    }

    async fn probe(&self) -> anyhow::Result<FsyncProbe> {
        let dir = self.data.clone();
        tokio::task::spawn_blocking(move || fsync_probe::probe(&dir, PROBE_SAMPLES)).await?.context("fsync probe")
    }

    /// Runs `row` on `system` (a rerun too if the probe says the machine was busy).
    async fn measure(&mut self, sys: &mut Systems, row: &RowSpec, system: System, repeat: usize) -> anyhow::Result<()> {
        for attempt in 0..2 {
            sys.tessera.check_running()?;
            if let Some(e) = sys.etcd.as_mut() {
                e.check_running()?;
            }
            self.progress.bar.set_message(format!(
                "{} on {system}, repeat {}/{}{}",
                row.id,
                repeat + 1,
                self.repeats,
                if attempt > 0 { " (rerun)" } else { "" }
            ));
            // Let the previous run's background writes (etcd's batched backend commit, Tessera's
            // lazy applies) finish, so the probe sees other load, not ours.
            tokio::time::sleep(PROBE_SETTLE).await;
            let probe = self.probe().await?;
            let contended = probe.p50_ms > self.threshold_ms;
            let params = self.params(row, system, sys.tessera.regions);
            let spec = RunSpec {
                workload: row.workload,
                concurrency: row.concurrency,
                warmup: Duration::from_secs_f64(self.preset.warmup),
                duration: Duration::from_secs_f64(self.preset.duration),
                records: self.preset.records,
                value_size: params.value_size,
                distribution: self.args.distribution,
                stale_reads: row.stale_reads,
                seed: self.args.seed.wrapping_add(repeat as u64 * 1_000_003),
            };
            let (output, syncs, complete, regions_after) = match system {
                System::Tessera => {
                    let client = sys.tessera_target.client().clone();
                    let before = counters::tessera(&client, Instant::now(), Duration::from_secs(3)).await?;
                    let pids = sys.tessera.server_pids();
                    let out =
                        runner::run(&sys.tessera_target, &spec, &sys.tessera_inserts, &pids, self.disk.as_ref()).await;
                    let after = counters::tessera(&client, Instant::now(), Duration::from_secs(5)).await?;
                    let syncs = counters::tessera_deltas(&before, &after, out.total_writes);
                    let regions = client.cluster_status().await.ok().map(|(_, regions)| regions.len());
                    (out, syncs, before.fresh && after.fresh, regions)
                }
                System::Etcd => {
                    let (cluster, target) = match (sys.etcd.as_ref(), sys.etcd_target.as_ref()) {
                        (Some(c), Some(t)) => (c, t),
                        _ => bail!("etcd is not running"),
                    };
                    let before = counters::etcd(&cluster.client_urls).await;
                    let out =
                        runner::run(target, &spec, &sys.etcd_inserts, &cluster.server_pids(), self.disk.as_ref()).await;
                    let after = counters::etcd(&cluster.client_urls).await;
                    let complete = before.iter().chain(&after).all(Option::is_some);
                    let syncs = counters::etcd_deltas(&cluster.names, &before, &after, out.total_writes);
                    (out, syncs, complete, None)
                }
            };
            let record = RunRecord {
                system,
                row: row.id.clone(),
                repeat,
                attempt,
                contended,
                params,
                fsync_probe: Some(probe),
                output,
                syncs,
                syncs_complete: complete,
                regions_after,
            };
            self.progress.line(run_line(&record));
            self.runs.push(record);
            if !contended || attempt == 1 {
                break;
            }
            self.progress.bar.inc_length(1);
        }
        self.progress.bar.inc(1);
        Ok(())
    }

    async fn load(&mut self, sys: &Systems) -> anyhow::Result<()> {
        let records = self.preset.records;
        let value_size = self.args.value_size;
        let row = RowSpec {
            id: "load".into(),
            title: "load".into(),
            kind: tessera_benches::RowKind::Throughput,
            workload: tessera_benches::Workload::L,
            concurrency: 64,
            value_size: None,
            stale_reads: false,
            regions: None,
        };
        for system in [System::Tessera, System::Etcd] {
            self.progress.bar.set_message(format!("loading {records} records into {system}"));
            let out = match system {
                System::Tessera => {
                    let pids = sys.tessera.server_pids();
                    runner::load(&sys.tessera_target, records, value_size, 64, &pids, self.disk.as_ref()).await
                }
                System::Etcd => {
                    let (Some(c), Some(t)) = (sys.etcd.as_ref(), sys.etcd_target.as_ref()) else {
                        bail!("etcd is not running")
                    };
                    runner::load(t, records, value_size, 64, &c.server_pids(), self.disk.as_ref()).await
                }
            };
            if out.total_ops < records {
                bail!(
                    "loading {system} failed: {} of {records} records inserted; errors: {:?}",
                    out.total_ops,
                    out.first_errors
                );
            }
            let mut params = self.params(&row, system, sys.tessera.regions);
            params.warmup_secs = 0.0;
            params.duration_secs = out.measured_secs;
            let record = RunRecord {
                system,
                row: "load".into(),
                repeat: 0,
                attempt: 0,
                contended: false,
                params,
                fsync_probe: None,
                output: out,
                syncs: Vec::new(),
                syncs_complete: false,
                regions_after: None,
            };
            self.progress.line(run_line(&record));
            self.runs.push(record);
            self.progress.bar.inc(1);
        }
        Ok(())
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn run_line(r: &RunRecord) -> String {
    let o = &r.output;
    let mut s = format!(
        "{:<14} {:<7} #{}{}: {:>9.0} ops/s  p50 {}  p99 {}",
        r.row,
        r.system.to_string(),
        r.repeat + 1,
        if r.attempt > 0 { " rerun" } else { "" },
        o.ops_per_sec,
        ms(o.latency.p50_us),
        ms(o.latency.p99_us)
    );
    if o.rows_per_sec > 0.0 {
        s.push_str(&format!("  {:.0} rows/s", o.rows_per_sec));
    }
    if let Some(cpu) = o.server_cpu_us_per_op {
        s.push_str(&format!("  server {cpu:.0} CPU-µs/op"));
    }
    if let Some(w) = r.writes_per_fsync() {
        s.push_str(&format!("  {w:.1} writes/fsync"));
    }
    if let Some(b) = o.disk_bytes_per_write {
        s.push_str(&format!("  {:.1} disk KiB/write", b / 1024.0));
    }
    if let Some(n) = r.regions_after {
        s.push_str(&format!("  regions after: {n}"));
    }
    if o.errors > 0 {
        s.push_str(&format!(
            "  {} errors (first: {})",
            o.errors,
            o.first_errors.first().map(String::as_str).unwrap_or("")
        ));
    }
    if let (true, Some(p)) = (r.contended, r.fsync_probe) {
        s.push_str(&format!("  [contended: fsync p50 {:.2} ms]", p.p50_ms));
    }
    s
}

fn timestamp() -> String {
    std::process::Command::new("date")
        .arg("+%Y%m%d-%H%M%S")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string()
        })
}

/// Runs the comparison. Returns whether the crash check passed (true when it was skipped).
pub async fn compare(args: CompareArgs) -> anyhow::Result<bool> {
    let preset = preset(&args)?;
    if preset.rows.is_empty() {
        bail!("no rows to run");
    }
    if !(preset.warmup >= 0.0 && preset.duration > 0.0) {
        bail!("--warmup must be >= 0 and --duration > 0");
    }
    let repeats = args.repeats.unwrap_or(3).max(1);
    let tessera_bin = match &args.tessera_bin {
        Some(p) => p.clone(),
        None => find_binary("tessera").context(
            "the `tessera` binary is not next to tessera-bench nor on PATH; build it with `cargo build --release -p tessera-cli` or pass --tessera-bin",
        )?,
    };
    let etcd_bin = find_etcd(args.etcd_bin.as_deref())?;
    let out_dir = args.out.clone().unwrap_or_else(|| PathBuf::from("bench-results").join(timestamp()));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let _out_guard = RemoveIfEmpty(out_dir.clone());
    std::fs::create_dir_all(&args.base_dir).with_context(|| format!("creating {}", args.base_dir.display()))?;
    // Dropped last (declared first): removes the data once every server has been stopped.
    let data_guard =
        tempfile::Builder::new().prefix("run-").tempdir_in(&args.base_dir).context("creating the data directory")?;
    let data = data_guard.path().canonicalize().unwrap_or_else(|_| data_guard.path().to_path_buf());
    let data_guard = if args.keep {
        eprintln!("keeping data and server logs in {}", data.display());
        let _ = data_guard.keep();
        None
    } else {
        Some(data_guard)
    };
    let result = run_matrix(&args, &preset, repeats, &tessera_bin, &etcd_bin, &data, &out_dir).await;
    match (result, data_guard) {
        // Keep the server logs of a failed run: they say why.
        (Err(e), Some(guard)) => {
            let kept = guard.keep();
            Err(e.context(format!("data and server logs kept in {}", kept.display())))
        }
        (result, _) => result,
    }
}

/// Starts the clusters in `data`, runs the matrix and writes the results to `out_dir`.
async fn run_matrix(
    args: &CompareArgs,
    preset: &Preset,
    repeats: usize,
    tessera_bin: &Path,
    etcd_bin: &Path,
    data: &Path,
    out_dir: &Path,
) -> anyhow::Result<bool> {
    let machine = Machine::describe(data, Some(etcd_bin));
    let idle = tokio::task::spawn_blocking({
        let d = data.to_path_buf();
        move || fsync_probe::probe(&d, PROBE_SAMPLES)
    })
    .await?
    .context("fsync probe")?;
    let threshold_ms = args.contended_fsync_ms.unwrap_or_else(|| DEFAULT_CONTENDED_MS.max(2.0 * idle.p50_ms));
    eprintln!(
        "tessera-bench compare ({}): {} rows x {repeats} repeats, {} s warm-up + {} s measured, {} records; idle fsync p50 {:.2} ms, p99 {:.2} ms; runs with a probe p50 above {:.2} ms count as contended",
        preset.name,
        preset.rows.len(),
        preset.warmup,
        preset.duration,
        preset.records,
        idle.p50_ms,
        idle.p99_ms,
        threshold_ms
    );
    let server_threads = server_threads_for(args.server_threads, machine.cores);
    let shared_out = if args.server_threads.is_none() { ", shared out among the 3 nodes" } else { "" };
    eprintln!("{} ({} cores{shared_out})", server_threads_text(server_threads), machine.cores);
    if threshold_ms > DEFAULT_CONTENDED_MS && args.contended_fsync_ms.is_none() {
        eprintln!("note: twice this disk's idle fsync median is above {DEFAULT_CONTENDED_MS} ms, so it is the contention threshold");
    }

    let (main_rows, region_rows): (Vec<RowSpec>, Vec<RowSpec>) =
        preset.rows.iter().cloned().partition(|r| r.regions.is_none());
    let runs_planned = main_rows.iter().map(|r| r.systems().len()).sum::<usize>() * repeats
        + region_rows.len() * repeats
        + if main_rows.is_empty() { 0 } else { 2 };
    let mut ctx = Ctx {
        args,
        preset,
        repeats,
        threshold_ms,
        data: data.to_path_buf(),
        disk: BlockDevice::of(data),
        progress: Progress::new(runs_planned as u64),
        runs: Vec::new(),
    };

    let mut crash_report = None;
    if !main_rows.is_empty() {
        ctx.progress.bar.set_message(format!("starting Tessera ({} regions) and etcd", args.regions));
        let (tessera_dir, etcd_dir) = (data.join("tessera"), data.join("etcd"));
        let (tessera, etcd) = tokio::join!(
            TesseraCluster::start(tessera_bin, &tessera_dir, args.regions, true, server_threads),
            EtcdCluster::start(etcd_bin, &etcd_dir)
        );
        // Whichever started is stopped (dropped) if the other failed.
        let ((tessera, tessera_client), etcd) = (tessera?, etcd?);
        let etcd_target = EtcdTarget::connect(&etcd.client_urls, args.etcd_conns)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to etcd: {e}"))?;
        let mut sys = Systems {
            tessera,
            tessera_target: TesseraTarget::new(tessera_client),
            tessera_inserts: InsertCounter::new(preset.records),
            etcd: Some(etcd),
            etcd_target: Some(etcd_target),
            etcd_inserts: InsertCounter::new(preset.records),
        };
        ctx.progress.line(format!("clusters ready; data in {}", data.display()));
        ctx.load(&sys).await?;
        for row in &main_rows {
            for repeat in 0..repeats {
                for &system in row.systems() {
                    ctx.measure(&mut sys, row, system, repeat).await?;
                }
            }
        }
        if let Some(e) = sys.etcd.take() {
            ctx.progress.bar.set_message("stopping etcd");
            e.stop().await;
        }
        if !args.no_crash_check {
            ctx.progress.bar.set_message("crash check: puts, kill -9 of every node, restart, read back");
            let nonce = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7);
            let client = sys.tessera_target.client().clone();
            let (report, _client) = crash::check(&mut sys.tessera, &client, Duration::from_secs(2), 64, nonce).await?;
            ctx.progress.line(report.summary());
            crash_report = Some(report);
        }
        ctx.progress.bar.set_message("stopping Tessera");
        sys.tessera.stop().await;
    } else if !args.no_crash_check {
        eprintln!("note: the crash check runs on the main cluster, which no selected row uses: skipped");
    }

    if !region_rows.is_empty() {
        let mut clusters = Vec::new();
        for row in &region_rows {
            let regions = row.regions.unwrap_or(args.regions);
            ctx.progress.bar.set_message(format!("starting Tessera with {regions} regions"));
            let dir = data.join(format!("tessera-r{regions}"));
            // Load splits off: the pair compares 8 regions with 1 for the whole run.
            let (cluster, client) = TesseraCluster::start(tessera_bin, &dir, regions, false, server_threads).await?;
            clusters.push((
                row.clone(),
                Systems {
                    tessera: cluster,
                    tessera_target: TesseraTarget::new(client),
                    tessera_inserts: InsertCounter::new(preset.records),
                    etcd: None,
                    etcd_target: None,
                    etcd_inserts: InsertCounter::new(preset.records),
                },
            ));
        }
        for repeat in 0..repeats {
            for (row, sys) in clusters.iter_mut() {
                ctx.measure(sys, row, System::Tessera, repeat).await?;
            }
        }
        for (_, sys) in clusters {
            sys.tessera.stop().await;
        }
    }

    let runs = std::mem::take(&mut ctx.runs);
    drop(ctx);
    let lines = comparison(&preset.rows, &runs);
    let regions = match region_rows.as_slice() {
        [a, b] => regions_comparison(a, b, &runs),
        _ => Vec::new(),
    };
    let results = Results {
        preset: preset.name,
        machine,
        settings: Settings {
            warmup_secs: preset.warmup,
            duration_secs: preset.duration,
            repeats,
            records: preset.records,
            value_size: args.value_size,
            distribution: args.distribution,
            regions: args.regions,
            server_threads,
            etcd_connections: args.etcd_conns,
            contended_fsync_ms: threshold_ms,
            seed: args.seed,
        },
        idle_fsync_probe: idle,
        rows: preset.rows.clone(),
        comparison: lines,
        regions,
        crash_check: crash_report,
        runs,
    };
    write_outputs(out_dir, &results)?;
    println!("{}", tables_markdown(&results));
    eprintln!("wrote results.json, results.md, throughput.svg and p99.svg to {}", out_dir.display());
    Ok(results.crash_check.as_ref().is_none_or(CrashReport::passed))
}

fn tables_markdown(r: &Results) -> String {
    let mut s = String::new();
    if !r.comparison.is_empty() {
        s.push_str(&format!(
            "### Tessera vs etcd ({} regions; median of {} repeats, min–max in parentheses)\n\n",
            r.settings.regions, r.settings.repeats
        ));
        s.push_str(&markdown_table(&r.comparison, ["Tessera", "etcd", "Tessera/etcd"]));
    }
    if !r.regions.is_empty() {
        s.push_str("\n### Tessera, 8 regions vs 1 region\n\n");
        s.push_str(&markdown_table(&r.regions, ["8 regions", "1 region", "8/1"]));
    }
    if let Some(c) = &r.crash_check {
        s.push_str(&format!("\n{}\n", c.summary()));
        if !c.examples.is_empty() {
            s.push_str(&format!("examples: {}\n", c.examples.join(", ")));
        }
    }
    let contended = r.runs.iter().filter(|x| x.contended).count();
    let errors: u64 = r.runs.iter().map(|x| x.output.errors).sum();
    s.push_str(&format!(
        "\n{} runs, {contended} contended (fsync probe p50 > {:.2} ms; rerun once, the rerun counts), {errors} failed operations in all.\n",
        r.runs.len(),
        r.settings.contended_fsync_ms
    ));
    s
}

fn write_outputs(dir: &Path, r: &Results) -> anyhow::Result<()> {
    let write =
        |name: &str, body: &[u8]| std::fs::write(dir.join(name), body).with_context(|| format!("writing {name}"));
    write("results.json", serde_json::to_string_pretty(r)?.as_bytes())?;
    let s = &r.settings;
    let md = format!(
        "# tessera-bench compare ({})\n\n## Machine\n\n{}\n## Settings\n\n- {} s warm-up + {} s measured per run, {} repeats, interleaved Tessera/etcd\n- {} records of {} B, {:?} keys; Tessera {} initial regions, {}; etcd over {} gRPC connections\n- idle fsync probe: p50 {:.2} ms, p99 {:.2} ms (contended above {:.2} ms)\n- server CPU: utime+stime of every server process (Tessera: PD + nodes; etcd: members) over the measured interval, per measured operation\n- writes/fsync: the run's successful writes (warm-up included) over each server's log syncs in the same span, median over servers\n- disk KiB written/write: bytes written to the data directory's block device (its kernel statistics: every replica's log, state machine and compaction, and anything else writing to it) over the measured interval, per measured write\n\n## Results\n\n{}",
        r.preset,
        r.machine.markdown(),
        s.warmup_secs,
        s.duration_secs,
        s.repeats,
        s.records,
        s.value_size,
        s.distribution,
        s.regions,
        server_threads_text(s.server_threads),
        s.etcd_connections,
        r.idle_fsync_probe.p50_ms,
        r.idle_fsync_probe.p99_ms,
        s.contended_fsync_ms,
        tables_markdown(r)
    );
    write("results.md", md.as_bytes())?;
    let curves = plot::curves(&r.rows, &r.runs);
    plot::draw(&dir.join("throughput.svg"), &curves, true)
        .map_err(|e| anyhow::anyhow!("drawing throughput.svg: {e}"))?;
    plot::draw(&dir.join("p99.svg"), &curves, false).map_err(|e| anyhow::anyhow!("drawing p99.svg: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: CompareArgs,
    }

    fn preset_of(argv: &[&str]) -> anyhow::Result<Preset> {
        preset(&Cmd::try_parse_from(std::iter::once("compare").chain(argv.iter().copied()))?.args)
    }

    #[test]
    fn rows_keeps_the_named_rows_and_refuses_an_id_the_preset_lacks() {
        let p = preset_of(&["--rows", "seq,put-c256-r1"]).unwrap();
        assert_eq!(p.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["seq", "put-c256-r1"]);
        // A misspelt id used to be dropped in silence, running fewer rows than asked.
        let err = preset_of(&["--rows", "put-c256,wa-c64"]).err().expect("unknown id refused").to_string();
        assert!(err.contains("no row wa-c64") && err.contains("put-c256, get-c64"), "{err}");
        // A row of another preset, or one the flags left out, is unknown here too.
        assert!(preset_of(&["--quick", "--rows", "e-c64"]).is_err());
        assert!(preset_of(&["--no-regions-rows", "--rows", "put-c256-r8"]).is_err());
    }

    #[test]
    fn server_threads_are_a_share_of_the_cores_unless_given() {
        let parse = |argv: &[&str]| Cmd::try_parse_from(std::iter::once("compare").chain(argv.iter().copied()));
        assert_eq!(parse(&[]).unwrap().args.server_threads, None);
        assert_eq!(parse(&["--server-threads", "1"]).unwrap().args.server_threads, Some(1));
        assert!(parse(&["--server-threads", "1025"]).is_err());
        // Unless given, each server gets its share of the cores (at least one); 0 leaves
        // the servers their own default.
        assert_eq!(server_threads_for(None, 2), Some(1));
        assert_eq!(server_threads_for(None, 1), Some(1));
        assert_eq!(server_threads_for(None, 12), Some(4));
        assert_eq!(server_threads_for(Some(3), 2), Some(3));
        let default = parse(&["--server-threads", "0"]).unwrap().args.server_threads;
        assert_eq!(server_threads_for(default, 2), None);
        assert_eq!(server_threads_text(None), "one worker thread per core in each Tessera server");
        assert_eq!(server_threads_text(Some(2)), "2 worker threads per Tessera server");
    }
}
