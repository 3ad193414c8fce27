//! The node's redb database and its group-commit writer.
//!
//! Every mutation of every region's state machine is a *job*: a closure run inside a write
//! transaction plus a completion. The writer thread takes every job queued at that moment,
//! runs them in order inside one transaction and commits it, durably (one fsync) if any
//! job asked for it or a durable commit is due, then fires all their completions. So the
//! applies of all regions that queue up while one transaction runs share the next one. An
//! apply of plain writes is instead *staged* on its caller's thread when the writer holds
//! no transaction ([`Engine::apply_plain`]): it reads through a read transaction and
//! leaves everything it writes in the overlay (`overlay.rs`), for the next write
//! transaction to write, which saves the transaction and two thread wake-ups.
//! (The Raft log is not here: it lives in the log engine, `wal.rs`.)
//!
//! Fail-stop: if a transaction fails to commit (I/O error, full disk), the engine records the
//! failure, fails that batch and every later job, and never retries. The node then refuses
//! work with `StorageUnavailable` until restarted, when redb recovers to its last commit.

use crate::lock;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};

use redb::ReadableDatabase;

use super::overlay::{Overlay, WriteOut};
use super::tables;

/// Work done inside the shared write transaction.
pub type Work = Box<dyn FnOnce(&redb::WriteTransaction) -> Result<(), io::Error> + Send>;
/// Completion, called after the commit with its outcome.
pub type Done = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

/// The transaction an apply of plain writes runs in: the group commit's write
/// transaction, or a read transaction when it is staged ([`Engine::apply_plain`]).
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)]
pub enum TxnRef<'a> {
    /// A write transaction.
    Write(&'a redb::WriteTransaction),
    /// A read transaction: the apply writes nothing to redb, only to the overlay.
    Read(&'a redb::ReadTransaction),
}

/// The error of a staged apply ([`Engine::apply_plain`]) asked to write `what` to redb,
/// which only a write transaction can: the caller's promise that it would not was wrong.
pub(crate) fn staged_cannot_write(what: &str) -> io::Error {
    io::Error::other(format!("a staged apply cannot write {what}: it has no write transaction"))
}

/// An apply of plain writes ([`Engine::apply_plain`]).
pub type PlainWork = Box<dyn FnOnce(TxnRef<'_>) -> Result<(), io::Error> + Send>;

struct Job {
    task: Task,
    done: Done,
    log_entries: u64,
    durable: bool,
    /// When it was sent to the writer.
    queued_at: std::time::Instant,
}

/// What a job runs.
enum Task {
    /// Work in the group commit's write transaction. It sees the table alone: the overlay
    /// is written to it first (`overlay.rs`).
    Txn(Work),
    /// An apply of plain writes ([`Engine::apply_plain`]), which stages its rows in the
    /// data overlay; `may_stage` as its caller promised. The writer stages it itself when
    /// it finds it queued before a slow step ([`stage_queued`]).
    Plain { work: PlainWork, may_stage: bool },
}

impl Task {
    fn is_plain(&self) -> bool {
        matches!(self, Task::Plain { .. })
    }

    /// The work to run in the group commit's write transaction.
    fn into_work(self) -> Work {
        match self {
            Task::Txn(work) => work,
            Task::Plain { work, .. } => Box::new(move |txn| work(TxnRef::Write(txn))),
        }
    }
}

/// A message to the writer thread.
enum Msg {
    /// Work to do.
    Job(Job),
    /// Finish the jobs queued before this message, then exit.
    Stop,
}

/// Default size of redb's page cache. It bounds the database's own memory; the OS page
/// cache comes on top. (redb's own default, 1 GiB, makes a node's memory grow with the data
/// it touches.)
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 4096;

/// Lazy commits (applies) are made durable at least this often by default
/// (`NodeConfig::durable_interval`), so that the dirty data a durable commit must flush
/// stays bounded: without it, the first durable commit after a long run of applies (a
/// purge's barrier) flushes everything applied since, stalling every apply behind it for
/// seconds. It also bounds what a restart replays from the Raft log (the log is kept back
/// to the last durable commit) and how long a region's approximate counts lag behind its
/// writes: a new key counts only once the write-out that puts it in the table commits
/// (`overlay::Replaced::Unread`), and PD's size splits read those counts.
///
/// Each durable commit writes out every page dirtied since the last one and syncs, so it
/// must not come too often either: a leaf page dirtied in every interval is written once
/// per interval, and while the writes go to the disk the Raft log's syncs wait behind them.
/// At 500 ms (before the write-out left the commit lock) it set the tail of sequential puts
/// and of workload A.
///
/// Longer is faster and is not the default. Issue 6's thirtieth note measured 10 s against
/// 2 s in two interleaved pairs of `tessera-bench compare --full --rows a-c64,put-c256`:
/// puts at 256 in flight 2.93-3.17× etcd against 2.77-2.96×, at 55.9-59.8 server CPU-µs per
/// put against 60.6-64.9, p99 19.6-22.0 ms against 23.3-26.0; workload A's p99 10.3-11.9 ms
/// against 11.2-12.8; bytes written to the disk per write 40% fewer (1.40-1.43 against
/// 2.24-2.44 KiB per put at 256 in flight, 2.70-2.85 against 4.41-4.95 KiB per update of
/// workload A); the sequential put's p99 did not move beyond the noise. But region sizes
/// then lag by up to 10 s: in the split crash test (32 KiB regions under a bulk load) the
/// first sizes arrived 10 s in, each region many times over its limit, and PD split them
/// again and again, into some 250 regions, more than a 2-core machine could keep
/// heartbeating. And a restart after `kill -9` under full load replays more: a `tessera
/// dev` killed after 15 s of puts at 256 in flight answered its first read 1.7-3.7 s after
/// its restart, against 1.05-1.10 s at 2 s.
pub const LAZY_DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Storage failure at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database could not be opened or created.
    #[error("open database {path}: {source}")]
    Open {
        /// Path.
        path: String,
        /// Cause.
        source: redb::DatabaseError,
    },
    /// Reading or initialising tables failed.
    #[error("storage: {0}")]
    Io(#[from] io::Error),
}

/// Counters of the group commit, for benchmarks and status.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Durable commits (one fsync each).
    pub commits: AtomicU64,
    /// Jobs committed.
    pub jobs: AtomicU64,
    /// Raft log entries committed.
    pub log_entries: AtomicU64,
    /// Durable commits the writer made of its own once idle (see `next_batch`).
    pub idle_commits: AtomicU64,
    /// Applies staged without a write transaction ([`Engine::apply_plain`]).
    pub staged: AtomicU64,
    /// Of those, applies the writer found queued before its write-out or its sync and
    /// staged itself ([`stage_queued`]).
    pub staged_by_writer: AtomicU64,
    /// Syncs of redb's file in a commit's write-back, before the commit's own
    /// ([`WRITE_BACK_STEP`](super::paced_file::WRITE_BACK_STEP)).
    pub write_back_steps: Arc<AtomicU64>,
}

/// Why the engine stopped: the first failed commit, with its I/O error kind kept (a full
/// disk is `StorageFull`, corruption `InvalidData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The error kind.
    pub kind: io::ErrorKind,
    /// What failed.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.kind)
    }
}

impl Failure {
    fn to_io(&self) -> io::Error {
        io::Error::new(self.kind, format!("storage failed earlier: {}", self.message))
    }
}

struct Shared {
    /// Directory of snapshot files (`snapshots/` beside the database).
    snapshot_dir: PathBuf,
    /// `None` once the engine is closed.
    db: RwLock<Option<Arc<redb::Database>>>,
    tx: Mutex<mpsc::Sender<Msg>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    failed: Mutex<Option<Failure>>,
    stats: CommitStats,
    /// Jobs sent and not yet taken by the writer.
    queued: AtomicUsize,
    /// When the last durable commit was made.
    last_durable: Mutex<std::time::Instant>,
    /// Lazy commits are made durable at least this often ([`LAZY_DURABLE_EVERY`] by
    /// default).
    durable_every: std::time::Duration,
    /// A commit since the last durable one was not durable: an idle writer makes a durable
    /// commit once the interval has passed (see [`next_batch`]).
    lazy_pending: AtomicBool,
    /// Durable states fixed so far: counted, under the commit lock, by each transaction
    /// whose state a durable commit will hold (see [`Engine::durable_ticket`]).
    durable_fixed: AtomicU64,
    /// The count of `durable_fixed` whose state the last completed durable commit holds.
    durable_done: AtomicU64,
    /// Tests: called by the writer at the start of [`sync_durable`].
    #[cfg(test)]
    sync_hook: Mutex<Option<Box<dyn Fn() + Send>>>,
    /// Tests: called by the writer at the start of [`write_out`].
    #[cfg(test)]
    write_out_hook: Mutex<Option<Box<dyn Fn() + Send>>>,
    /// Held by whoever runs a write transaction (the writer thread for each batch, or a
    /// cut that writes what staged applies left: [`Engine::read_cut`]), and by a staged
    /// apply ([`Engine::apply_plain`]), so the two never run at once.
    committing: Mutex<()>,
    /// Holders of `committing` other than staged applies, and those about to take it
    /// ([`Shared::lock_busy`]): a staged apply does not wait for them.
    busy: AtomicUsize,
    /// Applied rows of the `data` table not yet written to it (`overlay.rs`).
    overlay: Arc<Overlay>,
    /// Per region, the applied index up to which its applies of a merge's prepare are over
    /// here, the snapshot file of the frozen state cut ([`Engine::merge_cut_settled`]).
    merge_cuts: Mutex<HashMap<u64, u64>>,
}

/// The node's database and writer. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("failed", &self.failure()).finish()
    }
}

/// Converts a redb error to an `io::Error`, keeping what kind of failure it was: redb's
/// I/O errors keep their own kind (and OS error code, so a full disk stays `StorageFull`);
/// corruption becomes `InvalidData`.
pub(crate) fn io_err(e: impl Into<redb::Error>) -> io::Error {
    match e.into() {
        redb::Error::Io(e) => e,
        redb::Error::Corrupted(what) => io::Error::new(io::ErrorKind::InvalidData, format!("corrupted: {what}")),
        redb::Error::DatabaseAlreadyOpen => io::Error::new(io::ErrorKind::AlreadyExists, "database already open"),
        redb::Error::ValueTooLarge(n) => {
            io::Error::new(io::ErrorKind::InvalidInput, format!("value of {n} bytes too large"))
        }
        other => io::Error::other(other.to_string()),
    }
}

impl Engine {
    /// Opens (or creates) the database at `path` with a [`DEFAULT_CACHE_BYTES`] page cache
    /// and starts the writer thread.
    pub fn open(path: &Path) -> Result<Engine, StorageError> {
        Self::open_with(path, DEFAULT_CACHE_BYTES, LAZY_DURABLE_EVERY)
    }

    /// [`Engine::open`] with a page cache of `cache_bytes`, making lazy commits durable at
    /// least every `durable_every` (see [`LAZY_DURABLE_EVERY`]; at least 1 ms).
    pub fn open_with(
        path: &Path,
        cache_bytes: usize,
        durable_every: std::time::Duration,
    ) -> Result<Engine, StorageError> {
        let open_err = |source| StorageError::Open { path: path.display().to_string(), source };
        let write_back_steps = Arc::new(AtomicU64::new(0));
        let file = super::paced_file::PacedFile::open(path, write_back_steps.clone()).map_err(open_err)?;
        let db = redb::Builder::new().set_cache_size(cache_bytes).create_with_backend(file).map_err(open_err)?;
        // Create every table up front so readers never see a missing table.
        let txn = db.begin_write().map_err(io_err)?;
        {
            txn.open_table(tables::LOGS).map_err(io_err)?;
            txn.open_table(tables::RAFT_META).map_err(io_err)?;
            txn.open_table(tables::DATA).map_err(io_err)?;
            txn.open_table(tables::SM_META).map_err(io_err)?;
            txn.open_table(tables::DEDUP).map_err(io_err)?;
            txn.open_table(tables::SESSIONS).map_err(io_err)?;
            txn.open_table(tables::REGIONS).map_err(io_err)?;
            txn.open_table(tables::NODE_META).map_err(io_err)?;
            txn.open_table(tables::DATA_IDS).map_err(io_err)?;
            txn.open_table(tables::SESSION_IDS).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        let db = Arc::new(db);
        // Snapshot files are rebuilt or resent on demand: whatever a previous run left is
        // stale (a half-received transfer, an old build).
        let snapshot_dir = path.parent().unwrap_or(Path::new(".")).join("snapshots");
        if snapshot_dir.exists() {
            std::fs::remove_dir_all(&snapshot_dir)?;
        }
        std::fs::create_dir_all(&snapshot_dir)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let shared = Arc::new(Shared {
            snapshot_dir,
            db: RwLock::new(Some(db.clone())),
            tx: Mutex::new(tx),
            writer: Mutex::new(None),
            failed: Mutex::new(None),
            stats: CommitStats { write_back_steps, ..CommitStats::default() },
            queued: AtomicUsize::new(0),
            last_durable: Mutex::new(std::time::Instant::now()),
            // Zero would make an idle writer's wait for the interval return at once, forever.
            durable_every: durable_every.max(std::time::Duration::from_millis(1)),
            lazy_pending: AtomicBool::new(false),
            durable_fixed: AtomicU64::new(0),
            durable_done: AtomicU64::new(0),
            #[cfg(test)]
            sync_hook: Mutex::new(None),
            #[cfg(test)]
            write_out_hook: Mutex::new(None),
            committing: Mutex::new(()),
            busy: AtomicUsize::new(0),
            overlay: Arc::default(),
            merge_cuts: Mutex::default(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tessera-writer".into())
                .spawn(move || writer_loop(db, rx, &shared))
                .map_err(StorageError::Io)?
        };
        *lock(&shared.writer) = Some(writer);
        Ok(Engine { shared })
    }

    /// Queues `work`; `done` is called once its commit is durable (or failed).
    /// `log_entries` counts the Raft log entries it writes, for the statistics.
    pub fn submit(&self, work: Work, done: Done, log_entries: u64) {
        self.send(Job { task: Task::Txn(work), done, log_entries, durable: true, queued_at: std::time::Instant::now() })
    }

    /// Queues `work` without waiting for it and without requiring an fsync of its own: it
    /// becomes durable with the next durable commit. A failure shows as the engine's
    /// fail-stop, like every other.
    pub fn submit_lazy(&self, work: Work) {
        self.send(Job {
            task: Task::Txn(work),
            done: Box::new(|_| {}),
            log_entries: 0,
            durable: false,
            queued_at: std::time::Instant::now(),
        })
    }

    fn send(&self, job: Job) {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(Msg::Job(job))) = lock(&self.shared.tx).send(Msg::Job(job)) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            (job.done)(Err(io::Error::other("storage writer has stopped")));
        }
    }

    /// Runs `work` in the next group commit without requiring an fsync of its own, and
    /// waits until it is committed (visible to readers).
    ///
    /// Used for state-machine applies: they are re-derived from the durable Raft log after
    /// a crash. redb makes a non-durable commit durable with the next durable one, so once
    /// anything later is durable (a log append, a vote, a purge) so is this; in particular
    /// the log is never purged past state that could still be lost.
    pub async fn write_lazy(&self, work: Work) -> io::Result<()> {
        self.run(Task::Txn(work), false).await
    }

    /// [`Engine::write_lazy`] for an apply of plain writes, which stages its rows of the
    /// `data` table in the overlay ([`Engine::overlay`]).
    ///
    /// If `may_stage` allows it (the caller's promise that `work` needs no write: only plain
    /// writes and the session sweeps they make), the apply is *staged*: it runs on the
    /// calling thread against a read transaction, with no write transaction and no commit,
    /// and leaves everything it would have written in the overlay (its data rows, its
    /// exactly-once results, its region's `sm_meta` row, its session rows and the `dedup`
    /// rows to delete), for the next write transaction to write (`overlay.rs`, "Staged
    /// applies").
    /// That happens when no write transaction is in progress or about to start and the
    /// overlay is not full, whatever waits in the writer's queue; otherwise the apply joins
    /// the group commit. Jobs in the queue are of other regions, or not applies: a region's
    /// applies run one after the other, each awaited by its caller. (An apply that joins
    /// the queue while the writer's transaction runs and may be staged is staged by the
    /// writer once the transaction is over, if a write-out or a sync comes next: it does
    /// not wait for those.)
    pub async fn apply_plain(&self, work: PlainWork, may_stage: bool) -> io::Result<()> {
        let work = if may_stage {
            match self.stage(work) {
                Ok(result) => return result,
                Err(work) => work,
            }
        } else {
            work
        };
        self.run(Task::Plain { work, may_stage }, false).await
    }

    /// Runs `work` as a staged apply ([`Engine::apply_plain`]) if it can now; gives it back
    /// otherwise.
    fn stage(&self, work: PlainWork) -> Result<io::Result<()>, PlainWork> {
        let shared = &self.shared;
        // Jobs waiting for the writer do not stop it: they belong to other regions (a
        // region's applies run one after the other, each awaited) or are not applies, and
        // a slow step of the writer's (its write-out, its sync) must not hold up every
        // region behind one apply that needed the writer (a session sweep).
        if shared.overlay.is_full() {
            return Err(work);
        }
        // Other staged applies hold the lock briefly: wait for them, not for anyone else.
        let _committing = loop {
            if shared.busy.load(Ordering::SeqCst) != 0 {
                return Err(work);
            }
            match shared.committing.try_lock() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        };
        if shared.busy.load(Ordering::SeqCst) != 0 {
            return Err(work);
        }
        Ok(run_staged(shared, work))
    }

    /// Runs `work` in the next group commit and waits until it is durable.
    pub async fn write(&self, work: Work) -> io::Result<()> {
        self.run(Task::Txn(work), true).await
    }

    async fn run(&self, task: Task, durable: bool) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.send(Job { task, done, log_entries: 0, durable, queued_at: std::time::Instant::now() });
        rx.await.map_err(|_| io::Error::other("storage writer dropped a job"))?
    }

    /// A consistent read snapshot of the database.
    pub fn read(&self) -> io::Result<redb::ReadTransaction> {
        self.check()?;
        let db = self.shared.db.read().unwrap_or_else(|p| p.into_inner());
        let db = db.as_ref().ok_or_else(|| io::Error::other("storage is closed"))?;
        db.begin_read().map_err(io_err)
    }

    /// The applied rows of the `data` table not yet written to it. Readers of the table
    /// read through it ([`Engine::read_data`]).
    pub fn overlay(&self) -> &Arc<Overlay> {
        &self.shared.overlay
    }

    /// A read transaction and, taken consistently with it by `pick`, rows of the overlay
    /// ([`Overlay::read_consistent`]): together they show every apply committed up to when
    /// `pick` ran. Not for snapshots ([`Engine::read_cut`]).
    pub fn read_data<T>(
        &self,
        pick: impl FnMut(&redb::ReadTransaction, super::overlay::View<'_>) -> io::Result<T>,
    ) -> io::Result<(redb::ReadTransaction, T)> {
        self.shared.overlay.read_consistent(|| self.read(), pick)
    }

    /// [`Engine::read_data`] at a commit boundary: the transaction and the overlay's rows
    /// show exactly the same commits, so a region's applied state read from the
    /// transaction matches its rows. Waits for the commit in progress, if any.
    pub fn read_cut<T>(
        &self,
        pick: impl FnOnce(&redb::ReadTransaction, super::overlay::View<'_>) -> io::Result<T>,
    ) -> io::Result<(redb::ReadTransaction, T)> {
        let _committing = self.shared.lock_busy();
        // What staged applies left for the tables goes to them first (a small commit), so
        // that the transaction shows the regions' applied states and sessions with the
        // published rows of the same applies.
        if self.shared.overlay.has_settle() {
            let db = self.shared.db_handle()?;
            let job = Job {
                task: Task::Plain { work: Box::new(|_| Ok(())), may_stage: false },
                done: Box::new(|_| {}),
                log_entries: 0,
                durable: false,
                queued_at: std::time::Instant::now(),
            };
            // If the durable interval has passed, this is its durable commit: made here,
            // under the lock (a cut is rare), rather than left to a writer that may be idle.
            // (If the writer's write-out is under way, this transaction waits for it to
            // commit: it began under the lock.)
            let after = commit_batch(&db, vec![job], &self.shared, Place::UnderLock);
            debug_assert!(after.write_out.is_none());
            if let Some(fixed) = after.sync {
                sync_durable(&db, &self.shared, fixed);
            }
            self.check()?;
        }
        // No commit runs meanwhile, so no rows leave the overlay: the transaction and the
        // published rows show the same commits.
        let txn = self.read()?;
        let picked = self.shared.overlay.with_published(|rows| pick(&txn, rows))?;
        Ok((txn, picked))
    }

    /// A read transaction taken under the commit lock, with `pick` run under it too: no
    /// transaction of the writer's is in progress, so the tables' applied states and
    /// sessions with what staged applies left over them ([`Overlay::meta_get`]) are the
    /// latest. Unlike [`Engine::read_cut`] it commits nothing, so it never waits for the
    /// overlay's write-out, nor makes staged applies wait for a commit of its own. Only the
    /// `data` table may change under it (a write-out commits outside the lock): not for
    /// rows.
    pub fn read_settled<T>(
        &self,
        pick: impl FnOnce(&redb::ReadTransaction, &Overlay) -> io::Result<T>,
    ) -> io::Result<T> {
        let _committing = lock(&self.shared.committing);
        let txn = self.read()?;
        pick(&txn, &self.shared.overlay)
    }

    /// Records that `region`'s replica here is done, up to its applied index `applied`, with
    /// any prepare of a merge it applied: its snapshot file of the frozen state is cut (or
    /// failed, logged), so the merge's target on this node may absorb it
    /// ([`Engine::merge_cut_settled`]). Called after an apply that holds a prepare, an
    /// install, and the start of a prepared replica (which cuts a file first). Kept in
    /// memory, so a restart forgets it: until a prepared replica started again has cut its
    /// file, its target here waits (ARCHITECTURE.md, merges).
    pub fn settle_merge_cut(&self, region: u64, applied: u64) {
        let mut cuts = lock(&self.shared.merge_cuts);
        let settled = cuts.entry(region).or_default();
        *settled = (*settled).max(applied);
    }

    /// Whether `region`'s applies up to `index` are settled ([`Engine::settle_merge_cut`]):
    /// a prepare at `index` has its file cut since this engine opened.
    pub fn merge_cut_settled(&self, region: u64, index: u64) -> bool {
        lock(&self.shared.merge_cuts).get(&region).is_some_and(|settled| *settled >= index)
    }

    /// `Err` once the engine has fail-stopped.
    pub fn check(&self) -> io::Result<()> {
        match &*lock(&self.shared.failed) {
            Some(failure) => Err(failure.to_io()),
            None => Ok(()),
        }
    }

    /// The failure that stopped the engine, if any.
    pub fn failure(&self) -> Option<Failure> {
        lock(&self.shared.failed).clone()
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.shared.stats
    }

    /// The directory holding this engine's snapshot files.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.shared.snapshot_dir.clone()
    }

    /// Tests: waits until no write transaction holds the commit lock (the writer answers
    /// its jobs before it leaves its transaction), so that the next plain apply is staged.
    #[cfg(test)]
    pub(crate) async fn wait_until_writer_idle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.shared.busy.load(Ordering::SeqCst) != 0 || self.queue_depth() != 0 {
            assert!(std::time::Instant::now() < deadline, "the writer never left its transaction");
            tokio::task::yield_now().await;
        }
    }

    /// A ticket for everything applied so far (staged or committed): once
    /// [`Engine::durable_covers`] holds for it, a durable commit has made all of it durable.
    /// Unlike counting durable commits, this is not fooled by a durable commit that was
    /// under way when the ticket was taken: the interval's durable commit fixes its state
    /// under the commit lock and syncs it outside ([`sync_durable`]), while later applies
    /// are staged.
    pub fn durable_ticket(&self) -> u64 {
        self.shared.durable_fixed.load(Ordering::SeqCst)
    }

    /// Whether a durable commit completed since `ticket` ([`Engine::durable_ticket`]) holds
    /// everything applied before the ticket was taken.
    pub fn durable_covers(&self, ticket: u64) -> bool {
        self.shared.durable_done.load(Ordering::SeqCst) > ticket
    }

    /// Jobs waiting for the writer: the depth of the group-commit queue.
    pub fn queue_depth(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Stops the writer after the jobs already queued, waits for it, and closes the
    /// database: when this returns the database file is released (reads still in flight
    /// keep their snapshot; jobs sent afterwards fail). Idempotent.
    pub fn close(&self) {
        let _ = lock(&self.shared.tx).send(Msg::Stop);
        if let Some(writer) = lock(&self.shared.writer).take() {
            if writer.join().is_err() {
                tracing::error!("storage writer thread panicked");
            }
        }
        // A staged apply or a cut that started before finishes first.
        let _committing = self.shared.lock_busy();
        // redb makes a pending non-durable commit durable when the database closes: write
        // the overlay out first, so that such a commit never carries applied indexes
        // without their rows (`overlay.rs`). Also after a fail-stop: the overlay holds only
        // committed rows (a failed transaction published nothing), exactly the state redb
        // would promote. After an I/O failure redb refuses this commit, and then it promotes
        // nothing either.
        if self.shared.overlay.has_rows() {
            if let Ok(db) = self.shared.db_handle() {
                if let Err(e) = flush_at_close(&db, &self.shared.overlay) {
                    tracing::error!(error = %e, "writing the data overlay out at close failed");
                }
            }
        }
        self.shared.db.write().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The commit lock, held by someone other than a staged apply ([`Shared::lock_busy`]).
struct Busy<'a> {
    shared: &'a Shared,
    _guard: std::sync::MutexGuard<'a, ()>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.shared.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// Takes the commit lock for a write transaction or a cut, telling staged applies not
    /// to wait for it (they join the group commit instead).
    fn lock_busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy { shared: self, _guard: lock(&self.committing) }
    }

    /// The open database, for a staged apply or a cut.
    fn db_handle(&self) -> io::Result<Arc<redb::Database>> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| io::Error::other("storage is closed"))
    }
}

/// Runs a staged apply ([`Engine::apply_plain`]), the caller holding the commit lock with
/// no write transaction in progress: `work` reads through a read transaction and leaves
/// what it writes in the overlay. A failure fail-stops the engine.
fn run_staged(shared: &Shared, work: PlainWork) -> io::Result<()> {
    if let Some(failure) = lock(&shared.failed).clone() {
        return Err(failure.to_io());
    }
    // Closed: nothing runs.
    let db = shared.db_handle()?;
    let result = db.begin_read().map_err(io_err).and_then(|txn| work(TxnRef::Read(&txn)));
    shared.overlay.committed(result.is_ok());
    match &result {
        Ok(()) => {
            // The next durable commit, or the idle writer's, writes it out.
            shared.lazy_pending.store(true, Ordering::SeqCst);
            shared.stats.jobs.fetch_add(1, Ordering::Relaxed);
            shared.stats.staged.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, kind = ?e.kind(), "staged apply failed; fail-stopping the node's storage");
            *lock(&shared.failed) = Some(Failure { kind: e.kind(), message: e.to_string() });
        }
    }
    result
}

/// Before a slow step that needs no commit lock (the overlay's write-out, the durable
/// sync), the writer stages the applies it finds queued that may be staged ([`Task::
/// Plain`]): they came while its transaction held the lock, and would otherwise wait for
/// the slow step as well, holding up their regions (issue 6's notes: 33-131 ms in the
/// queue under workload A). It does for them what their callers would have done had the
/// lock been free a moment later (`Engine::stage`), so the order they may take over the
/// jobs they leave queued is the one staging already allows (docs/storage.md, "Plain
/// applies are staged"). Everything else taken off the queue, in order, goes to
/// `carried`, the front of the next batch. True if a stop was taken off the queue (the
/// jobs before it are in `carried`).
fn stage_queued(rx: &mpsc::Receiver<Msg>, shared: &Shared, carried: &mut Vec<Job>) -> bool {
    loop {
        let job = match rx.try_recv() {
            Ok(Msg::Job(job)) => job,
            Ok(Msg::Stop) => return true,
            Err(_) => return false,
        };
        match job.task {
            // As `Engine::stage`: not into a full overlay.
            Task::Plain { work, may_stage: true } if !shared.overlay.is_full() => {
                crate::metrics::STAGES.redb_queue.record(job.queued_at.elapsed());
                let result = {
                    let _committing = lock(&shared.committing);
                    run_staged(shared, work)
                };
                shared.queued.fetch_sub(1, Ordering::SeqCst);
                if result.is_ok() {
                    shared.stats.staged_by_writer.fetch_add(1, Ordering::Relaxed);
                }
                (job.done)(result);
            }
            task => carried.push(Job { task, ..job }),
        }
    }
}

/// The next batch out of the jobs `carried` over from [`stage_queued`], the oldest first,
/// up to [`MAX_BATCH`]; the queue's jobs join it only once none is left carried (they came
/// after). True if a stop came before any job it took from the queue.
fn carried_batch(rx: &mpsc::Receiver<Msg>, carried: &mut Vec<Job>) -> (Vec<Job>, bool) {
    let mut batch = take_carried(carried);
    let stop = carried.is_empty() && take_queued(rx, &mut batch);
    (batch, stop)
}

/// The oldest [`MAX_BATCH`] jobs of `carried` (all of them if fewer).
fn take_carried(carried: &mut Vec<Job>) -> Vec<Job> {
    let rest = if carried.len() > MAX_BATCH { carried.split_off(MAX_BATCH) } else { Vec::new() };
    std::mem::replace(carried, rest)
}

/// Blocks for the next job, then takes every job already queued, up to [`MAX_BATCH`] (or
/// until a stop). The jobs `carried` over from [`stage_queued`] come first, and with
/// them it does not block. Returns the batch and whether a stop was seen; `None` when
/// stopped (or every sender is gone) with nothing queued.
///
/// An empty batch when the writer has been idle for the durable interval since the last
/// durable commit and a commit since then was not durable: its durable commit writes the
/// data overlay out, which also settles the regions' approximate counts for the rows it
/// writes (`overlay::Replaced::Unread`; PD's size splits read them), and covers pending log
/// purges. Without it, what the last writes left would wait for the next write.
fn next_batch(rx: &mpsc::Receiver<Msg>, shared: &Shared, carried: &mut Vec<Job>) -> Option<(Vec<Job>, bool)> {
    if !carried.is_empty() {
        return Some(carried_batch(rx, carried));
    }
    // After a fail-stop nothing commits, so nothing is pending (and an empty batch would
    // return at once, every time).
    let pending = || shared.lazy_pending.load(Ordering::SeqCst) && lock(&shared.failed).is_none();
    let first = loop {
        let wait = if pending() {
            shared.durable_every.saturating_sub(lock(&shared.last_durable).elapsed())
        } else {
            // A staged apply may leave one pending while the writer waits here: it is
            // seen at the end of this wait.
            shared.durable_every
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Job(job)) => break job,
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if pending() && lock(&shared.last_durable).elapsed() >= shared.durable_every {
                    shared.stats.idle_commits.fetch_add(1, Ordering::Relaxed);
                    return Some((Vec::new(), false));
                }
            }
        }
    };
    let mut batch = vec![first];
    let stop = take_queued(rx, &mut batch);
    Some((batch, stop))
}

/// Adds the queued jobs to `batch`, up to [`MAX_BATCH`]; true if a stop came first.
fn take_queued(rx: &mpsc::Receiver<Msg>, batch: &mut Vec<Job>) -> bool {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(Msg::Job(job)) => batch.push(job),
            Ok(Msg::Stop) => return true,
            Err(_) => break,
        }
    }
    false
}

fn writer_loop(db: Arc<redb::Database>, rx: mpsc::Receiver<Msg>, shared: &Shared) {
    // Jobs taken off the queue by `stage_queued` that it did not stage, for the next batch.
    let mut carried = Vec::new();
    // A stop taken off the queue by `stage_queued`: the carried jobs are the last.
    let mut stop_taken = false;
    loop {
        let (batch, stop) = if stop_taken {
            if carried.is_empty() {
                break;
            }
            let batch = take_carried(&mut carried);
            // The last batch once nothing is left carried.
            (batch, carried.is_empty())
        } else {
            match next_batch(&rx, shared, &mut carried) {
                Some(next) => next,
                None => break,
            }
        };
        let after = {
            let _committing = shared.lock_busy();
            shared.queued.fetch_sub(batch.len(), Ordering::SeqCst);
            commit_batch(&db, batch, shared, Place::Writer)
        };
        if let Some((txn, out)) = after.write_out {
            if !stop && !stop_taken {
                stop_taken = stage_queued(&rx, shared, &mut carried);
            }
            if !write_out(txn, out, shared) {
                if stop {
                    break;
                }
                continue;
            }
        }
        if let Some(fixed) = after.sync {
            if !stop && !stop_taken {
                stop_taken = stage_queued(&rx, shared, &mut carried);
            }
            sync_durable(&db, shared, fixed);
        }
        if stop {
            break;
        }
    }
    // Anything sent after the stop fails instead of hanging its caller.
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Job(job) = msg {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            (job.done)(Err(io::Error::other("storage is closed")));
        }
    }
}

/// The durable commit of the overlay's rows that [`Engine::close`] makes.
fn flush_at_close(db: &redb::Database, overlay: &Overlay) -> io::Result<()> {
    let result = (|| {
        let txn = db.begin_write().map_err(io_err)?;
        overlay.flush_into(&txn)?;
        txn.commit().map_err(io_err)
    })();
    overlay.committed(result.is_ok());
    result
}

/// Where [`commit_batch`] runs, which decides where a due write-out of the overlay goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// On the writer thread, which finishes what it returns after releasing the lock.
    Writer,
    /// Elsewhere under the commit lock (a cut): everything is done in the transaction.
    UnderLock,
}

/// What the writer finishes after [`commit_batch`] has released the commit lock.
#[must_use = "a frozen write-out and a fixed durable state must be finished"]
struct After {
    /// The overlay's frozen rows and the transaction, begun under the lock, to write them
    /// in ([`write_out`]).
    write_out: Option<(redb::WriteTransaction, WriteOut)>,
    /// A durable state fixed and written, for [`sync_durable`] to make durable.
    sync: Option<u64>,
}

/// Runs one batch in one transaction and completes every job of it with the outcome.
/// Called under the commit lock.
///
/// A batch with a job that asks for durability commits durably, with the overlay written
/// out in the same transaction. Otherwise, once the durable interval has passed (or the
/// overlay is full), the overlay is to be written out and (if the interval has passed)
/// the result made durable, which are the slow parts (issue 6's notes: a write-out of
/// 18-28 ms under workload A, a sync of 12-50 ms), and staged applies need not wait for
/// either. On the writer, the transaction writes the overlay's settle and dedup stages
/// and commits without a sync; the data rows are then frozen ([`Overlay::freeze`]) and
/// the transaction that will write them begun, both still under the lock, and the writer
/// writes and commits them ([`write_out`]), then syncs ([`sync_durable`]), with the lock
/// released. Under the lock elsewhere ([`Place::UnderLock`]) the transaction writes the
/// whole overlay out, and the caller syncs.
fn commit_batch(db: &redb::Database, batch: Vec<Job>, shared: &Shared, place: Place) -> After {
    let mut after = After { write_out: None, sync: None };
    let already_failed = lock(&shared.failed).clone();
    if let Some(failure) = already_failed {
        for job in batch {
            (job.done)(Err(failure.to_io()));
        }
        return after;
    }
    let overlay = &shared.overlay;
    let durable = batch.iter().any(|j| j.durable);
    let due = !durable && lock(&shared.last_durable).elapsed() >= shared.durable_every;
    // Frozen rows are left only by a failed write-out, after which nothing commits: the
    // check keeps a second freeze from ever meeting them.
    let freeze = place == Place::Writer && !durable && !overlay.has_frozen();
    // The state this transaction commits is what the durable commit will hold: counted now,
    // under the commit lock, so no apply can slip in between.
    let fixed = (durable || due).then(|| shared.durable_fixed.fetch_add(1, Ordering::SeqCst) + 1);
    let jobs = batch.len() as u64;
    for job in &batch {
        crate::metrics::STAGES.redb_queue.record(job.queued_at.elapsed());
    }
    let log_entries: u64 = batch.iter().map(|j| j.log_entries).sum();
    // Completions are taken out first, so that every job of the batch hears the outcome,
    // whichever job fails.
    let (works, dones): (Vec<(Work, bool)>, Vec<Done>) = batch
        .into_iter()
        .map(|j| {
            let plain = j.task.is_plain();
            ((j.task.into_work(), plain), j.done)
        })
        .unzip();
    let mut write_out_due = false;
    let result = (|| -> io::Result<()> {
        let mut txn = db.begin_write().map_err(io_err)?;
        let durability = if durable { redb::Durability::Immediate } else { redb::Durability::None };
        txn.set_durability(durability).map_err(io_err)?;
        // The jobs see the tables as the staged applies left them.
        overlay.settle_into(&txn)?;
        let flush = |txn: &redb::WriteTransaction| -> io::Result<()> {
            let started = std::time::Instant::now();
            let rows = overlay.flush_into(txn)?;
            crate::metrics::STAGES.overlay_flush.record(started.elapsed());
            tracing::trace!(
                rows,
                elapsed_us = started.elapsed().as_micros() as u64,
                "data overlay written to the table"
            );
            Ok(())
        };
        for (work, plain) in works {
            if !plain && overlay.has_rows() {
                flush(&txn)?;
            }
            work(&txn)?;
        }
        // Every durable commit holds the rows of the applied indexes it holds.
        if (durable || due || overlay.is_full()) && overlay.has_rows() {
            if freeze {
                overlay.flush_stages_into(&txn)?;
                write_out_due = true;
            } else {
                flush(&txn)?;
            }
        }
        let started = std::time::Instant::now();
        txn.commit().map_err(io_err)?;
        if durable {
            crate::metrics::STAGES.redb_durable_commit.record(started.elapsed());
        }
        Ok(())
    })();
    overlay.committed(result.is_ok());
    match &result {
        Ok(()) => {
            if let Some(fixed) = fixed.filter(|_| durable) {
                durable_done(shared, fixed);
            }
            // After a due write-out, `sync_durable` is about to make it durable.
            shared.lazy_pending.store(!(durable || due), Ordering::SeqCst);
            shared.stats.jobs.fetch_add(jobs, Ordering::Relaxed);
            shared.stats.log_entries.fetch_add(log_entries, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, kind = ?e.kind(), "storage commit failed; fail-stopping the node's storage");
            *lock(&shared.failed) = Some(Failure { kind: e.kind(), message: e.to_string() });
        }
    }
    // Frozen before the jobs hear that they committed (freezing is a swap): once an apply
    // has returned, its rows are in the table or frozen for a write-out under way.
    if result.is_ok() && write_out_due {
        if let Some(out) = overlay.freeze() {
            // Begun under the lock, so that no other transaction (a cut's) commits between
            // this one and the write-out: one that wrote the live rows first would have
            // them overwritten with the older frozen ones.
            match db.begin_write().map_err(io_err) {
                Ok(txn) => after.write_out = Some((txn, out)),
                Err(e) => {
                    // The frozen rows stay, readable, and closing writes them out.
                    fail_stop(shared, &e, "beginning the overlay's write-out");
                    let _rows = overlay.written_out(out, false);
                }
            }
        }
    }
    for done in dones {
        done(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
    if result.is_err() || lock(&shared.failed).is_some() {
        return after;
    }
    if due {
        after.sync = fixed;
    }
    after
}

/// Writes the overlay's frozen rows out in `txn` (begun by [`commit_batch`] under the
/// commit lock) and commits it without a sync, outside the commit lock: staged applies go
/// on meanwhile, reading the frozen rows from the overlay until they leave it, under the
/// lock, once the commit is made ([`Overlay::written_out`]). False if it failed, which
/// fail-stops the engine (the rows stay in the overlay, and closing writes them out).
fn write_out(txn: redb::WriteTransaction, mut out: WriteOut, shared: &Shared) -> bool {
    #[cfg(test)]
    if let Some(hook) = &*lock(&shared.write_out_hook) {
        hook();
    }
    let started = std::time::Instant::now();
    let result = (|| -> io::Result<usize> {
        let mut txn = txn;
        txn.set_durability(redb::Durability::None).map_err(io_err)?;
        let rows = shared.overlay.write_out(&txn, &mut out)?;
        crate::metrics::STAGES.overlay_write_out.record(started.elapsed());
        txn.commit().map_err(io_err)?;
        Ok(rows)
    })();
    if let Err(e) = &result {
        fail_stop(shared, e, "the overlay's write-out");
    }
    let rows = {
        // Briefly (a swap): staged applies wait for it rather than queue behind the sync.
        let _committing = lock(&shared.committing);
        shared.overlay.written_out(out, result.is_ok())
    };
    // Freed here, outside the lock.
    drop(rows);
    match result {
        Ok(rows) => {
            tracing::trace!(
                rows,
                elapsed_us = started.elapsed().as_micros() as u64,
                "data overlay written to the table outside the commit lock"
            );
            true
        }
        Err(_) => false,
    }
}

/// Records the engine's first failure: it refuses every commit from now on.
fn fail_stop(shared: &Shared, e: &io::Error, what: &str) {
    tracing::error!(error = %e, kind = ?e.kind(), step = what, "storage write failed; fail-stopping the node's storage");
    let mut failed = lock(&shared.failed);
    if failed.is_none() {
        *failed = Some(Failure { kind: e.kind(), message: e.to_string() });
    }
}

/// Counts a completed durable commit holding durable state `fixed`.
fn durable_done(shared: &Shared, fixed: u64) {
    shared.stats.commits.fetch_add(1, Ordering::Relaxed);
    *lock(&shared.last_durable) = std::time::Instant::now();
    shared.durable_done.fetch_max(fixed, Ordering::SeqCst);
}

/// The second step of the interval's durable commit (see [`commit_batch`]): an empty
/// transaction committed durably, which makes redb write and sync everything the
/// non-durable commits since the last durable one left, the first step's write-out of the
/// overlay included. It runs outside the commit lock: staged applies go on meanwhile (they
/// read through a read transaction and write only to the overlay), and what they stage is
/// not part of this durable state, which is why it is counted as `fixed`, the state the
/// first step committed (see [`Engine::durable_ticket`]). Jobs for the writer wait, as
/// behind any transaction. A failure fail-stops the engine, as a failed commit does.
fn sync_durable(db: &redb::Database, shared: &Shared, fixed: u64) {
    #[cfg(test)]
    if let Some(hook) = &*lock(&shared.sync_hook) {
        hook();
    }
    let started = std::time::Instant::now();
    let result = db.begin_write().map_err(io_err).and_then(|mut txn| {
        txn.set_durability(redb::Durability::Immediate).map_err(io_err)?;
        txn.commit().map_err(io_err)
    });
    match result {
        Ok(()) => {
            crate::metrics::STAGES.redb_durable_commit.record(started.elapsed());
            durable_done(shared, fixed);
        }
        Err(e) => fail_stop(shared, &e, "the durable commit's sync"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use redb::ReadableTableMetadata;

    use super::*;

    /// The durable interval of these tests (and of the other storage modules' tests that
    /// wait for the writer's own durable commit): long enough that no durable commit of the
    /// writer's own comes between two steps of a test, short enough to wait for.
    pub(crate) const TEST_DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

    /// An engine at `path` whose lazy commits are made durable every [`TEST_DURABLE_EVERY`].
    pub(crate) fn open_test(path: &Path) -> Result<Engine, StorageError> {
        Engine::open_with(path, DEFAULT_CACHE_BYTES, TEST_DURABLE_EVERY)
    }

    fn insert(i: u64) -> Work {
        Box::new(move |txn| {
            let mut t = txn.open_table(tables::SM_META).map_err(io_err)?;
            t.insert(i, [1u8].as_slice()).map_err(io_err)?;
            Ok(())
        })
    }

    /// Submits a job (inserting row 0 of `sm_meta`, which no region uses) that holds the
    /// writer inside its transaction until the returned sender is used; returns once the
    /// writer is inside it.
    pub(crate) async fn hold_writer(
        engine: &Engine,
    ) -> (tokio::task::JoinHandle<io::Result<()>>, std::sync::mpsc::Sender<()>) {
        let (running_tx, running_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let e = engine.clone();
        let first = tokio::spawn(async move {
            e.write(Box::new(move |txn| {
                running_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                insert(0)(txn)
            }))
            .await
        });
        tokio::task::spawn_blocking(move || running_rx.recv().unwrap()).await.unwrap();
        (first, release_tx)
    }

    #[tokio::test]
    async fn jobs_queued_during_a_commit_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        // Job 0 holds the writer inside its transaction until released.
        let (first, release_tx) = hold_writer(&engine).await;
        // While it commits, 199 more jobs queue up.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 1..200u64 {
            let tx = done_tx.clone();
            engine.submit(insert(i), Box::new(move |r| tx.send(r).unwrap()), 0);
        }
        release_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        for _ in 1..200 {
            done_rx.recv().await.unwrap().unwrap();
        }
        let stats = engine.stats();
        assert_eq!(stats.jobs.load(Ordering::Relaxed), 200);
        assert_eq!(stats.commits.load(Ordering::Relaxed), 2, "the 199 queued jobs shared one commit (one fsync)");
        let read = engine.read().unwrap();
        assert_eq!(read.open_table(tables::SM_META).unwrap().len().unwrap(), 200);
    }

    /// A plain apply that records the thread it ran on and leaves region `i`'s `sm_meta`
    /// row: in the write transaction, or staged.
    fn applied(engine: &Engine, i: u64, ran_on: &Arc<Mutex<Option<String>>>) -> PlainWork {
        let (ran_on, overlay) = (ran_on.clone(), engine.overlay().clone());
        Box::new(move |txn| {
            *lock(&ran_on) = std::thread::current().name().map(String::from);
            match txn {
                TxnRef::Write(txn) => insert(i)(txn),
                TxnRef::Read(_) => {
                    overlay.meta_put(i, vec![1]);
                    Ok(())
                }
            }
        })
    }

    fn meta_in_table(engine: &Engine, region: u64) -> bool {
        engine.read().unwrap().open_table(tables::SM_META).unwrap().get(region).unwrap().is_some()
    }

    #[tokio::test]
    async fn a_plain_apply_is_staged_on_the_callers_thread_when_the_writer_is_idle_and_queues_behind_it_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let me = std::thread::current().name().map(String::from);
        // Idle: staged on this thread, without a transaction.
        let ran_on = Arc::new(Mutex::new(None));
        engine.apply_plain(applied(&engine, 1, &ran_on), true).await.unwrap();
        assert_eq!(*lock(&ran_on), me, "staged in place");
        assert_eq!(engine.stats().staged.load(Ordering::Relaxed), 1);
        assert!(!meta_in_table(&engine, 1), "a staged apply commits nothing");
        assert!(engine.overlay().has_settle());
        // A cut writes what it left first.
        let (_, seen) = engine
            .read_cut(|txn, _| Ok(txn.open_table(tables::SM_META).map_err(io_err)?.get(1).map_err(io_err)?.is_some()))
            .unwrap();
        assert!(seen && meta_in_table(&engine, 1) && !engine.overlay().has_settle());
        // While the writer holds a transaction, it joins the group commit instead.
        let (first, release_tx) = hold_writer(&engine).await;
        let e = engine.clone();
        let ran_on2 = Arc::new(Mutex::new(None));
        let job = applied(&engine, 2, &ran_on2);
        let queued = tokio::spawn(async move { e.apply_plain(job, true).await });
        while engine.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*lock(&ran_on2), None, "it waits for the writer's transaction");
        release_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        assert_eq!(lock(&ran_on2).as_deref(), Some("tessera-writer"));
        assert!(meta_in_table(&engine, 2));
        // Not in place when the caller says so: the group commit.
        engine.apply_plain(applied(&engine, 3, &ran_on), false).await.unwrap();
        assert_eq!(lock(&ran_on).as_deref(), Some("tessera-writer"));
        assert_eq!(engine.stats().staged.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn what_staged_applies_leave_reaches_the_tables_with_the_next_transaction_and_a_failed_one_puts_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let engine = open_test(&path).unwrap();
        // Results of session 7 of region 1 in the table.
        engine
            .write(Box::new(|txn| {
                let mut t = txn.open_table(tables::DEDUP).map_err(io_err)?;
                for seq in 1..=3u64 {
                    t.insert((1u64, 7u64, seq), [seq as u8].as_slice()).map_err(io_err)?;
                }
                Ok(())
            }))
            .await
            .unwrap();
        let dedup_seqs = |engine: &Engine| -> Vec<u64> {
            let txn = engine.read().unwrap();
            let t = txn.open_table(tables::DEDUP).unwrap();
            let seqs = redb::ReadableTable::iter(&t).unwrap().map(|r| r.unwrap().0.value().2).collect();
            seqs
        };
        let stage_all = |engine: &Engine, floor: u64, meta: u8| -> PlainWork {
            let o = engine.overlay().clone();
            Box::new(move |_| {
                o.session_put((1, 7), vec![floor as u8]);
                o.dedup_delete(1, 7, 0..floor)?;
                o.meta_put(1, vec![meta]);
                Ok(())
            })
        };
        engine.wait_until_writer_idle().await;
        engine.apply_plain(stage_all(&engine, 2, 20), true).await.unwrap();
        engine.apply_plain(stage_all(&engine, 3, 30), true).await.unwrap();
        assert_eq!(engine.stats().staged.load(Ordering::Relaxed), 2);
        assert_eq!(dedup_seqs(&engine), vec![1, 2, 3], "nothing reached the tables");
        assert!(!meta_in_table(&engine, 1));
        // A transaction that fails puts them back in the stage (the engine fail-stops)...
        assert!(engine.write_lazy(Box::new(|_| Err(io::Error::other("bad job")))).await.is_err());
        assert!(engine.overlay().has_settle());
        // ...and closing writes them out, the newest of each row, the ranges joined.
        tokio::task::spawn_blocking(move || engine.close()).await.unwrap();
        let engine = open_test(&path).unwrap();
        assert_eq!(dedup_seqs(&engine), vec![3]);
        let txn = engine.read().unwrap();
        let session = txn.open_table(tables::SESSIONS).unwrap().get((1u64, 7u64)).unwrap().map(|v| v.value().to_vec());
        let meta = txn.open_table(tables::SM_META).unwrap().get(1).unwrap().map(|v| v.value().to_vec());
        assert_eq!((session, meta), (Some(vec![3]), Some(vec![30])));
        drop(txn);
        // A transaction that commits writes them too.
        engine.apply_plain(stage_all(&engine, 4, 40), true).await.unwrap();
        engine.write_lazy(Box::new(|_| Ok(()))).await.unwrap();
        assert!(!engine.overlay().has_settle());
        assert_eq!(dedup_seqs(&engine), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn a_plain_apply_finding_the_overlay_full_goes_to_the_writer_which_writes_the_stages_out() {
        use crate::storage::overlay::MAX_BYTES;
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let me = std::thread::current().name().map(String::from);
        let ran_on = Arc::new(Mutex::new(None));
        // One byte short of the bound (a row counts its key, its value and 64 bytes).
        let o = engine.overlay().clone();
        let big: PlainWork = Box::new(move |_| {
            o.put(&Default::default(), b"big".to_vec(), &vec![1u8; MAX_BYTES - 64 - 3 - 1]);
            Ok(())
        });
        engine.apply_plain(big, true).await.unwrap();
        assert!(!engine.overlay().is_full());
        // Still staged; its `sm_meta` row takes the overlay over the bound.
        engine.apply_plain(applied(&engine, 1, &ran_on), true).await.unwrap();
        assert_eq!(*lock(&ran_on), me, "staged below the bound");
        assert!(engine.overlay().is_full());
        // Full: the next goes to the writer, which writes the `sm_meta` row first; the
        // data rows, under the bound again, stay.
        engine.apply_plain(applied(&engine, 2, &ran_on), true).await.unwrap();
        assert_eq!(lock(&ran_on).as_deref(), Some("tessera-writer"), "the group commit");
        assert!(meta_in_table(&engine, 1) && meta_in_table(&engine, 2));
        assert!(!engine.overlay().is_full());
        assert_eq!(in_table(&engine, b"big"), None);
        // Staged again; a data row takes the overlay over the bound.
        engine.wait_until_writer_idle().await;
        engine.apply_plain(stage(&engine, b"k", b"v"), true).await.unwrap();
        assert!(engine.overlay().is_full());
        assert_eq!(engine.stats().staged.load(Ordering::Relaxed), 3);
        // The next goes to the writer, whose commit writes the data rows out (frozen before
        // the apply returns, and written after, outside the commit lock).
        engine.apply_plain(applied(&engine, 3, &ran_on), true).await.unwrap();
        assert_eq!(lock(&ran_on).as_deref(), Some("tessera-writer"));
        wait_until_written_out(&engine).await;
        assert_eq!(in_table(&engine, b"big").map(|v| v.len()), Some(MAX_BYTES - 68));
        assert_eq!(in_table(&engine, b"k"), Some(b"v".to_vec()));
        assert!(!engine.overlay().is_full() && !engine.overlay().has_rows());
        assert_eq!(engine.stats().staged.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_staged_apply_that_fails_fail_stops_the_engine_and_later_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let o = engine.overlay().clone();
        let failing: PlainWork = Box::new(move |_| {
            o.meta_put(1, vec![1]);
            Err(io::Error::from(io::ErrorKind::StorageFull))
        });
        let r = engine.apply_plain(failing, true).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert_eq!(engine.failure().unwrap().kind, io::ErrorKind::StorageFull, "the engine fail-stopped");
        assert!(!engine.overlay().has_settle(), "the failed apply's row was rolled back");
        let ran_on = Arc::new(Mutex::new(None));
        let r = engine.apply_plain(applied(&engine, 2, &ran_on), true).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert_eq!(*lock(&ran_on), None, "not run");
        let r = engine.write(insert(3)).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::StorageFull);
    }

    #[tokio::test]
    async fn a_failed_job_fail_stops_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let r = engine.write(Box::new(|_| Err(io::Error::other("disk on fire")))).await;
        assert!(r.is_err());
        // Later work is refused, even work that would succeed.
        let r = engine.write(Box::new(|_| Ok(()))).await;
        assert!(r.unwrap_err().to_string().contains("disk on fire"));
        assert!(engine.read().is_err());
        assert!(engine.failure().is_some());
    }

    #[tokio::test]
    async fn every_job_of_a_failed_batch_hears_the_failure_with_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        // Hold the writer so the next jobs share one batch: a good one, a failing one (a
        // full disk), and two more after it.
        let (first, release_tx) = hold_writer(&engine).await;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let full_disk = || io::Error::from(io::ErrorKind::StorageFull);
        let jobs: Vec<Work> = vec![insert(1), Box::new(move |_| Err(full_disk())), insert(2), insert(3)];
        for (i, work) in jobs.into_iter().enumerate() {
            let tx = done_tx.clone();
            engine.submit(work, Box::new(move |r| tx.send((i, r)).unwrap()), 0);
        }
        release_tx.send(()).unwrap();
        // The holding job committed in its own batch, before the failing one.
        first.await.unwrap().unwrap();
        let mut heard = Vec::new();
        for _ in 0..4 {
            let (i, r) = done_rx.recv().await.unwrap();
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::StorageFull, "job {i}");
            heard.push(i);
        }
        heard.sort();
        assert_eq!(heard, vec![0, 1, 2, 3], "every job of the batch was completed");
        assert_eq!(engine.failure().unwrap().kind, io::ErrorKind::StorageFull);
        // Nothing of the failed batch was committed.
        let read = engine.read();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::StorageFull);
    }

    /// A plain apply job staging `key = value` in the overlay.
    fn stage(engine: &Engine, key: &'static [u8], value: &'static [u8]) -> PlainWork {
        let overlay = engine.overlay().clone();
        Box::new(move |_| {
            overlay.put(&Default::default(), key.to_vec(), value);
            Ok(())
        })
    }

    /// `key`'s row in the table itself, overlay aside.
    fn in_table(engine: &Engine, key: &[u8]) -> Option<Vec<u8>> {
        let txn = engine.read().unwrap();
        let t = txn.open_table(tables::DATA).unwrap();
        let v = t.get(key).unwrap().map(|v| v.value().to_vec());
        v
    }

    #[tokio::test]
    async fn applied_rows_reach_the_table_with_the_next_durable_commit_or_job_that_is_not_an_apply() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        engine.apply_plain(stage(&engine, b"a", b"1"), false).await.unwrap();
        engine.apply_plain(stage(&engine, b"b", b"2"), true).await.unwrap();
        assert_eq!(engine.overlay().len(), 2);
        assert_eq!(in_table(&engine, b"a"), None, "a non-durable apply leaves its rows in the overlay");
        // Readers see them.
        let (_, seen) = engine.read_data(|_, rows| Ok(rows.get(b"b".as_slice()).cloned())).unwrap();
        assert_eq!(seen, Some(Some(b"2".to_vec())));
        // A durable commit carries them, even one whose own job wrote nothing.
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert_eq!(in_table(&engine, b"a"), Some(b"1".to_vec()));
        assert_eq!(in_table(&engine, b"b"), Some(b"2".to_vec()));
        assert!(engine.overlay().is_empty());
        // A lazy job that is not an apply sees the table up to date before it runs.
        engine.apply_plain(stage(&engine, b"c", b"3"), false).await.unwrap();
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        engine
            .write_lazy(Box::new(move |txn| {
                use redb::ReadableTable;
                let t = txn.open_table(tables::DATA).map_err(io_err)?;
                *lock(&s) = t.get(b"c".as_slice()).map_err(io_err)?.map(|v| v.value().to_vec());
                Ok(())
            }))
            .await
            .unwrap();
        assert_eq!(*lock(&seen), Some(b"3".to_vec()));
        assert!(engine.overlay().is_empty());
    }

    #[tokio::test]
    async fn an_idle_writer_writes_the_overlay_out_once_the_durable_interval_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let durable_commits = || engine.stats().commits.load(Ordering::SeqCst);
        let before = durable_commits();
        engine.apply_plain(stage(&engine, b"a", b"1"), false).await.unwrap();
        assert_eq!(in_table(&engine, b"a"), None, "a non-durable apply leaves its row in the overlay");
        // Nothing else is written: the writer makes a durable commit of its own, which
        // writes the row to the table (and settles the counts of unread puts). The commit
        // is counted after it is made, so the row is in the table once it is counted. The
        // writer is a thread on the real clock, with no event to wait on: poll it.
        wait_for_durable_commits_above(&engine, before).await;
        assert_eq!(in_table(&engine, b"a"), Some(b"1".to_vec()));
        assert!(engine.overlay().is_empty());
        assert_eq!(durable_commits(), before + 1, "one durable commit");
        assert_eq!(engine.stats().idle_commits.load(Ordering::SeqCst), 1, "the writer's own");
    }

    #[tokio::test]
    async fn the_databases_write_back_goes_to_the_disk_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let steps = || engine.stats().write_back_steps.load(Ordering::Relaxed);
        let before = steps();
        // 2 MiB of dedup rows in one durable commit: steps of 256 KiB until the budget of
        // step time is spent (the count depends on the disk's speed; the module's tests count
        // them with no budget).
        engine
            .write(Box::new(|txn| {
                let mut t = txn.open_table(tables::DEDUP).map_err(io_err)?;
                for seq in 0..2048u64 {
                    t.insert((1u64, 7u64, seq), [seq as u8; 1024].as_slice()).map_err(io_err)?;
                }
                Ok(())
            }))
            .await
            .unwrap();
        let taken = steps() - before;
        assert!(taken >= 1, "{taken} steps");
    }

    #[tokio::test]
    async fn the_writers_own_durable_commit_follows_the_configured_interval() {
        let dir = tempfile::tempdir().unwrap();
        let every = std::time::Duration::from_millis(300);
        let opened = std::time::Instant::now();
        let engine = Engine::open_with(&dir.path().join("db.redb"), DEFAULT_CACHE_BYTES, every).unwrap();
        let before = engine.stats().commits.load(Ordering::SeqCst);
        engine.apply_plain(stage(&engine, b"a", b"1"), false).await.unwrap();
        wait_for_durable_commits_above(&engine, before).await;
        // The interval counts from the open (the last durable state).
        let waited = opened.elapsed();
        assert!(waited >= every, "not before the interval: {waited:?}");
        assert!(waited < LAZY_DURABLE_EVERY, "the configured interval, not the default: {waited:?}");
        assert_eq!(in_table(&engine, b"a"), Some(b"1".to_vec()));
    }

    /// Holds the writer at the start of the interval's durable sync (`sync_durable`) until
    /// the returned sender is used (or dropped); the receiver hears when it is held.
    pub(crate) fn hold_durable_sync(engine: &Engine) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        hold_at(&engine.shared.sync_hook)
    }

    /// The same at the start of the overlay's write-out outside the commit lock
    /// (`write_out`): its transaction is begun, nothing written yet.
    pub(crate) fn hold_write_out(engine: &Engine) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        hold_at(&engine.shared.write_out_hook)
    }

    type Hook = Mutex<Option<Box<dyn Fn() + Send>>>;

    fn hold_at(hook: &Hook) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, release_rx) = (Mutex::new(held_tx), Mutex::new(release_rx));
        *lock(hook) = Some(Box::new(move || {
            let _ = lock(&held_tx).send(());
            let _ = lock(&release_rx).recv();
        }));
        (held_rx, release_tx)
    }

    /// Waits (off the runtime) until the writer is held at a hook, for at most ten durable
    /// intervals.
    pub(crate) async fn until_held(held: std::sync::mpsc::Receiver<()>) -> bool {
        tokio::task::spawn_blocking(move || held.recv_timeout(TEST_DURABLE_EVERY * 10).is_ok()).await.unwrap()
    }

    /// A plain apply job staging `key = value` and its region's applied state (a settle
    /// row), as a state machine's apply does.
    fn stage_applied(engine: &Engine, key: &'static [u8], value: &'static [u8]) -> PlainWork {
        let overlay = engine.overlay().clone();
        Box::new(move |_| {
            overlay.put(&Default::default(), key.to_vec(), value);
            overlay.meta_put(1, value.to_vec());
            Ok(())
        })
    }

    /// Stages `key = value` with the writer set to hold at its write-out, and waits until it
    /// is held there (the idle writer's durable commit, once the interval has passed);
    /// returns what releases it.
    async fn staged_then_held_in_write_out(
        engine: &Engine,
        key: &'static [u8],
        value: &'static [u8],
    ) -> std::sync::mpsc::Sender<()> {
        let (held, release) = hold_write_out(engine);
        engine.apply_plain(stage_applied(engine, key, value), true).await.unwrap();
        assert!(until_held(held).await, "the writer made no write-out");
        release
    }

    /// Runs `work` as a plain apply that may be staged, and asserts that it was, at once:
    /// not queued behind what holds the writer (`when`).
    async fn staged_at_once(engine: &Engine, work: PlainWork, when: &str) {
        let before = engine.stats().staged.load(Ordering::SeqCst);
        let done = tokio::time::timeout(std::time::Duration::from_secs(30), engine.apply_plain(work, true)).await;
        assert!(done.is_ok(), "{when}: the apply waited for the writer");
        done.unwrap().unwrap();
        assert_eq!(engine.stats().staged.load(Ordering::SeqCst), before + 1, "{when}: staged, not queued");
    }

    /// `key` as readers see it: the overlay over the table.
    fn read_value(engine: &Engine, key: &'static [u8]) -> Option<Vec<u8>> {
        let (txn, row) = engine.read_data(|_, rows| Ok(rows.get(key).cloned())).unwrap();
        match row {
            Some(row) => row,
            None => txn.open_table(tables::DATA).unwrap().get(key).unwrap().map(|v| v.value().to_vec()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applies_are_staged_while_the_overlay_is_written_out_and_readers_see_its_rows_throughout() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let (held, release) = hold_write_out(&engine);
        engine.apply_plain(stage_applied(&engine, b"a", b"1"), true).await.unwrap();
        engine.apply_plain(stage_applied(&engine, b"b", b"1"), true).await.unwrap();
        let before_freeze = engine.durable_ticket();
        // Once the interval has passed, the idle writer commits the stages, freezes the
        // rows, and is held before writing them.
        assert!(until_held(held).await, "the writer made no write-out");
        assert!(engine.overlay().has_frozen());
        assert!(meta_in_table(&engine, 1), "the first transaction wrote the settle stage");
        assert_eq!(in_table(&engine, b"a"), None, "the rows are not written yet");
        assert_eq!(read_value(&engine, b"a"), Some(b"1".to_vec()), "readers see the frozen rows");
        // The write-out does not hold the commit lock: applies are staged meanwhile, over
        // the frozen rows, where they used to wait for the whole write-out.
        staged_at_once(&engine, stage_applied(&engine, b"a", b"2"), "during the held write-out").await;
        staged_at_once(&engine, stage_applied(&engine, b"c", b"2"), "during the held write-out").await;
        let after_them = engine.durable_ticket();
        assert_eq!(read_value(&engine, b"a"), Some(b"2".to_vec()), "the live row over the frozen one");
        assert_eq!(read_value(&engine, b"b"), Some(b"1".to_vec()));
        let scan = engine
            .read_data(|_, rows| Ok(crate::storage::overlay::range_rows(rows, b"a", b"z", false, usize::MAX)))
            .unwrap()
            .1
            .into_iter()
            .map(|(k, v)| (k, v.unwrap()))
            .collect::<Vec<_>>();
        assert_eq!(
            scan,
            vec![(b"a".to_vec(), b"2".to_vec()), (b"b".to_vec(), b"1".to_vec()), (b"c".to_vec(), b"2".to_vec())]
        );
        let commits = engine.stats().commits.load(Ordering::SeqCst);
        release.send(()).unwrap();
        drop(release);
        // The write-out commits, the frozen rows leave the overlay, and the sync makes what
        // came before the freeze durable, not the applies staged during the write-out.
        wait_for_durable_commits_above(&engine, commits).await;
        assert!(!engine.overlay().has_frozen());
        assert_eq!(in_table(&engine, b"a"), Some(b"1".to_vec()), "the frozen value");
        assert_eq!(in_table(&engine, b"b"), Some(b"1".to_vec()));
        assert_eq!(in_table(&engine, b"c"), None);
        assert_eq!(read_value(&engine, b"a"), Some(b"2".to_vec()));
        assert_eq!(engine.overlay().len(), 2, "the live rows stay for the next write-out");
        assert!(engine.durable_covers(before_freeze));
        assert!(!engine.durable_covers(after_them));
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert!(engine.durable_covers(after_them));
        assert_eq!(in_table(&engine, b"a"), Some(b"2".to_vec()));
        assert_eq!(in_table(&engine, b"c"), Some(b"2".to_vec()));
        assert!(engine.failure().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_apply_is_staged_while_a_job_that_needs_the_writer_waits_for_its_write_out() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let release = staged_then_held_in_write_out(&engine, b"a", b"1").await;
        // An apply that cannot be staged (a batch too large to stage) waits in the queue
        // for the writer, held in its write-out.
        let waiting = {
            let e = engine.clone();
            let job = stage_applied(&engine, b"b", b"2");
            tokio::spawn(async move { e.apply_plain(job, false).await })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while engine.queue_depth() == 0 {
            assert!(std::time::Instant::now() < deadline, "the job never reached the queue");
            tokio::task::yield_now().await;
        }
        // Another region's apply is staged meanwhile, instead of queueing behind it.
        staged_at_once(&engine, stage_applied(&engine, b"c", b"3"), "behind a waiting job").await;
        assert!(!waiting.is_finished());
        release.send(()).unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(read_value(&engine, b"b"), Some(b"2".to_vec()));
        assert_eq!(read_value(&engine, b"c"), Some(b"3".to_vec()));
        assert!(engine.failure().is_none());
    }

    /// An apply that finds the writer in the transaction before its write-out waits in the
    /// queue; the writer stages it before the write-out, so it does not wait for that (nor
    /// for the sync after it).
    /// Holds the writer inside the transaction that precedes a write-out (the durable
    /// interval set as passed; the transaction is a plain apply of `a = 1`, not staged);
    /// returns the apply's task and what releases it.
    async fn held_before_a_write_out(
        engine: &Engine,
    ) -> (tokio::task::JoinHandle<io::Result<()>>, std::sync::mpsc::Sender<()>) {
        *lock(&engine.shared.last_durable) -= TEST_DURABLE_EVERY;
        let (running_tx, running_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let e = engine.clone();
        let apply = stage_applied(engine, b"a", b"1");
        let job: PlainWork = Box::new(move |txn| {
            running_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            apply(txn)
        });
        let in_transaction = tokio::spawn(async move { e.apply_plain(job, false).await });
        tokio::task::spawn_blocking(move || running_rx.recv().unwrap()).await.unwrap();
        (in_transaction, release_tx)
    }

    /// Sends a plain apply of `key = value` (staged if `may_stage` allows and the writer is
    /// free) and waits until it is queued for the writer.
    async fn queued_apply(
        engine: &Engine,
        key: &'static [u8],
        value: &'static [u8],
        may_stage: bool,
    ) -> tokio::task::JoinHandle<io::Result<()>> {
        let depth = engine.queue_depth();
        let e = engine.clone();
        let job = stage_applied(engine, key, value);
        let task = tokio::spawn(async move { e.apply_plain(job, may_stage).await });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while engine.queue_depth() == depth {
            assert!(std::time::Instant::now() < deadline, "the apply never reached the queue");
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_apply_queued_during_the_transaction_before_a_write_out_is_staged_by_the_writer_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let (held, release_write_out) = hold_write_out(&engine);
        let (in_transaction, release_tx) = held_before_a_write_out(&engine).await;
        let queued = queued_apply(&engine, b"b", b"2", true).await;
        release_tx.send(()).unwrap();
        in_transaction.await.unwrap().unwrap();
        let done = tokio::time::timeout(std::time::Duration::from_secs(30), queued).await;
        assert!(done.is_ok(), "the queued apply waited for the write-out");
        done.unwrap().unwrap().unwrap();
        assert_eq!(engine.stats().staged_by_writer.load(Ordering::SeqCst), 1);
        assert_eq!(engine.queue_depth(), 0);
        assert!(until_held(held).await, "the writer made no write-out");
        assert_eq!(read_value(&engine, b"b"), Some(b"2".to_vec()), "readers see the staged row");
        assert_eq!(in_table(&engine, b"b"), None, "not in the write-out: it came after the freeze");
        release_write_out.send(()).unwrap();
        wait_until_written_out(&engine).await;
        assert_eq!(in_table(&engine, b"a"), Some(b"1".to_vec()));
        assert!(engine.failure().is_none());
    }

    #[test]
    fn a_merge_cut_is_settled_up_to_the_highest_index_recorded_for_the_region() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        assert!(!engine.merge_cut_settled(2, 0), "nothing recorded since the open");
        engine.settle_merge_cut(2, 8);
        engine.settle_merge_cut(2, 5);
        assert!(engine.merge_cut_settled(2, 8) && engine.merge_cut_settled(2, 3));
        assert!(!engine.merge_cut_settled(2, 9) && !engine.merge_cut_settled(3, 1));
        engine.close();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        assert!(!engine.merge_cut_settled(2, 8), "forgotten by a restart");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_during_the_write_out_commits_after_it_so_the_newer_rows_win() {
        // A cut that finds staged applies commits what they left, under the lock; during
        // the write-out it must not commit before the write-out does, or the older frozen
        // rows would be written over the newer ones it wrote, and then leave the overlay.
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let release = staged_then_held_in_write_out(&engine, b"a", b"old").await;
        engine.apply_plain(stage_applied(&engine, b"a", b"new"), true).await.unwrap();
        assert!(engine.overlay().has_settle());
        let (cut_tx, cut) = std::sync::mpsc::channel();
        {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let _ = cut_tx.send(engine.read_cut(|_, rows| Ok(rows.get(b"a".as_slice()).cloned())).map(|r| r.1));
            });
        }
        // The cut takes the commit lock (the writer does not hold it during the write-out)
        // but its transaction waits for the write-out's. This waits for something not to
        // happen, so there is no event to wait on.
        let early = cut.recv_timeout(std::time::Duration::from_millis(500));
        assert!(early.is_err(), "the cut committed while the write-out was held");
        release.send(()).unwrap();
        drop(release);
        let seen = cut.recv_timeout(std::time::Duration::from_secs(30)).expect("the cut never ended").unwrap();
        // The cut's transaction began after the write-out's had committed, and (the
        // interval having passed) wrote every row out, newest last.
        assert_eq!(seen, None, "the cut's commit wrote the overlay out");
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert_eq!(in_table(&engine, b"a"), Some(b"new".to_vec()));
        assert_eq!(read_value(&engine, b"a"), Some(b"new".to_vec()));
        assert!(!engine.overlay().has_frozen());
        assert!(engine.failure().is_none());
    }

    /// Waits until no write-out of frozen rows is under way (the writer is a thread on the
    /// real clock: poll it).
    async fn wait_until_written_out(engine: &Engine) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while engine.overlay().has_frozen() {
            assert!(std::time::Instant::now() < deadline, "the write-out never ended");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Waits until the engine has counted more than `commits` durable commits (the writer
    /// is a thread on the real clock: poll it).
    pub(crate) async fn wait_for_durable_commits_above(engine: &Engine, commits: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while engine.stats().commits.load(Ordering::SeqCst) <= commits {
            assert!(std::time::Instant::now() < deadline, "no durable commit completed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applies_are_staged_while_the_interval_commit_syncs_which_covers_only_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        let (held, release) = hold_durable_sync(&engine);
        let commits = || engine.stats().commits.load(Ordering::SeqCst);
        engine.apply_plain(stage(&engine, b"a", b"1"), true).await.unwrap();
        let before_a_is_fixed = engine.durable_ticket();
        assert!(!engine.durable_covers(before_a_is_fixed));
        // Once the interval has passed, the idle writer makes the durable commit: its first
        // step writes the overlay out without a sync, its second is held at the sync.
        let held = tokio::task::spawn_blocking(move || held.recv_timeout(TEST_DURABLE_EVERY * 10)).await.unwrap();
        assert!(held.is_ok(), "the writer made no durable commit");
        assert_eq!(in_table(&engine, b"a"), Some(b"1".to_vec()), "the first step wrote the overlay out");
        assert!(!engine.overlay().has_rows());
        let during = engine.durable_ticket();
        assert!(during > before_a_is_fixed, "the first step fixed the state the sync makes durable");
        let commits_before = commits();
        // The sync does not hold the commit lock: an apply is staged meanwhile, where it
        // used to wait in the queue until the durable commit was done.
        staged_at_once(&engine, stage(&engine, b"b", b"2"), "during the held sync").await;
        assert_eq!(in_table(&engine, b"b"), None);
        let after_b = engine.durable_ticket();
        assert_eq!(after_b, during, "a staged apply fixes no durable state");
        assert!(!engine.durable_covers(before_a_is_fixed), "nothing is durable before the sync");
        assert_eq!(commits(), commits_before);
        release.send(()).unwrap();
        drop(release);
        wait_for_durable_commits_above(&engine, commits_before).await;
        assert!(engine.durable_covers(before_a_is_fixed), "the sync covers what was applied before the first step");
        assert!(!engine.durable_covers(after_b), "but not the apply staged during the sync");
        // The next durable commit covers it.
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert!(engine.durable_covers(after_b));
        assert_eq!(in_table(&engine, b"b"), Some(b"2".to_vec()));
        assert!(engine.failure().is_none());
    }

    #[tokio::test]
    async fn after_a_fail_stop_an_idle_writer_attempts_no_commit() {
        // A lazy apply leaves a commit pending, then a failed job fail-stops the engine.
        // Nothing can commit any more; a writer that still saw the commit as pending would
        // retry at once, every time, on a core of its own.
        let dir = tempfile::tempdir().unwrap();
        let engine = open_test(&dir.path().join("db.redb")).unwrap();
        engine.apply_plain(stage(&engine, b"a", b"1"), false).await.unwrap();
        assert!(engine.write_lazy(Box::new(|_| Err(io::Error::other("bad job")))).await.is_err());
        assert!(engine.failure().is_some());
        // Past the interval (counted from the open), the writer has had its chance. This
        // waits for something not to happen, so there is no event to wait on.
        tokio::time::sleep(TEST_DURABLE_EVERY + TEST_DURABLE_EVERY / 2).await;
        assert_eq!(engine.stats().idle_commits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn close_writes_the_overlay_to_the_table_before_the_database_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let engine = open_test(&path).unwrap();
        engine.apply_plain(stage(&engine, b"k", b"v"), false).await.unwrap();
        assert_eq!(in_table(&engine, b"k"), None);
        tokio::task::spawn_blocking(move || engine.close()).await.unwrap();
        let reopened = open_test(&path).unwrap();
        assert_eq!(in_table(&reopened, b"k"), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn close_after_a_fail_stop_still_writes_out_the_committed_rows_of_the_overlay() {
        // redb promotes the pending non-durable commits at close whatever the engine's
        // state; they hold applied indexes (here: a `sm_meta` row), so their rows must go
        // with them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let engine = open_test(&path).unwrap();
        // An apply: its row staged, its applied index (here a `sm_meta` row) in the table.
        let (stage_k, insert_7) = (stage(&engine, b"k", b"v"), insert(7));
        let apply: PlainWork = Box::new(move |txn| {
            stage_k(txn)?;
            let TxnRef::Write(txn) = txn else { unreachable!("not staged") };
            insert_7(txn)
        });
        engine.apply_plain(apply, false).await.unwrap();
        assert!(engine.overlay().has_rows());
        // A job's own error (not an I/O failure of redb) fail-stops the engine.
        assert!(engine.write_lazy(Box::new(|_| Err(io::Error::other("bad job")))).await.is_err());
        assert!(engine.failure().is_some());
        tokio::task::spawn_blocking(move || engine.close()).await.unwrap();
        let reopened = open_test(&path).unwrap();
        let read = reopened.read().unwrap();
        assert!(read.open_table(tables::SM_META).unwrap().get(7).unwrap().is_some(), "redb promoted the commit");
        assert_eq!(in_table(&reopened, b"k"), Some(b"v".to_vec()), "and the overlay's row went with it");
    }

    #[tokio::test]
    async fn close_after_a_fail_stop_writes_out_no_result_the_failed_transaction_staged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let engine = open_test(&path).unwrap();
        let staging = |seq: u64, fail: bool| -> PlainWork {
            let o = engine.overlay().clone();
            Box::new(move |_| {
                o.dedup_put((1, 7, seq), vec![seq as u8]);
                if fail {
                    return Err(io::Error::other("bad job"));
                }
                Ok(())
            })
        };
        // An apply's exactly-once result, staged and committed.
        engine.apply_plain(staging(1, false), false).await.unwrap();
        // An apply that stages another, then fails: the engine fail-stops.
        assert!(engine.apply_plain(staging(2, true), false).await.is_err());
        assert!(engine.failure().is_some());
        tokio::task::spawn_blocking(move || engine.close()).await.unwrap();
        let reopened = open_test(&path).unwrap();
        let read = reopened.read().unwrap();
        let keys: Vec<(u64, u64, u64)> = redb::ReadableTable::iter(&read.open_table(tables::DEDUP).unwrap())
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect();
        assert_eq!(
            keys,
            vec![(1, 7, 1)],
            "the committed result went out with the commit redb promoted, the failed one not"
        );
    }

    #[tokio::test]
    async fn close_finishes_queued_jobs_and_releases_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let engine = open_test(&path).unwrap();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..50u64 {
            let tx = done_tx.clone();
            engine.submit(insert(i), Box::new(move |r| tx.send(r).unwrap()), 0);
        }
        let reader = engine.clone();
        tokio::task::spawn_blocking(move || engine.close()).await.unwrap();
        for _ in 0..50 {
            done_rx.recv().await.unwrap().unwrap();
        }
        assert!(reader.read().is_err(), "a closed engine refuses reads");
        let late = reader.write(insert(99)).await;
        assert!(late.is_err(), "a job sent after close fails instead of hanging");
        // The file is free: it opens again at once, with every queued job committed.
        let reopened = open_test(&path).unwrap();
        assert_eq!(reopened.read().unwrap().open_table(tables::SM_META).unwrap().len().unwrap(), 50);
    }

    /// A close that comes while the writer's transaction runs, behind an apply it will stage
    /// and one it cannot: the writer stages the first, commits the second, then stops; both
    /// are answered and on disk after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_behind_applies_queued_before_a_write_out_finishes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let engine = open_test(&path).unwrap();
        let (in_transaction, release_tx) = held_before_a_write_out(&engine).await;
        let too_large = queued_apply(&engine, b"b", b"2", false).await;
        let stageable = queued_apply(&engine, b"c", b"3", true).await;
        // The stop `close` sends, queued behind both before the transaction ends; the
        // writer must exit on it alone.
        lock(&engine.shared.tx).send(Msg::Stop).unwrap();
        release_tx.send(()).unwrap();
        in_transaction.await.unwrap().unwrap();
        stageable.await.unwrap().unwrap();
        too_large.await.unwrap().unwrap();
        let writer = lock(&engine.shared.writer).take().unwrap();
        let exited = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tokio::task::spawn_blocking(move || writer.join().is_ok()),
        )
        .await;
        assert!(matches!(exited, Ok(Ok(true))), "the writer never stopped, or panicked");
        engine.close();
        assert_eq!(engine.stats().staged_by_writer.load(Ordering::SeqCst), 1);
        assert!(engine.failure().is_none());
        let reopened = open_test(&path).unwrap();
        for (key, value) in [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")] {
            assert_eq!(in_table(&reopened, key), Some(value.to_vec()));
        }
    }
}
