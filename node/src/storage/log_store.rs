//! openraft log storage for one region.
//!
//! The log lives in the node's write-ahead log ([`LogEngine`]), shared by every region.
//! The newest part of the region's log is mirrored in memory, up to [`TAIL_BYTES`] (by
//! each entry's encoded-size bound), so replication and apply of recent entries never
//! touch the disk, and entries whose append is still being flushed are visible, as openraft
//! expects. Older entries are read from the log engine on demand; only entries already
//! durable are ever dropped from memory. Every mutation goes through the log engine's group
//! commit: `append` fires openraft's `IOFlushed` only after the `fdatasync` that made the
//! entries durable; `save_vote`, `truncate_after` and `purge` return only once durable.
//!
//! The state machine is in redb, applied lazily (durable with some later redb commit). So
//! `purge` first makes redb durable, then purges: the log is never purged past state that a
//! crash could still lose.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::engine::Engine;
use super::records::{decode, encode};
use super::wal::{LogEngine, Op};
use crate::raft::network::{entry_len_bound, REPLICATION_BYTES};
use crate::raft::types::{Entry, LogId, TypeConfig, Vote};

/// Most bytes of log entries a region keeps in memory (at least the newest entry, and
/// every entry not yet durable).
pub const TAIL_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
struct LogMem {
    /// The newest entries, contiguous, ending at the last log entry.
    entries: BTreeMap<u64, Entry>,
    /// Sum of `entry_len_bound` over `entries`.
    bytes: usize,
    /// Every entry up to this index is durable in redb (so may leave memory).
    durable_upto: Option<u64>,
    /// The last entry, even when it has left memory (only with an empty tail after a purge).
    last: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Purges done in memory whose record the log engine has not been given yet, oldest
    /// first, each with the state machine's durable ticket when it was asked for (see
    /// [`RegionLogStore::purge`]).
    pending_purges: std::collections::VecDeque<(LogId, u64)>,
}

impl LogMem {
    /// Purges up to `log_id` in memory: what openraft sees from now on.
    fn purge(&mut self, log_id: LogId) {
        let upto = log_id.index();
        self.cut_upto(upto);
        self.last_purged = Some(log_id);
        if self.last.is_none_or(|l| l.index() < upto) {
            self.last = Some(log_id);
        }
    }

    fn insert(&mut self, entry: Entry) {
        self.last = Some(entry.log_id());
        self.bytes += entry_len_bound(&entry);
        if let Some(old) = self.entries.insert(entry.index(), entry) {
            self.bytes -= entry_len_bound(&old);
        }
    }

    /// Drops the entries after `last_kept` (they are being truncated); `last_kept` becomes
    /// the last entry (whether it is in memory or only on disk) unless the log ended before.
    fn truncate_after(&mut self, last_kept: Option<LogId>) {
        let from = last_kept.as_ref().map_or(0, |l| l.index() + 1);
        for (_, e) in self.entries.split_off(&from) {
            self.bytes -= entry_len_bound(&e);
        }
        self.durable_upto = self.durable_upto.map(|d| d.min(from.saturating_sub(1)));
        // Truncating past the end keeps the log as it is.
        if self.last.is_some_and(|last| last.index() >= from) {
            self.last = last_kept.or(self.last_purged);
        }
    }

    /// Drops entries up to index `upto` (they are being purged).
    fn cut_upto(&mut self, upto: u64) {
        let keep = self.entries.split_off(&(upto + 1));
        for e in std::mem::replace(&mut self.entries, keep).into_values() {
            self.bytes -= entry_len_bound(&e);
        }
    }

    /// Drops the oldest durable entries while over the budget, keeping the newest.
    fn shrink(&mut self, budget: usize) {
        while self.bytes > budget && self.entries.len() > 1 {
            let Some((&index, _)) = self.entries.first_key_value() else { break };
            if self.durable_upto.is_none_or(|d| index > d) {
                break;
            }
            if let Some(e) = self.entries.remove(&index) {
                self.bytes -= entry_len_bound(&e);
            }
        }
    }

    /// The first index held in memory.
    fn first_cached(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }
}

/// Raft log storage of one region. Clones share state.
#[derive(Debug, Clone)]
pub struct RegionLogStore {
    region: u64,
    wal: LogEngine,
    /// The state machine's database: a purge is recorded in the log engine only after a
    /// durable commit of it.
    engine: Engine,
    mem: Arc<Mutex<LogMem>>,
    budget: usize,
}

fn lock(mem: &Mutex<LogMem>) -> std::sync::MutexGuard<'_, LogMem> {
    mem.lock().unwrap_or_else(|p| p.into_inner())
}

impl RegionLogStore {
    /// Loads the region's vote and purge point, and the newest [`TAIL_BYTES`] of its log.
    pub fn open(engine: &Engine, wal: &LogEngine, region: u64) -> io::Result<RegionLogStore> {
        Self::open_with_budget(engine, wal, region, TAIL_BYTES)
    }

    /// [`RegionLogStore::open`] with another in-memory budget.
    pub fn open_with_budget(
        engine: &Engine,
        wal: &LogEngine,
        region: u64,
        budget: usize,
    ) -> io::Result<RegionLogStore> {
        let state = wal.region_state(region);
        let mut mem = LogMem::default();
        for (index, bytes) in wal.read_tail(region, budget)? {
            let entry = decode_entry(index, &bytes)?;
            mem.insert(entry);
            mem.durable_upto = Some(index);
        }
        if let Some(v) = &state.vote {
            mem.vote = Some(decode(v)?);
        }
        if let Some((_, v)) = &state.purged {
            mem.last_purged = Some(decode(v)?);
        }
        if let Some(v) = &state.committed {
            mem.committed = Some(decode(v)?);
        }
        mem.last = mem.last.or(mem.last_purged);
        Ok(RegionLogStore { region, wal: wal.clone(), engine: engine.clone(), mem: Arc::new(Mutex::new(mem)), budget })
    }

    /// Checks that `entries`, read for a range from `start`, have no hole: consecutive
    /// indexes, the first of them `start` unless the log begins after `start`. openraft
    /// applies what a read returns, checking its continuity only in debug builds, so a read
    /// that came back short (entries lost under the log) would drop their writes without a
    /// word; this fails the read, and so the region, instead.
    fn check_contiguous(&self, start: u64, entries: &[Entry]) -> io::Result<()> {
        let missing = |found: Option<u64>, wanted: u64| {
            let found = found.map_or_else(|| "nothing".to_owned(), |i| format!("entry {i}"));
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "region {}: the raft log read from {start} has {found} where {wanted} belongs: \
                     entries are missing",
                    self.region
                ),
            )
        };
        let found = entries.first().map(|e| e.index());
        if found != Some(start) {
            // Fine only if the log begins after `start` (purged, or never written there),
            // or (nothing found) ends before it.
            let (purged, last, cached) = {
                let m = self.mem();
                (m.last_purged.map(|l| l.index()), m.last.map(|l| l.index()), m.first_cached())
            };
            let begins = self.wal.region_state(self.region).entries.map(|(f, _)| f);
            let log_start = [purged.map(|p| p + 1), begins, cached, found].into_iter().flatten().min();
            match (found, log_start) {
                (Some(i), Some(ls)) if i != start.max(ls) => return Err(missing(found, start.max(ls))),
                (None, Some(ls)) if start >= ls && last.is_some_and(|l| start <= l) => {
                    return Err(missing(None, start))
                }
                _ => {}
            }
        }
        for w in entries.windows(2) {
            if w[1].index() != w[0].index() + 1 {
                return Err(missing(Some(w[1].index()), w[0].index() + 1));
            }
        }
        Ok(())
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, LogMem> {
        lock(&self.mem)
    }

    /// Purges the log up to `log_id` now, in memory and in the log engine, after a
    /// durable redb commit: for a purge that leaves no entry after it (see
    /// [`RaftLogStorage::purge`]), such as a seeded region's purge to its seed
    /// (`node::seed_split_log`), which has no entry to replay if a crash lost the seed.
    async fn purge_durably(&mut self, log_id: LogId) -> io::Result<()> {
        let upto = log_id.index();
        {
            let mut mem = lock(&self.mem);
            mem.purge(log_id);
            // Older pending purges must not reach the log engine after this one: its replay
            // takes the last purge record.
            mem.pending_purges.clear();
        }
        self.engine.write(Box::new(|_| Ok(()))).await?;
        self.wal.write(vec![Op::Purge { region: self.region, upto, log_id: encode(&log_id)? }]).await?;
        tracing::info!(region_id = self.region, index = upto, "raft log purged");
        Ok(())
    }

    /// Entries held in memory, and their bytes (for tests and statistics).
    pub fn cached(&self) -> (usize, usize) {
        let mem = self.mem();
        (mem.entries.len(), mem.bytes)
    }

    /// Reads entries `[start, end)` from the log engine (they have left memory, so they are
    /// durable).
    fn read_disk(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.read_disk_limited(start, end, usize::MAX).map(|(entries, _)| entries)
    }

    /// Reads entries from `start` towards `end` from the log engine while they fit in
    /// `budget` bytes (at least one); returns them and their bytes.
    fn read_disk_limited(&self, start: u64, end: u64, budget: usize) -> io::Result<(Vec<Entry>, usize)> {
        let (mut out, mut used) = (Vec::new(), 0);
        for (index, bytes) in self.wal.read(self.region, start, end, budget)? {
            let entry = decode_entry(index, &bytes)?;
            used += entry_len_bound(&entry);
            out.push(entry);
        }
        Ok((out, used))
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> io::Result<Entry> {
    let entry: Entry = decode(bytes)?;
    if entry.index() != index {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("log entry at {index} has index {}", entry.index()),
        ));
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for RegionLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        // Nothing up to the purge point is returned, even while the log engine still holds
        // it (a purge reaches the log engine later: see `purge`).
        let start = start.max(self.mem().last_purged.map_or(0, |l| l.index() + 1));
        if start >= end {
            return Ok(Vec::new());
        }
        let (from_memory, first_cached) = {
            let mem = self.mem();
            let entries: Vec<Entry> = mem.entries.range(start..end).map(|(_, e)| e.clone()).collect();
            (entries, mem.first_cached())
        };
        let out = match first_cached {
            // Part of the range has left memory: read it from disk, then the rest from memory.
            Some(first) if start < first => {
                let mut out = self.read_disk(start, end.min(first))?;
                out.extend(from_memory);
                out
            }
            Some(_) => from_memory,
            None => self.read_disk(start, end)?,
        };
        self.check_contiguous(start, &out)?;
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.mem().vote)
    }

    /// Replication reads through this: the entries from `start` that fit one
    /// `AppendEntries` frame ([`REPLICATION_BYTES`]), at least one. openraft asks for up to
    /// `max_payload_entries` (300) at a time, which for large entries would be hundreds of
    /// MiB read into memory for a lagging follower.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        if start >= end {
            return Ok(Vec::new());
        }
        let budget = REPLICATION_BYTES;
        let first_cached = self.mem().first_cached();
        let (mut out, mut used) = (Vec::new(), 0);
        if first_cached.is_none_or(|first| start < first) {
            let disk_end = first_cached.map_or(end, |first| end.min(first));
            (out, used) = self.read_disk_limited(start, disk_end, budget)?;
            let next = out.last().map_or(start, |e| e.index() + 1);
            if next < disk_end {
                self.check_contiguous(start, &out)?;
                return Ok(out);
            }
        }
        // Continue from memory, as long as the entries there follow on (entries may have
        // left memory since `first_cached` was read: then stop, or read the disk instead).
        {
            let mem = self.mem();
            let from = out.last().map_or(start, |e| e.index() + 1);
            for (expected, (&index, entry)) in (from..).zip(mem.entries.range(from..end)) {
                let len = entry_len_bound(entry);
                if index != expected || (!out.is_empty() && used + len > budget) {
                    break;
                }
                used += len;
                out.push(entry.clone());
            }
        }
        if out.is_empty() {
            out = self.read_disk_limited(start, end, budget)?.0;
        }
        self.check_contiguous(start, &out)?;
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for RegionLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.mem();
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id: mem.last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.wal.check()?;
        let bytes = encode(vote)?;
        self.wal.write(vec![Op::Vote { region: self.region, vote: bytes }]).await?;
        self.mem().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let Some(c) = committed else { return Ok(()) };
        let bytes = encode(&c)?;
        // Not required to be durable: losing it only means recovery learns the commit index
        // from the leader again. Queue it without waiting or forcing an fsync.
        self.wal.submit_lazy(vec![Op::Committed { region: self.region, committed: bytes }]);
        self.mem().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.mem().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.wal.check()?;
        let mut rows = Vec::new();
        let mut first = None;
        {
            let mut mem = self.mem();
            for entry in entries {
                first = first.or(Some(entry.index()));
                rows.push(encode(&entry)?);
                mem.insert(entry);
            }
        }
        let Some(first) = first else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let last = first + rows.len() as u64 - 1;
        let (mem, budget) = (self.mem.clone(), self.budget);
        self.wal.submit(
            vec![Op::Entries { region: self.region, first, entries: rows }],
            Box::new(move |r| {
                if r.is_ok() {
                    // Durable now: these entries may leave memory. The writer completes jobs
                    // in order and openraft appends after a truncation returns, so if these
                    // entries were truncated meanwhile, the tail now ends below them: never
                    // mark past its end.
                    let mut m = lock(&mem);
                    let tail_end = m.entries.keys().next_back().copied().unwrap_or(0);
                    m.durable_upto = Some(m.durable_upto.unwrap_or(0).max(last.min(tail_end)));
                    m.shrink(budget);
                }
                callback.io_completed(r)
            }),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.as_ref().map(|l| l.index() + 1).unwrap_or(0);
        self.mem().truncate_after(last_log_id);
        self.wal.write(vec![Op::Truncate { region: self.region, from }]).await
    }

    /// Purges the log up to `log_id` in memory at once; the log engine's purge record
    /// follows once a durable redb commit covers the state machine's applies of the
    /// entries purged, so the log is never purged past state that a crash could lose.
    ///
    /// That cover is not forced here: a durable commit writes out the data overlay, and
    /// every apply of the node waits behind that write-out, while this call holds up the
    /// region's Raft core (openraft awaits it). Instead each purge is kept pending with a ticket of the
    /// state machine's durable state ([`Engine::durable_ticket`]). Every entry it purges
    /// was applied, and that apply committed or was staged, before the purge was asked for
    /// (openraft purges only what a snapshot covers), so a durable commit that covers the
    /// ticket makes it durable. (Not any durable commit completing later: the interval's
    /// durable commit syncs a state fixed before it, while applies go on.) A later call
    /// writes the newest pending purge so covered; the 2 s durable interval makes one
    /// under load. openraft calls this method once at a time per region, so the records
    /// reach the log engine in order (its replay takes the last one, not the largest).
    /// A purge still pending at a crash or a shutdown only leaves the log longer.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // A purge at or past the last entry (after a snapshot installed beyond the log, or a
        // seeded region's purge to its seed) is recorded at once: the next append continues
        // from the purge point, and a log engine holding those entries without the purge
        // below them would, after a crash, start the log at a hole. The state it covers was
        // installed durably; the durable commit first also covers any apply.
        if self.mem().last.is_none_or(|l| l.index() <= log_id.index()) {
            return self.purge_durably(log_id).await;
        }
        let ticket = self.engine.durable_ticket();
        let covered = {
            let mut mem = self.mem();
            mem.purge(log_id);
            let mut covered = None;
            while mem.pending_purges.front().is_some_and(|(_, asked_at)| self.engine.durable_covers(*asked_at)) {
                covered = mem.pending_purges.pop_front().map(|(id, _)| id);
            }
            mem.pending_purges.push_back((log_id, ticket));
            covered
        };
        tracing::info!(region_id = self.region, index = log_id.index(), "raft log purged");
        if let Some(covered) = covered {
            let upto = covered.index();
            self.wal.write(vec![Op::Purge { region: self.region, upto, log_id: encode(&covered)? }]).await?;
            tracing::debug!(region_id = self.region, index = upto, "raft log purge recorded in the log engine");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    use super::*;
    use crate::raft::types::{LogCommand, LogOp};

    fn entry(index: u64, value_len: usize) -> Entry {
        let op = LogOp::Put(b"k".to_vec(), vec![1u8; value_len]);
        Entry {
            log_id: log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(LogCommand::WriteV1 { session: None, op }),
        }
    }

    /// Writes region 4's `ranges` of entries (of `value_len` bytes) straight into the log
    /// engine, so that the gaps between them are entries lost under the log.
    fn write_with_holes(wal: &LogEngine, ranges: &[std::ops::RangeInclusive<u64>], value_len: usize) {
        let ops = ranges
            .iter()
            .map(|r| crate::storage::wal::Op::Entries {
                region: 4,
                first: *r.start(),
                entries: r.clone().map(|i| encode(&entry(i, value_len)).unwrap()).collect(),
            })
            .collect();
        wal.write_blocking(ops).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_across_missing_entries_fails_instead_of_coming_back_short() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let wal = LogEngine::open(&dir.path().join("raft-log")).unwrap();
        // Entries 1-3 and 5-6 with 4 lost under them (as a deleted segment would leave).
        write_with_holes(&wal, &[1..=3, 5..=6], 10);
        for budget in [1, TAIL_BYTES] {
            let mut log = RegionLogStore::open_with_budget(&engine, &wal, 4, budget).unwrap();
            let err = log.try_get_log_entries(1..7).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains("entry 5 where 4 belongs"), "{err}");
            // Replication's reads never send a follower a log with a hole: they fail, or
            // stop before it (a limited read may return fewer entries); a read from it fails.
            if let Ok(before) = log.limited_get_log_entries(1, 7).await {
                let before: Vec<u64> = before.iter().map(|e| e.index()).collect();
                assert!(!before.is_empty() && before.iter().copied().eq(1..=before.len() as u64), "{before:?}");
                assert!(before.len() <= 3, "{before:?}");
            }
            let err = log.limited_get_log_entries(4, 7).await.unwrap_err();
            assert!(err.to_string().contains("entry 5 where 4 belongs"), "{err}");
            assert_eq!(log.limited_get_log_entries(5, 7).await.unwrap().len(), 2);
            // A read starting at the missing entry fails too; one past it does not.
            assert!(log.try_get_log_entries(4..7).await.is_err());
            let tail = log.try_get_log_entries(5..7).await.unwrap();
            assert_eq!(tail.iter().map(|e| e.index()).collect::<Vec<_>>(), [5, 6]);
            assert_eq!(log.try_get_log_entries(1..4).await.unwrap().len(), 3);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replication_read_at_a_hole_that_runs_to_the_memory_tail_fails_instead_of_finding_nothing() {
        // Entries 4-5 are missing right below the first entry held in memory: the disk
        // part of the read finds nothing, and an empty answer would read as "nothing to
        // send" to openraft, which would retry it every 10 ms for ever.
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let wal = LogEngine::open(&dir.path().join("raft-log")).unwrap();
        write_with_holes(&wal, &[1..=3, 6..=8], 100 * 1024);
        // A budget of three entries: 6-8 are in memory, the rest on disk only.
        let mut log = RegionLogStore::open_with_budget(&engine, &wal, 4, 310 * 1024).unwrap();
        assert_eq!(log.cached().0, 3, "entries 6-8 in memory");
        for start in [4, 5] {
            let err = log.limited_get_log_entries(start, 9).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(log.try_get_log_entries(start..9).await.is_err());
        }
        assert_eq!(log.limited_get_log_entries(6, 9).await.unwrap().first().map(|e| e.index()), Some(6));
        // Past the end of the log there is nothing to find, and that is no error.
        assert!(log.limited_get_log_entries(9, 12).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_tail_is_bounded_by_bytes_and_older_entries_come_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let wal = LogEngine::open(&dir.path().join("raft-log")).unwrap();
        let budget = 1024 * 1024;
        let mut log = RegionLogStore::open_with_budget(&engine, &wal, 3, budget).unwrap();
        // 40 entries of 100 KiB: 4 MiB, four times the budget.
        for i in 1..=40 {
            let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
            let cb = IOFlushed::<TypeConfig>::signal(tx);
            log.append([entry(i, 100 * 1024)], cb).await.unwrap();
            rx.await.unwrap().unwrap();
        }
        let (entries, bytes) = log.cached();
        assert!(bytes <= budget + 101 * 1024, "{bytes} bytes cached");
        assert!(entries < 40);
        let all = log.try_get_log_entries(1..=40).await.unwrap();
        assert_eq!(all.iter().map(|e| e.index()).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
        assert_eq!(all[0], entry(1, 100 * 1024), "read back from disk intact");
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id::<TypeConfig>(1, 1, 40)));
        // Reopening loads only a budget's worth of the tail.
        drop(log);
        let mut reopened = RegionLogStore::open_with_budget(&engine, &wal, 3, budget).unwrap();
        assert!(reopened.cached().1 <= budget + 101 * 1024);
        assert_eq!(reopened.get_log_state().await.unwrap().last_log_id, Some(log_id::<TypeConfig>(1, 1, 40)));
        assert_eq!(reopened.try_get_log_entries(5..8).await.unwrap().len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replication_reads_at_most_a_frame_of_entries_from_disk_or_memory() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        let wal = LogEngine::open(&dir.path().join("raft-log")).unwrap();
        let mut log = RegionLogStore::open_with_budget(&engine, &wal, 3, 2 * 1024 * 1024).unwrap();
        for i in 1..=20 {
            let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
            log.append([entry(i, 1024 * 1024)], IOFlushed::<TypeConfig>::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
        }
        // Walk the whole log the way replication does: every read non-empty, contiguous,
        // within a frame.
        let mut next = 1;
        while next <= 20 {
            let got = log.limited_get_log_entries(next, 21).await.unwrap();
            assert!(!got.is_empty());
            let bytes: usize = got.iter().map(entry_len_bound).sum();
            assert!(got.len() == 1 || bytes <= REPLICATION_BYTES, "{} entries, {bytes} bytes", got.len());
            for (i, e) in got.iter().enumerate() {
                assert_eq!(e.index(), next + i as u64);
            }
            next += got.len() as u64;
        }
        assert!(log.limited_get_log_entries(5, 5).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_reaches_the_log_engine_only_once_a_durable_commit_covers_it() {
        use std::sync::atomic::Ordering::Relaxed;

        use super::super::engine::io_err;
        use super::super::tables;
        let dir = tempfile::tempdir().unwrap();
        let (engine, wal, mut log) = store_with_entries(dir.path(), 12).await;
        // An apply, committed lazily: visible, but durable only with a later durable commit.
        engine
            .write_lazy(Box::new(|txn| {
                let mut t = txn.open_table(tables::SM_META).map_err(io_err)?;
                t.insert(3u64, [9u8].as_slice()).map_err(io_err)?;
                Ok(())
            }))
            .await
            .unwrap();
        let durable_before = engine.stats().commits.load(Relaxed);
        log.purge(log_id::<TypeConfig>(1, 1, 7)).await.unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 8)).await.unwrap();
        assert_eq!(engine.stats().commits.load(Relaxed), durable_before, "a purge forces no durable commit");
        // Purged for openraft at once...
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id.map(|l| l.index), Some(8));
        // ...but not in the log engine: a crash now must find the entries the lazy apply
        // may need again.
        assert_eq!(wal.region_state(3).purged, None);
        assert_eq!(wal.region_state(3).entries, Some((1, 12)));
        // Once a durable commit has completed, the next purge writes the newest covered one.
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 9)).await.unwrap();
        assert_eq!(wal.region_state(3).purged.map(|p| p.0), Some(8));
        assert_eq!(wal.region_state(3).entries, Some((9, 12)));
        // The purge at 9 waits for the next durable commit in turn.
        log.purge(log_id::<TypeConfig>(1, 1, 10)).await.unwrap();
        assert_eq!(wal.region_state(3).purged.map(|p| p.0), Some(8));
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 10)).await.unwrap();
        assert_eq!(wal.region_state(3).purged.map(|p| p.0), Some(10));
        assert_eq!(wal.region_state(3).entries, Some((11, 12)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_asked_while_the_interval_commit_syncs_waits_for_a_later_durable_commit() {
        use super::super::engine::tests::{hold_durable_sync, wait_for_durable_commits_above, TEST_DURABLE_EVERY};
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let (engine, wal, mut log) = store_with_entries(dir.path(), 8).await;
        let (held, release) = hold_durable_sync(&engine);
        // A lazy commit leaves a durable commit pending: the idle writer makes it once the
        // interval has passed, and is held at its sync.
        engine.write_lazy(Box::new(|_| Ok(()))).await.unwrap();
        let held = tokio::task::spawn_blocking(move || held.recv_timeout(TEST_DURABLE_EVERY * 10)).await.unwrap();
        assert!(held.is_ok(), "the writer made no durable commit");
        // A purge asked now may cover applies staged after the state that sync holds was
        // fixed (staged applies go on during it): it must not count on that sync.
        log.purge(log_id::<TypeConfig>(1, 1, 5)).await.unwrap();
        let commits = engine.stats().commits.load(SeqCst);
        release.send(()).unwrap();
        drop(release);
        wait_for_durable_commits_above(&engine, commits).await;
        log.purge(log_id::<TypeConfig>(1, 1, 6)).await.unwrap();
        assert_eq!(wal.region_state(3).purged, None, "the sync under way at the purge does not cover it");
        assert_eq!(wal.region_state(3).entries, Some((1, 8)));
        // A durable commit whose state was fixed after both purges covers them.
        engine.write(Box::new(|_| Ok(()))).await.unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 7)).await.unwrap();
        assert_eq!(wal.region_state(3).purged.map(|p| p.0), Some(6));
        assert_eq!(wal.region_state(3).entries, Some((7, 8)));
    }

    /// A fresh engine and log engine in `dir`, and region 3's log holding entries 1..=`n`.
    async fn store_with_entries(dir: &std::path::Path, n: u64) -> (Engine, LogEngine, RegionLogStore) {
        let engine = super::super::engine::tests::open_test(&dir.join("db.redb")).unwrap();
        let wal = LogEngine::open(&dir.join("raft-log")).unwrap();
        let mut log = RegionLogStore::open(&engine, &wal, 3).unwrap();
        for i in 1..=n {
            append(&mut log, i).await;
        }
        (engine, wal, log)
    }

    async fn append(log: &mut RegionLogStore, index: u64) {
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        log.append([entry(index, 10)], IOFlushed::<TypeConfig>::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_past_the_last_entry_is_recorded_at_once_so_a_restart_finds_no_hole() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        {
            let wal = LogEngine::open(&dir.path().join("raft-log")).unwrap();
            let mut log = RegionLogStore::open(&engine, &wal, 3).unwrap();
            for i in 1..=3 {
                append(&mut log, i).await;
            }
            // An ordinary purge waits for a durable commit...
            log.purge(log_id::<TypeConfig>(1, 1, 2)).await.unwrap();
            assert_eq!(wal.region_state(3).purged, None);
            // ...but one past the end of the log (a snapshot installed up to 6) is recorded
            // at once, after a durable commit, and supersedes the pending one.
            let durable_before = engine.stats().commits.load(Relaxed);
            log.purge(log_id::<TypeConfig>(1, 1, 6)).await.unwrap();
            assert!(engine.stats().commits.load(Relaxed) > durable_before);
            assert_eq!(wal.region_state(3).purged.map(|p| p.0), Some(6));
            // The log continues from the purge point.
            append(&mut log, 7).await;
            append(&mut log, 8).await;
            engine.write(Box::new(|_| Ok(()))).await.unwrap();
            log.purge(log_id::<TypeConfig>(1, 1, 7)).await.unwrap();
            assert_eq!(wal.region_state(3).purged.map(|p| p.0), Some(6), "the superseded purge at 2 is not written");
        }
        // A restart (the log engine reopened from its files) finds the log from 7 on.
        let wal = LogEngine::open(&dir.path().join("raft-log")).unwrap();
        let mut log = RegionLogStore::open(&engine, &wal, 3).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(6));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
        let entries = log.try_get_log_entries(7..9).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.index()).collect::<Vec<_>>(), vec![7, 8]);
    }
}
