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

/// Builds this node's store statistics.
pub(crate) fn node_stats(ctx: &crate::region::NodeContext) -> NodeStats {
    let regions = ctx.regions.all();
    NodeStats {
        region_count: regions.len() as u64,
        leader_count: regions.iter().filter(|r| r.is_leader()).count() as u64,
        used_bytes: regions.iter().map(|r| r.shared.approx_bytes.load(Ordering::Relaxed).max(0) as u64).sum(),
        write_path: ctx.write_path_stats(),
    }
}

/// Region heartbeats for the regions this node leads.
pub(crate) fn led_region_stats(ctx: &crate::region::NodeContext) -> Vec<RegionStats> {
    ctx.regions
        .all()
        .into_iter()
        .filter(|r| r.is_leader())
        .map(|r| {
            let term = r.raft.metrics().borrow_watched().current_term;
            RegionStats {
                region: r.shared.descriptor(),
                leader: r.peer,
                term,
                approximate_size: r.shared.approx_bytes.load(Ordering::Relaxed).max(0) as u64,
                approximate_keys: r.shared.approx_keys.load(Ordering::Relaxed).max(0) as u64,
            }
        })
        .collect()
}
