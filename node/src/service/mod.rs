//! The node's request service: KV requests from clients, Raft messages from peers.

mod kv;
mod raft_rpc;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tessera_wire::quic::{PeerInfo, Service};
use tessera_wire::{Error, Limits, Request, Response, Role};

use crate::region::NodeContext;

/// Serves one node's requests.
#[derive(Debug)]
pub struct NodeService {
    pub(crate) ctx: NodeContext,
    pub(crate) limits: Limits,
    pub(crate) default_timeout: Duration,
}

impl Service for NodeService {
    // The trait spells out `Send + 'static`; keeping the signature explicit documents it.
    #[allow(clippy::manual_async_fn)]
    fn call(self: Arc<Self>, peer: Arc<PeerInfo>, request: Request) -> impl Future<Output = Response> + Send + 'static {
        async move {
            if let Some(reason) = self.ctx.engine.failure() {
                return Err(Error::StorageUnavailable { reason });
            }
            match request {
                Request::Kv(req) => self.kv(req).await,
                Request::Raft(req) => match peer.role {
                    Role::Node(_) => self.raft(req).await,
                    _ => Err(Error::PermissionDenied { reason: "only nodes may send Raft messages".into() }),
                },
                Request::Pd(_) => Err(Error::InvalidRequest { reason: "this is a storage node, not PD".into() }),
            }
        }
    }
}
