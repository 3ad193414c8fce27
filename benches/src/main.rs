//! `tessera-load`: a closed-loop load generator.
//!
//! By default it starts an in-process dev cluster (PD + 3 nodes, 4 regions) in a temporary
//! directory, so it can also report the group commit: how many Raft log entries shared each
//! fsync. With `--data DIR` it targets a running `tessera dev` cluster instead.
//!
//! ```text
//! cargo run --release -p tessera-benches --bin tessera-load -- --requests 20000 --concurrency 64
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tessera::{Client, ClientConfig, TlsFiles};
use tessera_cli::dev::{self, DevArgs, DevCluster};
use tessera_cli::layout::DevLayout;

/// Closed-loop put/get load against Tessera.
#[derive(Debug, Parser)]
struct Args {
    /// Target a running `tessera dev` cluster in this data directory instead of starting one.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Total operations.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Operations in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Operation: put or get.
    #[arg(long, default_value = "put")]
    op: String,
}

/// Key `i`, with a first byte spread over the key space so that the load reaches every
/// region (initial split points are spread over the first byte).
fn bench_key(i: usize) -> Vec<u8> {
    let mut k = vec![(i.wrapping_mul(151) % 256) as u8];
    k.extend_from_slice(format!("bench-{i:08}").as_bytes());
    k
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.concurrency > 0 && args.requests > 0 && args.keys > 0, "counts must be positive");
    anyhow::ensure!(args.op == "put" || args.op == "get", "--op must be put or get");
    let _tmp;
    let (cluster, pd, certs): (Option<DevCluster>, String, std::path::PathBuf) = match &args.data {
        Some(dir) => {
            let layout = DevLayout::new(dir);
            let pd = layout.read_addrs()?.get("pd").cloned().context("no dev cluster in --data")?;
            (None, pd, layout.certs())
        }
        None => {
            _tmp = tempfile::tempdir()?;
            eprintln!("starting an in-process cluster (PD + 3 nodes, 4 regions) in {}", _tmp.path().display());
            let c = dev::start(_tmp.path(), &DevArgs::new(3, 4)).await?;
            anyhow::ensure!(c.wait_ready(4, Duration::from_secs(30)).await, "cluster did not become ready");
            let pd = c.pd_addr.clone();
            (Some(c), pd, DevLayout::new(_tmp.path()).certs())
        }
    };
    let client = Client::connect(ClientConfig::new(vec![pd], Some(TlsFiles::client(&certs, "dev")))).await?;
    let value = vec![b'v'; args.value_size];
    let key = |i: usize| bench_key(i % args.keys);
    if args.op == "get" {
        eprintln!("loading {} keys ...", args.keys);
        for chunk in (0..args.keys).collect::<Vec<_>>().chunks(256) {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = chunk.iter().map(|i| (key(*i), value.clone())).collect();
            client.batch_put(&pairs).await?;
        }
    }
    let before: Vec<(u64, u64, u64)> = cluster.iter().flat_map(|c| c.nodes.iter().map(|n| n.commit_stats())).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, value) = (client.clone(), next.clone(), value.clone());
        let (requests, op) = (args.requests, args.op.clone());
        let keys = args.keys;
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, tessera::Error>(lat);
                }
                let k = bench_key(i.wrapping_mul(2_654_435_761) % keys);
                let t = Instant::now();
                if op == "put" {
                    client.put(&k, &value).await?;
                } else {
                    client.get(&k).await?;
                }
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::with_capacity(args.requests);
    for w in workers {
        lat.extend(w.await??);
    }
    let elapsed = start.elapsed();
    lat.sort();
    println!(
        "{} {} ops, {} in flight, {}-byte values: {:.0} ops/s over {:.2} s",
        args.requests,
        args.op,
        args.concurrency,
        args.value_size,
        args.requests as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.9).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    if let Some(c) = cluster {
        for (n, b) in c.nodes.iter().zip(before) {
            let a = n.commit_stats();
            let (fsyncs, jobs, entries) = (a.0 - b.0, a.1 - b.1, a.2 - b.2);
            println!(
                "node {}: {} fsyncs, {} jobs, {} raft log entries: {:.1} entries and {:.1} jobs per fsync",
                n.node_id().0,
                fsyncs,
                jobs,
                entries,
                entries as f64 / fsyncs.max(1) as f64,
                jobs as f64 / fsyncs.max(1) as f64
            );
        }
        c.shutdown().await;
    }
    Ok(())
}
