//! The node's request service: KV requests from clients, Raft messages from peers.

mod kv;
mod raft_rpc;
mod read_pool;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tessera_wire::quic::{PeerInfo, Service};
use tessera_wire::{Error, KvResponse, Limits, Request, Response, ResponseBody, Role};

use crate::region::NodeContext;

/// Serves one node's requests.
#[derive(Debug)]
pub struct NodeService {
    pub(crate) ctx: NodeContext,
    pub(crate) limits: Limits,
    pub(crate) default_timeout: Duration,
    pub(crate) reads: read_pool::ReadPool,
    pub(crate) admission: crate::config::Admission,
    pub(crate) session_ttl_ms: u64,
    /// See [`crate::NodeConfig::lease_reads`].
    pub(crate) lease_reads: bool,
    /// Revoked token ids, from PD's heartbeat answers.
    pub(crate) revocations: tessera_certs::Revocations,
    /// A leader that has heard from no quorum of its region for longer refuses writes and
    /// linearizable reads (`NodeService::quorum_lost`): twice the longest election timeout.
    pub(crate) quorum_silence: Duration,
}

impl NodeService {
    /// A service for the node described by `ctx`.
    pub(crate) fn new(ctx: NodeContext, cfg: &crate::NodeConfig) -> Self {
        NodeService {
            ctx,
            limits: cfg.limits,
            default_timeout: cfg.default_request_timeout,
            reads: read_pool::ReadPool::new(cfg.admission.max_concurrent_reads),
            admission: cfg.admission.clone(),
            session_ttl_ms: u64::try_from(cfg.session_ttl.as_millis()).unwrap_or(u64::MAX),
            lease_reads: cfg.lease_reads,
            revocations: Default::default(),
            quorum_silence: Duration::from_millis(cfg.raft.election_max_ms.saturating_mul(2)),
        }
    }

    /// A request that brings work begins: see `crate::idle_poll`.
    pub(crate) fn idle_poll_request(&self) -> Option<crate::idle_poll::InFlight<'_>> {
        self.ctx.idle_poll.as_ref().map(|poller| poller.request())
    }
}

impl Service for NodeService {
    // The trait spells out `Send + 'static`; keeping the signature explicit documents it.
    #[allow(clippy::manual_async_fn)]
    fn call(self: Arc<Self>, peer: Arc<PeerInfo>, request: Request) -> impl Future<Output = Response> + Send + 'static {
        async move {
            // A failed database commit or Raft log write: the node serves nothing, not even
            // a stale read, until restarted (its replicas no longer catch up, so what they
            // hold grows arbitrarily old).
            if let Some(reason) = self.ctx.storage_failure() {
                return Err(Error::StorageUnavailable { reason });
            }
            match request {
                Request::Kv(mut req) => {
                    let _in_flight = self.idle_poll_request();
                    if let Some(grant) = &peer.grant {
                        // Every request, not only the handshake: a connection outlives its
                        // token's expiry and revocation.
                        if self.revocations.is_revoked(grant.id) {
                            return Err(Error::Unauthenticated {
                                reason: format!("token {:016x} was revoked", grant.id),
                            });
                        }
                        match grant.check(req.op, tessera_certs::unix_now())? {
                            Some(op) => req.op = op,
                            // A scan whose range holds no key of the token's prefix.
                            None => return Ok(ResponseBody::Kv(KvResponse::Scan { pairs: vec![], resume_key: None })),
                        }
                    }
                    // Boxed: a request's future is as large as its largest branch, and
                    // Raft messages need far less room than a key-value request.
                    Box::pin(self.kv(req)).await
                }
                Request::Raft(req) => match peer.role {
                    Role::Node(_) => self.raft(req).await,
                    _ => Err(Error::PermissionDenied { reason: "only nodes may send Raft messages".into() }),
                },
                Request::Pd(_) => Err(Error::InvalidRequest { reason: "this is a storage node, not PD".into() }),
            }
        }
    }
}
