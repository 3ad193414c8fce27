//! The write-behind buffer of the `data` table: rows written by applies and not yet in
//! redb, kept in key order in memory (a memtable) and written to the table in key order.
//!
//! Why: redb copies a B-tree leaf the first time each transaction modifies it. An apply
//! batch of a few dozen puts at random keys among 100,000 dirties one leaf per put, so a
//! put cost a leaf copy, its checksum and its later write-out (issue 6's profiles: about
//! 60 µs of the writer per put). Buffered for up to [`LAZY_DURABLE_EVERY`] and written in
//! one transaction, the puts to one leaf share one copy.
//!
//! Rules (docs/storage.md, "The data overlay"):
//! - Only applies of plain writes stage rows here ([`Overlay::put`], [`Overlay::remove`]),
//!   inside the engine's write transaction or as a staged apply (below). What the
//!   transaction stages becomes visible to readers ([`Overlay::published`]) only after it
//!   commits, as its table writes would; what a staged apply stages, when it ends.
//! - Every **durable** commit first writes every row here into the table ([`Overlay::
//!   flush_into`]), so a durable state of redb never has a region's applied index ahead of
//!   its rows: after a crash redb holds the last durable commit, rows and applied indexes
//!   together, and the Raft log replays the rest. (Non-durable commits are lost in a crash
//!   anyway.) So does a commit once the buffer holds [`MAX_BYTES`], and so does every job
//!   that is not a plain apply, before it runs: splits, merges, snapshot installs and
//!   garbage collection see and change the table alone.
//! - Closing the engine writes the buffer out durably first: redb makes a pending
//!   non-durable commit durable when the database closes, and that commit must not carry
//!   applied indexes without their rows.
//! - A put does not read the value it replaces from the table ([`Replaced::Unread`]): the
//!   region's approximate counts ([`ApproxSize`]) take it as a value of the same length,
//!   and the flush that writes the row, which redb's insert tells the value it replaced,
//!   corrects them when its transaction commits. Until then a region's counts lag behind
//!   its new keys by at most one durable interval (an idle writer makes a durable commit
//!   of its own once the interval has passed). Deletions still read it: their result says
//!   whether the key existed.
//! - Readers see the overlay over a read transaction ([`Overlay::read_consistent`]). Rows
//!   leave the overlay only after the commit that wrote them to the table, and each such
//!   clearing moves the overlay's epoch: a reader whose transaction may predate the commit
//!   sees the epoch move and starts again.
//!
//! **The dedup stage.** The exactly-once rows of client writes (`dedup` table,
//! `sessions.rs`) live a few milliseconds: a row is written when its write applies and
//! dropped when the client's acknowledgement passes its seq, usually a few batches later.
//! Written to redb, each cost a B-tree insert and a removal (issue 6's profile of puts at
//! 256 in flight over 8 regions: the insert alone was 4.4% of the node's CPU). They are
//! staged here instead ([`Overlay::dedup_put`]) and reach the table only if they are still
//! live when the overlay is written out, under the same rules as data rows: every durable
//! commit writes them first, and so does every job that is not a plain apply. Unlike data
//! rows they are read only inside write transactions and by snapshot cuts, all under the
//! engine's commit lock, so they need no publishing: a transaction changes them in place,
//! keeping an undo log, and a failed one is rolled back ([`Overlay::committed`]) before
//! the engine fail-stops, so that what closing writes out is committed state only.
//!
//! **Staged applies.** An apply of plain writes that finds the engine's writer idle runs on
//! its caller's thread with no write transaction at all (`Engine::apply_plain`): it reads
//! through a read transaction and the stages, and what it would write to redb waits here
//! instead: its data rows and results as above, and in a *settle stage* its region's
//! `sm_meta` row ([`Overlay::meta_put`]), its session rows ([`Overlay::session_put`], and
//! [`Overlay::session_delete`] for a tombstone a sweep forgets) and the `dedup` rows its
//! acknowledgements or a session's expiry let go ([`Overlay::dedup_delete`],
//! [`Overlay::dedup_delete_session`]). Without the
//! transaction, its commit and the hand-off to the writer, workload A at 64 in flight took
//! 53-60 server CPU-µs per operation instead of 65-84 (issue 6's note). The settle stage
//! is written to the tables by every write transaction before its first job
//! ([`Overlay::settle_into`]), so every job
//! sees the tables as the staged applies left them, and a durable commit holds each
//! region's applied index with the rows and sessions it implies, as the rule above asks.
//! Readers of an applied index or a session outside an apply take the commit lock and have
//! the settle stage written first (`Engine::read_cut`). Like the dedup stage it is used
//! only under the commit lock, changed in place with an undo log.
//!
//! **Write-outs outside the commit lock.** Writing the rows out is the slow part of the
//! interval's durable commit (18-28 ms per write-out under workload A at 64 in flight,
//! issue 6's notes), and while it ran under the commit lock every apply of the node waited.
//! The engine's writer makes it in two transactions instead: the first, under the lock,
//! writes the settle and dedup stages ([`Overlay::flush_stages_into`]) and commits; then,
//! still under the lock, the live published rows are *frozen* ([`Overlay::freeze`]) and
//! the second transaction begun; with the lock released, the writer writes the frozen rows
//! ([`Overlay::write_out`]) and commits. Meanwhile staged applies go on: they publish to
//! fresh live rows, and every reader sees the live rows over the frozen ones over the
//! table ([`View`]). The frozen rows leave, moving the epoch, once the second transaction
//! has committed, under the commit lock ([`Overlay::written_out`]), so that a staged apply
//! reading through an older read transaction never misses them. Together the two
//! transactions leave the tables as one flushing transaction at the freeze would, and no
//! other commit comes between them (the second began under the lock; a cut's transaction
//! waits for it), so a durable commit after them holds every applied index with its rows.
//! The frozen rows do not count against [`MAX_BYTES`]: during a write-out the overlay may
//! hold up to twice that.
//!
//! [`LAZY_DURABLE_EVERY`]: super::engine::LAZY_DURABLE_EVERY

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::ReadableTable;

use super::engine::io_err;
use super::tables;
use crate::lock;

/// A row of the overlay: the value, or `None` for a deletion the table has not seen yet.
pub type Row = Option<Vec<u8>>;

/// Rows by `data` table key.
pub type Rows = BTreeMap<Vec<u8>, Row>;

/// The published rows: the live ones, where commits publish, and those a write-out
/// outside the commit lock is writing to the table ([`Overlay::freeze`]).
#[derive(Debug, Default)]
struct Published {
    live: Rows,
    frozen: Option<Arc<Rows>>,
}

impl Published {
    fn view(&self) -> View<'_> {
        View { live: &self.live, frozen: self.frozen.as_deref() }
    }
}

/// The published rows as a reader sees them: a live row hides a frozen row of its key.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    live: &'a Rows,
    frozen: Option<&'a Rows>,
}

impl<'a> From<&'a Rows> for View<'a> {
    /// Rows with nothing frozen under them.
    fn from(live: &'a Rows) -> View<'a> {
        View { live, frozen: None }
    }
}

impl<'a> View<'a> {
    /// `key`'s row, if the overlay has the key.
    pub fn get(&self, key: &[u8]) -> Option<&'a Row> {
        self.live.get(key).or_else(|| self.frozen?.get(key))
    }

    /// True when the overlay has no row.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.frozen.is_none_or(BTreeMap::is_empty)
    }

    /// Keys the overlay has a row for.
    pub fn len(&self) -> usize {
        let frozen_only = self.frozen.map_or(0, |f| f.keys().filter(|k| !self.live.contains_key(*k)).count());
        self.live.len() + frozen_only
    }
}

/// The rows [`Overlay::freeze`] took out of the live ones, for the writer to write to the
/// table in a transaction of their own ([`Overlay::write_out`]) without the commit lock;
/// readers see them until [`Overlay::written_out`].
#[derive(Debug)]
#[must_use = "frozen rows leave the overlay only through `Overlay::written_out`"]
pub struct WriteOut {
    rows: Arc<Rows>,
    /// The frozen rows' records of unread table values.
    unread: HashMap<Vec<u8>, Unread>,
    /// Count corrections of the rows written, added by [`Overlay::written_out`].
    corrections: Vec<(Arc<ApproxSize>, i64, i64)>,
}

impl WriteOut {
    /// Rows to write.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The `data` table as a write transaction opens it.
pub type DataTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// The `data` table as an apply reads it: opened by the write transaction it runs in, or
/// by the read transaction of a staged apply ([`crate::storage::engine::TxnRef`]).
#[allow(missing_debug_implementations)]
pub enum DataSource<'t> {
    /// In a write transaction.
    Write(DataTable<'t>),
    /// In a read transaction.
    Read(redb::ReadOnlyTable<&'static [u8], &'static [u8]>),
}

impl<'t> DataSource<'t> {
    /// The table's value of `key`.
    fn value(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let value = match self {
            DataSource::Write(t) => t.get(key).map_err(io_err)?.map(|v| v.value().to_vec()),
            DataSource::Read(t) => t.get(key).map_err(io_err)?.map(|v| v.value().to_vec()),
        };
        Ok(value)
    }

    /// The length of the table's value of `key`.
    fn value_len(&self, key: &[u8]) -> io::Result<Option<usize>> {
        let len = match self {
            DataSource::Write(t) => t.get(key).map_err(io_err)?.map(|v| v.value().len()),
            DataSource::Read(t) => t.get(key).map_err(io_err)?.map(|v| v.value().len()),
        };
        Ok(len)
    }

    /// The write transaction's table; an error in a staged apply, which writes nothing.
    pub fn write(&mut self) -> io::Result<&mut DataTable<'t>> {
        match self {
            DataSource::Write(t) => Ok(t),
            DataSource::Read(_) => Err(super::engine::staged_cannot_write("the data table")),
        }
    }
}

/// A key of the `dedup` table: the region's session id, the client's session, the seq.
pub type DedupKey = (u64, u64, u64);

/// A key of a stage: its bytes, for the overlay's memory bound.
trait StageKey: Ord + Copy {
    const BYTES: usize;
}

impl StageKey for DedupKey {
    const BYTES: usize = 24;
}

impl StageKey for SessionKey {
    const BYTES: usize = 16;
}

impl StageKey for u64 {
    const BYTES: usize = 8;
}

/// A key of the `sessions` table: the region's session id, the client's session.
pub type SessionKey = (u64, u64);

/// Rows not yet in one of the tables (see "The dedup stage" and "Staged applies" above),
/// changed in place by whoever holds the engine's commit lock, with an undo log of the
/// transaction in progress.
#[derive(Debug)]
struct Stage<K> {
    rows: BTreeMap<K, Vec<u8>>,
    /// Bytes of `rows`, counted as [`row_bytes`] counts data rows.
    bytes: usize,
    /// The changes of the transaction in progress, oldest first: each key with the row it
    /// had before. Replayed backwards, they restore the committed rows.
    undo: Vec<(K, Option<Vec<u8>>)>,
}

impl<K> Default for Stage<K> {
    fn default() -> Self {
        Stage { rows: BTreeMap::new(), bytes: 0, undo: Vec::new() }
    }
}

impl<K: StageKey> Stage<K> {
    /// Sets `key` to `row` (`None`: removes it) and returns the row it had, without
    /// recording the change.
    fn put_raw(&mut self, key: K, row: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if let Some(row) = &row {
            self.bytes += K::BYTES + row.len() + ROW_OVERHEAD;
        }
        let old = match row {
            Some(row) => self.rows.insert(key, row),
            None => self.rows.remove(&key),
        };
        if let Some(old) = &old {
            self.bytes -= K::BYTES + old.len() + ROW_OVERHEAD;
        }
        old
    }

    /// Sets `key` to `row` (`None`: removes it) in the transaction in progress; returns the
    /// row it had.
    fn put(&mut self, key: K, row: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let old = self.put_raw(key, row);
        self.undo.push((key, old.clone()));
        old
    }

    /// Removes the rows of `range` in the transaction in progress; returns them.
    fn remove_range(&mut self, range: impl std::ops::RangeBounds<K>) -> Vec<(K, Vec<u8>)> {
        let keys: Vec<K> = self.rows.range(range).map(|(k, _)| *k).collect();
        keys.into_iter().filter_map(|key| self.put(key, None).map(|row| (key, row))).collect()
    }

    /// Takes every row out, in the transaction in progress (the undo log keeps them).
    fn take_all(&mut self) -> BTreeMap<K, Vec<u8>> {
        let rows = std::mem::take(&mut self.rows);
        self.bytes = 0;
        self.undo.extend(rows.iter().map(|(key, row)| (*key, Some(row.clone()))));
        rows
    }

    /// Ends the transaction in progress: keeps its changes, or rolls them back.
    fn end(&mut self, keep: bool) {
        let undo = std::mem::take(&mut self.undo);
        if !keep {
            for (key, old) in undo.into_iter().rev() {
                self.put_raw(key, old);
            }
        }
    }
}

/// What staged applies ([`Overlay::meta_put`], [`Overlay::session_put`],
/// [`Overlay::dedup_delete`]) left for the next write transaction to write
/// ([`Overlay::settle_into`]). Only used under the engine's commit lock.
#[derive(Debug, Default)]
struct Settle {
    /// `sm_meta` rows, by region.
    meta: Stage<u64>,
    /// `sessions` rows; an empty one is a deletion (a session forgotten by a sweep).
    sessions: Stage<SessionKey>,
    /// Ranges of the `dedup` table to delete, per (region session id, session): the seqs
    /// `first..=last` (two big-endian u64) that the session's acknowledgements let go, or
    /// all of them once the session expired.
    deletes: Stage<SessionKey>,
}

impl Settle {
    fn is_empty(&self) -> bool {
        self.meta.rows.is_empty() && self.sessions.rows.is_empty() && self.deletes.rows.is_empty()
    }

    fn bytes(&self) -> usize {
        self.meta.bytes + self.sessions.bytes + self.deletes.bytes
    }

    fn end(&mut self, keep: bool) {
        self.meta.end(keep);
        self.sessions.end(keep);
        self.deletes.end(keep);
    }
}

fn encode_seqs(seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&seqs.start().to_be_bytes());
    v.extend_from_slice(&seqs.end().to_be_bytes());
    v
}

fn decode_seqs(v: &[u8]) -> io::Result<std::ops::RangeInclusive<u64>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "staged dedup range of the wrong length");
    let start = u64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let last = u64::from_be_bytes(v.get(8..16).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    Ok(start..=last)
}

/// A staged `sessions` row: `None` for a staged deletion ([`Overlay::session_delete`]).
fn staged_session(row: &[u8]) -> Option<&[u8]> {
    (!row.is_empty()).then_some(row)
}

/// Every [`DedupKey`] of region session id `region`.
fn region_keys(region: u64) -> std::ops::RangeInclusive<DedupKey> {
    (region, 0, 0)..=(region, u64::MAX, u64::MAX)
}

/// Once the overlay holds this many bytes of keys and values, the next commit writes it to
/// the table, durable or not. It bounds the node's memory for it and the length of one
/// write-out. With 100-byte values it holds about the durable interval's puts (40,000);
/// with 1 KiB values a quarter of it. Measured with 1 KiB puts at 256 in flight
/// (`tessera-bench compare --rows put1k-c256`, one interleaved pair): 17.5k puts/s, p99
/// 117 ms at 8 MiB against 16.3k/s, p99 114 ms at 64 MiB, so the smaller bound costs nothing.
pub const MAX_BYTES: usize = 8 << 20;

/// Bytes a row accounts for: its key, its value, and the map's own overhead.
fn row_bytes(key: &[u8], row: &Row) -> usize {
    key.len() + row.as_ref().map_or(0, Vec::len) + ROW_OVERHEAD
}

/// The map's own bytes per row, roughly.
const ROW_OVERHEAD: usize = 64;

/// A region's approximate number of keys and bytes of keys and values (without the data
/// id prefix), as a scan of its range would count them. Applies add their changes; puts
/// whose replaced value was not read are corrected by the flush that writes them (see the
/// module documentation).
#[derive(Debug, Default)]
pub struct ApproxSize {
    keys: AtomicI64,
    bytes: AtomicI64,
}

impl ApproxSize {
    /// Approximate number of keys.
    pub fn keys(&self) -> i64 {
        self.keys.load(Ordering::Relaxed)
    }

    /// Approximate bytes of keys and values.
    pub fn bytes(&self) -> i64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Adds a change.
    pub fn add(&self, keys: i64, bytes: i64) {
        self.keys.fetch_add(keys, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Replaces both figures (after a count of the range).
    pub fn set(&self, keys: i64, bytes: i64) {
        self.keys.store(keys, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
    }
}

/// What a staged put replaced, as the transaction in progress sees the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The key had no value.
    Nothing,
    /// A value of this length.
    Value(usize),
    /// The key's value is only in the table, which the put did not read: counted as a value
    /// of the new one's length until the flush that writes the row corrects the counts.
    Unread,
}

impl Replaced {
    /// The change in a region's (keys, bytes) of a put of a `key_len`-byte key and a
    /// `value_len`-byte value that replaced this. An unread value is counted as one of
    /// the same length: the flush that writes the row corrects the counts.
    pub fn count_change(self, key_len: usize, value_len: usize) -> (i64, i64) {
        match self {
            Replaced::Nothing => (1, (key_len + value_len) as i64),
            Replaced::Value(old_len) => (0, value_len as i64 - old_len as i64),
            Replaced::Unread => (0, 0),
        }
    }
}

/// A row whose value in the table was never read: the region whose counts took it as a
/// value of `assumed_len` bytes.
#[derive(Debug, Clone)]
struct Unread {
    size: Arc<ApproxSize>,
    assumed_len: usize,
}

impl Unread {
    /// The change in (keys, bytes) that turns counts which took the table's value as
    /// `assumed_len` bytes into exact ones, given the value the table had (`actual`).
    fn correction(&self, data_key: &[u8], actual: Option<usize>) -> (i64, i64) {
        let assumed = self.assumed_len as i64;
        match actual {
            Some(len) => (0, assumed - len as i64),
            // Counted as replacing a value; it was a new key.
            None => (1, (data_key.len().saturating_sub(8)) as i64 + assumed),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Overlay {
    published: RwLock<Published>,
    /// Moves each time published rows are cleared because a commit wrote them to the table.
    epoch: AtomicU64,
    /// Bytes of the live published rows ([`row_bytes`]); the frozen ones are not counted
    /// against [`MAX_BYTES`] (see "Write-outs outside the commit lock").
    bytes: AtomicUsize,
    /// The write transaction in progress, and the writer's own records of the published
    /// rows. Only whoever holds the engine's commit lock uses it, so it is never contended.
    txn: Mutex<TxnRows>,
    /// Exactly-once rows not yet in the table. Only used under the engine's commit lock.
    dedup: Mutex<Stage<DedupKey>>,
    /// What staged applies left for the tables. Changed only under the engine's commit
    /// lock (its byte count is read outside it, as a hint).
    settle: Mutex<Settle>,
}

#[derive(Debug, Default)]
struct TxnRows {
    /// Rows staged by the transaction in progress, newest value per key.
    staged: Rows,
    staged_bytes: usize,
    /// The transaction wrote the published rows into the table: they are no longer to be
    /// read from the overlay by it, and leave the overlay when it commits.
    flushed: bool,
    /// Staged rows whose value in the table was never read ([`Replaced::Unread`]).
    staged_unread: HashMap<Vec<u8>, Unread>,
    /// The same for published rows; replaced when a commit writes them to the table.
    published_unread: HashMap<Vec<u8>, Unread>,
    /// Count corrections of the rows this transaction wrote to the table, added when it
    /// commits: one entry per region.
    corrections: Vec<(Arc<ApproxSize>, i64, i64)>,
}

impl TxnRows {
    fn correct(&mut self, key: &[u8], unread: &Unread, actual: Option<usize>) {
        correct(&mut self.corrections, key, unread, actual);
    }
}

/// Adds to `corrections` (one entry per region) the correction of a row written to the
/// table whose value there was never read (`actual`: the value the write replaced).
fn correct(corrections: &mut Vec<(Arc<ApproxSize>, i64, i64)>, key: &[u8], unread: &Unread, actual: Option<usize>) {
    let (keys, bytes) = unread.correction(key, actual);
    if (keys, bytes) == (0, 0) {
        return;
    }
    match corrections.iter_mut().find(|(size, _, _)| Arc::ptr_eq(size, &unread.size)) {
        Some((_, k, b)) => (*k, *b) = (*k + keys, *b + bytes),
        None => corrections.push((unread.size.clone(), keys, bytes)),
    }
}

impl Overlay {
    fn published(&self) -> RwLockReadGuard<'_, Published> {
        self.published.read().unwrap_or_else(|p| p.into_inner())
    }

    fn published_mut(&self) -> RwLockWriteGuard<'_, Published> {
        self.published.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Published rows: rows committed and not yet written to the table.
    pub fn len(&self) -> usize {
        self.published().view().len()
    }

    /// True when no published row waits for the table.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the overlay has reached [`MAX_BYTES`]: the commit in progress should
    /// write it to the table.
    pub fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed)
            + lock(&self.txn).staged_bytes
            + lock(&self.dedup).bytes
            + lock(&self.settle).bytes()
            >= MAX_BYTES
    }

    /// True when a commit should write rows to the table: some are published or staged.
    pub fn has_rows(&self) -> bool {
        let txn = lock(&self.txn);
        !txn.staged.is_empty()
            || (!txn.flushed && !self.published().view().is_empty())
            || !lock(&self.dedup).rows.is_empty()
            || !lock(&self.settle).is_empty()
    }

    /// True when staged applies left rows for the next write transaction to write
    /// ([`Overlay::settle_into`]).
    pub fn has_settle(&self) -> bool {
        !lock(&self.settle).is_empty()
    }

    /// Stages region `region`'s `sm_meta` row, in the staged apply in progress.
    pub fn meta_put(&self, region: u64, row: Vec<u8>) {
        lock(&self.settle).meta.put(region, Some(row));
    }

    /// Region `region`'s staged `sm_meta` row, if the stage has it (newer than the
    /// table's). Consistent with the table only under the engine's commit lock.
    pub fn meta_get(&self, region: u64) -> Option<Vec<u8>> {
        lock(&self.settle).meta.rows.get(&region).cloned()
    }

    /// The staged `sessions` row under `key`, if the stage has it (the table may):
    /// `Some(None)` if the stage deletes it ([`Overlay::session_delete`]).
    pub fn session_get(&self, key: SessionKey) -> Option<Option<Vec<u8>>> {
        lock(&self.settle).sessions.rows.get(&key).map(|row| staged_session(row).map(<[u8]>::to_vec))
    }

    /// The staged `sessions` rows of region session id `region`, as (session, row) in key
    /// order, `None` for a deletion. Consistent with the table only under the engine's
    /// commit lock.
    pub fn session_rows(&self, region: u64) -> Vec<(u64, Option<Vec<u8>>)> {
        lock(&self.settle)
            .sessions
            .rows
            .range((region, 0)..=(region, u64::MAX))
            .map(|(&(_, id), row)| (id, staged_session(row).map(<[u8]>::to_vec)))
            .collect()
    }

    /// Stages the `sessions` row `key = row`, in the staged apply in progress.
    pub fn session_put(&self, key: SessionKey, row: Vec<u8>) {
        debug_assert!(!row.is_empty(), "an encoded session row is never empty");
        lock(&self.settle).sessions.put(key, Some(row));
    }

    /// Stages the deletion of the `sessions` row `key`, in the staged apply in progress.
    /// (Kept as an empty row: an encoded session row never is.)
    pub fn session_delete(&self, key: SessionKey) {
        lock(&self.settle).sessions.put(key, Some(Vec::new()));
    }

    /// Stages the deletion of the `dedup` table's rows of client session `session` of
    /// region session id `region` with a seq in `seqs`, in the staged apply in progress.
    /// Ranges staged for one session are joined: the seqs between two of them are below
    /// the session's floor as well, and no result below it is ever read again.
    pub fn dedup_delete(&self, region: u64, session: u64, seqs: std::ops::Range<u64>) -> io::Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.dedup_delete_seqs(region, session, seqs.start..=seqs.end - 1)
    }

    /// Stages the deletion of every `dedup` row of client session `session` of region
    /// session id `region` (its expiry, [`crate::storage::sessions::Sessions::sweep`]), in
    /// the staged apply in progress.
    pub fn dedup_delete_session(&self, region: u64, session: u64) -> io::Result<()> {
        self.dedup_delete_seqs(region, session, 0..=u64::MAX)
    }

    fn dedup_delete_seqs(&self, region: u64, session: u64, seqs: std::ops::RangeInclusive<u64>) -> io::Result<()> {
        let mut settle = lock(&self.settle);
        let joined = match settle.deletes.rows.get(&(region, session)) {
            Some(old) => {
                let old = decode_seqs(old)?;
                (*old.start()).min(*seqs.start())..=(*old.end()).max(*seqs.end())
            }
            None => seqs,
        };
        settle.deletes.put((region, session), Some(encode_seqs(joined)));
        Ok(())
    }

    /// Writes what staged applies left ([`Overlay::has_settle`]) into the tables, within
    /// `txn`; returns how many rows. Every write transaction does this first, so that its
    /// jobs see the tables as the staged applies left them. The rows leave the stage at
    /// once (the transaction reads them from the tables; if it fails, [`Overlay::
    /// committed`] puts them back).
    pub fn settle_into(&self, txn: &redb::WriteTransaction) -> io::Result<usize> {
        let mut settle = lock(&self.settle);
        if settle.is_empty() {
            return Ok(0);
        }
        let mut written = 0;
        let sessions = settle.sessions.take_all();
        if !sessions.is_empty() {
            let mut table = txn.open_table(tables::SESSIONS).map_err(io_err)?;
            for (key, row) in &sessions {
                match staged_session(row) {
                    Some(row) => table.insert(key, row).map_err(io_err)?,
                    None => table.remove(key).map_err(io_err)?,
                };
            }
            written += sessions.len();
        }
        let deletes = settle.deletes.take_all();
        if !deletes.is_empty() {
            let mut table = txn.open_table(tables::DEDUP).map_err(io_err)?;
            for (&(region, session), seqs) in &deletes {
                let seqs = decode_seqs(seqs)?;
                table
                    .retain_in((region, session, *seqs.start())..=(region, session, *seqs.end()), |_, _| false)
                    .map_err(io_err)?;
            }
            written += deletes.len();
        }
        let meta = settle.meta.take_all();
        if !meta.is_empty() {
            let mut table = txn.open_table(tables::SM_META).map_err(io_err)?;
            for (region, row) in &meta {
                table.insert(region, row.as_slice()).map_err(io_err)?;
            }
            written += meta.len();
        }
        Ok(written)
    }

    /// The staged exactly-once row under `key`, if the stage has it (the table may).
    pub fn dedup_get(&self, key: DedupKey) -> Option<Vec<u8>> {
        lock(&self.dedup).rows.get(&key).cloned()
    }

    /// Stages the exactly-once row `key = row`, in the transaction in progress.
    pub fn dedup_put(&self, key: DedupKey, row: Vec<u8>) {
        lock(&self.dedup).put(key, Some(row));
    }

    /// Drops the staged rows of client session `session` of region session id `region`
    /// with a seq in `seqs` (the table's rows are the caller's).
    pub fn dedup_forget(&self, region: u64, session: u64, seqs: std::ops::Range<u64>) {
        if !seqs.is_empty() {
            lock(&self.dedup).remove_range((region, session, seqs.start)..(region, session, seqs.end));
        }
    }

    /// Drops every staged row of client session `session` of region session id `region`
    /// (the table's rows are the caller's).
    pub fn dedup_forget_session(&self, region: u64, session: u64) {
        lock(&self.dedup).remove_range((region, session, 0)..=(region, session, u64::MAX));
    }

    /// Takes every staged row of region session id `region` out of the stage, in key
    /// order, for the caller to write to the table in the transaction in progress.
    pub fn dedup_take(&self, region: u64) -> Vec<(DedupKey, Vec<u8>)> {
        lock(&self.dedup).remove_range(region_keys(region))
    }

    /// A copy of the staged rows of region session id `region`, as (session, seq, row) in
    /// key order. Consistent with the table only under the engine's commit lock.
    pub fn dedup_rows(&self, region: u64) -> Vec<(u64, u64, Vec<u8>)> {
        lock(&self.dedup).rows.range(region_keys(region)).map(|(&(_, s, seq), row)| (s, seq, row.clone())).collect()
    }

    /// Staged exactly-once rows.
    pub fn dedup_len(&self) -> usize {
        lock(&self.dedup).rows.len()
    }

    /// The length of `key`'s value if the overlay holds the key as the transaction in
    /// progress sees it (`None` inside: a deletion); `None` if only the table can tell.
    /// A published row's record of an unread table value ([`Unread`]) moves to the staged
    /// rows with the key, for the row about to be staged over it.
    fn in_overlay(&self, txn: &mut TxnRows, key: &[u8]) -> Option<Option<usize>> {
        if let Some(row) = txn.staged.get(key) {
            return Some(row.as_ref().map(Vec::len));
        }
        if txn.flushed {
            return None;
        }
        let published = self.published();
        if let Some(row) = published.live.get(key) {
            if let Some(unread) = txn.published_unread.get(key).cloned() {
                txn.staged_unread.insert(key.to_vec(), unread);
            }
            return Some(row.as_ref().map(Vec::len));
        }
        // A frozen row's record of an unread value stays with it: the write-out that
        // writes the row corrects the counts for it, and the row staged over it replaces
        // a value of known length.
        let row = published.frozen.as_deref()?.get(key)?;
        Some(row.as_ref().map(Vec::len))
    }

    /// `key`'s value as the transaction in progress sees it (`data` table key).
    pub fn get(&self, table: &DataSource<'_>, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let txn = lock(&self.txn);
        if let Some(row) = txn.staged.get(key) {
            return Ok(row.clone());
        }
        if !txn.flushed {
            if let Some(row) = self.published().view().get(key) {
                return Ok(row.clone());
            }
        }
        table.value(key)
    }

    /// Stages `key = value` in the transaction in progress, for the region whose counts are
    /// `size`; returns what it replaced. The table is not read: a key found only there is
    /// [`Replaced::Unread`], and the flush that writes the row corrects `size`.
    pub fn put(&self, size: &Arc<ApproxSize>, key: Vec<u8>, value: &[u8]) -> Replaced {
        let mut txn = lock(&self.txn);
        let replaced = match self.in_overlay(&mut txn, &key) {
            Some(len) => len.map_or(Replaced::Nothing, Replaced::Value),
            None => {
                txn.staged_unread.insert(key.clone(), Unread { size: size.clone(), assumed_len: value.len() });
                Replaced::Unread
            }
        };
        stage(&mut txn, key, Some(value.to_vec()));
        replaced
    }

    /// Stages the deletion of `key`; returns the length of the value deleted, if any (read
    /// from the table if the overlay does not have the key).
    pub fn remove(&self, table: &DataSource<'_>, key: Vec<u8>) -> io::Result<Option<usize>> {
        let mut txn = lock(&self.txn);
        let len = match self.in_overlay(&mut txn, &key) {
            Some(len) => len,
            None => table.value_len(&key)?,
        };
        stage(&mut txn, key, None);
        Ok(len)
    }

    /// Writes every row not yet in the table into it, in key order, within `txn`; returns
    /// how many. Data rows stay readable from the overlay until the commit ([`Overlay::
    /// committed`]); staged exactly-once rows leave the stage at once (the transaction
    /// reads them from the table; if it fails, [`Overlay::committed`] puts them back).
    pub fn flush_into(&self, txn: &redb::WriteTransaction) -> io::Result<usize> {
        let settled = self.settle_into(txn)?;
        let mut guard = lock(&self.txn);
        let rows = &mut *guard;
        let mut table = txn.open_table(tables::DATA).map_err(io_err)?;
        let mut written = 0;
        if !rows.flushed {
            let published = self.published();
            // Frozen rows first, as a write-out would have written them (this happens only
            // when the write-out has committed them already, or failed): the live rows
            // are newer. Their count corrections are the write-out's.
            for (key, row) in published.frozen.iter().flat_map(|f| f.iter()) {
                if !rows.staged.contains_key(key) && !published.live.contains_key(key) {
                    write_row(&mut table, key, row)?;
                    written += 1;
                }
            }
            for (key, row) in published.live.iter() {
                if !rows.staged.contains_key(key) {
                    let actual = write_row(&mut table, key, row)?;
                    if let Some(unread) = rows.published_unread.get(key).cloned() {
                        rows.correct(key, &unread, actual);
                    }
                    written += 1;
                }
            }
        }
        for (key, row) in std::mem::take(&mut rows.staged) {
            let actual = write_row(&mut table, &key, &row)?;
            if let Some(unread) = rows.staged_unread.remove(&key) {
                rows.correct(&key, &unread, actual);
            }
            written += 1;
        }
        rows.staged_bytes = 0;
        rows.flushed = true;
        drop(table);
        Ok(written + settled + self.dedup_into(txn)?)
    }

    /// Writes the staged exactly-once rows into the `dedup` table, within `txn`; returns
    /// how many. They leave the stage at once (the undo log keeps them for a rollback).
    fn dedup_into(&self, txn: &redb::WriteTransaction) -> io::Result<usize> {
        let mut stage = lock(&self.dedup);
        if stage.rows.is_empty() {
            return Ok(0);
        }
        let mut dedup = txn.open_table(tables::DEDUP).map_err(io_err)?;
        let rows = stage.take_all();
        for (key, row) in &rows {
            dedup.insert(key, row.as_slice()).map_err(io_err)?;
        }
        Ok(rows.len())
    }

    /// What [`Overlay::flush_into`] writes but the data rows, within `txn`: the settle and
    /// dedup stages; returns how many rows. A transaction that does this and then
    /// [`Overlay::freeze`]s the data rows once it has committed leaves the tables, once
    /// [`Overlay::write_out`] has committed too, as one flushing transaction would.
    pub fn flush_stages_into(&self, txn: &redb::WriteTransaction) -> io::Result<usize> {
        Ok(self.settle_into(txn)? + self.dedup_into(txn)?)
    }

    /// True while frozen rows wait for [`Overlay::written_out`].
    pub fn has_frozen(&self) -> bool {
        self.published().frozen.is_some()
    }

    /// Freezes the live published rows for a write-out outside the commit lock (see
    /// "Write-outs outside the commit lock" in the module documentation): readers and
    /// later transactions still see them, below the live rows commits publish from now
    /// on. Called under the engine's commit lock, between transactions, with nothing
    /// frozen. `None` if there is no live row.
    pub fn freeze(&self) -> Option<WriteOut> {
        let mut txn = lock(&self.txn);
        let mut published = self.published_mut();
        if published.live.is_empty() || published.frozen.is_some() {
            return None;
        }
        let rows = Arc::new(std::mem::take(&mut published.live));
        published.frozen = Some(rows.clone());
        // The frozen rows' bytes no longer count against the bound: the live rows start
        // again from none.
        self.bytes.store(0, Ordering::Relaxed);
        let unread = std::mem::take(&mut txn.published_unread);
        Some(WriteOut { rows, unread, corrections: Vec::new() })
    }

    /// Writes the frozen rows of `out` into the `data` table, within `txn` (a transaction
    /// of their own, which the caller commits); returns how many. Takes no lock of the
    /// overlay's but briefly its transaction's, so that staged applies go on meanwhile.
    pub fn write_out(&self, txn: &redb::WriteTransaction, out: &mut WriteOut) -> io::Result<usize> {
        let mut table = txn.open_table(tables::DATA).map_err(io_err)?;
        out.corrections.clear();
        for (key, row) in out.rows.iter() {
            let actual = write_row(&mut table, key, row)?;
            if let Some(unread) = out.unread.get(key) {
                correct(&mut out.corrections, key, unread, actual);
            }
        }
        Ok(out.rows.len())
    }

    /// Ends a write-out: if its transaction committed (`ok`), the counts are corrected
    /// and the frozen rows leave the overlay, moving the epoch (see [`Overlay::
    /// read_consistent`]). Called under the engine's commit lock, so that no staged apply
    /// reading through an older read transaction misses them. If it failed they stay (the
    /// engine fail-stops, and closing writes them out with the rest). Returns the rows
    /// for the caller to free after it releases the lock.
    pub fn written_out(&self, out: WriteOut, ok: bool) -> Arc<Rows> {
        let WriteOut { rows, corrections, .. } = out;
        if !ok {
            return rows;
        }
        for (size, keys, bytes) in corrections {
            size.add(keys, bytes);
        }
        let mut published = self.published_mut();
        // A flushing transaction since (a cut's, which waited for the write-out to commit)
        // may have taken them out already.
        if published.frozen.as_ref().is_some_and(|f| Arc::ptr_eq(f, &rows)) {
            published.frozen = None;
            // Under the write lock: see `read_consistent`.
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        rows
    }

    /// Ends the transaction in progress: if it committed, its staged rows are published,
    /// and if it wrote the overlay to the table, the rows it wrote leave the overlay. A
    /// failed transaction changes nothing here (the engine fail-stops): its changes to the
    /// dedup stage are rolled back.
    pub fn committed(&self, ok: bool) {
        lock(&self.dedup).end(ok);
        lock(&self.settle).end(ok);
        let mut rows = lock(&self.txn);
        let staged = std::mem::take(&mut rows.staged);
        let staged_bytes = std::mem::replace(&mut rows.staged_bytes, 0);
        let flushed = std::mem::replace(&mut rows.flushed, false);
        let staged_unread = std::mem::take(&mut rows.staged_unread);
        let corrections = std::mem::take(&mut rows.corrections);
        if !ok {
            return;
        }
        for (size, keys, bytes) in corrections {
            size.add(keys, bytes);
        }
        if flushed {
            // Every published row was written to the table: what is left unread is what
            // the transaction staged after its flush.
            rows.published_unread = staged_unread;
        } else {
            rows.published_unread.extend(staged_unread);
        }
        drop(rows);
        if staged.is_empty() && !flushed {
            return;
        }
        let mut published = self.published_mut();
        if flushed {
            published.live = staged;
            published.frozen = None;
            self.bytes.store(staged_bytes, Ordering::Relaxed);
            // Under the write lock: see `read_consistent`.
            self.epoch.fetch_add(1, Ordering::SeqCst);
        } else {
            let mut bytes = self.bytes.load(Ordering::Relaxed) + staged_bytes;
            for (key, row) in staged {
                let key_len = key.len();
                if let Some(old) = published.live.insert(key, row) {
                    // Replaced: its bytes were counted when it was published.
                    bytes = bytes.saturating_sub(key_len + old.as_ref().map_or(0, Vec::len) + ROW_OVERHEAD);
                }
            }
            self.bytes.store(bytes, Ordering::Relaxed);
        }
    }

    /// Runs `f` on the published rows. Only consistent with a read transaction opened
    /// while no commit can run (the engine's `read_cut`); otherwise use
    /// [`Overlay::read_consistent`].
    pub fn with_published<T>(&self, f: impl FnOnce(View<'_>) -> T) -> T {
        f(self.published().view())
    }

    /// Opens a read transaction with `begin` and runs `pick` on it and on the published
    /// rows, so that the two together show every commit up to some point: the transaction
    /// shows the table as of some commit, and the rows show every apply committed up to
    /// now that the table did not have then. Keep `pick` short: it holds the overlay's read
    /// lock, which the commits' publishing waits for.
    ///
    /// Rows leave the overlay only after the commit that wrote them to the table, moving
    /// the epoch under the write lock. If the epoch is the same before the transaction was
    /// opened and under the lock, nothing left since before the transaction: every row not
    /// in the overlay is in the table as the transaction sees it. Otherwise, start again.
    pub fn read_consistent<T>(
        &self,
        begin: impl Fn() -> io::Result<redb::ReadTransaction>,
        mut pick: impl FnMut(&redb::ReadTransaction, View<'_>) -> io::Result<T>,
    ) -> io::Result<(redb::ReadTransaction, T)> {
        loop {
            let before = self.epoch.load(Ordering::SeqCst);
            let txn = begin()?;
            let rows = self.published();
            if self.epoch.load(Ordering::SeqCst) != before {
                continue;
            }
            let picked = pick(&txn, rows.view())?;
            return Ok((txn, picked));
        }
    }
}

/// Stages `row` under `key` in the transaction in progress.
fn stage(txn: &mut TxnRows, key: Vec<u8>, row: Row) {
    txn.staged_bytes += row_bytes(&key, &row);
    let key_len = key.len();
    if let Some(replaced) = txn.staged.insert(key, row) {
        txn.staged_bytes -= key_len + replaced.as_ref().map_or(0, Vec::len) + ROW_OVERHEAD;
    }
}

/// Writes `row` into the table; returns the length of the value it replaced, if any.
fn write_row(table: &mut DataTable<'_>, key: &[u8], row: &Row) -> io::Result<Option<usize>> {
    let old = match row {
        Some(value) => table.insert(key, value.as_slice()).map_err(io_err)?,
        None => table.remove(key).map_err(io_err)?,
    };
    Ok(old.map(|v| v.value().len()))
}

/// Owned pairs of the `data` table, in scan order.
pub type Pairs<'a> = Box<dyn Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + 'a>;

type Guards<'a> = (redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, &'static [u8]>);

/// The table's rows in `[lo, hi)`, ascending (descending if `reverse`), as owned pairs.
pub fn table_rows<'a>(
    table: &'a redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    lo: &[u8],
    hi: &[u8],
    reverse: bool,
) -> io::Result<Pairs<'a>> {
    if lo >= hi {
        return Ok(Box::new(std::iter::empty()));
    }
    fn owned(row: Result<Guards<'_>, redb::StorageError>) -> io::Result<(Vec<u8>, Vec<u8>)> {
        row.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).map_err(io_err)
    }
    let range = table.range(lo..hi).map_err(io_err)?;
    Ok(if reverse { Box::new(range.rev().map(owned)) } else { Box::new(range.map(owned)) })
}

/// The overlay's rows in `[lo, hi)` in scan order (descending if `reverse`), until `live`
/// rows with a value have been taken (deletions are taken too and do not count).
pub fn range_rows<'a>(rows: View<'a>, lo: &[u8], hi: &[u8], reverse: bool, live: usize) -> Vec<(Vec<u8>, Row)> {
    if lo >= hi {
        return Vec::new();
    }
    type Range<'r> = Box<dyn Iterator<Item = (&'r Vec<u8>, &'r Row)> + 'r>;
    let range = |rows: &'a Rows| -> Range<'a> {
        let range = rows.range::<[u8], _>((Bound::Included(lo), Bound::Excluded(hi)));
        if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        }
    };
    let mut fresh = range(rows.live).peekable();
    let mut frozen = match rows.frozen {
        Some(frozen) => range(frozen),
        None => Box::new(std::iter::empty()),
    }
    .peekable();
    // True when `a` comes before `b` in scan order.
    let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
    let mut out = Vec::new();
    let mut taken = 0;
    while taken < live {
        let (key, row) = match (fresh.peek(), frozen.peek()) {
            (None, None) => break,
            (Some(_), None) => fresh.next().expect("peeked"),
            (None, Some(_)) => frozen.next().expect("peeked"),
            (Some((a, _)), Some((b, _))) => {
                if before(b, a) {
                    frozen.next().expect("peeked")
                } else {
                    if a == b {
                        // The live row is the newer one.
                        frozen.next();
                    }
                    fresh.next().expect("peeked")
                }
            }
        };
        taken += usize::from(row.is_some());
        out.push((key.clone(), row.clone()));
    }
    out
}

/// The table's rows merged with the overlay's rows of the same range in the same order
/// (both ascending, or both descending if `reverse`): an overlay row replaces the table's
/// row of its key, and a deletion hides it.
///
/// `overlay` may stop early (see [`range_rows`]): the merge is exact up to its last key,
/// which is as far as a caller taking at most that many live rows reads.
pub fn merged<'a>(
    table: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + 'a,
    overlay: Vec<(Vec<u8>, Row)>,
    reverse: bool,
) -> impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + 'a {
    let mut table = table.peekable();
    let mut overlay = overlay.into_iter().peekable();
    // True when `a` comes before `b` in scan order.
    let before = move |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
    std::iter::from_fn(move || loop {
        let next_overlay = overlay.peek().map(|(k, _)| k.as_slice());
        let next_table = match table.peek() {
            Some(Ok((k, _))) => Some(k.as_slice()),
            Some(Err(_)) => return table.next(),
            None => None,
        };
        match (next_table, next_overlay) {
            (None, None) => return None,
            (Some(t), Some(o)) if before(t, o) => return table.next(),
            (Some(_), None) => return table.next(),
            (t, Some(o)) => {
                if t == Some(o) {
                    // The overlay's row is the newer one.
                    table.next();
                }
                let (key, row) = overlay.next().expect("peeked");
                if let Some(value) = row {
                    return Some(Ok((key, value)));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(tables::DATA).unwrap();
        txn.commit().unwrap();
        (dir, db)
    }

    fn table_value(db: &redb::Database, key: &[u8]) -> Option<Vec<u8>> {
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(tables::DATA).unwrap();
        t.get(key).unwrap().map(|v| v.value().to_vec())
    }

    fn overlay_value(o: &Overlay, db: &redb::Database, key: &[u8]) -> Option<Vec<u8>> {
        use redb::ReadableDatabase;
        let (txn, row) =
            o.read_consistent(|| Ok(db.begin_read().unwrap()), |_, rows| Ok(rows.get(key).cloned())).unwrap();
        match row {
            Some(row) => row,
            None => txn.open_table(tables::DATA).unwrap().get(key).unwrap().map(|v| v.value().to_vec()),
        }
    }

    /// One transaction: stage `rows` (value `None`: delete) for the region counted by
    /// `size`, flush if asked, commit. Returns what each replaced (a deletion's
    /// `Some(len)` as `Value(len)`).
    fn commit_counted(
        o: &Overlay,
        db: &redb::Database,
        size: &Arc<ApproxSize>,
        rows: &[(&[u8], Option<&[u8]>)],
        flush: bool,
        ok: bool,
    ) -> Vec<Replaced> {
        let txn = db.begin_write().unwrap();
        let mut old = Vec::new();
        {
            let table = DataSource::Write(txn.open_table(tables::DATA).unwrap());
            for (k, v) in rows {
                old.push(match v {
                    Some(v) => o.put(size, k.to_vec(), v),
                    None => o.remove(&table, k.to_vec()).unwrap().map_or(Replaced::Nothing, Replaced::Value),
                });
            }
        }
        if flush {
            o.flush_into(&txn).unwrap();
        }
        if ok {
            txn.commit().unwrap();
        } else {
            txn.abort().unwrap();
        }
        o.committed(ok);
        old
    }

    fn commit(o: &Overlay, db: &redb::Database, rows: &[(&[u8], Option<&[u8]>)], flush: bool) -> Vec<Replaced> {
        commit_counted(o, db, &Arc::default(), rows, flush, true)
    }

    #[test]
    fn staged_rows_are_published_by_the_commit_and_reach_the_table_only_when_flushed() {
        let (_dir, db) = open();
        let o = Overlay::default();
        // The table is not read for a put.
        assert_eq!(commit(&o, &db, &[(b"a", Some(b"1")), (b"b", Some(b"22"))], false), vec![Replaced::Unread; 2]);
        assert_eq!(overlay_value(&o, &db, b"a"), Some(b"1".to_vec()));
        assert_eq!(table_value(&db, b"a"), None, "not written to the table yet");
        // The old lengths come from the overlay; a deletion hides the row.
        assert_eq!(
            commit(&o, &db, &[(b"b", Some(b"333")), (b"a", None)], false),
            vec![Replaced::Value(2), Replaced::Value(1)]
        );
        assert_eq!(overlay_value(&o, &db, b"a"), None);
        assert_eq!(overlay_value(&o, &db, b"b"), Some(b"333".to_vec()));
        assert_eq!(o.len(), 2);
        // A flushing commit writes everything, the newest value of each key, and empties
        // the overlay.
        commit(&o, &db, &[(b"c", Some(b"4"))], true);
        assert!(o.is_empty());
        assert_eq!(table_value(&db, b"a"), None);
        assert_eq!(table_value(&db, b"b"), Some(b"333".to_vec()));
        assert_eq!(table_value(&db, b"c"), Some(b"4".to_vec()));
        // After a flush, a deletion reads the old length from the table, and reaches it.
        assert_eq!(commit(&o, &db, &[(b"b", None)], false), vec![Replaced::Value(3)]);
        assert_eq!(table_value(&db, b"b"), Some(b"333".to_vec()));
        assert_eq!(overlay_value(&o, &db, b"b"), None);
        commit(&o, &db, &[], true);
        assert_eq!(table_value(&db, b"b"), None);
    }

    #[test]
    fn a_failed_transaction_publishes_nothing() {
        let (_dir, db) = open();
        let o = Overlay::default();
        let txn = db.begin_write().unwrap();
        o.put(&Arc::default(), b"k".to_vec(), b"v");
        txn.abort().unwrap();
        o.committed(false);
        assert!(o.is_empty());
        assert!(!o.has_rows());
        assert_eq!(overlay_value(&o, &db, b"k"), None);
    }

    #[test]
    fn rows_written_to_the_table_later_in_the_same_transaction_are_read_from_it() {
        let (_dir, db) = open();
        let o = Overlay::default();
        commit(&o, &db, &[(b"k", Some(b"old"))], false);
        let txn = db.begin_write().unwrap();
        o.flush_into(&txn).unwrap();
        {
            // A job after the flush changes the table directly (as a snapshot install
            // does); the transaction then reads the table's row, not the overlay's.
            let mut table = DataSource::Write(txn.open_table(tables::DATA).unwrap());
            table.write().unwrap().insert(b"k".as_slice(), b"direct".as_slice()).unwrap();
            assert_eq!(o.get(&table, b"k").unwrap(), Some(b"direct".to_vec()));
            // A put after the flush does not read it back.
            assert_eq!(o.put(&Arc::default(), b"k".to_vec(), b"later"), Replaced::Unread);
        }
        txn.commit().unwrap();
        o.committed(true);
        assert_eq!(overlay_value(&o, &db, b"k"), Some(b"later".to_vec()));
        assert_eq!(table_value(&db, b"k"), Some(b"direct".to_vec()));
        assert_eq!(o.len(), 1, "only the row staged after the flush is left");
    }

    /// Keys and bytes of the table's rows, counted as a region's range is.
    fn exact_size(db: &redb::Database) -> (i64, i64) {
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(tables::DATA).unwrap();
        let mut size = (0, 0);
        for row in t.iter().unwrap() {
            let (k, v) = row.unwrap();
            size = (size.0 + 1, size.1 + (k.value().len() - 8 + v.value().len()) as i64);
        }
        size
    }

    /// What the state machine credits a region for a put or deletion of `key` = `value`.
    fn credit(size: &ApproxSize, key: &[u8], value: Option<&[u8]>, replaced: Replaced) {
        let klen = key.len() - 8;
        match (value, replaced) {
            (Some(v), r) => {
                let (keys, bytes) = r.count_change(klen, v.len());
                size.add(keys, bytes);
            }
            (None, Replaced::Value(old)) => size.add(-1, -((klen + old) as i64)),
            (None, _) => {}
        }
    }

    #[test]
    fn counts_of_unread_puts_are_exact_once_a_committed_flush_has_written_them() {
        let (_dir, db) = open();
        let o = Overlay::default();
        let size = Arc::new(ApproxSize::default());
        let (a, b, c, d) = (
            tables::data_key(1, b"a"),
            tables::data_key(1, b"b"),
            tables::data_key(1, b"c"),
            tables::data_key(1, b"d"),
        );
        let step = |rows: &[(&[u8], Option<&[u8]>)], flush: bool, ok: bool| {
            let replaced = commit_counted(&o, &db, &size, rows, flush, ok);
            if ok {
                for ((k, v), r) in rows.iter().zip(replaced) {
                    credit(&size, k, *v, r);
                }
            }
        };
        // The table holds a = "xxx" and b = "yy", counted exactly.
        step(&[(&a, Some(b"xxx")), (&b, Some(b"yy"))], true, true);
        size.set(2, 7);
        assert_eq!(exact_size(&db), (2, 7));
        // Puts over rows only in the table, and of a new key: none is read, so the counts
        // take each as replacing a value of its own length, until a flush.
        step(&[(&a, Some(b"12345")), (&c, Some(b"1")), (&b, Some(b"zz"))], false, true);
        assert_eq!((size.keys(), size.bytes()), (2, 7), "counts lag until the flush");
        // Over the overlay's rows, the lengths are known; the assumptions stay with the keys.
        step(&[(&a, Some(b"1")), (&b, None)], false, true);
        assert_eq!((size.keys(), size.bytes()), (1, 0));
        // A flush whose transaction fails corrects nothing and forgets nothing.
        step(&[(&d, Some(b"1234"))], true, false);
        assert_eq!((size.keys(), size.bytes()), (1, 0));
        step(&[(&d, Some(b"1234"))], false, true);
        // The flush that commits corrects every row it wrote: a (assumed 5 bytes, was 3),
        // b (assumed 2, was 2, then deleted), c and d (assumed present, were new).
        step(&[], true, true);
        assert_eq!(exact_size(&db), (3, 9));
        assert_eq!((size.keys(), size.bytes()), (3, 9));
        // Written rows leave nothing to correct: later flushes change nothing.
        step(&[(&c, Some(b"22"))], true, true);
        step(&[], true, true);
        assert_eq!(exact_size(&db), (3, 10));
        assert_eq!((size.keys(), size.bytes()), (3, 10));
        // A put over a published unread row, flushed by its own transaction: the row
        // written is the staged one, which carries the published row's assumption.
        let e = tables::data_key(1, b"e");
        step(&[(&e, Some(b"12"))], false, true);
        step(&[(&e, Some(b"123"))], true, true);
        assert_eq!(exact_size(&db), (4, 14));
        assert_eq!((size.keys(), size.bytes()), (4, 14));
    }

    #[test]
    fn frozen_rows_are_read_under_newer_live_rows_until_written_out_which_corrects_their_counts() {
        let (_dir, db) = open();
        let o = Overlay::default();
        let size = Arc::new(ApproxSize::default());
        let (a, b, c) = (tables::data_key(1, b"a"), tables::data_key(1, b"b"), tables::data_key(1, b"c"));
        let step = |rows: &[(&[u8], Option<&[u8]>)]| {
            let replaced = commit_counted(&o, &db, &size, rows, false, true);
            for ((k, v), r) in rows.iter().zip(replaced.iter()) {
                credit(&size, k, *v, *r);
            }
            replaced
        };
        // The table holds a = "xxx", counted exactly.
        commit_counted(&o, &db, &size, &[(&a, Some(b"xxx"))], true, true);
        size.set(1, 4);
        // Unread puts over a (3 bytes in the table, taken as 5) and of a new key b.
        step(&[(&a, Some(b"12345")), (&b, Some(b"yy"))]);
        assert_eq!((size.keys(), size.bytes()), (1, 4), "counts lag until the rows are written");
        let mut out = o.freeze().expect("live rows to freeze");
        assert_eq!(out.len(), 2);
        assert!(o.freeze().is_none(), "one write-out at a time");
        assert!(o.has_frozen() && o.has_rows() && !o.is_full());
        // Later commits publish over the frozen rows; their lengths are known from them.
        assert_eq!(step(&[(&b, None), (&c, Some(b"z"))]), vec![Replaced::Value(2), Replaced::Unread]);
        let view = |f: &dyn Fn(View<'_>)| o.with_published(f);
        view(&|rows| {
            assert_eq!(rows.get(&a), Some(&Some(b"12345".to_vec())), "a frozen row is read");
            assert_eq!(rows.get(&b), Some(&None), "the live deletion hides the frozen row");
            assert_eq!(rows.len(), 3);
            let all = range_rows(rows, &a, &tables::data_key(1, b"d"), false, usize::MAX);
            let keys: Vec<_> = all.iter().map(|(k, r)| (k.clone(), r.is_some())).collect();
            assert_eq!(keys, vec![(a.clone(), true), (b.clone(), false), (c.clone(), true)]);
            let back = range_rows(rows, &a, &tables::data_key(1, b"d"), true, 1);
            assert_eq!(back, vec![(c.clone(), Some(b"z".to_vec()))], "the limit counts live rows, in scan order");
            let two = range_rows(rows, &a, &tables::data_key(1, b"d"), false, 2);
            assert_eq!(two.len(), 3, "a deletion between two live rows is taken too");
        });
        assert_eq!(table_value(&db, &a), Some(b"xxx".to_vec()), "not written yet");
        // The write-out writes the frozen rows in a transaction of its own; only once it
        // is over do they leave the overlay, and the counts of the rows it wrote are exact.
        let txn = db.begin_write().unwrap();
        assert_eq!(o.write_out(&txn, &mut out).unwrap(), 2);
        txn.commit().unwrap();
        let epoch = o.epoch.load(Ordering::SeqCst);
        assert!(o.has_frozen());
        drop(o.written_out(out, true));
        assert!(o.epoch.load(Ordering::SeqCst) > epoch, "readers whose transaction predates it start again");
        assert!(!o.has_frozen());
        assert_eq!(table_value(&db, &a), Some(b"12345".to_vec()));
        assert_eq!(table_value(&db, &b), Some(b"yy".to_vec()));
        assert_eq!(o.len(), 2, "the live rows are left");
        assert_eq!(overlay_value(&o, &db, &b), None);
        assert_eq!(overlay_value(&o, &db, &a), Some(b"12345".to_vec()));
        // The next flush writes the live rows; the counts are exact again.
        commit_counted(&o, &db, &size, &[], true, true);
        assert!(o.is_empty());
        assert_eq!(exact_size(&db), (2, 8));
        assert_eq!((size.keys(), size.bytes()), (2, 8));
    }

    #[test]
    fn a_failed_write_out_leaves_the_frozen_rows_for_the_flush_at_close() {
        let (_dir, db) = open();
        let o = Overlay::default();
        commit(&o, &db, &[(b"a", Some(b"1")), (b"b", Some(b"2"))], false);
        let mut out = o.freeze().unwrap();
        commit(&o, &db, &[(b"b", Some(b"3"))], false);
        let txn = db.begin_write().unwrap();
        o.write_out(&txn, &mut out).unwrap();
        txn.abort().unwrap();
        drop(o.written_out(out, false));
        assert!(o.has_frozen() && o.has_rows());
        assert_eq!(overlay_value(&o, &db, b"a"), Some(b"1".to_vec()));
        // A flushing transaction writes both, the live row over the frozen one.
        commit(&o, &db, &[], true);
        assert!(o.is_empty() && !o.has_frozen());
        assert_eq!(table_value(&db, b"a"), Some(b"1".to_vec()));
        assert_eq!(table_value(&db, b"b"), Some(b"3".to_vec()));
    }

    #[test]
    fn a_full_overlay_asks_for_a_flush() {
        let (_dir, db) = open();
        let o = Overlay::default();
        let value = vec![7u8; 1 << 20];
        for i in 0..(MAX_BYTES >> 20) as u32 - 1 {
            commit(&o, &db, &[(&i.to_be_bytes(), Some(&value))], false);
            assert!(!o.is_full(), "{i} MiB");
        }
        commit(&o, &db, &[(b"last", Some(&value))], false);
        assert!(o.is_full());
        commit(&o, &db, &[], true);
        assert!(!o.is_full());
    }

    #[test]
    fn staged_results_are_forgotten_by_range_taken_by_region_and_the_rest_written_by_a_flush() {
        let (_dir, db) = open();
        let o = Overlay::default();
        let big = vec![1u8; MAX_BYTES];
        for seq in 1..=5 {
            o.dedup_put((1, 7, seq), vec![seq as u8]);
        }
        o.dedup_put((1, 8, 1), vec![9]);
        o.dedup_put((2, 7, 1), vec![10]);
        o.dedup_put((1, 7, 5), vec![55]);
        assert!(o.has_rows(), "staged results alone ask for a flush");
        assert!(o.is_empty(), "they are not published data rows");
        o.dedup_forget(1, 7, 2..4);
        let seqs = |region| o.dedup_rows(region).into_iter().map(|(s, seq, _)| (s, seq)).collect::<Vec<_>>();
        assert_eq!(seqs(1), vec![(7, 1), (7, 4), (7, 5), (8, 1)]);
        assert_eq!(o.dedup_get((1, 7, 5)), Some(vec![55]), "the newest row of a key");
        assert_eq!(o.dedup_take(2), vec![((2, 7, 1), vec![10])]);
        assert_eq!(seqs(2), vec![]);

        let txn = db.begin_write().unwrap();
        assert_eq!(o.flush_into(&txn).unwrap(), 4);
        txn.commit().unwrap();
        o.committed(true);
        assert_eq!((o.dedup_len(), o.has_rows()), (0, false));
        let in_table: Vec<DedupKey> = {
            use redb::{ReadableDatabase, ReadableTable};
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(tables::DEDUP).unwrap();
            let keys = t.iter().unwrap().map(|r| r.unwrap().0.value()).collect();
            keys
        };
        assert_eq!(in_table, vec![(1, 7, 1), (1, 7, 4), (1, 7, 5), (1, 8, 1)]);

        // Their bytes count towards a full overlay, and leave with them.
        o.dedup_put((1, 7, 6), big);
        assert!(o.is_full());
        o.dedup_forget(1, 7, 0..7);
        assert!(!o.is_full());
        assert_eq!(lock(&o.dedup).bytes, 0);
    }

    #[test]
    fn a_failed_transaction_leaves_the_dedup_stage_as_it_was() {
        let (_dir, db) = open();
        let o = Overlay::default();
        o.dedup_put((1, 7, 1), vec![1]);
        o.dedup_put((1, 7, 2), vec![2]);
        o.committed(true);
        let before = o.dedup_rows(1);
        // A transaction that changes, forgets, writes out and takes rows, then fails.
        o.dedup_put((1, 7, 3), vec![3]);
        o.dedup_put((1, 7, 1), vec![11]);
        o.dedup_forget(1, 7, 2..3);
        let txn = db.begin_write().unwrap();
        assert_eq!(o.flush_into(&txn).unwrap(), 2);
        o.dedup_put((1, 7, 4), vec![4]);
        assert_eq!(o.dedup_take(1), vec![((1, 7, 4), vec![4])]);
        drop(txn);
        o.committed(false);
        assert_eq!(o.dedup_rows(1), before);
        assert_eq!(lock(&o.dedup).bytes, 2 * (<DedupKey as StageKey>::BYTES + 1 + ROW_OVERHEAD));
        // The next transaction starts from there.
        o.dedup_forget(1, 7, 0..2);
        o.committed(true);
        assert_eq!(o.dedup_rows(1), vec![(7, 2, vec![2])]);
    }

    #[test]
    fn merged_rows_take_the_overlays_value_and_skip_its_deletions_in_both_directions() {
        let table: Vec<(Vec<u8>, Vec<u8>)> = [(b"a", b"t"), (b"b", b"t"), (b"d", b"t"), (b"f", b"t")]
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let mut rows = Rows::new();
        rows.insert(b"b".to_vec(), Some(b"o".to_vec()));
        rows.insert(b"c".to_vec(), Some(b"o".to_vec()));
        rows.insert(b"d".to_vec(), None);
        rows.insert(b"g".to_vec(), Some(b"o".to_vec()));
        rows.insert(b"z".to_vec(), Some(b"out of range".to_vec()));
        let show = |it: &mut dyn Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>| -> String {
            it.map(|r| r.unwrap())
                .map(|(k, v)| format!("{}{}", k[0] as char, v[0] as char))
                .collect::<Vec<_>>()
                .join(",")
        };
        let forward = range_rows(View::from(&rows), b"a", b"h", false, usize::MAX);
        let t = table.clone().into_iter().map(Ok);
        assert_eq!(show(&mut merged(t, forward, false)), "at,bo,co,ft,go");
        let backward = range_rows(View::from(&rows), b"a", b"h", true, usize::MAX);
        let t = table.clone().into_iter().rev().map(Ok);
        assert_eq!(show(&mut merged(t, backward, true)), "go,ft,co,bo,at");
        // Cut after two live rows, the deletion between them taken too: exact up to "c".
        let cut = range_rows(View::from(&rows), b"a", b"h", false, 2);
        assert_eq!(cut.len(), 2);
        let t = table.into_iter().map(Ok);
        assert!(show(&mut merged(t, cut, false)).starts_with("at,bo,co"));
        assert!(range_rows(View::from(&rows), b"h", b"a", false, 5).is_empty());
    }

    #[test]
    fn readers_racing_commits_and_flushes_never_miss_a_row() {
        // One writer keeps bumping every key's value, flushing every few commits; readers
        // check that each key's value never goes back (a reader that missed the overlay's
        // row while its transaction predated the flush would read an older value or none).
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let (_dir, db) = open();
        let db = Arc::new(db);
        let o = Arc::new(Overlay::default());
        let stop = Arc::new(AtomicBool::new(false));
        let keys: Vec<[u8; 1]> = (0..8u8).map(|k| [k]).collect();
        let mut readers = Vec::new();
        for _ in 0..2 {
            let (db, o, stop, keys) = (db.clone(), o.clone(), stop.clone(), keys.clone());
            readers.push(std::thread::spawn(move || {
                let mut last = [0u64; 8];
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (i, k) in keys.iter().enumerate() {
                        let v = overlay_value(&o, &db, k).map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                        assert!(v >= last[i], "key {i} went back from {} to {v}", last[i]);
                        last[i] = v;
                        reads += 1;
                    }
                }
                reads
            }));
        }
        // Every fourth round also freezes the rows, and the next one writes them out in a
        // transaction of their own after its commit, as the engine's writer does: readers
        // must see them until they are in the table (no flushing commit comes between, as
        // in the engine).
        let mut frozen = None;
        for round in 1..=400u64 {
            let value = round.to_be_bytes();
            let rows: Vec<(&[u8], Option<&[u8]>)> =
                keys.iter().map(|k| (k.as_slice(), Some(value.as_slice()))).collect();
            let flush = round % 3 == 0 && frozen.is_none();
            commit(&o, &db, &rows, flush);
            if let Some(mut out) = frozen.take() {
                let txn = db.begin_write().unwrap();
                o.write_out(&txn, &mut out).unwrap();
                txn.commit().unwrap();
                drop(o.written_out(out, true));
            } else if round % 4 == 0 && !flush {
                frozen = o.freeze();
                assert!(frozen.is_some());
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(overlay_value(&o, &db, &[0]), Some(400u64.to_be_bytes().to_vec()));
    }
}
