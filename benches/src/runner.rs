//! The closed loop: `concurrency` tasks, each issuing its next operation when the previous
//! one completes, for a warm-up and then a measured interval.
//!
//! An operation counts as measured when it both started after the warm-up and completed
//! before the end; throughput is measured operations over the measured interval. CPU is
//! sampled at the start and end of the measured interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use crate::keys::{record_key, value};
use crate::procstat::{clock_ticks_per_sec, sample_cpu, ticks_to_us, BlockDevice};
use crate::stats::{new_histogram, LatencySummary};
use crate::target::Target;
use crate::workload::{sequential_op, OpKind, Workload, MAX_SCAN_LEN, SEQUENTIAL_SCAN_LEN};
use crate::zipf::{Distribution, KeyChooser};

/// Error messages kept per run (the rest are only counted).
const KEPT_ERRORS: usize = 5;
/// Pause after a failed operation, so a dead cluster does not turn the loop into a spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Operation mix.
    pub workload: Workload,
    /// Operations in flight (the sequential workload always has one).
    pub concurrency: usize,
    /// Unmeasured time first.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Records loaded (reads, updates and scans pick among `0..records`).
    pub records: u64,
    /// Value size in bytes.
    pub value_size: usize,
    /// Key choice.
    pub distribution: Distribution,
    /// Reads are stale (Tessera) / serializable (etcd) instead of linearizable.
    pub stale_reads: bool,
    /// Seed of the key and operation choices.
    pub seed: u64,
}

/// Shared between runs against one system: the next record number an insert creates.
#[derive(Debug, Clone)]
pub struct InsertCounter(Arc<AtomicU64>);

impl InsertCounter {
    /// Inserts will create records `from`, `from + 1`, ...
    pub fn new(from: u64) -> Self {
        InsertCounter(Arc::new(AtomicU64::new(from)))
    }

    fn take(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Latency and count of one operation kind.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KindResult {
    /// The kind.
    pub kind: OpKind,
    /// Measured latencies.
    pub latency: LatencySummary,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunOutput {
    /// Operations measured.
    pub measured_ops: u64,
    /// Length of the measured interval, seconds.
    pub measured_secs: f64,
    /// `measured_ops / measured_secs`.
    pub ops_per_sec: f64,
    /// Rows returned by measured scans, per second.
    pub rows_per_sec: f64,
    /// Every measured operation.
    pub latency: LatencySummary,
    /// Per operation kind (only kinds that ran).
    pub kinds: Vec<KindResult>,
    /// Successful operations over the whole run, warm-up included.
    pub total_ops: u64,
    /// Successful writes (updates and inserts) over the whole run, warm-up included.
    pub total_writes: u64,
    /// Failed operations over the whole run.
    pub errors: u64,
    /// The first few error messages.
    pub first_errors: Vec<String>,
    /// Server CPU per measured operation, µs (`None` without server processes to read).
    pub server_cpu_us_per_op: Option<f64>,
    /// This process's CPU per measured operation, µs.
    pub client_cpu_us_per_op: Option<f64>,
    /// Bytes written to the servers' block device over the measured interval, per measured
    /// write (updates and inserts): every replica's log, state machine and compaction
    /// together, and whatever else wrote to the device meanwhile (`None` without a device
    /// to read, or writes).
    pub disk_bytes_per_write: Option<f64>,
    /// Server CPU over the measured interval, seconds.
    pub server_cpu_secs: f64,
    /// This process's CPU over the measured interval, seconds.
    pub client_cpu_secs: f64,
}

impl RunOutput {
    /// The latency of `kind`, if it ran.
    pub fn kind(&self, kind: OpKind) -> Option<&LatencySummary> {
        self.kinds.iter().find(|k| k.kind == kind).map(|k| &k.latency)
    }
}

/// State shared by the workers of a run.
struct Shared {
    hists: [Mutex<Histogram<u64>>; 4],
    measured_rows: AtomicU64,
    total_ops: AtomicU64,
    total_writes: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    /// Load only: the next record to insert.
    load_next: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        Shared {
            hists: std::array::from_fn(|_| Mutex::new(new_histogram())),
            measured_rows: AtomicU64::new(0),
            total_ops: AtomicU64::new(0),
            total_writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
            load_next: AtomicU64::new(0),
        }
    }

    fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT_ERRORS {
            kept.push(message);
        }
    }
}

/// One operation to issue.
struct Op {
    kind: OpKind,
    key: Vec<u8>,
    scan_len: usize,
    /// A scan's exclusive end (see [`crate::keys::scan_end`]); empty otherwise.
    scan_end: Vec<u8>,
}

/// Issues `op`; returns the rows it read (scans) or 0.
async fn issue<T: Target>(target: &T, op: Op, value: Vec<u8>, stale: bool) -> Result<u64, crate::target::OpError> {
    match op.kind {
        OpKind::Read if stale => target.get_stale(op.key).await.map(|_| 0),
        OpKind::Read => target.get(op.key).await.map(|_| 0),
        OpKind::Update => target.put(op.key, value).await.map(|_| 0),
        OpKind::Insert => target.insert(op.key, value).await.map(|_| 0),
        OpKind::Scan => target.scan(op.key, op.scan_end, op.scan_len).await.map(|n| n as u64),
    }
}

/// Runs `spec` against `target`; CPU is read from `server_pids` and this process, bytes
/// written from `disk` (the servers' data directories' device).
pub async fn run<T: Target>(
    target: &T,
    spec: &RunSpec,
    inserts: &InsertCounter,
    server_pids: &[u32],
    disk: Option<&BlockDevice>,
) -> RunOutput {
    let concurrency = if spec.workload == Workload::S { 1 } else { spec.concurrency.max(1) };
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let shared = Arc::new(Shared::new());
    let chooser = Arc::new(KeyChooser::new(spec.distribution, spec.records));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (target, shared, chooser, inserts) = (target.clone(), shared.clone(), chooser.clone(), inserts.clone());
        let spec = spec.clone();
        workers.spawn(async move {
            let mut rng =
                rand::rngs::SmallRng::seed_from_u64(spec.seed ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mix = spec.workload.mix();
            let mut n = 0u64;
            while Instant::now() < end {
                let kind = if spec.workload == Workload::S { sequential_op(n) } else { mix.choose(rng.random()) };
                n += 1;
                let op = match kind {
                    OpKind::Insert => Op { kind, key: record_key(inserts.take()), scan_len: 0, scan_end: Vec::new() },
                    OpKind::Scan => {
                        let scan_len = if spec.workload == Workload::S {
                            SEQUENTIAL_SCAN_LEN
                        } else {
                            rng.random_range(1..=MAX_SCAN_LEN)
                        };
                        let key = record_key(chooser.next(&mut rng));
                        let scan_end = crate::keys::scan_end(&key, scan_len, spec.records);
                        Op { kind, key, scan_len, scan_end }
                    }
                    _ => Op { kind, key: record_key(chooser.next(&mut rng)), scan_len: 0, scan_end: Vec::new() },
                };
                let v = if matches!(kind, OpKind::Update | OpKind::Insert) {
                    value(spec.value_size, rng.random())
                } else {
                    Vec::new()
                };
                let began = Instant::now();
                let result = issue(&target, op, v, spec.stale_reads).await;
                let done = Instant::now();
                match result {
                    Ok(rows) => {
                        shared.total_ops.fetch_add(1, Ordering::Relaxed);
                        if matches!(kind, OpKind::Update | OpKind::Insert) {
                            shared.total_writes.fetch_add(1, Ordering::Relaxed);
                        }
                        if began >= measure_from && done <= end {
                            let us = (done - began).as_micros() as u64;
                            shared.hists[kind.index()]
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .saturating_record(us.max(1));
                            shared.measured_rows.fetch_add(rows, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        shared.error(format!("{kind:?}: {e}"));
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = sample_cpu(server_pids, disk);
    tokio::time::sleep_until(end.into()).await;
    let cpu_after = sample_cpu(server_pids, disk);
    while workers.join_next().await.is_some() {}
    finish(&shared, spec.duration, Some((cpu_before, cpu_after)), !server_pids.is_empty())
}

/// Inserts records `0..records` with `concurrency` tasks (workload L); all of it is
/// measured.
pub async fn load<T: Target>(
    target: &T,
    records: u64,
    value_size: usize,
    concurrency: usize,
    server_pids: &[u32],
    disk: Option<&BlockDevice>,
) -> RunOutput {
    let shared = Arc::new(Shared::new());
    let start = Instant::now();
    let cpu_before = sample_cpu(server_pids, disk);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (target, shared) = (target.clone(), shared.clone());
        workers.spawn(async move {
            loop {
                let i = shared.load_next.fetch_add(1, Ordering::Relaxed);
                if i >= records {
                    return;
                }
                // A failed insert is retried a few times: reads later expect every record.
                for attempt in 0..5 {
                    let began = Instant::now();
                    match target.insert(record_key(i), value(value_size, i)).await {
                        Ok(()) => {
                            let us = began.elapsed().as_micros() as u64;
                            shared.hists[OpKind::Insert.index()]
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .saturating_record(us.max(1));
                            shared.total_ops.fetch_add(1, Ordering::Relaxed);
                            shared.total_writes.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            shared.error(format!("Insert (attempt {}): {e}", attempt + 1));
                            tokio::time::sleep(ERROR_PAUSE * 10).await;
                        }
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let cpu_after = sample_cpu(server_pids, disk);
    finish(&shared, start.elapsed(), Some((cpu_before, cpu_after)), !server_pids.is_empty())
}

fn finish(
    shared: &Shared,
    measured: Duration,
    cpu: Option<(crate::procstat::CpuSample, crate::procstat::CpuSample)>,
    have_servers: bool,
) -> RunOutput {
    let mut all = new_histogram();
    let mut kinds = Vec::new();
    for kind in OpKind::ALL {
        let h = shared.hists[kind.index()].lock().unwrap_or_else(|p| p.into_inner());
        if !h.is_empty() {
            all.add(&*h).expect("histograms with equal bounds");
            kinds.push(KindResult { kind, latency: LatencySummary::of(&h) });
        }
    }
    let secs = measured.as_secs_f64().max(1e-9);
    let measured_ops = all.len();
    let tck = clock_ticks_per_sec();
    let (server_us, client_us) = match cpu {
        Some((a, b)) => (
            ticks_to_us(b.server_ticks.saturating_sub(a.server_ticks), tck),
            ticks_to_us(b.client_ticks.saturating_sub(a.client_ticks), tck),
        ),
        None => (0.0, 0.0),
    };
    let per_op = |us: f64| (measured_ops > 0).then(|| us / measured_ops as f64);
    let measured_writes: u64 =
        kinds.iter().filter(|k| matches!(k.kind, OpKind::Update | OpKind::Insert)).map(|k| k.latency.count).sum();
    let disk_bytes = cpu.and_then(|(a, b)| Some(b.disk_written_bytes?.saturating_sub(a.disk_written_bytes?)));
    RunOutput {
        measured_ops,
        measured_secs: secs,
        ops_per_sec: measured_ops as f64 / secs,
        rows_per_sec: shared.measured_rows.load(Ordering::Relaxed) as f64 / secs,
        latency: LatencySummary::of(&all),
        kinds,
        total_ops: shared.total_ops.load(Ordering::Relaxed),
        total_writes: shared.total_writes.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        first_errors: shared.first_errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        server_cpu_us_per_op: if have_servers { per_op(server_us) } else { None },
        client_cpu_us_per_op: per_op(client_us),
        disk_bytes_per_write: disk_bytes.filter(|_| measured_writes > 0).map(|b| b as f64 / measured_writes as f64),
        server_cpu_secs: server_us / 1e6,
        client_cpu_secs: client_us / 1e6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{OpError, System};
    use std::collections::BTreeMap;

    /// An in-memory target that takes 1 ms per operation.
    #[derive(Clone, Default)]
    struct Memory {
        map: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
        fail_every: u64,
        calls: Arc<AtomicU64>,
        /// Each put also appends 8 KiB to a file here and syncs it.
        disk: Option<Arc<tempfile::TempDir>>,
    }

    impl Memory {
        async fn step(&self) -> Result<(), OpError> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            if n.checked_rem(self.fail_every) == Some(0) {
                return Err(OpError(format!("injected failure {n}")));
            }
            Ok(())
        }
    }

    impl Target for Memory {
        fn system(&self) -> System {
            System::Tessera
        }
        async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
            self.step().await?;
            if let Some(dir) = &self.disk {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("log")).unwrap();
                f.write_all(&[1u8; 8192]).unwrap();
                f.sync_data().unwrap();
            }
            self.map.lock().unwrap().insert(key, value);
            Ok(())
        }
        async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, OpError> {
            self.step().await?;
            Ok(self.map.lock().unwrap().get(&key).cloned())
        }
        async fn get_stale(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, OpError> {
            self.get(key).await
        }
        async fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> Result<usize, OpError> {
            self.step().await?;
            Ok(self.map.lock().unwrap().range(start..end).take(limit).count())
        }
    }

    fn spec(workload: Workload, concurrency: usize) -> RunSpec {
        RunSpec {
            workload,
            concurrency,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            records: 200,
            value_size: 16,
            distribution: Distribution::Uniform,
            stale_reads: false,
            seed: 1,
        }
    }

    /// The bytes written to the device are counted per measured write: at least what the
    /// target wrote and synced for each, and nothing without a device or without writes.
    #[tokio::test]
    async fn disk_writes_are_counted_per_write_on_the_given_device() {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let Some(dev) = BlockDevice::of(dir.path()) else {
            // tmpfs or no sysfs here: nothing to count.
            return;
        };
        let m = Memory { disk: Some(dir), ..Memory::default() };
        load(&m, 200, 16, 8, &[], None).await;
        let out = run(&m, &spec(Workload::W, 2), &InsertCounter::new(200), &[], Some(&dev)).await;
        let per_write = out.disk_bytes_per_write.expect("writes were measured on a device");
        assert!(per_write >= 8192.0, "{per_write} bytes per write of 8 KiB appended and synced");
        let out = run(&m, &spec(Workload::W, 2), &InsertCounter::new(200), &[], None).await;
        assert_eq!(out.disk_bytes_per_write, None, "no device given");
        let out = run(&m, &spec(Workload::C, 2), &InsertCounter::new(200), &[], Some(&dev)).await;
        assert_eq!(out.disk_bytes_per_write, None, "no writes");
    }

    #[tokio::test]
    async fn load_inserts_every_record_once() {
        let m = Memory::default();
        let out = load(&m, 200, 16, 8, &[], None).await;
        assert_eq!(out.total_ops, 200);
        assert_eq!(out.kind(OpKind::Insert).unwrap().count, 200);
        assert_eq!(m.map.lock().unwrap().len(), 200);
        assert!(out.server_cpu_us_per_op.is_none());
    }

    #[tokio::test]
    async fn a_mixed_run_measures_each_kind_and_only_the_measured_interval() {
        let m = Memory::default();
        load(&m, 200, 16, 8, &[], None).await;
        let out = run(&m, &spec(Workload::A, 4), &InsertCounter::new(200), &[], None).await;
        let reads = out.kind(OpKind::Read).unwrap().count;
        let updates = out.kind(OpKind::Update).unwrap().count;
        assert!(reads > 100 && updates > 100, "{reads} reads, {updates} updates");
        assert_eq!(out.measured_ops, reads + updates);
        assert!(out.total_ops > out.measured_ops, "warm-up operations are not measured");
        assert!(out.latency.p50_us >= 1000, "each operation takes at least 1 ms");
        assert_eq!(out.errors, 0);
    }

    #[tokio::test]
    async fn workload_e_scans_rows_and_inserts_new_records() {
        let m = Memory::default();
        load(&m, 200, 16, 8, &[], None).await;
        let inserts = InsertCounter::new(200);
        let out = run(&m, &spec(Workload::E, 4), &inserts, &[], None).await;
        assert!(out.rows_per_sec > out.ops_per_sec, "scans return several rows each");
        assert!(m.map.lock().unwrap().len() > 200, "inserts created records");
        assert!(out.kind(OpKind::Update).is_none());
    }

    #[tokio::test]
    async fn the_sequential_workload_keeps_one_operation_in_flight() {
        let m = Memory::default();
        load(&m, 200, 16, 8, &[], None).await;
        let out = run(&m, &spec(Workload::S, 64), &InsertCounter::new(200), &[], None).await;
        // One in flight at >= 1 ms each: at most ~350 operations in 350 ms.
        assert!(out.total_ops < 360, "{}", out.total_ops);
        let counts: Vec<u64> = [OpKind::Update, OpKind::Read, OpKind::Scan].map(|k| out.kind(k).unwrap().count).into();
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 2, "{counts:?}");
    }

    #[tokio::test]
    async fn errors_are_counted_and_the_first_ones_kept() {
        let m = Memory { fail_every: 3, ..Memory::default() };
        let out = run(&m, &spec(Workload::W, 2), &InsertCounter::new(200), &[], None).await;
        assert!(out.errors > 5);
        assert_eq!(out.first_errors.len(), KEPT_ERRORS);
        assert!(out.first_errors[0].contains("injected failure"));
    }
}
