//! Log-sync counters of the servers, read before and after a run.
//!
//! Tessera's nodes report cumulative write-path counters in their PD heartbeats, so PD's
//! copy lags by up to one heartbeat: a reading only counts once every node has
//! heartbeated after the moment it must cover. etcd exposes its counters directly on
//! `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tessera_benches::matrix::NodeSyncs;
use tessera_benches::metrics::{scrape_etcd, EtcdDisk};
use tessera_wire::WritePathStats;

/// Node id -> counters, and whether every node had heartbeated after the requested instant.
#[derive(Debug, Clone, Default)]
pub struct TesseraCounters {
    pub nodes: BTreeMap<u64, WritePathStats>,
    pub fresh: bool,
}

/// Margin after the instant to cover: followers outside the acknowledging majority may
/// still be syncing the last entries.
const SETTLE: Duration = Duration::from_millis(200);

/// Tessera's counters as of a heartbeat sent after `after` (+ a settling margin), polling
/// PD for at most `timeout`; the last reading, marked not fresh, if it takes longer.
pub async fn tessera(client: &tessera::Client, after: Instant, timeout: Duration) -> anyhow::Result<TesseraCounters> {
    let deadline = Instant::now() + timeout;
    let after = after + SETTLE;
    loop {
        let asked = Instant::now();
        let nodes = client.nodes().await?;
        let fresh = !nodes.is_empty()
            && nodes.iter().all(|n| {
                asked.checked_sub(Duration::from_millis(n.last_heartbeat_ms_ago)).is_some_and(|heard| heard >= after)
            });
        let counters = TesseraCounters { nodes: nodes.iter().map(|n| (n.id.0, n.write_path)).collect(), fresh };
        if fresh || Instant::now() >= deadline {
            return Ok(counters);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per-node syncs between two readings; `writes` is the run's successful writes.
pub fn tessera_deltas(before: &TesseraCounters, after: &TesseraCounters, writes: u64) -> Vec<NodeSyncs> {
    after
        .nodes
        .iter()
        .map(|(id, a)| {
            let b = before.nodes.get(id).cloned().unwrap_or_default();
            let fsyncs = a.log_syncs.saturating_sub(b.log_syncs);
            NodeSyncs {
                node: format!("node-{id}"),
                fsyncs,
                log_entries: Some(a.log_entries.saturating_sub(b.log_entries)),
                log_bytes: Some(a.log_bytes.saturating_sub(b.log_bytes)),
                backend_commits: None,
                writes_per_fsync: (fsyncs > 0 && writes > 0).then(|| writes as f64 / fsyncs as f64),
            }
        })
        .collect()
}

/// Every member's counters (`None` for a member that could not be scraped).
pub async fn etcd(urls: &[String]) -> Vec<Option<EtcdDisk>> {
    futures::future::join_all(urls.iter().map(|u| async move { scrape_etcd(u).await.ok() })).await
}

pub fn etcd_deltas(
    names: &[String],
    before: &[Option<EtcdDisk>],
    after: &[Option<EtcdDisk>],
    writes: u64,
) -> Vec<NodeSyncs> {
    names
        .iter()
        .zip(before.iter().zip(after))
        .filter_map(|(name, (b, a))| {
            let (b, a) = ((*b)?, (*a)?);
            let fsyncs = (a.wal_fsyncs - b.wal_fsyncs).max(0.0) as u64;
            Some(NodeSyncs {
                node: name.clone(),
                fsyncs,
                log_entries: None,
                log_bytes: None,
                backend_commits: Some((a.backend_commits - b.backend_commits).max(0.0) as u64),
                writes_per_fsync: (fsyncs > 0 && writes > 0).then(|| writes as f64 / fsyncs as f64),
            })
        })
        .collect()
}
