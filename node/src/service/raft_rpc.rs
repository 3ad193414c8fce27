//! Incoming Raft messages.

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::Serialize;
use tessera_wire::{Error, RaftRequest, RaftResponse, RaftRpcKind, Response, ResponseBody};

use super::NodeService;
use crate::raft::network::SnapshotChunk;
use crate::raft::types::{Snapshot, TypeConfig};

fn decode<T: for<'de> serde::Deserialize<'de>>(b: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(b).map_err(|e| Error::InvalidRequest { reason: format!("bad raft payload: {e}") })
}

fn encode<T: Serialize>(v: &T) -> Response {
    postcard::to_allocvec(v)
        .map(|payload| ResponseBody::Raft(RaftResponse { payload }))
        .map_err(|e| Error::InvalidRequest { reason: format!("encode raft response: {e}") })
}

impl NodeService {
    pub(crate) async fn raft(&self, req: RaftRequest) -> Response {
        let region = self.ctx.regions.get(req.region_id).ok_or(Error::RegionNotFound { region_id: req.region_id })?;
        if region.peer.id != req.to_peer {
            return Err(Error::RegionNotFound { region_id: req.region_id });
        }
        let unavailable =
            |e: &dyn std::fmt::Display| Error::RegionUnavailable { region_id: req.region_id, reason: e.to_string() };
        match req.kind {
            RaftRpcKind::AppendEntries => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.payload)?;
                let resp = region.raft.append_entries(rpc).await.map_err(|e| unavailable(&e))?;
                encode(&resp)
            }
            RaftRpcKind::Vote => {
                let rpc: VoteRequest<TypeConfig> = decode(&req.payload)?;
                let resp = region.raft.vote(rpc).await.map_err(|e| unavailable(&e))?;
                encode(&resp)
            }
            RaftRpcKind::PreVote => {
                let rpc: VoteRequest<TypeConfig> = decode(&req.payload)?;
                let resp = region.raft.pre_vote(rpc).await.map_err(|e| unavailable(&e))?;
                encode(&resp)
            }
            RaftRpcKind::SnapshotChunk => {
                let chunk: SnapshotChunk = decode(&req.payload)?;
                let complete = {
                    let mut inc = region.incoming.lock().unwrap_or_else(|p| p.into_inner());
                    if chunk.offset == 0 {
                        inc.transfer_id = chunk.transfer_id;
                        inc.data.clear();
                    }
                    if inc.transfer_id != chunk.transfer_id || inc.data.len() as u64 != chunk.offset {
                        return Err(Error::InvalidRequest { reason: "snapshot chunk out of order".into() });
                    }
                    inc.data.extend_from_slice(&chunk.data);
                    match chunk.done {
                        Some(done) => Some((done, std::mem::take(&mut inc.data))),
                        None => None,
                    }
                };
                match complete {
                    None => encode(&Option::<openraft::raft::SnapshotResponse<TypeConfig>>::None),
                    Some(((vote, meta), data)) => {
                        tracing::info!(region_id = req.region_id.0, bytes = data.len(), "installing snapshot");
                        let snapshot = Snapshot { meta, snapshot: std::io::Cursor::new(data) };
                        let resp =
                            region.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| unavailable(&e))?;
                        self.ctx.snapshots_installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.ctx.changed();
                        encode(&Some(resp))
                    }
                }
            }
            RaftRpcKind::TransferLeader => {
                Err(Error::InvalidRequest { reason: "transfer leader is not supported yet".into() })
            }
        }
    }
}
