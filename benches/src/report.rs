//! Turning run records into the comparison tables, and describing the machine.

use std::collections::BTreeMap;
use std::path::Path;

use crate::matrix::{RowKind, RowSpec, RunRecord};
use crate::stats::{fmt_ratio, fmt_spread, ratio, Spread};
use crate::target::System;
use crate::workload::OpKind;

/// One line of a comparison table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TableLine {
    /// Row title.
    pub row: String,
    /// Metric name, with its unit.
    pub metric: String,
    /// Whether larger is better.
    pub higher_is_better: bool,
    /// Left column (Tessera; in the regions table, 8 regions).
    pub left: Option<Spread>,
    /// Right column (etcd; in the regions table, 1 region).
    pub right: Option<Spread>,
    /// `left.median / right.median`.
    pub ratio: Option<f64>,
}

/// The runs that count for `(row, system)`: per repeat, its last attempt (the rerun of a
/// contended attempt replaces it).
pub fn counted_runs<'a>(runs: &'a [RunRecord], row: &str, system: System) -> Vec<&'a RunRecord> {
    let mut last: BTreeMap<usize, &RunRecord> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.row == row && r.system == system) {
        match last.get(&r.repeat) {
            Some(prev) if prev.attempt > r.attempt => {}
            _ => {
                last.insert(r.repeat, r);
            }
        }
    }
    last.into_values().collect()
}

/// A metric: its name, direction, and how to read it from a run.
type Metric = (String, bool, Box<dyn Fn(&RunRecord) -> Option<f64>>);

fn metrics(row: &RowSpec) -> Vec<Metric> {
    let mut m: Vec<Metric> = Vec::new();
    match row.kind {
        RowKind::Sequential => {
            for (kind, name) in [(OpKind::Update, "put"), (OpKind::Read, "get"), (OpKind::Scan, "scan-10")] {
                m.push((
                    format!("{name} p50 µs"),
                    false,
                    Box::new(move |r| r.output.kind(kind).map(|l| l.p50_us as f64)),
                ));
                m.push((
                    format!("{name} p99 µs"),
                    false,
                    Box::new(move |r| r.output.kind(kind).map(|l| l.p99_us as f64)),
                ));
            }
        }
        RowKind::Throughput | RowKind::Scan => {
            if row.kind == RowKind::Scan {
                m.push(("rows/s".into(), true, Box::new(|r| Some(r.output.rows_per_sec))));
            }
            m.push(("ops/s".into(), true, Box::new(|r| Some(r.output.ops_per_sec))));
            m.push((
                "p50 µs".into(),
                false,
                Box::new(|r| (r.output.measured_ops > 0).then_some(r.output.latency.p50_us as f64)),
            ));
            m.push((
                "p99 µs".into(),
                false,
                Box::new(|r| (r.output.measured_ops > 0).then_some(r.output.latency.p99_us as f64)),
            ));
            m.push(("server CPU-µs/op".into(), false, Box::new(|r| r.output.server_cpu_us_per_op)));
            m.push(("client CPU-µs/op".into(), false, Box::new(|r| r.output.client_cpu_us_per_op)));
            if row.workload.writes() {
                m.push(("writes/fsync per node".into(), true, Box::new(|r| r.writes_per_fsync())));
                m.push((
                    "disk KiB written/write".into(),
                    false,
                    Box::new(|r| r.output.disk_bytes_per_write.map(|b| b / 1024.0)),
                ));
            }
        }
    }
    m
}

/// Tessera against etcd, for every row that ran on both.
pub fn comparison(rows: &[RowSpec], runs: &[RunRecord]) -> Vec<TableLine> {
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| r.regions.is_none()) {
        let t = counted_runs(runs, &row.id, System::Tessera);
        let e = counted_runs(runs, &row.id, System::Etcd);
        if t.is_empty() && e.is_empty() {
            continue;
        }
        for (metric, higher, read) in metrics(row) {
            let spread = |rs: &[&RunRecord]| Spread::of(&rs.iter().filter_map(|r| read(r)).collect::<Vec<_>>());
            let (left, right) = (spread(&t), spread(&e));
            out.push(TableLine {
                row: row.title.clone(),
                metric,
                higher_is_better: higher,
                left,
                right,
                ratio: ratio(left.map(|s| s.median), right.map(|s| s.median)),
            });
        }
    }
    out
}

/// Tessera with many regions against Tessera with few (`a` over `b`), same workload.
pub fn regions_comparison(a: &RowSpec, b: &RowSpec, runs: &[RunRecord]) -> Vec<TableLine> {
    let (ra, rb) = (counted_runs(runs, &a.id, System::Tessera), counted_runs(runs, &b.id, System::Tessera));
    if ra.is_empty() && rb.is_empty() {
        return Vec::new();
    }
    metrics(a)
        .into_iter()
        .map(|(metric, higher, read)| {
            let spread = |rs: &[&RunRecord]| Spread::of(&rs.iter().filter_map(|r| read(r)).collect::<Vec<_>>());
            let (left, right) = (spread(&ra), spread(&rb));
            TableLine {
                row: format!("Tessera, {} in flight", a.concurrency),
                metric,
                higher_is_better: higher,
                left,
                right,
                ratio: ratio(left.map(|s| s.median), right.map(|s| s.median)),
            }
        })
        .collect()
}

/// A markdown table of `lines` with the given column headings (left, right, ratio).
pub fn markdown_table(lines: &[TableLine], headings: [&str; 3]) -> String {
    let mut s =
        format!("| Row | Metric | {} | {} | {} |\n|---|---|---:|---:|---:|\n", headings[0], headings[1], headings[2]);
    let mut previous_row = "";
    for l in lines {
        let row = if l.row == previous_row { "" } else { l.row.as_str() };
        previous_row = &l.row;
        let arrow = if l.higher_is_better { "↑" } else { "↓" };
        s.push_str(&format!(
            "| {} | {} {} | {} | {} | {} |\n",
            row,
            l.metric,
            arrow,
            fmt_spread(l.left),
            fmt_spread(l.right),
            fmt_ratio(l.ratio)
        ));
    }
    s
}

/// Outcome of the crash check.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CrashReport {
    /// Puts acknowledged before the nodes were killed.
    pub acknowledged: u64,
    /// Puts whose outcome was undetermined (not checked).
    pub undetermined: u64,
    /// Puts that failed (not applied; not checked).
    pub failed: u64,
    /// Acknowledged keys read back with their value after the restart.
    pub verified: u64,
    /// Acknowledged keys absent after the restart.
    pub missing: u64,
    /// Acknowledged keys with another value after the restart.
    pub wrong_value: u64,
    /// Acknowledged keys whose reads kept failing after the restart.
    pub unreadable: u64,
    /// A few missing or wrong keys (printable form), for the report.
    pub examples: Vec<String>,
}

impl CrashReport {
    /// Every acknowledged key was read back with its value.
    pub fn passed(&self) -> bool {
        self.acknowledged > 0 && self.verified == self.acknowledged
    }

    /// One line for the report.
    pub fn summary(&self) -> String {
        format!(
            "crash check {}: {} acknowledged puts, {} verified after kill -9 of every node and restart, {} missing, {} wrong value, {} unreadable ({} undetermined and {} failed puts not checked)",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.acknowledged,
            self.verified,
            self.missing,
            self.wrong_value,
            self.unreadable,
            self.undetermined,
            self.failed
        )
    }
}

/// What the benchmark ran on.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical cores available.
    pub cores: usize,
    /// Memory, GiB.
    pub ram_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// File system type of the data directory.
    pub filesystem: String,
    /// The cpuidle driver, and with `haltpoll` its `guest_halt_poll_ns`: whether an idle
    /// (virtual) CPU polls before it halts, which sets what a wake-up costs, and whether
    /// Tessera's nodes run their own idle poller (they do not where the kernel polls).
    pub cpu_idle: String,
    /// `git rev-parse --short HEAD`, when in a repository.
    pub git_commit: Option<String>,
    /// `etcd --version`, first line.
    pub etcd_version: Option<String>,
}

fn command_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

/// The commit checked out in the current directory, else in the one holding this
/// executable (a `target/` directory inside the repository).
fn git_commit() -> Option<String> {
    let here = command_line(Path::new("git"), &["rev-parse", "--short", "HEAD"]);
    here.or_else(|| {
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?.to_string_lossy().into_owned();
        command_line(Path::new("git"), &["-C", &dir, "rev-parse", "--short", "HEAD"])
    })
    .filter(|s| !s.is_empty())
}

/// The first `model name` of a `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// `MemTotal` of a `/proc/meminfo` text, in GiB.
pub fn mem_total_gib(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// The cpuidle line of the report, from the contents of sysfs's `current_driver` and
/// `guest_halt_poll_ns` (`None` where missing).
pub fn cpu_idle(driver: Option<&str>, guest_halt_poll_ns: Option<&str>) -> String {
    match (driver.map(str::trim), guest_halt_poll_ns.map(str::trim)) {
        (None, _) => "unknown".into(),
        (Some("haltpoll"), Some("0")) => "haltpoll, guest_halt_poll_ns 0 (an idle vCPU halts at once)".into(),
        (Some("haltpoll"), Some(ns)) => format!("haltpoll, guest_halt_poll_ns {ns} (an idle vCPU polls first)"),
        (Some(d), _) => d.to_string(),
    }
}

/// The file system type holding `path`, from a `/proc/self/mounts` text: the entry with the
/// longest mount point that contains it (the last such entry, if one is mounted over
/// another). `stat -f` cannot tell ext4 from ext2 (they share a magic number); the mount
/// table can.
pub fn mount_fs_type(mounts: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(point), Some(fs_type)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        // The kernel escapes a space, tab, newline and backslash in a mount point as octal.
        let point = point.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
        let point = Path::new(&point);
        if path.starts_with(point) {
            let depth = point.components().count();
            if best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, fs_type));
            }
        }
    }
    best.map(|(_, fs_type)| fs_type.to_string())
}

impl Machine {
    /// Describes this machine; `data_dir` is where the servers keep their data.
    pub fn describe(data_dir: &Path, etcd_bin: Option<&Path>) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine {
            cpu: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            ram_gib: mem_total_gib(&read("/proc/meminfo")).unwrap_or(0.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            filesystem: std::fs::canonicalize(data_dir)
                .ok()
                .and_then(|dir| mount_fs_type(&read("/proc/self/mounts"), &dir))
                .or_else(|| command_line(Path::new("stat"), &["-f", "-c", "%T", &data_dir.to_string_lossy()]))
                .unwrap_or_else(|| "unknown".into()),
            cpu_idle: cpu_idle(
                std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver").ok().as_deref(),
                std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns").ok().as_deref(),
            ),
            git_commit: git_commit(),
            etcd_version: etcd_bin.and_then(|b| command_line(b, &["--version"])),
        }
    }

    /// Markdown lines.
    pub fn markdown(&self) -> String {
        format!(
            "- CPU: {} ({} cores)\n- RAM: {:.1} GiB\n- kernel: {}\n- cpuidle: {}\n- data directory file system: {}\n- git commit: {}\n- {}\n",
            self.cpu,
            self.cores,
            self.ram_gib,
            self.kernel,
            self.cpu_idle,
            self.filesystem,
            self.git_commit.as_deref().unwrap_or("unknown"),
            self.etcd_version.as_deref().unwrap_or("etcd version unknown")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{quick_rows, region_rows, RunParams};
    use crate::runner::{KindResult, RunOutput};
    use crate::stats::LatencySummary;
    use crate::workload::Workload;
    use crate::zipf::Distribution;

    #[test]
    fn the_file_system_is_the_longest_mount_point_holding_the_path() {
        let mounts = "/dev/vda / ext4 rw,relatime,discard 0 0\n\
                      proc /proc proc rw 0 0\n\
                      tmpfs /tmp tmpfs rw,size=1g 0 0\n\
                      /dev/vdb /tmp/data\\040dir xfs rw 0 0\n\
                      tmpfs /tmp/data\\040dir/ram tmpfs rw 0 0\n\
                      /dev/vdc /mnt btrfs rw 0 0\n\
                      overlay /mnt overlay rw 0 0\n";
        let fs = |p: &str| mount_fs_type(mounts, Path::new(p));
        assert_eq!(fs("/work/bench").as_deref(), Some("ext4"), "only / holds it");
        assert_eq!(fs("/tmp/x").as_deref(), Some("tmpfs"));
        assert_eq!(fs("/tmp/data dir/run-1").as_deref(), Some("xfs"), "an escaped space");
        assert_eq!(fs("/tmp/data dir/ram/a").as_deref(), Some("tmpfs"), "the deepest");
        assert_eq!(fs("/tmp/database").as_deref(), Some("tmpfs"), "a prefix of a name is not a parent");
        assert_eq!(fs("/mnt/a").as_deref(), Some("overlay"), "the last of two at one point");
        assert_eq!(mount_fs_type("", Path::new("/x")), None);
    }

    #[test]
    fn the_cpuidle_line_says_whether_an_idle_vcpu_polls() {
        assert_eq!(
            cpu_idle(Some("haltpoll\n"), Some("0\n")),
            "haltpoll, guest_halt_poll_ns 0 (an idle vCPU halts at once)"
        );
        assert_eq!(
            cpu_idle(Some("haltpoll\n"), Some("200000\n")),
            "haltpoll, guest_halt_poll_ns 200000 (an idle vCPU polls first)"
        );
        assert_eq!(cpu_idle(Some("intel_idle\n"), None), "intel_idle");
        assert_eq!(cpu_idle(None, Some("0")), "unknown");
    }

    fn output(ops_per_sec: f64, p50: u64, p99: u64) -> RunOutput {
        let latency = LatencySummary { count: 100, p50_us: p50, p99_us: p99, ..LatencySummary::default() };
        RunOutput {
            measured_ops: 100,
            measured_secs: 1.0,
            ops_per_sec,
            rows_per_sec: 0.0,
            latency,
            kinds: vec![KindResult { kind: OpKind::Update, latency }],
            total_ops: 120,
            total_writes: 120,
            errors: 0,
            first_errors: vec![],
            server_cpu_us_per_op: Some(50.0),
            client_cpu_us_per_op: Some(10.0),
            disk_bytes_per_write: None,
            server_cpu_secs: 0.005,
            client_cpu_secs: 0.001,
        }
    }

    fn record(system: System, row: &str, repeat: usize, attempt: usize, out: RunOutput) -> RunRecord {
        RunRecord {
            system,
            row: row.into(),
            repeat,
            attempt,
            contended: false,
            params: RunParams {
                workload: Workload::W,
                concurrency: 64,
                value_size: 100,
                records: 1000,
                distribution: Distribution::Uniform,
                stale_reads: false,
                warmup_secs: 1.0,
                duration_secs: 2.0,
                regions: None,
                etcd_connections: None,
            },
            fsync_probe: None,
            output: out,
            syncs: vec![],
            syncs_complete: true,
            regions_after: None,
        }
    }

    #[test]
    fn a_rerun_replaces_its_contended_attempt() {
        let runs = vec![
            record(System::Tessera, "put-c64", 0, 0, output(1.0, 1, 1)),
            record(System::Tessera, "put-c64", 0, 1, output(2.0, 1, 1)),
            record(System::Tessera, "put-c64", 1, 0, output(3.0, 1, 1)),
            record(System::Etcd, "put-c64", 0, 0, output(9.0, 1, 1)),
        ];
        let counted: Vec<f64> =
            counted_runs(&runs, "put-c64", System::Tessera).iter().map(|r| r.output.ops_per_sec).collect();
        assert_eq!(counted, vec![2.0, 3.0]);
    }

    #[test]
    fn the_comparison_has_medians_ranges_and_ratios() {
        let mut runs = Vec::new();
        for (i, (t, e)) in [(1000.0, 500.0), (1200.0, 600.0), (1100.0, 400.0)].into_iter().enumerate() {
            runs.push(record(System::Tessera, "put-c64", i, 0, output(t, 800, 4000)));
            runs.push(record(System::Etcd, "put-c64", i, 0, output(e, 1600, 2000)));
        }
        let lines = comparison(&quick_rows(), &runs);
        let ops = lines.iter().find(|l| l.metric == "ops/s").unwrap();
        assert_eq!(ops.row, "puts, 64 in flight");
        assert_eq!(ops.left.unwrap().median, 1100.0);
        assert_eq!(ops.right.unwrap().median, 500.0);
        assert!((ops.ratio.unwrap() - 2.2).abs() < 1e-9);
        let p99 = lines.iter().find(|l| l.metric == "p99 µs").unwrap();
        assert_eq!(p99.ratio, Some(2.0));
        assert!(!p99.higher_is_better);
        // Rows that did not run are left out.
        assert!(lines.iter().all(|l| l.row == "puts, 64 in flight"));

        let md = markdown_table(&lines, ["Tessera", "etcd", "Tessera/etcd"]);
        assert!(md.starts_with("| Row | Metric | Tessera | etcd | Tessera/etcd |\n|---|"));
        assert!(md.contains("| puts, 64 in flight | ops/s ↑ | 1100 (1000–1200) | 500 (400–600) | 2.20× |"), "{md}");
        assert!(md.contains("|  | p99 µs ↓ | 4000 | 2000 | 2.00× |"), "{md}");
    }

    #[test]
    fn sequential_rows_report_each_operation_kind() {
        let mut out = output(100.0, 1, 1);
        out.kinds = vec![
            KindResult {
                kind: OpKind::Update,
                latency: LatencySummary { p50_us: 900, p99_us: 2000, ..Default::default() },
            },
            KindResult {
                kind: OpKind::Read,
                latency: LatencySummary { p50_us: 300, p99_us: 700, ..Default::default() },
            },
        ];
        let runs = vec![record(System::Tessera, "seq", 0, 0, out)];
        let lines = comparison(&quick_rows(), &runs);
        let get99 = lines.iter().find(|l| l.metric == "get p99 µs").unwrap();
        assert_eq!(get99.left.unwrap().median, 700.0);
        assert!(get99.right.is_none() && get99.ratio.is_none());
        let scan = lines.iter().find(|l| l.metric == "scan-10 p50 µs").unwrap();
        assert!(scan.left.is_none(), "no scans ran");
    }

    #[test]
    fn the_regions_table_divides_eight_regions_by_one() {
        let [eight, one] = region_rows(256);
        let runs = vec![
            record(System::Tessera, &eight.id, 0, 0, output(3000.0, 1, 1)),
            record(System::Tessera, &one.id, 0, 0, output(2000.0, 1, 1)),
        ];
        let lines = regions_comparison(&eight, &one, &runs);
        assert_eq!(lines.iter().find(|l| l.metric == "ops/s").unwrap().ratio, Some(1.5));
    }

    #[test]
    fn crash_reports_pass_only_when_every_acknowledged_key_is_back() {
        let ok = CrashReport { acknowledged: 10, verified: 10, ..Default::default() };
        assert!(ok.passed() && ok.summary().starts_with("crash check PASSED"));
        let lost = CrashReport { acknowledged: 10, verified: 9, missing: 1, ..Default::default() };
        assert!(!lost.passed() && lost.summary().contains("1 missing"));
        assert!(!CrashReport::default().passed(), "nothing acknowledged proves nothing");
    }

    #[test]
    fn machine_facts_are_parsed_from_proc_files() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert_eq!(mem_total_gib("MemTotal:       16777216 kB\nMemFree: 1 kB\n"), Some(16.0));
        assert_eq!(cpu_model("nothing"), None);
    }
}
