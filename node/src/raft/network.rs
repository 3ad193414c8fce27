//! openraft's network over the node's QUIC connection pool.
//!
//! Every region's Raft group sends through the same [`ConnectionPool`], so two nodes share
//! one QUIC connection whatever the number of regions between them. Raft messages travel as
//! [`tessera_wire::RaftRequest`]s whose payload is the postcard encoding of openraft's
//! message (the openraft version is pinned exactly, which fixes that encoding).
//! Snapshots are streamed in chunks of at most [`SNAPSHOT_CHUNK`] bytes.

use crate::lock;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::OptionalSend;
use serde::{Deserialize, Serialize};
use tessera_wire::quic::ConnectionPool;
use tessera_wire::{NodeId, PeerId, RaftRequest, RaftRpcKind, RegionId, Request, ResponseBody};

use openraft::base::{BoxFuture, BoxStream};
use openraft::entry::RaftEntry;
use openraft::raft::StreamAppendResult;
use openraft::EntryPayload;

use super::types::{Entry, PeerNode, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};

/// Largest snapshot chunk sent in one request.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Most bytes of log entries (by [`entry_len_bound`]) in one `AppendEntries` message: the
/// frame limit less room for the message's own fields.
pub const REPLICATION_BYTES: usize =
    tessera_wire::frame::DEFAULT_MAX_FRAME_LEN as usize - 16 * tessera_wire::MESSAGE_OVERHEAD;

/// An upper bound on an entry's encoding.
pub fn entry_len_bound(entry: &Entry) -> usize {
    64 + match &entry.payload {
        EntryPayload::Blank => 0,
        EntryPayload::Normal(cmd) => cmd.encoded_len_bound() + 32,
        // A membership lists a few peers: ids and small node records.
        EntryPayload::Membership(m) => 64 * (m.nodes().count() + 1) * (m.get_joint_config().len() + 1),
    }
}

/// How many leading `entries` fit in `budget` bytes (at least one when there are any), and
/// their bytes.
pub fn entries_within(entries: &[Entry], budget: usize) -> (usize, usize) {
    let mut used = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = entry_len_bound(e);
        if used + len > budget && i > 0 {
            return (i, used);
        }
        used += len;
    }
    (entries.len(), used)
}

/// Most `AppendEntries` messages in flight per follower per region on a replication
/// stream. openraft's own default keeps one.
pub const PIPELINE_DEPTH: usize = 8;

/// Requests carrying fewer entry bytes than this are *small*: at most one small request is
/// in flight per replication stream, while large ones pipeline up to [`PIPELINE_DEPTH`].
///
/// Measured on the 2-core benchmark machine (`tessera-bench run --workload w`, 4 regions):
/// sending every small flush at once made more, smaller messages, and CPU per put rose
/// from 205 to 229 µs at 256 in flight and from 341 to 567 µs at 64, cutting throughput by
/// 8% and 40%. Holding small requests until the previous one is answered lets the entries
/// that arrive meanwhile share the next request, as a group commit does, while catch-up
/// and large values, where the link's round trip is what limits, still pipeline.
pub const PIPELINE_MIN_BYTES: usize = 32 * 1024;

/// How long a busy replication stream waits, once its small request in flight is answered,
/// before it takes the next request from openraft; *busy*: that request carried at least
/// [`ROUND_LINGER_MIN_ENTRIES`] entries.
///
/// A stream sends one small request at a time, so its rounds follow the round trip, and
/// each round costs about the same CPU whatever it carries: the two nodes' QUIC sends and
/// receives, openraft's turns on both sides, the follower's log job and each replica's
/// apply. On a saturated machine the round trip is long, every region's streams go round
/// as often as it allows, and that cost grows with the regions: with 8 regions a put cost
/// 66 server CPU-µs against 41 with 1 region (issue 6's twenty-seventh note). Waiting a
/// moment lets more entries join the next round. Streams that carry a few entries per
/// round (a sequential client: one) never wait.
///
/// Measured on the 2-core benchmark machine (`tessera-bench compare`, puts at 16 to 256 in
/// flight, workload A, 8 regions and 1): less CPU per operation in every row, see
/// docs/life-of-a-write.md, "Busy streams wait a moment". (tokio's timer rounds a sleep up
/// to its 1 ms tick.)
pub const ROUND_LINGER: Duration = Duration::from_millis(1);

/// Entries a small request must carry for its stream to wait [`ROUND_LINGER`] before the
/// next one.
pub const ROUND_LINGER_MIN_ENTRIES: usize = 16;

/// Small requests of one replication stream now in flight (see [`PIPELINE_MIN_BYTES`]),
/// and whether the stream is busy (see [`ROUND_LINGER`]).
#[derive(Debug, Default)]
struct SmallInFlight {
    count: AtomicUsize,
    freed: tokio::sync::Notify,
    /// The last request sent was small and carried at least [`ROUND_LINGER_MIN_ENTRIES`].
    busy: AtomicBool,
}

/// Holds a place in [`SmallInFlight`] until dropped.
struct SmallHold(Arc<SmallInFlight>);

impl SmallInFlight {
    /// Counts a small request of `entries` entries in flight until the hold is dropped.
    fn hold(self: &Arc<Self>, entries: usize) -> SmallHold {
        self.busy.store(entries >= ROUND_LINGER_MIN_ENTRIES, Ordering::Release);
        self.count.fetch_add(1, Ordering::AcqRel);
        SmallHold(self.clone())
    }

    /// Records that a large request went: the stream is not busy in [`ROUND_LINGER`]'s
    /// sense (large requests pipeline; nothing waits after them).
    fn sent_large(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// Waits until no small request is in flight and then, if the last request sent made
    /// the stream busy, for [`ROUND_LINGER`] (`linger`) more.
    async fn wait_turn(&self, linger: Duration) {
        self.wait_none().await;
        if !linger.is_zero() && self.busy.swap(false, Ordering::AcqRel) {
            tokio::time::sleep(linger).await;
        }
    }

    /// Waits until no small request is in flight.
    async fn wait_none(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            freed.await;
        }
    }
}

impl Drop for SmallHold {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.freed.notify_waiters();
        }
    }
}

/// How long an entry-less request of a replication stream (a commit update: openraft sends
/// one whenever the commit index moves and no entries are waiting) is held back for the
/// stream's next request, which carries the same commit index or a newer one and so makes
/// it redundant. See `fold_commit_updates` (private).
///
/// Long enough for the next write of a sequential client whose writes spread over a few
/// regions (about 1.3 ms apart here, so 5 ms apart per region over 4 regions), short
/// against the 500 ms heartbeat that would otherwise carry the commit index. The cost:
/// when no write follows, followers learn of a commit (and apply it) this much later,
/// which only stale reads from followers can see. Measurements: docs/life-of-a-write.md,
/// "Where the time goes".
pub const COMMIT_UPDATE_LINGER: Duration = Duration::from_millis(10);

/// The requests of one replication stream, in order, taken from openraft once no small
/// request is in flight (see [`PIPELINE_MIN_BYTES`]) and, on a busy stream, `round_linger`
/// after that (see [`ROUND_LINGER`]), with commit updates folded into the request after
/// them.
///
/// A request without entries after the first (the first may be a probe) only tells the
/// follower the new commit index. If the stream's next request comes within `linger` and
/// starts at the same log position for the same leader, it carries that commit index (or a
/// newer one) too, so the entry-less request is dropped unsent. Otherwise it goes when
/// `linger` ends, when the input ends, or just before a request that does not cover it.
/// (openraft's replication stream is where these updates are made; with no option there
/// to delay them, the network layer is where they can be folded.) Sequential writes make
/// one such request per write per follower, and a round of it costs the follower a
/// wake-up and an apply of its own: folded, a write costs two messages per follower
/// instead of four, and followers apply in the next write's shadow.
///
/// openraft's acknowledgements are cumulative (the follower's matching log id drains
/// every request up to it from the in-flight queue), so the answer to the request sent
/// acknowledges the dropped one as well, with the later sending time: the leader's lease,
/// which counts from a request's sending time, is then if anything shorter.
fn fold_commit_updates<S>(
    input: S,
    small: Arc<SmallInFlight>,
    linger: Duration,
    round_linger: Duration,
) -> impl futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    use futures::StreamExt;
    struct Fold<S> {
        input: S,
        small: Arc<SmallInFlight>,
        /// A request taken while holding back another, which it could not replace.
        held: Option<AppendEntriesRequest<TypeConfig>>,
        first: bool,
        ended: bool,
    }
    let state = Fold { input, small, held: None, first: true, ended: false };
    futures::stream::unfold(state, move |mut st| async move {
        let mut rpc = match st.held.take() {
            Some(rpc) => rpc,
            None if st.ended => return None,
            None => {
                st.small.wait_turn(round_linger).await;
                st.input.next().await?
            }
        };
        let first = std::mem::replace(&mut st.first, false);
        if first || !rpc.entries.is_empty() || linger.is_zero() {
            return Some((rpc, st));
        }
        let deadline = tokio::time::Instant::now() + linger;
        loop {
            // `next` is cancel-safe: a request openraft is still building stays in its stream.
            match tokio::time::timeout_at(deadline, st.input.next()).await {
                Err(_) => return Some((rpc, st)),
                Ok(None) => {
                    st.ended = true;
                    return Some((rpc, st));
                }
                Ok(Some(next)) if supersedes(&next, &rpc) => {
                    rpc = next;
                    if !rpc.entries.is_empty() {
                        return Some((rpc, st));
                    }
                }
                Ok(Some(next)) => {
                    st.held = Some(next);
                    return Some((rpc, st));
                }
            }
        }
    })
}

/// True when `next` tells the follower everything the entry-less `update` does: same
/// leader, same log position, a commit index at least as new.
fn supersedes(next: &AppendEntriesRequest<TypeConfig>, update: &AppendEntriesRequest<TypeConfig>) -> bool {
    next.vote == update.vote && next.prev_log_id == update.prev_log_id && next.leader_commit >= update.leader_commit
}

/// One `AppendEntries` of a pipelined replication stream (node-internal encoding inside a
/// Raft payload). The follower applies a stream's messages in `seq` order, whatever order
/// they arrive in (a request of 64 KiB or more travels on another QUIC stream than the
/// small ones, so either may overtake the other).
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamAppendMsg {
    /// Chosen by the leader for each replication stream.
    pub stream: u64,
    /// Position in the stream, from 0.
    pub seq: u64,
    /// The request.
    pub rpc: AppendEntriesRequest<TypeConfig>,
}

/// A fresh replication stream id: unique within this process, and random across processes
/// (so a restarted leader never reuses a stream a follower still remembers).
fn new_stream_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

/// Cuts `rpc` into requests whose entries each fit one frame, chained by `prev_log_id`.
fn split_to_frames(mut rpc: AppendEntriesRequest<TypeConfig>) -> Vec<(AppendEntriesRequest<TypeConfig>, usize)> {
    let mut out = Vec::new();
    loop {
        let (keep, bytes) = entries_within(&rpc.entries, REPLICATION_BYTES);
        if keep == rpc.entries.len() {
            out.push((rpc, bytes));
            return out;
        }
        let rest: Vec<Entry> = rpc.entries.split_off(keep);
        let next_prev = rpc.entries.last().map(|e| e.log_id());
        let next = AppendEntriesRequest {
            vote: rpc.vote,
            prev_log_id: next_prev,
            entries: rest,
            leader_commit: rpc.leader_commit,
        };
        out.push((rpc, bytes));
        rpc = next;
    }
}

/// Assumed worst-case rate of moving and fsyncing replicated bytes, for timeouts.
const REPLICATION_BYTES_PER_SEC: f64 = 8.0 * 1024.0 * 1024.0;

/// The time allowed for an `AppendEntries` carrying `bytes` of entries: openraft's timeout
/// (about a heartbeat interval) for heartbeats, and in addition time for the follower to
/// receive and fsync the payload, so that a batch of large entries is not timed out and
/// resent forever.
pub fn append_timeout(soft_ttl: Duration, bytes: usize) -> Duration {
    if bytes == 0 {
        return soft_ttl;
    }
    soft_ttl + Duration::from_millis(200) + Duration::from_secs_f64(bytes as f64 / REPLICATION_BYTES_PER_SEC)
}

/// Node id to address, learnt from PD. Shared by all regions.
#[derive(Debug, Clone, Default)]
pub struct AddressBook(Arc<RwLock<HashMap<NodeId, String>>>);

impl AddressBook {
    /// The address of `node`.
    pub fn get(&self, node: NodeId) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(&node).cloned()
    }

    /// Records `node`'s address.
    pub fn set(&self, node: NodeId, addr: String) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(node, addr);
    }
}

/// Peers whose storage fail-stopped, as their answers to this node's Raft messages said
/// (`StorageUnavailable`), with the reason they gave. Shared by all regions: a node's
/// failure is its every replica's. A peer leaves the set when it answers a Raft message
/// sent after its failure was recorded (it restarted with space again): an answer to one
/// sent before may be a success the peer gave just before it failed, arriving after the
/// refusal of a later message (answers come back in any order), and must not clear it.
/// A leader reads it to refuse writes that no quorum could make durable (`service::kv`),
/// instead of proposing them to wait for the deadline and apply whenever the peers come
/// back.
#[derive(Debug, Clone, Default)]
pub struct PeerFailures(Arc<PeerFailuresInner>);

#[derive(Debug, Default)]
struct PeerFailuresInner {
    /// How many peers are in `failed`: the answer path reads only this while it is 0.
    count: AtomicUsize,
    /// Failures recorded so far: what [`PeerFailures::mark`] reads before a message is
    /// sent, and each failure's `recorded` stamp.
    recorded: AtomicU64,
    /// Per failed peer: its reason, and the `recorded` count its failure was stamped with.
    failed: Mutex<HashMap<NodeId, (String, u64)>>,
}

impl PeerFailures {
    /// Taken before a message is sent, and given back to [`Self::answered`] with its
    /// answer.
    pub fn mark(&self) -> u64 {
        self.0.recorded.load(Ordering::SeqCst)
    }

    /// `node` answered a Raft message with `StorageUnavailable { reason }`.
    pub fn failed(&self, node: NodeId, reason: String) {
        let mut failed = lock(&self.0.failed);
        let stamp = self.0.recorded.fetch_add(1, Ordering::SeqCst) + 1;
        if failed.insert(node, (reason, stamp)).is_none() {
            self.0.count.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(node_id = node.0, "a peer's storage failed; it serves nothing until restarted");
        }
    }

    /// `node` answered a Raft message sent at `sent` (its [`Self::mark`]). Clears the
    /// node's failure only if the message was sent after the failure was recorded.
    pub fn answered(&self, node: NodeId, sent: u64) {
        if self.0.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut failed = lock(&self.0.failed);
        if failed.get(&node).is_some_and(|(_, stamp)| *stamp <= sent) {
            failed.remove(&node);
            self.0.count.fetch_sub(1, Ordering::SeqCst);
            tracing::info!(node_id = node.0, "a peer whose storage had failed answers again");
        }
    }

    /// True when no peer is known to have failed.
    pub fn is_empty(&self) -> bool {
        self.0.count.load(Ordering::SeqCst) == 0
    }

    /// Why `node`'s storage failed, if its last answer said it had.
    pub fn get(&self, node: NodeId) -> Option<String> {
        if self.0.count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        lock(&self.0.failed).get(&node).map(|(reason, _)| reason.clone())
    }
}

/// One chunk of a streamed snapshot (node-internal encoding inside a Raft payload).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// Identifies the transfer: (vote term-ish hash, last log index) chosen by the sender.
    pub transfer_id: u64,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    /// Bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Present on the last chunk: the leader's vote and the snapshot's metadata.
    pub done: Option<(Vote, SnapshotMeta)>,
}

/// Creates per-peer network clients for one region.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    pub(crate) region_id: RegionId,
    pub(crate) pool: ConnectionPool,
    pub(crate) book: AddressBook,
    pub(crate) peer_failures: PeerFailures,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        PeerNetwork {
            region_id: self.region_id,
            target: PeerId(target),
            node_id: NodeId(node.node_id),
            pool: self.pool.clone(),
            book: self.book.clone(),
            peer_failures: self.peer_failures.clone(),
            stream: Arc::new(Mutex::new(None)),
        }
    }
}

/// Where a replication stream to a follower stands: its id and the next sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamCursor {
    stream: u64,
    next_seq: u64,
    /// When its last session ended.
    ended_at: std::time::Instant,
}

/// A replication session continues the previous session's stream only if that one ended
/// less than this long ago. The follower forgets a stream idle for
/// [`append_stream::IDLE`](super::append_stream::IDLE) (30 s); a message continuing a
/// forgotten stream would wait for sequence numbers that never come, until its timeout. So
/// a region that was idle starts a fresh stream, with a wide margin.
///
/// A follower that restarted between two sessions has forgotten the stream too; that case
/// costs one append timeout (a few hundred milliseconds), after which the next session
/// starts a fresh stream.
pub const CONTINUE_STREAM_WITHIN: Duration = Duration::from_secs(10);

impl StreamCursor {
    fn fresh() -> StreamCursor {
        StreamCursor { stream: new_stream_id(), next_seq: 0, ended_at: std::time::Instant::now() }
    }

    /// The cursor a new session starts from: `saved` if it is recent enough, else a fresh one.
    fn resume(saved: Option<StreamCursor>, now: std::time::Instant) -> StreamCursor {
        match saved {
            Some(c) if now.saturating_duration_since(c.ended_at) < CONTINUE_STREAM_WITHIN => c,
            _ => StreamCursor::fresh(),
        }
    }
}

/// The network client towards one peer of one region.
#[derive(Debug)]
pub struct PeerNetwork {
    region_id: RegionId,
    target: PeerId,
    node_id: NodeId,
    pool: ConnectionPool,
    book: AddressBook,
    peer_failures: PeerFailures,
    /// The follower-side stream the next replication session continues: openraft starts a
    /// session for every payload it hands to replication (often one per write burst), and a
    /// session that ended cleanly (every request answered) leaves the follower's pipeline in
    /// order, so the next one goes on with it instead of making the follower set up (and
    /// keep, until idle) a new one. `None` after a failed or abandoned session.
    stream: Arc<Mutex<Option<StreamCursor>>>,
}

#[derive(Debug)]
enum SendError {
    Unreachable(String),
    Network(String),
}

impl PeerNetwork {
    async fn send(&self, kind: RaftRpcKind, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, SendError> {
        let addr = self
            .book
            .get(self.node_id)
            .ok_or_else(|| SendError::Unreachable(format!("no address known for node {}", self.node_id)))?;
        let req = Request::Raft(RaftRequest { region_id: self.region_id, to_peer: self.target, kind, payload });
        // The deadline covers dialling too: a dead peer must not hold a replication stream
        // (or shutdown) for the transport's whole connect timeout.
        let sent = self.peer_failures.mark();
        let result = self.pool.call(&addr, req, timeout).await;
        match result {
            Ok(Ok(ResponseBody::Raft(r))) => {
                self.peer_failures.answered(self.node_id, sent);
                Ok(r.payload)
            }
            Ok(Ok(other)) => Err(SendError::Network(format!("unexpected response {other:?}"))),
            Ok(Err(e)) => {
                if let tessera_wire::Error::StorageUnavailable { reason } = &e {
                    self.peer_failures.failed(self.node_id, reason.clone());
                }
                Err(SendError::Unreachable(e.to_string()))
            }
            Err(e) => {
                if !e.may_have_been_delivered() {
                    self.pool.evict(&addr);
                }
                Err(SendError::Unreachable(e.to_string()))
            }
        }
    }

    async fn rpc<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        kind: RaftRpcKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let payload = postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        match self.send(kind, payload, timeout).await {
            Ok(bytes) => postcard::from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::from_string(e))),
            Err(SendError::Unreachable(e)) => Err(RPCError::Unreachable(Unreachable::from_string(e))),
            Err(SendError::Network(e)) => Err(RPCError::Network(NetworkError::from_string(e))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft batches entries by count; a message must also fit one frame. Send the
        // longest prefix that fits and report a partial success, so the leader sends the
        // rest next (an entry alone always fits: see `Limits::max_request_bytes`).
        let (keep, bytes) = entries_within(&rpc.entries, REPLICATION_BYTES);
        let partial = (keep < rpc.entries.len()).then(|| rpc.entries[keep - 1].log_id());
        rpc.entries.truncate(keep);
        let timeout = append_timeout(option.soft_ttl(), bytes);
        let started = tokio::time::Instant::now();
        let resp = self.rpc(RaftRpcKind::AppendEntries, &rpc, timeout).await;
        if keep > 0 {
            crate::metrics::STAGES.append_rpc.record(started.elapsed());
            tracing::debug!(
                region_id = self.region_id.0,
                peer = self.target.0,
                entries = keep,
                bytes,
                ?timeout,
                elapsed = ?started.elapsed(),
                ok = resp.is_ok(),
                "append entries sent"
            );
        }
        let resp = resp?;
        Ok(match (resp, partial) {
            (AppendEntriesResponse::Success, Some(last)) => AppendEntriesResponse::PartialSuccess(Some(last)),
            (resp, _) => resp,
        })
    }

    /// Pipelined replication: up to [`PIPELINE_DEPTH`] requests in flight, answered in
    /// order. Each request goes as one or more [`StreamAppendMsg`]s (one per frame); the
    /// follower feeds them, in sequence order, to openraft's `Raft::stream_append`, which
    /// appends each without waiting for the previous one's flush.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        use futures::StreamExt;
        let this: &'s PeerNetwork = self;
        // Taken for this session: a session that does not give it back (an error, a
        // dropped session) makes the next one start a new follower stream.
        let cursor = StreamCursor::resume(lock(&self.stream).take(), std::time::Instant::now());
        let stream = cursor.stream;
        let next_seq = Arc::new(AtomicU64::new(cursor.next_seq));
        let soft_ttl = option.soft_ttl();
        let seqs = next_seq.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let failed_seen = failed.clone();
        let small = Arc::new(SmallInFlight::default());
        // The next request is taken from openraft only once no small request is in flight
        // (and, on a busy stream, a moment later).
        let gated = Box::pin(fold_commit_updates(input, small.clone(), COMMIT_UPDATE_LINGER, ROUND_LINGER));
        Box::pin(async move {
            let responses = gated
                .map(move |rpc| {
                    let last = rpc.entries.last().map(|e| e.log_id()).or(rpc.prev_log_id);
                    let entries = rpc.entries.len();
                    let parts = split_to_frames(rpc);
                    let bytes: usize = parts.iter().map(|(_, b)| b).sum();
                    let hold = if bytes < PIPELINE_MIN_BYTES {
                        Some(small.hold(entries))
                    } else {
                        small.sent_large();
                        None
                    };
                    let first_seq = seqs.fetch_add(parts.len() as u64, Ordering::Relaxed);
                    async move {
                        let _hold = hold;
                        let sends = parts.into_iter().enumerate().map(|(i, (rpc, bytes))| {
                            let msg = StreamAppendMsg { stream, seq: first_seq + i as u64, rpc };
                            let timeout = append_timeout(soft_ttl, bytes);
                            async move {
                                let started = tokio::time::Instant::now();
                                let r: Result<StreamAppendResult<TypeConfig>, _> =
                                    this.rpc(RaftRpcKind::AppendStream, &msg, timeout).await;
                                if bytes > 0 {
                                    crate::metrics::STAGES.append_rpc.record(started.elapsed());
                                }
                                r
                            }
                        });
                        // A request of several frames succeeds when all do; its answer is the
                        // first failure, or the follower's answer to the last frame.
                        let mut acked = None;
                        for r in futures::future::join_all(sends).await {
                            match r {
                                Ok(Ok(matched)) => acked = Some(matched),
                                other => return other,
                            }
                        }
                        Ok(Ok(acked.unwrap_or(last)))
                    }
                })
                .buffered(PIPELINE_DEPTH)
                // The stream ends after the first error or refusal, as openraft expects.
                .scan(false, move |stopped, r| {
                    let out = if *stopped { None } else { Some(r) };
                    *stopped = !matches!(out, Some(Ok(Ok(_))));
                    if *stopped {
                        failed.store(true, Ordering::Relaxed);
                    }
                    futures::future::ready(out)
                })
                .map(Some)
                // Every request was sent and answered with success: the follower's pipeline
                // is exactly at `next_seq`, and the next session continues it.
                .chain(futures::stream::once(async move {
                    if !failed_seen.load(Ordering::Relaxed) {
                        *lock(&this.stream) = Some(StreamCursor {
                            stream,
                            next_seq: next_seq.load(Ordering::Relaxed),
                            ended_at: std::time::Instant::now(),
                        });
                    }
                    None
                }))
                .filter_map(futures::future::ready);
            let boxed: BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> =
                Box::pin(responses);
            Ok(boxed)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftRpcKind::Vote, &rpc, option.soft_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftRpcKind::PreVote, &rpc, option.soft_ttl()).await
    }

    /// Tells the chosen voter to campaign at once (a leader transfer), instead of waiting
    /// for the old leader's lease to run out.
    async fn transfer_leader(
        &mut self,
        req: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftRpcKind::TransferLeader, &req, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // The file is read one chunk at a time: the sender never holds the snapshot. It may
        // still be being written (`get_current_snapshot` returns at once).
        let file = snapshot.snapshot;
        file.written().await.map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e.to_string())))?;
        let len = tokio::fs::metadata(file.path())
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(format!("snapshot file: {e}"))))?
            .len();
        let transfer_id = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("{:?}{:?}", vote, snapshot.meta.last_log_id).hash(&mut h);
            len.hash(&mut h);
            file.path().hash(&mut h);
            h.finish()
        };
        let timeout = option.hard_ttl().max(Duration::from_secs(10));
        let send_all = async {
            use tokio::io::AsyncReadExt;
            let local = |e: std::io::Error| {
                StreamingError::Unreachable(Unreachable::from_string(format!("snapshot file: {e}")))
            };
            let mut reader = tokio::fs::File::open(file.path()).await.map_err(local)?;
            let mut offset = 0u64;
            loop {
                let want = (len - offset).min(SNAPSHOT_CHUNK as u64) as usize;
                let mut data = vec![0u8; want];
                reader.read_exact(&mut data).await.map_err(local)?;
                let last = offset + want as u64 == len;
                let chunk = SnapshotChunk {
                    transfer_id,
                    offset,
                    data,
                    done: if last { Some((vote, snapshot.meta.clone())) } else { None },
                };
                let resp: Option<SnapshotResponse<TypeConfig>> = self
                    .rpc(RaftRpcKind::SnapshotChunk, &chunk, timeout)
                    .await
                    .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
                if last {
                    return resp.ok_or_else(|| {
                        StreamingError::Network(NetworkError::from_string("snapshot receiver returned no response"))
                    });
                }
                offset += want as u64;
            }
        };
        tokio::select! {
            r = send_all => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    fn backoff(&self) -> Option<openraft::network::Backoff> {
        Some(openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    use super::*;
    use crate::raft::types::{LogCommand, LogOp};

    fn put(index: u64, value_len: usize) -> Entry {
        let op = LogOp::Put(vec![1u8; 16], vec![2u8; value_len]);
        Entry {
            log_id: log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(LogCommand::WriteV1 { session: None, op }),
        }
    }

    #[test]
    fn an_append_entries_message_is_cut_to_fit_a_frame() {
        let mib = 1024 * 1024;
        let entries: Vec<Entry> = (1..=300).map(|i| put(i, mib)).collect();
        let (keep, bytes) = entries_within(&entries, REPLICATION_BYTES);
        assert_eq!(keep, 3, "three 1 MiB entries fit a 4 MiB frame, four do not");
        assert!(bytes <= REPLICATION_BYTES);
        // The bound is an upper bound of the real encoding, and the message fits a frame.
        let encoded: usize = entries[..keep].iter().map(|e| postcard::to_allocvec(e).unwrap().len()).sum();
        assert!(encoded <= bytes);
        // One entry always goes, whatever its size; small entries all fit.
        assert_eq!(entries_within(&entries[..1], 10).0, 1);
        let small: Vec<Entry> = (1..=300).map(|i| put(i, 100)).collect();
        assert_eq!(entries_within(&small, REPLICATION_BYTES).0, 300);
        assert_eq!(entries_within(&[], REPLICATION_BYTES), (0, 0));
    }

    #[test]
    fn a_pipelined_request_is_split_into_frames_chained_by_prev_log_id() {
        let mib = 1024 * 1024;
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new(1, 1),
            prev_log_id: Some(log_id::<TypeConfig>(1, 1, 9)),
            entries: (10..=19).map(|i| put(i, mib)).collect(),
            leader_commit: Some(log_id::<TypeConfig>(1, 1, 5)),
        };
        let parts = split_to_frames(rpc);
        assert_eq!(parts.len(), 4, "ten 1 MiB entries: 3 + 3 + 3 + 1");
        let mut prev = Some(log_id::<TypeConfig>(1, 1, 9));
        for (part, bytes) in &parts {
            assert_eq!(part.prev_log_id, prev, "each part follows the previous one");
            assert!(*bytes <= REPLICATION_BYTES);
            assert_eq!(part.leader_commit, Some(log_id::<TypeConfig>(1, 1, 5)));
            prev = part.entries.last().map(|e| e.log_id());
        }
        assert_eq!(prev, Some(log_id::<TypeConfig>(1, 1, 19)), "every entry is sent once, in order");
        // A heartbeat (no entries) stays one message.
        let hb = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new(1, 1),
            prev_log_id: prev,
            entries: vec![],
            leader_commit: prev,
        };
        assert_eq!(split_to_frames(hb).len(), 1);
    }

    #[test]
    fn large_appends_get_time_to_be_received_and_synced() {
        let ttl = Duration::from_millis(75);
        assert_eq!(append_timeout(ttl, 0), ttl, "heartbeats keep openraft's timeout");
        let four_mib = append_timeout(ttl, 4 * 1024 * 1024);
        assert!(four_mib >= Duration::from_millis(700), "{four_mib:?}");
        assert!(append_timeout(ttl, 1000) > ttl);
    }

    #[tokio::test]
    async fn a_small_request_in_flight_holds_the_next_until_it_is_answered() {
        use futures::FutureExt;
        let small = Arc::new(SmallInFlight::default());
        // None in flight: the next request may go at once.
        assert!(small.wait_none().now_or_never().is_some());
        let first = small.hold(1);
        let second = small.hold(1);
        let mut waiting = Box::pin(small.wait_none());
        assert!(waiting.as_mut().now_or_never().is_none(), "two small requests are in flight");
        drop(first);
        assert!(waiting.as_mut().now_or_never().is_none(), "one small request is still in flight");
        drop(second);
        // The last answer wakes the waiter (a notification, not a poll loop).
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken when the last small request ends");
        assert!(small.wait_none().now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_waits_a_moment_after_its_small_request_is_answered() {
        let small = Arc::new(SmallInFlight::default());
        let linger = Duration::from_millis(1);
        let turn_after = |entries: Option<usize>| {
            let small = small.clone();
            async move {
                match entries {
                    Some(n) => drop(small.hold(n)),
                    None => small.sent_large(),
                }
                let start = tokio::time::Instant::now();
                small.wait_turn(linger).await;
                start.elapsed()
            }
        };
        // A round of the threshold's entries makes the stream busy: its next request waits.
        let waited = turn_after(Some(ROUND_LINGER_MIN_ENTRIES)).await;
        assert!(waited >= linger && waited < 3 * linger, "{waited:?}");
        // Once: the wait does not repeat without another busy round.
        let start = tokio::time::Instant::now();
        small.wait_turn(linger).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A round of fewer entries (a sequential client's), or a large request after a busy
        // round, does not wait.
        assert_eq!(turn_after(Some(ROUND_LINGER_MIN_ENTRIES - 1)).await, Duration::ZERO);
        drop(small.hold(ROUND_LINGER_MIN_ENTRIES));
        assert_eq!(turn_after(None).await, Duration::ZERO);
        // No linger configured: never waits.
        drop(small.hold(ROUND_LINGER_MIN_ENTRIES));
        let start = tokio::time::Instant::now();
        small.wait_turn(Duration::ZERO).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// A replication-stream request of leader term `term`: `entries` entries after index
    /// `prev`, commit index `commit`.
    fn req(term: u64, prev: u64, entries: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new(term, 1),
            prev_log_id: Some(log_id::<TypeConfig>(term, 1, prev)),
            entries: (prev + 1..=prev + entries).map(|i| put(i, 8)).collect(),
            leader_commit: Some(log_id::<TypeConfig>(term, 1, commit)),
        }
    }

    type Sent = (u64, usize, Option<u64>);

    /// What a request says, for comparison: prev index, entry count, commit index.
    fn said(r: &AppendEntriesRequest<TypeConfig>) -> Sent {
        (r.prev_log_id.map_or(0, |l| l.index()), r.entries.len(), r.leader_commit.map(|l| l.index()))
    }

    /// Runs `fold_commit_updates` over `script` (a delay, then a request; `None` ends the
    /// input) on paused time; returns what came out and after how long (from the start).
    async fn fold(script: Vec<(u64, Option<AppendEntriesRequest<TypeConfig>>)>) -> Vec<(Sent, Duration)> {
        use futures::StreamExt;
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            for (delay_ms, rpc) in script {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                match rpc {
                    Some(rpc) => tx.unbounded_send(rpc).unwrap(),
                    None => return,
                }
            }
            std::future::pending::<()>().await;
        });
        let out = fold_commit_updates(rx, Arc::new(SmallInFlight::default()), COMMIT_UPDATE_LINGER, Duration::ZERO);
        let mut out = std::pin::pin!(out);
        let mut got = Vec::new();
        // Paused time jumps ahead whenever every task waits; a minute bounds a test that
        // would otherwise wait forever for an output that never comes.
        while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(60), out.next()).await {
            got.push((said(&r), start.elapsed()));
        }
        got
    }

    const LINGER_MS: u64 = COMMIT_UPDATE_LINGER.as_millis() as u64;

    /// `ms` milliseconds of simulated time.
    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_update_is_dropped_when_the_next_request_carries_its_commit() {
        let got = fold(vec![
            (0, Some(req(1, 10, 1, 9))),  // a write
            (1, Some(req(1, 11, 0, 11))), // its commit
            (3, Some(req(1, 11, 1, 11))), // the next write, 3 ms later
            (0, None),
        ])
        .await;
        assert_eq!(got, vec![((10, 1, Some(9)), at(0)), ((11, 1, Some(11)), at(4))], "the commit update went unsent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_update_nothing_follows_goes_after_the_linger() {
        let got = fold(vec![(0, Some(req(1, 10, 1, 9))), (1, Some(req(1, 11, 0, 11)))]).await;
        assert_eq!(got, vec![((10, 1, Some(9)), at(0)), ((11, 0, Some(11)), at(1 + LINGER_MS))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_update_goes_at_once_when_the_stream_ends() {
        let got = fold(vec![(0, Some(req(1, 10, 1, 9))), (1, Some(req(1, 11, 0, 11))), (2, None)]).await;
        assert_eq!(got, vec![((10, 1, Some(9)), at(0)), ((11, 0, Some(11)), at(3))]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_and_requests_with_entries_go_at_once() {
        // The first request of a session may be a probe: never held, even without entries.
        let got = fold(vec![(0, Some(req(1, 10, 0, 9))), (2, Some(req(1, 10, 2, 9))), (0, None)]).await;
        assert_eq!(got, vec![((10, 0, Some(9)), at(0)), ((10, 2, Some(9)), at(2))]);
    }

    #[tokio::test(start_paused = true)]
    async fn successive_commit_updates_fold_into_the_write_after_them() {
        let got = fold(vec![
            (0, Some(req(1, 10, 1, 9))),
            (1, Some(req(1, 11, 0, 10))),
            (1, Some(req(1, 11, 0, 11))),
            (1, Some(req(1, 11, 3, 11))),
            (0, None),
        ])
        .await;
        assert_eq!(got, vec![((10, 1, Some(9)), at(0)), ((11, 3, Some(11)), at(3))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_does_not_cover_the_update_follows_it_unchanged() {
        // Another leader's request, one from another log position, or one with an older
        // commit index cannot stand in for the update: both go, in order, the update as
        // soon as the other arrives.
        for (why, other) in [
            ("another leader", req(2, 11, 1, 11)),
            ("another log position", req(1, 12, 1, 11)),
            ("an older commit index", req(1, 11, 1, 10)),
        ] {
            let other_said = said(&other);
            let got =
                fold(vec![(0, Some(req(1, 10, 1, 9))), (1, Some(req(1, 11, 0, 11))), (2, Some(other)), (0, None)])
                    .await;
            assert_eq!(got, vec![((10, 1, Some(9)), at(0)), ((11, 0, Some(11)), at(3)), (other_said, at(3))], "{why}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_just_after_the_linger_finds_the_update_sent() {
        // The edge of the linger: a write 1 ms inside it replaces the update, a write 1 ms
        // past it follows the update that went when the linger ended.
        let inside = fold(vec![
            (0, Some(req(1, 10, 1, 9))),
            (1, Some(req(1, 11, 0, 11))),
            (LINGER_MS - 1, Some(req(1, 11, 1, 11))),
            (0, None),
        ])
        .await;
        assert_eq!(inside, vec![((10, 1, Some(9)), at(0)), ((11, 1, Some(11)), at(LINGER_MS))]);
        let past = fold(vec![
            (0, Some(req(1, 10, 1, 9))),
            (1, Some(req(1, 11, 0, 11))),
            (LINGER_MS + 1, Some(req(1, 11, 1, 11))),
            (0, None),
        ])
        .await;
        assert_eq!(
            past,
            vec![
                ((10, 1, Some(9)), at(0)),
                ((11, 0, Some(11)), at(1 + LINGER_MS)),
                ((11, 1, Some(11)), at(2 + LINGER_MS))
            ]
        );
    }

    #[test]
    fn a_peer_is_failed_from_its_storage_refusal_until_it_answers_a_later_message() {
        let failures = PeerFailures::default();
        assert!(failures.is_empty());
        // Messages in flight before any failure is known.
        let early = failures.mark();
        failures.failed(NodeId(2), "No space left on device".into());
        let between = failures.mark();
        failures.failed(NodeId(2), "No space left on device".into());
        failures.failed(NodeId(3), "Input/output error".into());
        assert_eq!(failures.get(NodeId(2)).as_deref(), Some("No space left on device"));
        assert_eq!(failures.get(NodeId(1)), None);
        // Successes the peers gave before they failed, arriving late, clear nothing: not
        // even one sent between two of node 2's refusals.
        failures.answered(NodeId(2), early);
        failures.answered(NodeId(2), between);
        failures.answered(NodeId(3), early);
        assert_eq!(failures.get(NodeId(2)).as_deref(), Some("No space left on device"));
        assert_eq!(failures.get(NodeId(3)).as_deref(), Some("Input/output error"));
        // Answers to messages sent after the failures were recorded: the peers restarted.
        let later = failures.mark();
        failures.answered(NodeId(2), later);
        assert_eq!(failures.get(NodeId(2)), None);
        assert!(!failures.is_empty(), "node 3 has not answered");
        failures.answered(NodeId(3), later);
        assert!(failures.is_empty());
    }

    #[test]
    fn a_session_continues_a_recent_stream_and_starts_afresh_after_idling() {
        let now = std::time::Instant::now();
        let saved = StreamCursor { stream: 7, next_seq: 42, ended_at: now };
        assert_eq!(StreamCursor::resume(Some(saved), now + Duration::from_secs(1)), saved);
        // Idle past the bound: the follower may have forgotten the stream.
        let later = StreamCursor::resume(Some(saved), now + CONTINUE_STREAM_WITHIN);
        assert_ne!(later.stream, 7);
        assert_eq!(later.next_seq, 0);
        // The follower keeps idle streams well past the bound.
        assert!(CONTINUE_STREAM_WITHIN * 2 < crate::raft::append_stream::IDLE);
        // No saved cursor (a failed session): fresh.
        let fresh = StreamCursor::resume(None, now);
        assert_eq!(fresh.next_seq, 0);
        assert_ne!(fresh.stream, StreamCursor::resume(None, now).stream, "fresh streams get distinct ids");
    }
}
