//! redb's file, written back to the disk in steps.
//!
//! A durable redb commit writes every page the non-durable commits since the last durable
//! one left in redb's buffers (about 4 MB per 2 s interval of sequential puts here, tens of
//! MB under load), then syncs: the kernel sends all of it to the disk at once, and every
//! Raft log sync behind it on the same disk (this node's own, and, on one machine, its
//! neighbours') waits for the whole burst. [`PacedFile`] syncs after every
//! [`WRITE_BACK_STEP`] bytes written, so the burst goes out in steps that the log syncs
//! interleave with. RocksDB's `bytes_per_sync` does the same with `sync_file_range`, which
//! the standard library does not offer and the workspace's `unsafe_code = "forbid"` rules
//! out; an `fdatasync` per step measured the same here (docs/storage.md). The syncs of the
//! steps only make pages durable sooner than redb's own sync would: redb's commit protocol
//! is unchanged.
//!
//! The steps are bounded: once the steps since redb's last sync have spent [`STEP_BUDGET`]
//! syncing, the rest of the write-back waits for redb's own sync, as without steps. Under
//! load a durable commit writes tens of MB, and each step's sync queues behind the log's:
//! stepping through all of it doubled the commit's time and held the jobs that wait for
//! the writer (issue 6's thirty-second note). The budget spends the steps where they help,
//! on the first few MB, which is all of a quiet interval's write-back.
//!
//! A step's failed sync fails the write redb is making, so the commit fails and the engine
//! fail-stops, as for any failed sync: the error is never consumed unseen.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Bytes redb writes between two syncs of a step. Measured (docs/storage.md): 64 KiB and
/// 256 KiB cut the sequential puts slowed by a durable commit from about 85 to 20-40 per
/// 20 s; 1 MiB to about 70.
pub const WRITE_BACK_STEP: u64 = 256 * 1024;

/// Most time the steps between two of redb's own syncs may spend syncing. A quiet
/// interval's write-back (about 4 MB) took 15-16 steps and 9-16 ms here and is stepped in
/// full; under load (10-20 MB per commit) the steps stop after this much and the rest goes
/// out with redb's sync. Measured in docs/storage.md.
pub const STEP_BUDGET: Duration = Duration::from_millis(20);

/// redb's [`FileBackend`] with the write-back in steps (see the module docs).
#[derive(Debug)]
pub(crate) struct PacedFile {
    inner: FileBackend,
    /// The same open file, for the steps' syncs (`FileBackend` does not lend its own).
    file: File,
    step: u64,
    /// [`STEP_BUDGET`] in nanoseconds.
    budget_ns: u64,
    /// Bytes written since the last sync.
    unsynced: AtomicU64,
    /// Time the steps since redb's last sync spent syncing, in nanoseconds.
    spent_ns: AtomicU64,
    /// Syncs of a step so far.
    steps: Arc<AtomicU64>,
    #[cfg(test)]
    fail_steps: Arc<std::sync::atomic::AtomicBool>,
    /// Tests: added to each step's measured time (a slow disk).
    #[cfg(test)]
    slow_steps: Duration,
}

impl PacedFile {
    /// Opens (creating it if missing) the database file at `path`, as `redb::Builder::create`
    /// does; `steps` counts the syncs of a step.
    pub(crate) fn open(path: &Path, steps: Arc<AtomicU64>) -> Result<PacedFile, redb::DatabaseError> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let step_file = file.try_clone()?;
        Ok(PacedFile {
            inner: FileBackend::new(file)?,
            file: step_file,
            step: WRITE_BACK_STEP,
            budget_ns: STEP_BUDGET.as_nanos() as u64,
            unsynced: AtomicU64::new(0),
            spent_ns: AtomicU64::new(0),
            steps,
            #[cfg(test)]
            fail_steps: Arc::default(),
            #[cfg(test)]
            slow_steps: Duration::ZERO,
        })
    }
}

impl PacedFile {
    /// Added to each step's measured time: a slow disk in tests, nothing otherwise.
    fn slow_steps(&self) -> Duration {
        #[cfg(test)]
        return self.slow_steps;
        #[cfg(not(test))]
        Duration::ZERO
    }
}

impl StorageBackend for PacedFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.unsynced.store(0, Ordering::Relaxed);
        self.spent_ns.store(0, Ordering::Relaxed);
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)?;
        let len = data.len() as u64;
        if self.unsynced.fetch_add(len, Ordering::Relaxed) + len < self.step {
            return Ok(());
        }
        self.unsynced.store(0, Ordering::Relaxed);
        if self.spent_ns.load(Ordering::Relaxed) >= self.budget_ns {
            return Ok(()); // The budget is spent: the rest goes out with redb's own sync.
        }
        self.steps.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        if self.fail_steps.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected failure of a write-back step's sync"));
        }
        let started = Instant::now();
        self.file.sync_data()?;
        let took = started.elapsed() + self.slow_steps();
        self.spent_ns.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    /// Opens with no budget: these tests count steps, whatever the disk's speed.
    fn open(path: &Path) -> (redb::Database, Arc<AtomicU64>, Arc<std::sync::atomic::AtomicBool>) {
        open_with(path, None, Duration::ZERO)
    }

    /// Opens with a budget of `budget` (unbounded if `None`) and every step's sync counted
    /// `slow` longer than it took.
    fn open_with(
        path: &Path,
        budget: Option<Duration>,
        slow: Duration,
    ) -> (redb::Database, Arc<AtomicU64>, Arc<std::sync::atomic::AtomicBool>) {
        let steps = Arc::new(AtomicU64::new(0));
        let mut file = PacedFile::open(path, steps.clone()).unwrap();
        file.budget_ns = budget.map_or(u64::MAX, |b| b.as_nanos() as u64);
        file.slow_steps = slow;
        let fail = file.fail_steps.clone();
        (redb::Builder::new().create_with_backend(file).unwrap(), steps, fail)
    }

    /// Writes `rows` rows of 1 KiB (keys from `from`) in one durable commit.
    fn commit(db: &redb::Database, from: u64, rows: u64) -> Result<(), redb::CommitError> {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            for k in from..from + rows {
                t.insert(k, [k as u8; 1024].as_slice()).unwrap();
            }
        }
        txn.commit()
    }

    #[test]
    fn a_large_durable_commit_is_synced_in_steps_and_reads_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let (db, steps, _) = open(&path);
        // 4 MiB of rows: at least 15 steps of 256 KiB before redb's own sync.
        commit(&db, 0, 4096).unwrap();
        let taken = steps.load(Ordering::Relaxed);
        assert!(taken >= 4 * 1024 * 1024 / WRITE_BACK_STEP - 1, "{taken} steps");
        drop(db);
        let (db, _, _) = open(&path);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 4096);
        assert_eq!(t.get(4095).unwrap().unwrap().value(), [4095u64 as u8; 1024].as_slice());
    }

    #[test]
    fn the_steps_stop_once_they_have_spent_the_budget_and_the_next_commit_steps_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        // Each step counts at least half the budget: two steps spend it.
        let (db, steps, _) = open_with(&path, Some(STEP_BUDGET), STEP_BUDGET / 2);
        let before = steps.load(Ordering::Relaxed);
        // 4 MiB of rows, which would take at least 15 steps unbounded.
        commit(&db, 0, 4096).unwrap();
        let first = steps.load(Ordering::Relaxed) - before;
        assert!((1..=2).contains(&first), "{first} steps");
        // redb's own sync gave the budget back.
        commit(&db, 10_000, 4096).unwrap();
        let second = steps.load(Ordering::Relaxed) - before - first;
        assert!((1..=2).contains(&second), "{second} steps");
        drop(db);
        let (db, _, _) = open(&path);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 8192, "every row of both commits, the unstepped part included");
        assert_eq!(t.get(14_095).unwrap().unwrap().value(), [14_095u64 as u8; 1024].as_slice());
    }

    #[test]
    fn a_small_commit_takes_no_step() {
        let dir = tempfile::tempdir().unwrap();
        let (db, steps, _) = open(&dir.path().join("db.redb"));
        let before = steps.load(Ordering::Relaxed);
        commit(&db, 0, 4).unwrap();
        assert_eq!(steps.load(Ordering::Relaxed), before, "a few KiB are synced by redb's own sync");
    }

    #[test]
    fn a_failed_step_fails_the_commit_and_the_last_durable_state_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let (db, _, fail) = open(&path);
        commit(&db, 0, 8).unwrap();
        fail.store(true, Ordering::Relaxed);
        let err = commit(&db, 100, 4096).expect_err("the step's sync failed");
        assert!(err.to_string().contains("injected failure"), "{err}");
        drop(db);
        let (db, _, _) = open(&path);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 8, "only the first commit's rows");
    }
}
