//! `tessera-bench run`: one workload against a cluster that is already running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tessera::{Client, ClientConfig, TlsFiles};
use tessera_benches::procstat::BlockDevice;
use tessera_benches::runner::{self, InsertCounter, RunOutput, RunSpec};
use tessera_benches::{Distribution, EtcdTarget, System, Target, TesseraTarget, Workload};
use tessera_cli::layout::DevLayout;

use crate::counters;

/// Options of `tessera-bench run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// System to load.
    #[arg(long, value_enum)]
    pub target: System,
    /// Workload: l (load), w (updates), a (50/50), b (95/5), c (reads), e (scans), s
    /// (sequential put/get/scan-10).
    #[arg(long, value_enum, ignore_case = true, default_value_t = Workload::W)]
    pub workload: Workload,
    /// Operations in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Warm-up seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Records the workload picks from (and that --load inserts).
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Insert the records first (as workload L does) before running the workload.
    #[arg(long)]
    pub load: bool,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Key choice.
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,
    /// Stale reads (Tessera) / serializable reads (etcd) instead of linearizable ones.
    #[arg(long)]
    pub stale: bool,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tessera: the data directory of a running `tessera dev` (finds PD and the certificates).
    #[arg(long, default_value = "./tessera-data", env = "TESSERA_DATA")]
    pub data: PathBuf,
    /// Tessera: PD address, instead of --data (with --certs and --client-name).
    #[arg(long)]
    pub pd: Option<String>,
    /// Tessera with --pd: directory holding ca.pem and client-NAME.pem / client-NAME-key.pem.
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Tessera with --pd: client certificate name.
    #[arg(long, default_value = "dev")]
    pub client_name: String,
    /// etcd: client URLs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// etcd: gRPC connections, used round-robin.
    #[arg(long, default_value_t = 8)]
    pub etcd_conns: usize,
    /// Server process ids whose CPU to count (comma-separated), e.g. from `pgrep`.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Count the bytes written to the block device holding this path (the servers' data
    /// directory), per write.
    #[arg(long, value_name = "PATH")]
    pub disk_of: Option<std::path::PathBuf>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

async fn tessera_client(args: &RunArgs) -> anyhow::Result<Client> {
    let (pd, tls) = match &args.pd {
        Some(pd) => {
            let certs = args.certs.clone().context("--pd needs --certs")?;
            (pd.clone(), TlsFiles::client(&certs, &args.client_name))
        }
        None => {
            let layout = DevLayout::new(&args.data);
            let pd = layout.read_addrs()?.get("pd").cloned().with_context(|| {
                format!("no `tessera dev` cluster in {} (pass --data or --pd)", args.data.display())
            })?;
            (pd, TlsFiles::client(&layout.certs(), "dev"))
        }
    };
    Client::connect(ClientConfig::new(vec![pd], Some(tls))).await.context("connecting to Tessera")
}

/// The block device of `--disk-of`, if it is on one.
fn disk(args: &RunArgs) -> Option<BlockDevice> {
    let path = args.disk_of.as_deref()?;
    let dev = BlockDevice::of(path);
    if dev.is_none() {
        eprintln!("warning: {} is not on a block device with statistics: disk writes not counted", path.display());
    }
    dev
}

/// Inserts `--records` records (workload L).
async fn load<T: Target>(target: &T, args: &RunArgs, disk: Option<&BlockDevice>) -> RunOutput {
    runner::load(target, args.records, args.value_size, args.concurrency.max(1), &args.server_pids, disk).await
}

/// Inserts the records first if asked (before any counter is read).
async fn preload<T: Target>(target: &T, args: &RunArgs, disk: Option<&BlockDevice>) {
    if args.load && args.workload != Workload::L {
        eprintln!("loading {} records ...", args.records);
        let out = load(target, args, disk).await;
        eprintln!("loaded: {:.0} inserts/s, {} errors", out.ops_per_sec, out.errors);
    }
}

async fn go<T: Target>(target: &T, args: &RunArgs, disk: Option<&BlockDevice>) -> RunOutput {
    if args.workload == Workload::L {
        return load(target, args, disk).await;
    }
    let spec = RunSpec {
        workload: args.workload,
        concurrency: args.concurrency,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        records: args.records,
        value_size: args.value_size,
        distribution: args.distribution,
        stale_reads: args.stale,
        seed: args.seed,
    };
    runner::run(target, &spec, &InsertCounter::new(args.records + 1_000_000_000), &args.server_pids, disk).await
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration > 0.0 && args.warmup >= 0.0, "--duration must be > 0 and --warmup >= 0");
    let disk = disk(&args);
    let (out, syncs) = match args.target {
        System::Tessera => {
            let client = tessera_client(&args).await?;
            preload(&TesseraTarget::new(client.clone()), &args, disk.as_ref()).await;
            let before = counters::tessera(&client, Instant::now(), Duration::from_secs(3)).await?;
            let out = go(&TesseraTarget::new(client.clone()), &args, disk.as_ref()).await;
            let after = counters::tessera(&client, Instant::now(), Duration::from_secs(5)).await?;
            let syncs = counters::tessera_deltas(&before, &after, out.total_writes);
            (out, syncs)
        }
        System::Etcd => {
            let target = EtcdTarget::connect(&args.etcd_endpoints, args.etcd_conns)
                .await
                .map_err(|e| anyhow::anyhow!("connecting to etcd: {e}"))?;
            let names: Vec<String> = args.etcd_endpoints.clone();
            preload(&target, &args, disk.as_ref()).await;
            let before = counters::etcd(&args.etcd_endpoints).await;
            let out = go(&target, &args, disk.as_ref()).await;
            let after = counters::etcd(&args.etcd_endpoints).await;
            (out.clone(), counters::etcd_deltas(&names, &before, &after, out.total_writes))
        }
    };
    println!(
        "{} workload {} at {} in flight: {:.0} ops/s over {:.1} s{}",
        args.target,
        args.workload,
        if args.workload == Workload::S { 1 } else { args.concurrency },
        out.ops_per_sec,
        out.measured_secs,
        if out.rows_per_sec > 0.0 { format!(", {:.0} rows/s", out.rows_per_sec) } else { String::new() }
    );
    for k in &out.kinds {
        let l = &k.latency;
        println!(
            "  {:<7} n={:<8} p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
            format!("{:?}", k.kind).to_lowercase(),
            l.count,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us
        );
    }
    if let Some(cpu) = out.server_cpu_us_per_op {
        println!("  server CPU {cpu:.0} µs/op");
    }
    if let Some(cpu) = out.client_cpu_us_per_op {
        println!("  client CPU {cpu:.0} µs/op");
    }
    if let Some(b) = out.disk_bytes_per_write {
        println!("  disk {:.1} KiB written per write", b / 1024.0);
    }
    for s in &syncs {
        println!(
            "  {}: {} fsyncs{}",
            s.node,
            s.fsyncs,
            s.writes_per_fsync.map(|w| format!(", {w:.1} writes/fsync")).unwrap_or_default()
        );
    }
    if out.errors > 0 {
        println!("  {} errors; first: {:?}", out.errors, out.first_errors);
    }
    if let Some(path) = &args.json {
        let body = serde_json::json!({ "target": args.target, "workload": args.workload, "concurrency": args.concurrency, "output": out, "syncs": syncs });
        std::fs::write(path, serde_json::to_string_pretty(&body)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
