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
//!   inside the engine's write transaction. What the transaction stages becomes visible to
//!   readers ([`Overlay::published`]) only after it commits, as its table writes would.
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
//! - Readers see the overlay over a read transaction ([`Overlay::read_consistent`]). Rows
//!   leave the overlay only after the commit that wrote them to the table, and each such
//!   clearing moves the overlay's epoch: a reader whose transaction may predate the commit
//!   sees the epoch move and starts again.
//!
//! [`LAZY_DURABLE_EVERY`]: super::engine::LAZY_DURABLE_EVERY

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use redb::ReadableTable;

use super::engine::io_err;
use super::tables;
use crate::lock;

/// A row of the overlay: the value, or `None` for a deletion the table has not seen yet.
pub type Row = Option<Vec<u8>>;

/// The published rows, by `data` table key.
pub type Rows = BTreeMap<Vec<u8>, Row>;

/// The `data` table as a write transaction opens it.
pub type DataTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

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

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Overlay {
    published: RwLock<Rows>,
    /// Moves each time published rows are cleared because a commit wrote them to the table.
    epoch: AtomicU64,
    /// Bytes of the published rows ([`row_bytes`]).
    bytes: AtomicUsize,
    /// The write transaction in progress. Only whoever holds the engine's commit lock uses
    /// it, so it is never contended.
    txn: Mutex<TxnRows>,
}

#[derive(Debug, Default)]
struct TxnRows {
    /// Rows staged by the transaction in progress, newest value per key.
    staged: Rows,
    staged_bytes: usize,
    /// The transaction wrote the published rows into the table: they are no longer to be
    /// read from the overlay by it, and leave the overlay when it commits.
    flushed: bool,
}

impl Overlay {
    fn published(&self) -> RwLockReadGuard<'_, Rows> {
        self.published.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Published rows: rows committed and not yet written to the table.
    pub fn len(&self) -> usize {
        self.published().len()
    }

    /// True when no published row waits for the table.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the overlay has reached [`MAX_BYTES`]: the commit in progress should
    /// write it to the table.
    pub fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) + lock(&self.txn).staged_bytes >= MAX_BYTES
    }

    /// True when a commit should write rows to the table: some are published or staged.
    pub fn has_rows(&self) -> bool {
        let txn = lock(&self.txn);
        !txn.staged.is_empty() || (!txn.flushed && !self.published().is_empty())
    }

    /// Length of `key`'s value as the transaction in progress sees it (`data` table key).
    fn len_of(&self, txn: &TxnRows, table: &DataTable<'_>, key: &[u8]) -> io::Result<Option<usize>> {
        if let Some(row) = txn.staged.get(key) {
            return Ok(row.as_ref().map(Vec::len));
        }
        if !txn.flushed {
            if let Some(row) = self.published().get(key) {
                return Ok(row.as_ref().map(Vec::len));
            }
        }
        Ok(table.get(key).map_err(io_err)?.map(|v| v.value().len()))
    }

    /// `key`'s value as the transaction in progress sees it (`data` table key).
    pub fn get(&self, table: &DataTable<'_>, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let txn = lock(&self.txn);
        if let Some(row) = txn.staged.get(key) {
            return Ok(row.clone());
        }
        if !txn.flushed {
            if let Some(row) = self.published().get(key) {
                return Ok(row.clone());
            }
        }
        Ok(table.get(key).map_err(io_err)?.map(|v| v.value().to_vec()))
    }

    /// Stages `key = value` in the transaction in progress; returns the length of the value
    /// it replaces, if any.
    pub fn put(&self, table: &DataTable<'_>, key: Vec<u8>, value: &[u8]) -> io::Result<Option<usize>> {
        self.stage(table, key, Some(value.to_vec()))
    }

    /// Stages the deletion of `key`; returns the length of the value deleted, if any.
    pub fn remove(&self, table: &DataTable<'_>, key: Vec<u8>) -> io::Result<Option<usize>> {
        self.stage(table, key, None)
    }

    fn stage(&self, table: &DataTable<'_>, key: Vec<u8>, row: Row) -> io::Result<Option<usize>> {
        let mut txn = lock(&self.txn);
        let old = self.len_of(&txn, table, &key)?;
        txn.staged_bytes += row_bytes(&key, &row);
        let key_len = key.len();
        if let Some(replaced) = txn.staged.insert(key, row) {
            txn.staged_bytes -= key_len + replaced.as_ref().map_or(0, Vec::len) + ROW_OVERHEAD;
        }
        Ok(old)
    }

    /// Writes every row not yet in the table into it, in key order, within `txn`; returns
    /// how many. Rows stay readable from the overlay until the commit ([`Overlay::
    /// committed`]).
    pub fn flush_into(&self, txn: &redb::WriteTransaction) -> io::Result<usize> {
        let mut rows = lock(&self.txn);
        let mut table = txn.open_table(tables::DATA).map_err(io_err)?;
        let mut written = 0;
        if !rows.flushed {
            let published = self.published();
            for (key, row) in published.iter() {
                if !rows.staged.contains_key(key) {
                    write_row(&mut table, key, row)?;
                    written += 1;
                }
            }
        }
        for (key, row) in std::mem::take(&mut rows.staged) {
            write_row(&mut table, &key, &row)?;
            written += 1;
        }
        rows.staged_bytes = 0;
        rows.flushed = true;
        Ok(written)
    }

    /// Ends the transaction in progress: if it committed, its staged rows are published,
    /// and if it wrote the overlay to the table, the rows it wrote leave the overlay. A
    /// failed transaction changes nothing here (the engine fail-stops).
    pub fn committed(&self, ok: bool) {
        let mut rows = lock(&self.txn);
        let staged = std::mem::take(&mut rows.staged);
        let staged_bytes = std::mem::replace(&mut rows.staged_bytes, 0);
        let flushed = std::mem::replace(&mut rows.flushed, false);
        if !ok || (staged.is_empty() && !flushed) {
            return;
        }
        let mut published = self.published.write().unwrap_or_else(|p| p.into_inner());
        if flushed {
            *published = staged;
            self.bytes.store(staged_bytes, Ordering::Relaxed);
            // Under the write lock: see `read_consistent`.
            self.epoch.fetch_add(1, Ordering::SeqCst);
        } else {
            let mut bytes = self.bytes.load(Ordering::Relaxed) + staged_bytes;
            for (key, row) in staged {
                let key_len = key.len();
                if let Some(old) = published.insert(key, row) {
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
    pub fn with_published<T>(&self, f: impl FnOnce(&Rows) -> T) -> T {
        f(&self.published())
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
        mut pick: impl FnMut(&redb::ReadTransaction, &Rows) -> io::Result<T>,
    ) -> io::Result<(redb::ReadTransaction, T)> {
        loop {
            let before = self.epoch.load(Ordering::SeqCst);
            let txn = begin()?;
            let rows = self.published();
            if self.epoch.load(Ordering::SeqCst) != before {
                continue;
            }
            let picked = pick(&txn, &rows)?;
            return Ok((txn, picked));
        }
    }
}

fn write_row(table: &mut DataTable<'_>, key: &[u8], row: &Row) -> io::Result<()> {
    match row {
        Some(value) => drop(table.insert(key, value.as_slice()).map_err(io_err)?),
        None => drop(table.remove(key).map_err(io_err)?),
    }
    Ok(())
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
pub fn range_rows(rows: &Rows, lo: &[u8], hi: &[u8], reverse: bool, live: usize) -> Vec<(Vec<u8>, Row)> {
    if lo >= hi {
        return Vec::new();
    }
    let range = rows.range::<[u8], _>((Bound::Included(lo), Bound::Excluded(hi)));
    let mut out = Vec::new();
    let mut taken = 0;
    let mut take = |(k, row): (&Vec<u8>, &Row)| {
        if taken >= live {
            return false;
        }
        taken += usize::from(row.is_some());
        out.push((k.clone(), row.clone()));
        true
    };
    if reverse {
        for item in range.rev() {
            if !take(item) {
                break;
            }
        }
    } else {
        for item in range {
            if !take(item) {
                break;
            }
        }
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

    /// One transaction: stage `rows` (value `None`: delete), flush if asked, commit.
    fn commit(o: &Overlay, db: &redb::Database, rows: &[(&[u8], Option<&[u8]>)], flush: bool) -> Vec<Option<usize>> {
        let txn = db.begin_write().unwrap();
        let mut old = Vec::new();
        {
            let table = txn.open_table(tables::DATA).unwrap();
            for (k, v) in rows {
                old.push(match v {
                    Some(v) => o.put(&table, k.to_vec(), v).unwrap(),
                    None => o.remove(&table, k.to_vec()).unwrap(),
                });
            }
        }
        if flush {
            o.flush_into(&txn).unwrap();
        }
        txn.commit().unwrap();
        o.committed(true);
        old
    }

    #[test]
    fn staged_rows_are_published_by_the_commit_and_reach_the_table_only_when_flushed() {
        let (_dir, db) = open();
        let o = Overlay::default();
        assert_eq!(commit(&o, &db, &[(b"a", Some(b"1")), (b"b", Some(b"22"))], false), vec![None, None]);
        assert_eq!(overlay_value(&o, &db, b"a"), Some(b"1".to_vec()));
        assert_eq!(table_value(&db, b"a"), None, "not written to the table yet");
        // The old lengths come from the overlay; a deletion hides the row.
        assert_eq!(commit(&o, &db, &[(b"b", Some(b"333")), (b"a", None)], false), vec![Some(2), Some(1)]);
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
        // After a flush, old lengths come from the table, and a deletion reaches it.
        assert_eq!(commit(&o, &db, &[(b"b", None)], false), vec![Some(3)]);
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
        {
            let table = txn.open_table(tables::DATA).unwrap();
            o.put(&table, b"k".to_vec(), b"v").unwrap();
        }
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
            let mut table = txn.open_table(tables::DATA).unwrap();
            table.insert(b"k".as_slice(), b"direct".as_slice()).unwrap();
            assert_eq!(o.get(&table, b"k").unwrap(), Some(b"direct".to_vec()));
            assert_eq!(o.put(&table, b"k".to_vec(), b"later").unwrap(), Some(6));
        }
        txn.commit().unwrap();
        o.committed(true);
        assert_eq!(overlay_value(&o, &db, b"k"), Some(b"later".to_vec()));
        assert_eq!(table_value(&db, b"k"), Some(b"direct".to_vec()));
        assert_eq!(o.len(), 1, "only the row staged after the flush is left");
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
        let forward = range_rows(&rows, b"a", b"h", false, usize::MAX);
        let t = table.clone().into_iter().map(Ok);
        assert_eq!(show(&mut merged(t, forward, false)), "at,bo,co,ft,go");
        let backward = range_rows(&rows, b"a", b"h", true, usize::MAX);
        let t = table.clone().into_iter().rev().map(Ok);
        assert_eq!(show(&mut merged(t, backward, true)), "go,ft,co,bo,at");
        // Cut after two live rows, the deletion between them taken too: exact up to "c".
        let cut = range_rows(&rows, b"a", b"h", false, 2);
        assert_eq!(cut.len(), 2);
        let t = table.into_iter().map(Ok);
        assert!(show(&mut merged(t, cut, false)).starts_with("at,bo,co"));
        assert!(range_rows(&rows, b"h", b"a", false, 5).is_empty());
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
        for round in 1..=400u64 {
            let value = round.to_be_bytes();
            let rows: Vec<(&[u8], Option<&[u8]>)> =
                keys.iter().map(|k| (k.as_slice(), Some(value.as_slice()))).collect();
            commit(&o, &db, &rows, round % 3 == 0);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(overlay_value(&o, &db, &[0]), Some(400u64.to_be_bytes().to_vec()));
    }
}
