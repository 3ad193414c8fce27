//! Incoming Raft messages.

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::Serialize;
use tessera_wire::{Error, RaftRequest, RaftResponse, RaftRpcKind, Response, ResponseBody};

use super::NodeService;
use crate::raft::network::SnapshotChunk;
use crate::raft::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::region::{IncomingSnapshot, Region};
use crate::storage::snapshot::{self, SnapshotFile};

fn decode<T: for<'de> serde::Deserialize<'de>>(b: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(b).map_err(|e| Error::InvalidRequest { reason: format!("bad raft payload: {e}") })
}

fn encode<T: Serialize>(v: &T) -> Response {
    postcard::to_allocvec(v)
        .map(|payload| ResponseBody::Raft(RaftResponse { payload }))
        .map_err(|e| Error::InvalidRequest { reason: format!("encode raft response: {e}") })
}

impl NodeService {
    /// Answers a Raft message. Pipelined appends, nearly all of the traffic, are handled
    /// here; the other kinds in [`NodeService::raft_other`], boxed, so that the future of
    /// every request (which its task holds) stays small.
    pub(crate) async fn raft(&self, req: RaftRequest) -> Response {
        let region = self.ctx.regions.get(req.region_id).ok_or(Error::RegionNotFound { region_id: req.region_id })?;
        if region.peer.id != req.to_peer {
            return Err(Error::RegionNotFound { region_id: req.region_id });
        }
        if req.kind == RaftRpcKind::AppendStream {
            self.append_stream(&region, req).await
        } else {
            Box::pin(self.raft_other(region, req)).await
        }
    }

    /// One message of a pipelined replication stream.
    async fn append_stream(&self, region: &Region, req: RaftRequest) -> Response {
        let msg: crate::raft::network::StreamAppendMsg = decode(&req.payload)?;
        let has_entries = !msg.rpc.entries.is_empty();
        let _in_flight = if has_entries { self.idle_poll_request() } else { None };
        let started = std::time::Instant::now();
        let answer = region.append_streams.submit(&region.raft, msg);
        let result = answer.await.map_err(|_| Error::RegionUnavailable {
            region_id: req.region_id,
            reason: "replication stream ended".into(),
        })?;
        if has_entries {
            crate::metrics::STAGES.follower_append.record(started.elapsed());
        }
        encode(&result)
    }

    async fn raft_other(&self, region: std::sync::Arc<Region>, req: RaftRequest) -> Response {
        let unavailable =
            |e: &dyn std::fmt::Display| Error::RegionUnavailable { region_id: req.region_id, reason: e.to_string() };
        match req.kind {
            RaftRpcKind::AppendEntries => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.payload)?;
                let has_entries = !rpc.entries.is_empty();
                let started = std::time::Instant::now();
                let resp = region.raft.append_entries(rpc).await.map_err(|e| unavailable(&e))?;
                if has_entries {
                    crate::metrics::STAGES.follower_append.record(started.elapsed());
                }
                encode(&resp)
            }
            RaftRpcKind::AppendStream => self.append_stream(&region, req).await,
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
                let Some(((vote, meta), file)) = self.receive_chunk(&region, chunk).await? else {
                    return encode(&Option::<openraft::raft::SnapshotResponse<TypeConfig>>::None);
                };
                let bytes = std::fs::metadata(file.path()).map_or(0, |m| m.len());
                tracing::info!(region_id = req.region_id.0, bytes, "installing snapshot");
                let started = std::time::Instant::now();
                let snapshot = Snapshot { meta, snapshot: file };
                let resp = region.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| unavailable(&e))?;
                tracing::info!(region_id = req.region_id.0, bytes, elapsed = ?started.elapsed(), "snapshot installed");
                self.ctx.snapshots_installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.ctx.changed();
                encode(&Some(resp))
            }
            RaftRpcKind::TransferLeader => {
                let rpc: openraft::raft::TransferLeaderRequest<TypeConfig> = decode(&req.payload)?;
                let resp = region.raft.handle_transfer_leader(rpc).await.map_err(|e| unavailable(&e))?;
                encode(&resp)
            }
        }
    }
}

type Completed = ((Vote, SnapshotMeta), SnapshotFile);

impl NodeService {
    /// Appends a snapshot chunk to the region's incoming file. On the last chunk, checks
    /// the whole file (so a damaged transfer is an error of this request, which the leader
    /// retries, not a storage failure of the Raft group) and returns it.
    async fn receive_chunk(&self, region: &Region, chunk: SnapshotChunk) -> Result<Option<Completed>, Error> {
        use tokio::io::AsyncWriteExt;
        let region_id = region.id;
        let io = |e: std::io::Error| Error::RegionUnavailable { region_id, reason: format!("snapshot file: {e}") };
        let mut inc = region.incoming.lock().await;
        if chunk.offset == 0 {
            // A new transfer replaces any unfinished one (whose file is then deleted).
            let file = SnapshotFile::adopt(snapshot::new_path(&self.ctx.engine, "incoming", region_id.0));
            let handle = tokio::fs::File::create(file.path()).await.map_err(io)?;
            *inc = IncomingSnapshot { transfer_id: chunk.transfer_id, file: Some((file, handle)), received: 0 };
        }
        if inc.transfer_id != chunk.transfer_id || inc.received != chunk.offset || inc.file.is_none() {
            return Err(Error::InvalidRequest { reason: "snapshot chunk out of order".into() });
        }
        let Some((_, handle)) = inc.file.as_mut() else { unreachable!("checked above") };
        handle.write_all(&chunk.data).await.map_err(io)?;
        inc.received += chunk.data.len() as u64;
        let Some(done) = chunk.done else { return Ok(None) };
        let (file, mut handle) = inc.file.take().expect("checked above");
        handle.flush().await.map_err(io)?;
        handle.sync_data().await.map_err(io)?;
        drop(handle);
        *inc = IncomingSnapshot::default();
        drop(inc);
        let path = file.path().to_path_buf();
        tokio::task::spawn_blocking(move || snapshot::verify(&path))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(|e| Error::InvalidRequest { reason: format!("received snapshot is damaged: {e}") })?;
        Ok(Some((done, file)))
    }
}
