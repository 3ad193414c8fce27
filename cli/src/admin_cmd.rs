//! Cluster commands: `status` (nodes, and with `--regions` every region), `admin` (split, merge,
//! drain, remove-node, operators) and `load` (bulk writes with progress).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tessera_wire::{NodeId, NodeInfo, OperatorInfo, OperatorState, Peer, RegionInfo};

use crate::client_cmd::{human_bytes, show, Target};

/// `tessera admin ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Split the region containing KEY at KEY, and wait for the split to finish.
    Split {
        /// First key of the new right-hand region.
        #[arg(id = "KEY", value_name = "KEY")]
        key: String,
    },
    /// Merge the region containing KEY into its left neighbour, and wait for the merge to
    /// finish. Both regions must have their voters on the same nodes.
    Merge {
        /// A key of the region merged away.
        #[arg(id = "KEY", value_name = "KEY")]
        key: String,
    },
    /// Move every replica off NODE; it then receives none. Waits until it is empty
    /// (unless --no-wait).
    Drain {
        /// Node id.
        node: u64,
        /// Return once PD accepted the request.
        #[arg(long)]
        no_wait: bool,
    },
    /// Forget NODE. Refused while it still hosts replicas: drain it first.
    RemoveNode {
        /// Node id.
        node: u64,
    },
    /// Show running and recent placement operators with their outcome.
    Operators {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `tessera load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Keys to write.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Key prefix; keys are PREFIX followed by a zero-padded number.
    #[arg(long, default_value = "load/")]
    pub prefix: String,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

fn range_text(start: &[u8], end: &[u8]) -> String {
    format!(
        "[{}, {})",
        if start.is_empty() { "-inf".to_string() } else { show(start) },
        if end.is_empty() { "+inf".to_string() } else { show(end) }
    )
}

fn peer_text(p: &Peer) -> String {
    format!("{}@{}", p.id.0, p.node_id.0)
}

/// A region as `status --regions --json` prints it.
#[derive(Debug, Serialize)]
struct RegionJson {
    id: u64,
    start_key: String,
    end_key: String,
    conf_ver: u64,
    version: u64,
    voters: Vec<PeerJson>,
    learners: Vec<PeerJson>,
    leader: Option<PeerJson>,
    approximate_bytes: u64,
    approximate_keys: u64,
}

#[derive(Debug, Serialize)]
struct PeerJson {
    peer: u64,
    node: u64,
}

impl From<&Peer> for PeerJson {
    fn from(p: &Peer) -> Self {
        PeerJson { peer: p.id.0, node: p.node_id.0 }
    }
}

impl From<&RegionInfo> for RegionJson {
    fn from(r: &RegionInfo) -> Self {
        let d = &r.region;
        RegionJson {
            id: d.id.0,
            start_key: show(&d.start_key),
            end_key: show(&d.end_key),
            conf_ver: d.epoch.conf_ver,
            version: d.epoch.version,
            voters: d.peers.iter().map(PeerJson::from).collect(),
            learners: r.learners.iter().map(PeerJson::from).collect(),
            leader: r.leader.as_ref().map(PeerJson::from),
            approximate_bytes: r.approximate_size,
            approximate_keys: r.approximate_keys,
        }
    }
}

/// A node as `status --json` prints it.
#[derive(Debug, Serialize)]
struct NodeJson {
    id: u64,
    addr: String,
    state: String,
    draining: bool,
    regions: u64,
    leaders: u64,
    approximate_bytes: u64,
    approximate_keys: u64,
    last_heartbeat_ms_ago: u64,
    /// Percent of its host's CPU time busy over about the last 10 s; null if unknown.
    host_cpu_busy_pct: Option<u8>,
    /// Why its storage fail-stopped, as it reported; null for a healthy node.
    storage_failure: Option<String>,
}

/// Approximate keys per node: the sum over the regions with a replica on it.
fn keys_per_node(regions: &[RegionInfo]) -> BTreeMap<NodeId, u64> {
    let mut keys = BTreeMap::new();
    for r in regions {
        for p in r.region.peers.iter().chain(&r.learners) {
            *keys.entry(p.node_id).or_insert(0) += r.approximate_keys;
        }
    }
    keys
}

fn node_json(n: &NodeInfo, keys: &BTreeMap<NodeId, u64>) -> NodeJson {
    NodeJson {
        id: n.id.0,
        addr: n.addr.clone(),
        state: format!("{:?}", n.state),
        draining: n.draining,
        regions: n.region_count,
        leaders: n.leader_count,
        approximate_bytes: n.used_bytes,
        approximate_keys: keys.get(&n.id).copied().unwrap_or(0),
        last_heartbeat_ms_ago: n.last_heartbeat_ms_ago,
        host_cpu_busy_pct: n.host_cpu_busy_pct,
        storage_failure: n.storage_failure.clone(),
    }
}

/// `tessera status [--regions] [--json]`.
pub async fn status(t: &Target, regions: bool, json: bool) -> anyhow::Result<ExitCode> {
    let c = t.connect().await?;
    let (nodes, infos) = c.cluster_status().await?;
    let keys = keys_per_node(&infos);
    if json {
        #[derive(Serialize)]
        struct Status {
            nodes: Vec<NodeJson>,
            #[serde(skip_serializing_if = "Option::is_none")]
            regions: Option<Vec<RegionJson>>,
            region_count: usize,
        }
        let status = Status {
            nodes: nodes.iter().map(|n| node_json(n, &keys)).collect(),
            regions: regions.then(|| infos.iter().map(RegionJson::from).collect()),
            region_count: infos.len(),
        };
        writeln!(out(), "{}", serde_json::to_string_pretty(&status)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut o = out();
    writeln!(o, "NODES")?;
    writeln!(
        o,
        "{:<6} {:<22} {:<9} {:>8} {:>8} {:>10} {:>10} {:>9}",
        "ID", "ADDRESS", "STATE", "REGIONS", "LEADERS", "BYTES", "KEYS", "HOST CPU"
    )?;
    for n in &nodes {
        let state = if n.draining { format!("{:?}*", n.state) } else { format!("{:?}", n.state) };
        writeln!(
            o,
            "{:<6} {:<22} {:<9} {:>8} {:>8} {:>10} {:>10} {:>9}",
            n.id.0,
            n.addr,
            state,
            n.region_count,
            n.leader_count,
            human_bytes(n.used_bytes),
            keys.get(&n.id).copied().unwrap_or(0),
            n.host_cpu_busy_pct.map_or_else(|| "-".to_string(), |p| format!("{p}%"))
        )?;
    }
    if nodes.iter().any(|n| n.draining) {
        writeln!(o, "(* draining)")?;
    }
    for n in nodes.iter().filter(|n| n.storage_failure.is_some()) {
        let reason = n.storage_failure.as_deref().unwrap_or_default();
        writeln!(o, "node {}: storage failed, serving nothing until restarted: {reason}", n.id.0)?;
    }
    let led = infos.iter().filter(|r| r.leader.is_some()).count();
    writeln!(o)?;
    writeln!(o, "{} regions, {} with a leader", infos.len(), led)?;
    if !regions {
        writeln!(o, "(`tessera status --regions` lists them)")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(o)?;
    writeln!(
        o,
        "{:<6} {:<30} {:<8} {:<30} {:<10} {:>10} {:>8}",
        "ID", "RANGE", "EPOCH", "PEERS (peer@node, L: learner)", "LEADER", "BYTES", "KEYS"
    )?;
    for r in &infos {
        let d = &r.region;
        let mut peers: Vec<String> = d.peers.iter().map(peer_text).collect();
        peers.extend(r.learners.iter().map(|p| format!("L:{}", peer_text(p))));
        writeln!(
            o,
            "{:<6} {:<30} {:<8} {:<30} {:<10} {:>10} {:>8}",
            d.id.0,
            range_text(&d.start_key, &d.end_key),
            format!("{}/{}", d.epoch.conf_ver, d.epoch.version),
            peers.join(","),
            r.leader.as_ref().map_or("none".into(), peer_text),
            human_bytes(r.approximate_size),
            r.approximate_keys
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for operator `id` to finish, printing its outcome; exit 0 only if it succeeded.
async fn wait_operator(c: &tessera::Client, id: u64, timeout: Duration) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    loop {
        let ops = c.operators().await?;
        if let Some(op) = ops.iter().find(|o| o.id == id) {
            match &op.state {
                OperatorState::Running => {}
                OperatorState::Succeeded => {
                    writeln!(out(), "operator {id} ({}) succeeded in {} ms", op.kind, op.took_ms.unwrap_or(0))?;
                    return Ok(ExitCode::SUCCESS);
                }
                other => {
                    writeln!(out(), "operator {id} ({}) did not succeed: {}", op.kind, state_text(other))?;
                    return Ok(ExitCode::from(1));
                }
            }
        }
        if start.elapsed() > timeout {
            anyhow::bail!("operator {id} still running after {} s; see `tessera admin operators`", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_text(s: &OperatorState) -> String {
    match s {
        OperatorState::Running => "running".into(),
        OperatorState::Succeeded => "succeeded".into(),
        OperatorState::TimedOut => "timed out".into(),
        OperatorState::Cancelled { reason } => format!("cancelled: {reason}"),
    }
}

/// `tessera admin ...`.
pub async fn admin(t: &Target, cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    let c = t.connect().await?;
    match cmd {
        AdminCommand::Split { key } => {
            // PD answers `ServerBusy` while the region is being changed or has no leader:
            // the SDK retries that within its deadline.
            let id = c.split_region(key.as_bytes()).await.context("asking PD to split")?;
            writeln!(out(), "split planned as operator {id}")?;
            wait_operator(&c, id, Duration::from_secs(60)).await
        }
        AdminCommand::Merge { key } => {
            let id = c.merge_region(key.as_bytes()).await.context("asking PD to merge")?;
            writeln!(out(), "merge planned as operator {id}")?;
            wait_operator(&c, id, Duration::from_secs(60)).await
        }
        AdminCommand::Drain { node, no_wait } => {
            c.drain_node(NodeId(node)).await.context("asking PD to drain the node")?;
            writeln!(out(), "node {node} is draining")?;
            if no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            let start = Instant::now();
            let mut last = u64::MAX;
            loop {
                let (_, regions) = c.cluster_status().await?;
                let left = regions
                    .iter()
                    .filter(|r| r.region.peers.iter().chain(&r.learners).any(|p| p.node_id.0 == node))
                    .count() as u64;
                if left != last {
                    writeln!(out(), "{left} replicas left on node {node} ({} s)", start.elapsed().as_secs())?;
                    last = left;
                }
                if left == 0 {
                    writeln!(out(), "node {node} is empty; `tessera admin remove-node {node}` forgets it")?;
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        AdminCommand::RemoveNode { node } => {
            c.remove_node(NodeId(node)).await.context("asking PD to remove the node")?;
            writeln!(out(), "node {node} removed")?;
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Operators { json } => {
            let ops = c.operators().await?;
            if json {
                #[derive(Serialize)]
                struct OpJson<'a> {
                    id: u64,
                    region: u64,
                    kind: &'a str,
                    reason: &'a str,
                    state: String,
                    started_ms_ago: u64,
                    took_ms: Option<u64>,
                }
                let list: Vec<OpJson<'_>> = ops
                    .iter()
                    .map(|o: &OperatorInfo| OpJson {
                        id: o.id,
                        region: o.region_id.0,
                        kind: &o.kind,
                        reason: &o.reason,
                        state: state_text(&o.state),
                        started_ms_ago: o.started_ms_ago,
                        took_ms: o.took_ms,
                    })
                    .collect();
                writeln!(out(), "{}", serde_json::to_string_pretty(&list)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut o = out();
            writeln!(o, "{:<6} {:<7} {:<44} {:<28} {:<22} {:>9}", "ID", "REGION", "STEP", "REASON", "STATE", "TOOK")?;
            for op in &ops {
                writeln!(
                    o,
                    "{:<6} {:<7} {:<44} {:<28} {:<22} {:>9}",
                    op.id,
                    op.region_id.0,
                    op.kind,
                    op.reason,
                    state_text(&op.state),
                    op.took_ms.map_or("-".into(), |t| format!("{t} ms"))
                )?;
            }
            if ops.is_empty() {
                writeln!(o, "(no operators yet)")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tessera load`: writes `--keys` generated keys through the SDK, `--concurrency` at a
/// time, with a progress bar; prints keys/s and latency percentiles.
pub async fn load(t: &Target, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let c = t.connect().await?;
    let value = vec![b'v'; args.value_size];
    let width = args.keys.max(1).to_string().len().max(8);
    let next = Arc::new(AtomicU64::new(0));
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(args.keys);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} keys  {per_sec}  eta {eta}")
                .expect("valid progress template"),
        );
        bar
    };
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (c, next, value, bar, prefix) = (c.clone(), next.clone(), value.clone(), bar.clone(), args.prefix.clone());
        let total = args.keys;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, tessera::Error>(latencies);
                }
                let key = format!("{prefix}{i:0width$}");
                let t0 = Instant::now();
                c.put(key.as_bytes(), &value).await?;
                latencies.push(t0.elapsed());
                bar.inc(1);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(args.keys as usize);
    for w in workers {
        latencies.extend(w.await.context("load worker")?.context("writing")?);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    writeln!(
        out(),
        "wrote {} keys of {} B in {:.1} s: {:.0} keys/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.keys,
        args.value_size,
        elapsed.as_secs_f64(),
        args.keys as f64 / elapsed.as_secs_f64().max(1e-9),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    )?;
    Ok(ExitCode::SUCCESS)
}
