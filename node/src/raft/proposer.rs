//! Client writes of one region, proposed to openraft in batches.
//!
//! openraft's core runs its engine commands after every API message it takes (0.10's
//! `RaftCore::process_raft_msg` has its batching threshold at zero), so N concurrent
//! `client_write`s cost the leader N log appends, N jobs for the log engine, N flush
//! notifications and N wake-ups of each replication stream. `client_write_many` hands the
//! core the same N entries as one message: one append, one log job, one wake-up. Each
//! entry stays a log entry of its own, with its own result, so nothing changes for the
//! log format, the state machine or exactly-once.
//!
//! A [`Proposer`] sends a write straight to openraft when it is the region's only write in
//! progress (a sequential client pays no hand-off). Otherwise the write joins a queue that
//! one task per region drains: whatever queued up while the task last ran goes as one
//! batch, and a task per batch hands the results back in log order.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use openraft::base::BoxStream;
use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::raft::WriteResult;
use tokio::sync::{mpsc, oneshot};

use super::types::{ApplyResult, LogCommand, Raft, TypeConfig};

/// Most writes proposed in one batch.
pub const MAX_BATCH: usize = 256;

/// Most bytes (by [`LogCommand::encoded_len_bound`]) of writes proposed in one batch; a
/// single larger write still goes alone. One batch becomes one job of the log engine, which
/// encodes it into one buffer.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What a write comes back with: its entry's apply result, or openraft's refusal.
pub type WriteOutcome = Result<ApplyResult, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

/// Results of a batch, in submission order.
pub type BatchResults = BoxStream<'static, Result<WriteResult<TypeConfig>, Fatal<TypeConfig>>>;

/// Where proposals go: a region's Raft group (a fake in tests).
pub trait Propose: Clone + Send + Sync + 'static {
    /// Proposes one write and waits for its result.
    fn write_one(&self, cmd: LogCommand) -> impl Future<Output = WriteOutcome> + Send;
    /// Proposes `cmds` as one message; the stream yields their results in order.
    fn write_many(&self, cmds: Vec<LogCommand>)
        -> impl Future<Output = Result<BatchResults, Fatal<TypeConfig>>> + Send;
}

impl Propose for Raft {
    async fn write_one(&self, cmd: LogCommand) -> WriteOutcome {
        self.client_write(cmd).await.map(|resp| resp.data)
    }

    async fn write_many(&self, cmds: Vec<LogCommand>) -> Result<BatchResults, Fatal<TypeConfig>> {
        self.client_write_many(cmds).await
    }
}

struct Proposal {
    cmd: LogCommand,
    answer: oneshot::Sender<WriteOutcome>,
}

/// Batches one region's client writes (see the module docs).
pub struct Proposer<P: Propose = Raft> {
    target: P,
    queue: mpsc::UnboundedSender<Proposal>,
    /// Writes between [`Proposer::write`]'s start and its answer.
    in_progress: Arc<AtomicUsize>,
}

impl<P: Propose> std::fmt::Debug for Proposer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").field("in_progress", &self.in_progress.load(Ordering::Relaxed)).finish()
    }
}

/// Counts a write in progress until dropped.
struct InProgress(Arc<AtomicUsize>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<P: Propose> Proposer<P> {
    /// A proposer for `target`, with its batching task (which ends when the proposer is
    /// dropped). Must be called within a tokio runtime.
    pub fn new(target: P) -> Proposer<P> {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(target.clone(), rx));
        Proposer { target, queue, in_progress: Arc::new(AtomicUsize::new(0)) }
    }

    /// Proposes `cmd` and waits for its entry to be applied. Dropping the future does not
    /// withdraw the proposal, as with `Raft::client_write`.
    pub async fn write(&self, cmd: LogCommand) -> WriteOutcome {
        let alone = self.in_progress.fetch_add(1, Ordering::AcqRel) == 0;
        let _counted = InProgress(self.in_progress.clone());
        if alone {
            return self.target.write_one(cmd).await;
        }
        let (answer, result) = oneshot::channel();
        if self.queue.send(Proposal { cmd, answer }).is_err() {
            return Err(RaftError::Fatal(Fatal::Stopped));
        }
        // No answer: the batch's proposal or its results ended with the Raft group, and the
        // entry may have been appended.
        result.await.unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
    }
}

/// The batching task: proposes whatever is queued as one batch, again and again.
async fn drain<P: Propose>(target: P, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.cmd.encoded_len_bound();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(p) = rx.try_recv() else { break };
            bytes += p.cmd.encoded_len_bound();
            if bytes > MAX_BATCH_BYTES {
                next = Some(p);
                break;
            }
            batch.push(p);
        }
        let (cmds, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.answer)).unzip();
        match target.write_many(cmds).await {
            Ok(results) => {
                tokio::spawn(deliver(results, answers));
            }
            Err(fatal) => {
                for answer in answers {
                    let _ = answer.send(Err(RaftError::Fatal(fatal.clone())));
                }
            }
        }
    }
}

/// Hands a batch's results to its writers, in order. Writers left without a result (the
/// stream ended early: the Raft group stopped) see their answer dropped.
async fn deliver(mut results: BatchResults, answers: Vec<oneshot::Sender<WriteOutcome>>) {
    for answer in answers {
        let outcome = match results.next().await {
            Some(Ok(Ok(written))) => Ok(written.response),
            Some(Ok(Err(refused))) => Err(RaftError::APIError(refused)),
            Some(Err(fatal)) => Err(RaftError::Fatal(fatal)),
            None => return,
        };
        let _ = answer.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::LogOp;
    use openraft::raft::WriteResponse;
    use std::sync::Mutex;

    fn put(i: u32) -> LogCommand {
        LogCommand::from_wire(
            None,
            tessera_wire::WriteCommand::Put { key: i.to_be_bytes().to_vec(), value: vec![7; 10] },
            1 << 20,
            0,
            0,
        )
    }

    fn key_of(cmd: &LogCommand) -> u32 {
        match cmd.op() {
            Some(LogOp::Put(k, _)) => u32::from_be_bytes(k[..4].try_into().unwrap()),
            other => panic!("not a put: {other:?}"),
        }
    }

    /// A fake Raft group: records how writes were proposed and answers each write with
    /// `Appended(key)`, so every writer can tell its own answer; a write of key 13 is
    /// refused as if leadership moved.
    #[derive(Clone)]
    struct Fake {
        singles: Arc<Mutex<Vec<u32>>>,
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        /// Released to let `write_one` answer.
        gate: Arc<tokio::sync::Semaphore>,
        /// Batches stop after this many results (the group "stops").
        stop_after: Option<usize>,
    }

    impl Default for Fake {
        fn default() -> Fake {
            Fake {
                singles: Default::default(),
                batches: Default::default(),
                gate: Arc::new(tokio::sync::Semaphore::new(0)),
                stop_after: None,
            }
        }
    }

    fn answer(key: u32) -> Result<WriteResult<TypeConfig>, Fatal<TypeConfig>> {
        if key == 13 {
            let fwd = openraft::error::ForwardToLeader::empty();
            return Ok(Err(ClientWriteError::ForwardToLeader(fwd)));
        }
        let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, u64::from(key));
        Ok(Ok(WriteResponse { log_id, response: ApplyResult::Appended(u64::from(key)) }))
    }

    impl Propose for Fake {
        async fn write_one(&self, cmd: LogCommand) -> WriteOutcome {
            let key = key_of(&cmd);
            self.singles.lock().unwrap().push(key);
            let _permit = self.gate.acquire().await.unwrap();
            match answer(key) {
                Ok(Ok(w)) => Ok(w.response),
                Ok(Err(e)) => Err(RaftError::APIError(e)),
                Err(f) => Err(RaftError::Fatal(f)),
            }
        }

        async fn write_many(&self, cmds: Vec<LogCommand>) -> Result<BatchResults, Fatal<TypeConfig>> {
            let keys: Vec<u32> = cmds.iter().map(key_of).collect();
            self.batches.lock().unwrap().push(keys.clone());
            let take = self.stop_after.unwrap_or(usize::MAX);
            Ok(Box::pin(futures::stream::iter(keys.into_iter().take(take).map(answer))))
        }
    }

    /// Starts a first write (key 1), which goes straight to the group and whose answer waits
    /// on the fake's gate, and returns once the group has it: later writes find a write in
    /// progress and queue.
    async fn hold_the_group(fake: &Fake, proposer: &Arc<Proposer<Fake>>) -> tokio::task::JoinHandle<WriteOutcome> {
        let first = tokio::spawn({
            let p = proposer.clone();
            async move { p.write(put(1)).await }
        });
        while fake.singles.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        first
    }

    #[tokio::test]
    async fn a_lone_write_goes_straight_to_raft() {
        let fake = Fake::default();
        fake.gate.add_permits(1);
        let proposer = Proposer::new(fake.clone());
        assert_eq!(proposer.write(put(5)).await, Ok(ApplyResult::Appended(5)));
        assert_eq!(proposer.write(put(6)).await, Ok(ApplyResult::Appended(6)));
        assert_eq!(*fake.singles.lock().unwrap(), vec![5, 6]);
        assert!(fake.batches.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_writes_go_as_one_batch_and_each_gets_its_own_answer() {
        let fake = Fake::default();
        let proposer = Arc::new(Proposer::new(fake.clone()));
        let first = hold_the_group(&fake, &proposer).await;
        let rest: Vec<_> = (2..=20)
            .map(|i| {
                let p = proposer.clone();
                tokio::spawn(async move { (i, p.write(put(i)).await) })
            })
            .collect();
        let mut answers = Vec::new();
        for task in rest {
            answers.push(task.await.unwrap());
        }
        for (i, outcome) in answers {
            if i == 13 {
                assert!(
                    matches!(outcome, Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))),
                    "{outcome:?}"
                );
            } else {
                assert_eq!(outcome, Ok(ApplyResult::Appended(u64::from(i))));
            }
        }
        fake.gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(ApplyResult::Appended(1)));
        let batches = fake.batches.lock().unwrap().clone();
        let proposed: Vec<u32> = batches.iter().flatten().copied().collect();
        assert_eq!(proposed.len(), 19, "every queued write proposed once: {batches:?}");
        assert!(batches.len() < 19, "queued writes share batches: {batches:?}");
        assert!(batches.iter().all(|b| b.len() <= MAX_BATCH));
    }

    #[tokio::test]
    async fn a_batch_never_exceeds_its_byte_budget_but_a_large_write_still_goes() {
        let fake = Fake::default();
        let proposer = Arc::new(Proposer::new(fake.clone()));
        let first = hold_the_group(&fake, &proposer).await;
        // Three writes of 3 MiB each: no two fit one batch of MAX_BATCH_BYTES.
        let big = |i: u32| {
            LogCommand::from_wire(
                None,
                tessera_wire::WriteCommand::Put { key: i.to_be_bytes().to_vec(), value: vec![1; 3 << 20] },
                4 << 20,
                0,
                0,
            )
        };
        let tasks: Vec<_> = (2..=4)
            .map(|i| {
                let p = proposer.clone();
                let cmd = big(i);
                tokio::spawn(async move { p.write(cmd).await })
            })
            .collect();
        for (i, task) in (2..=4).zip(tasks) {
            assert_eq!(task.await.unwrap(), Ok(ApplyResult::Appended(i)));
        }
        fake.gate.add_permits(1);
        first.await.unwrap().unwrap();
        let batches = fake.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 3);
        assert!(batches.iter().all(|b| b.len() == 1), "{batches:?}");
    }

    #[tokio::test]
    async fn writers_whose_results_never_come_learn_that_the_group_stopped() {
        let fake = Fake { stop_after: Some(0), ..Fake::default() };
        let proposer = Arc::new(Proposer::new(fake.clone()));
        let first = hold_the_group(&fake, &proposer).await;
        let outcome = proposer.write(put(2)).await;
        assert!(matches!(outcome, Err(RaftError::Fatal(Fatal::Stopped))), "{outcome:?}");
        fake.gate.add_permits(1);
        first.await.unwrap().unwrap();
    }
}
