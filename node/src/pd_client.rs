//! The node's PD client: registration and heartbeats.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;

use tessera_wire::quic::ConnectionPool;
use tessera_wire::{Error, NodeStats, PdRequest, PdResponse, RegionStats, Request, ResponseBody};

/// Calls PD, trying each endpoint in turn.
#[derive(Debug, Clone)]
pub struct PdClient {
    endpoints: Vec<String>,
    pool: ConnectionPool,
}

/// A PD call failure.
#[derive(Debug, thiserror::Error)]
pub enum PdCallError {
    /// PD answered with an error.
    #[error("PD refused: {0}")]
    Refused(Error),
    /// No PD endpoint answered.
    #[error("no PD endpoint reachable: {0}")]
    Unreachable(String),
}

impl PdClient {
    /// A client for `endpoints` through `pool`.
    pub fn new(endpoints: Vec<String>, pool: ConnectionPool) -> Self {
        PdClient { endpoints, pool }
    }

    /// Sends `req` to the first PD endpoint that answers.
    pub async fn call(&self, req: PdRequest) -> Result<PdResponse, PdCallError> {
        let mut last = String::from("no endpoints");
        for ep in &self.endpoints {
            match self.pool.call(ep, Request::Pd(req.clone()), Duration::from_secs(5)).await {
                Ok(Ok(ResponseBody::Pd(r))) => return Ok(r),
                Ok(Ok(other)) => last = format!("unexpected answer {other:?}"),
                Ok(Err(Error::PdNotLeader { .. })) => last = "not the PD leader".into(),
                Ok(Err(e)) => return Err(PdCallError::Refused(e)),
                Err(e) => {
                    if !e.may_have_been_delivered() {
                        self.pool.evict(ep);
                    }
                    last = e.to_string()
                }
            }
        }
        Err(PdCallError::Unreachable(last))
    }
}

/// Builds this node's store statistics; `host_cpu_busy_pct` from [`crate::host_cpu`].
pub(crate) fn node_stats(
    ctx: &crate::region::NodeContext,
    web: Option<&tessera_certs::WebCert>,
    host_cpu_busy_pct: Option<u8>,
) -> NodeStats {
    let regions = ctx.regions.all();
    NodeStats {
        region_count: regions.len() as u64,
        leader_count: regions.iter().filter(|r| r.is_leader()).count() as u64,
        used_bytes: regions.iter().map(|r| r.shared.approx.bytes().max(0) as u64).sum(),
        write_path: ctx.write_path_stats(),
        web_cert_hash: web.map(|w| w.hash().to_vec()),
        host_cpu_busy_pct,
        storage_failure: None,
    }
}

/// Turns the regions' cumulative read and write counters into rates between two reports.
#[derive(Debug, Default)]
pub(crate) struct LoadMeter {
    /// Per region: (writes, reads) at the last report, and when.
    last: std::collections::HashMap<tessera_wire::RegionId, (u64, u64, std::time::Instant)>,
}

impl LoadMeter {
    /// Writes and reads per second of `region` since the previous call for it (0 on the
    /// first call).
    fn rates(&mut self, region: &crate::region::Region, now: std::time::Instant) -> (u64, u64) {
        let writes = region.shared.writes.load(Ordering::Relaxed);
        let reads = region.shared.reads.load(Ordering::Relaxed);
        let rates = match self.last.get(&region.id) {
            Some(&(w, r, at)) if now > at => {
                let secs = now.duration_since(at).as_secs_f64().max(0.001);
                ((writes.saturating_sub(w) as f64 / secs) as u64, (reads.saturating_sub(r) as f64 / secs) as u64)
            }
            _ => (0, 0),
        };
        self.last.insert(region.id, (writes, reads, now));
        rates
    }
}

/// Region heartbeats for the regions this node leads: descriptor, learners, size and load.
pub(crate) fn led_region_stats(ctx: &crate::region::NodeContext, load: &mut LoadMeter) -> Vec<RegionStats> {
    let now = std::time::Instant::now();
    let regions = ctx.regions.all();
    load.last.retain(|id, _| regions.iter().any(|r| r.id == *id));
    regions
        .into_iter()
        .filter(|r| r.is_leader())
        .map(|r| {
            let desc = r.shared.descriptor();
            let (term, learners, merging) = {
                let m = r.raft.metrics();
                let m = m.borrow_watched();
                // Every member of the newest (possibly not yet applied) membership that is
                // not a voter of the applied descriptor: learners, and a learner being
                // promoted. PD treats these as hosted, so a replica mid-change is never
                // listed for destruction.
                let membership = m.membership_config.membership();
                let learners: Vec<tessera_wire::Peer> = membership
                    .nodes()
                    .filter(|(id, _)| desc.peer(tessera_wire::PeerId(**id)).is_none())
                    .map(|(id, n)| tessera_wire::Peer {
                        id: tessera_wire::PeerId(*id),
                        node_id: tessera_wire::NodeId(n.node_id),
                    })
                    .collect();
                let merging = r.shared.merging().map(|ms| tessera_wire::MergeReport {
                    target: tessera_wire::RegionId(ms.target),
                    target_epoch: tessera_wire::RegionEpoch { conf_ver: ms.target_epoch.0, version: ms.target_epoch.1 },
                    prepare_index: ms.prepare_index,
                });
                (m.current_term, learners, merging)
            };
            let (write_qps, read_qps) = load.rates(&r, now);
            RegionStats {
                region: desc,
                leader: r.peer,
                term,
                approximate_size: r.shared.approx.bytes().max(0) as u64,
                approximate_keys: r.shared.approx.keys().max(0) as u64,
                learners,
                write_qps,
                read_qps,
                split_off: r.shared.split_off.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                merging,
            }
        })
        .collect()
}
