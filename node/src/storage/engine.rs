//! The node's redb database and its group-commit writer.
//!
//! Every mutation of every region goes through one writer thread as a *job*: a closure run
//! inside a write transaction plus a completion. The writer takes every job queued at that
//! moment, runs them in order inside one transaction, commits it with immediate durability
//! (one fsync), then fires all their completions. So while one fsync is in progress, the
//! log appends of all regions pile up and share the next one.
//!
//! Fail-stop: if a transaction fails to commit (I/O error, full disk), the engine records the
//! failure, fails that batch and every later job, and never retries. The node then refuses
//! work with `StorageUnavailable` until restarted, when redb recovers to its last commit.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use redb::ReadableDatabase;

use super::tables;

/// Work done inside the shared write transaction.
pub type Work = Box<dyn FnOnce(&redb::WriteTransaction) -> Result<(), io::Error> + Send>;
/// Completion, called after the commit with its outcome.
pub type Done = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

struct Job {
    work: Work,
    done: Done,
    log_entries: u64,
    durable: bool,
}

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 4096;

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
}

/// The node's database and writer. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    db: Arc<redb::Database>,
    tx: mpsc::Sender<Job>,
    failed: Arc<Mutex<Option<String>>>,
    stats: Arc<CommitStats>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("failed", &self.failed.lock().ok().and_then(|g| g.clone())).finish()
    }
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Engine {
    /// Opens (or creates) the database at `path` and starts the writer thread.
    pub fn open(path: &Path) -> Result<Engine, StorageError> {
        let db = redb::Database::create(path)
            .map_err(|source| StorageError::Open { path: path.display().to_string(), source })?;
        // Create every table up front so readers never see a missing table.
        let txn = db.begin_write().map_err(io_err)?;
        {
            txn.open_table(tables::LOGS).map_err(io_err)?;
            txn.open_table(tables::RAFT_META).map_err(io_err)?;
            txn.open_table(tables::DATA).map_err(io_err)?;
            txn.open_table(tables::SM_META).map_err(io_err)?;
            txn.open_table(tables::DEDUP).map_err(io_err)?;
            txn.open_table(tables::DEDUP_INDEX).map_err(io_err)?;
            txn.open_table(tables::REGIONS).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let failed = Arc::new(Mutex::new(None));
        let stats = Arc::new(CommitStats::default());
        {
            let db = db.clone();
            let failed = failed.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("tessera-writer".into())
                .spawn(move || writer_loop(db, rx, failed, stats))
                .map_err(StorageError::Io)?;
        }
        Ok(Engine { db, tx, failed, stats })
    }

    /// Queues `work`; `done` is called once its commit is durable (or failed).
    /// `log_entries` counts the Raft log entries it writes, for the statistics.
    pub fn submit(&self, work: Work, done: Done, log_entries: u64) {
        self.send(Job { work, done, log_entries, durable: true })
    }

    /// Queues `work` without waiting for it and without requiring an fsync of its own: it
    /// becomes durable with the next durable commit. A failure shows as the engine's
    /// fail-stop, like every other.
    pub fn submit_lazy(&self, work: Work) {
        self.send(Job { work, done: Box::new(|_| {}), log_entries: 0, durable: false })
    }

    fn send(&self, job: Job) {
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
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
        self.run(work, false).await
    }

    /// Runs `work` in the next group commit and waits until it is durable.
    pub async fn write(&self, work: Work) -> io::Result<()> {
        self.run(work, true).await
    }

    async fn run(&self, work: Work, durable: bool) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.send(Job { work, done, log_entries: 0, durable });
        rx.await.map_err(|_| io::Error::other("storage writer dropped a job"))?
    }

    /// A consistent read snapshot of the database.
    pub fn read(&self) -> io::Result<redb::ReadTransaction> {
        self.check()?;
        self.db.begin_read().map_err(io_err)
    }

    /// `Err` once the engine has fail-stopped.
    pub fn check(&self) -> io::Result<()> {
        match &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(io::Error::other(format!("storage failed earlier: {reason}"))),
            None => Ok(()),
        }
    }

    /// The failure that stopped the engine, if any.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

fn writer_loop(
    db: Arc<redb::Database>,
    rx: mpsc::Receiver<Job>,
    failed: Arc<Mutex<Option<String>>>,
    stats: Arc<CommitStats>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let already_failed = failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(reason) = already_failed {
            for job in batch {
                (job.done)(Err(io::Error::other(format!("storage failed earlier: {reason}"))));
            }
            continue;
        }
        let mut dones = Vec::with_capacity(batch.len());
        let mut log_entries = 0;
        let durable = batch.iter().any(|j| j.durable);
        let result = (|| -> io::Result<()> {
            let mut txn = db.begin_write().map_err(io_err)?;
            let durability = if durable { redb::Durability::Immediate } else { redb::Durability::None };
            txn.set_durability(durability).map_err(io_err)?;
            for job in batch {
                log_entries += job.log_entries;
                dones.push(job.done);
                (job.work)(&txn)?;
            }
            txn.commit().map_err(io_err)
        })();
        match &result {
            Ok(()) => {
                if durable {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                }
                stats.jobs.fetch_add(dones.len() as u64, Ordering::Relaxed);
                stats.log_entries.fetch_add(log_entries, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "storage commit failed; fail-stopping the node's storage");
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        for done in dones {
            done(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata;

    use super::*;

    fn insert(i: u64) -> Work {
        Box::new(move |txn| {
            let mut t = txn.open_table(tables::SM_META).map_err(io_err)?;
            t.insert(i, [1u8].as_slice()).map_err(io_err)?;
            Ok(())
        })
    }

    #[tokio::test]
    async fn jobs_queued_during_a_commit_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        // Job 0 holds the writer inside its transaction until released.
        let (running_tx, running_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let e = engine.clone();
            tokio::spawn(async move {
                e.write(Box::new(move |txn| {
                    running_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    insert(0)(txn)
                }))
                .await
            })
        };
        tokio::task::spawn_blocking(move || running_rx.recv().unwrap()).await.unwrap();
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

    #[tokio::test]
    async fn a_failed_job_fail_stops_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let r = engine.write(Box::new(|_| Err(io::Error::other("disk on fire")))).await;
        assert!(r.is_err());
        // Later work is refused, even work that would succeed.
        let r = engine.write(Box::new(|_| Ok(()))).await;
        assert!(r.unwrap_err().to_string().contains("disk on fire"));
        assert!(engine.read().is_err());
        assert!(engine.failure().is_some());
    }
}
