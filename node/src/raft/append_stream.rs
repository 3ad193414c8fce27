//! The follower side of pipelined replication.
//!
//! A leader sends a replication stream's `AppendEntries` as separate requests tagged with
//! the stream id and a sequence number ([`StreamAppendMsg`]); several are in flight at once
//! and may arrive out of order (one of 64 KiB or more travels on another QUIC stream than
//! the small ones). Here each stream gets an openraft `Raft::stream_append` pipeline:
//! requests are fed to it strictly in sequence order, and its answers (which come in the
//! same order) are handed back to the waiting requests. A stream that ends in an error (a
//! conflict, a higher vote) is forgotten; so is one idle for [`IDLE`] (its leader moved on
//! to a new stream).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tokio::sync::{mpsc, oneshot};

use super::network::StreamAppendMsg;
use super::types::{Raft, TypeConfig};

/// A stream with no request for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(30);

/// How often idle streams are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Most requests parked waiting for an earlier sequence number, per stream. A leader never
/// has more than `PIPELINE_DEPTH` frames' worth in flight; more means a gap that will never
/// fill (a lost request), and the stream is dropped.
const MAX_PARKED: usize = 256;

type Answer = oneshot::Sender<StreamAppendResult<TypeConfig>>;

struct StreamState {
    next_seq: u64,
    parked: BTreeMap<u64, (AppendEntriesRequest<TypeConfig>, Answer)>,
    input: mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
    waiters: Arc<Mutex<VecDeque<Answer>>>,
    last_used: Instant,
    /// The pipeline ended (an error, a shutdown): later messages of the stream, already in
    /// flight from the leader, are refused at once.
    ended: bool,
}

/// The replication streams of one region's follower.
#[derive(Default)]
pub struct AppendStreams {
    streams: Mutex<Streams>,
}

#[derive(Default)]
struct Streams {
    by_id: HashMap<u64, StreamState>,
    /// When idle streams were last dropped.
    swept: Option<Instant>,
}

impl std::fmt::Debug for AppendStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendStreams").field("streams", &self.lock().by_id.len()).finish()
    }
}

impl AppendStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        crate::lock(&self.streams)
    }

    /// Streams known: live ones, and ended or idle ones not yet swept.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// True when no stream is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Submits one message; the receiver gets its answer, or is dropped if the stream
    /// ended first (an error earlier in it, a Raft shutdown).
    pub fn submit(
        self: &Arc<Self>,
        raft: &Raft,
        msg: StreamAppendMsg,
    ) -> oneshot::Receiver<StreamAppendResult<TypeConfig>> {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let mut guard = self.lock();
        if guard.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
            guard.by_id.retain(|_, s| now.duration_since(s.last_used) < IDLE);
            guard.swept = Some(now);
        }
        let state = guard.by_id.entry(msg.stream).or_insert_with(|| self.start(raft, msg.stream));
        state.last_used = now;
        if state.ended || msg.seq < state.next_seq {
            // A duplicate of a request already fed: it gets no answer of its own.
            return rx;
        }
        state.parked.insert(msg.seq, (msg.rpc, tx));
        while let Some((rpc, answer)) = state.parked.remove(&state.next_seq) {
            crate::lock(&state.waiters).push_back(answer);
            if state.input.send(rpc).is_err() {
                break;
            }
            state.next_seq += 1;
        }
        if state.parked.len() > MAX_PARKED {
            tracing::warn!(stream = msg.stream, "replication stream has a gap that never filled; dropping it");
            state.ended = true;
            state.parked.clear();
        }
        rx
    }

    fn start(self: &Arc<Self>, raft: &Raft, stream: u64) -> StreamState {
        let (input, rx) = mpsc::unbounded_channel::<AppendEntriesRequest<TypeConfig>>();
        let waiters: Arc<Mutex<VecDeque<Answer>>> = Default::default();
        let output = raft.stream_append(tokio_stream_from(rx));
        let (w, me) = (waiters.clone(), Arc::downgrade(self));
        tokio::spawn(async move {
            let mut output = Box::pin(output);
            while let Some(result) = output.next().await {
                let Some(answer) = crate::lock(&w).pop_front() else { break };
                match result {
                    Ok(r) => {
                        let failed = r.is_err();
                        let _ = answer.send(r);
                        if failed {
                            break;
                        }
                    }
                    Err(fatal) => {
                        tracing::debug!(stream, error = %fatal, "replication stream ended: raft stopped");
                        break;
                    }
                }
            }
            // Every request still waiting hears that the stream ended (its sender drops).
            crate::lock(&w).clear();
            if let Some(me) = me.upgrade() {
                if let Some(state) = me.lock().by_id.get_mut(&stream) {
                    state.ended = true;
                    state.parked.clear();
                }
            }
        });
        StreamState { next_seq: 0, parked: BTreeMap::new(), input, waiters, last_used: Instant::now(), ended: false }
    }
}

/// An unbounded receiver as a `Stream`.
fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
