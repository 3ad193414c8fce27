//! Region snapshots as files, so that no side ever holds a whole region in memory.
//!
//! * **Build**: one redb read transaction (a consistent view, taken concurrently with
//!   applies) is streamed record by record into a file in `<data>/snapshots/`. Only a
//!   snapshot to be sent is written ([`cut`], then [`write`] in the background, from the
//!   state machine's `get_current_snapshot`); the snapshots openraft builds to purge the
//!   log are the region's applied state alone ([`applied_state`]).
//! * **Send and receive**: the leader reads the file in chunks of `SNAPSHOT_CHUNK` bytes
//!   (see `raft::network`); the follower appends each chunk to a file as it arrives.
//! * **Install**: the file is read record by record and written under a fresh *data id* in
//!   steps of at most [`INSTALL_STEP_BYTES`], each its own (lazily durable) group-commit
//!   job, so other regions' commits interleave with the install instead of waiting for one
//!   region-sized transaction. Readers keep using the old data id until one small durable
//!   commit switches the region to the new one; the old rows are then deleted in steps of
//!   at most [`GC_STEP_ROWS`] rows ([`collect_garbage`]).
//! * **Crash safety**: a staging id is listed as an install in progress
//!   (`staging_data_ids`) before its first row is written and leaves that list in the
//!   commit that makes it live. The collector never touches it meanwhile; a failed install
//!   hands it to the collector, and so does the next start after a crash mid-install.
//!
//! File format: the magic [`MAGIC`], then records, each a little-endian `u32` length and a
//! postcard [`SnapshotItem`]: a `Clock` first, then the region's record (range, epoch,
//! voters; absent in snapshots built before splits existed), then pairs in key order, dedup
//! rows, session rows, and an `End` with the counts.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use redb::{ReadableTable, WriteTransaction};

use super::engine::{io_err, Engine};
use super::records::{decode, encode, RegionRecord, SmMetaRecord, SmState, SnapshotItem};
use super::tables::{self, data_key, data_range};

/// First bytes of every snapshot file: the format and its version.
pub const MAGIC: &[u8; 8] = b"TSNAP001";
/// Largest record accepted when reading a snapshot file (a pair is at most a key and a
/// value, far below this).
const MAX_RECORD: u32 = 16 * 1024 * 1024;
/// Most bytes of records written by one install step (one group-commit job).
pub const INSTALL_STEP_BYTES: usize = 4 * 1024 * 1024;
/// Most rows deleted by one garbage-collection step.
pub const GC_STEP_ROWS: usize = 20_000;
/// Data ids of installed snapshots start here, above any region id.
const FIRST_INSTALLED_DATA_ID: u64 = 1 << 48;

/// A snapshot file. Clones share it; the file is deleted when the last clone is dropped,
/// so a sender still streaming an older snapshot keeps it alive. A file being written in
/// the background ([`SnapshotFile::pending`]) is complete once [`SnapshotFile::written`]
/// returns.
#[derive(Debug, Clone)]
pub struct SnapshotFile(Arc<Owned>);

#[derive(Debug)]
struct Owned {
    path: PathBuf,
    /// `None` while a background write runs, then its outcome. No channel: complete.
    written: Option<tokio::sync::watch::Receiver<Option<Result<(), String>>>>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reports the outcome of a background write to the [`SnapshotFile`] it belongs to.
#[derive(Debug)]
pub struct Completion(tokio::sync::watch::Sender<Option<Result<(), String>>>);

impl Completion {
    /// Marks the file written, or failed with `result`'s error.
    pub fn finish(self, result: &io::Result<()>) {
        self.0.send_replace(Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string())));
    }
}

impl SnapshotFile {
    /// Takes ownership of the file at `path` (which need not exist yet).
    pub fn adopt(path: PathBuf) -> SnapshotFile {
        SnapshotFile(Arc::new(Owned { path, written: None }))
    }

    /// Takes ownership of the file at `path`, which a background task is about to write
    /// and reports through the returned [`Completion`] (dropping it unfinished fails the
    /// file).
    pub fn pending(path: PathBuf) -> (SnapshotFile, Completion) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (SnapshotFile(Arc::new(Owned { path, written: Some(rx) })), Completion(tx))
    }

    /// No file: the data of a snapshot built for openraft's log purge, which writes none
    /// (see `RegionSnapshotBuilder`). Reading it fails with `NotFound`; nothing sends it,
    /// since a snapshot is sent only from `get_current_snapshot`, which writes a file.
    pub fn unwritten() -> SnapshotFile {
        SnapshotFile::adopt(PathBuf::new())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Waits until the file is completely written; `Err` if its write failed.
    pub async fn written(&self) -> io::Result<()> {
        let Some(rx) = &self.0.written else { return Ok(()) };
        let mut rx = rx.clone();
        let outcome =
            rx.wait_for(|w| w.is_some()).await.map_err(|_| io::Error::other("snapshot file write abandoned"))?.clone();
        outcome.unwrap_or(Ok(())).map_err(|e| io::Error::other(format!("snapshot file not written: {e}")))
    }

    /// Whether its background write failed (or was abandoned).
    pub fn failed(&self) -> bool {
        self.0.written.as_ref().is_some_and(|rx| {
            matches!(&*rx.borrow(), Some(Err(_))) || (rx.has_changed().is_err() && rx.borrow().is_none())
        })
    }
}

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A fresh file name in the engine's snapshot directory.
pub fn new_path(engine: &Engine, what: &str, region: u64) -> PathBuf {
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    engine.snapshot_dir().join(format!("{what}-r{region}-{}-{n}.snap", std::process::id()))
}

/// The state-machine state of `region` as of `txn`.
pub fn read_state(txn: &redb::ReadTransaction, region: u64) -> io::Result<SmState> {
    state_from(
        &txn.open_table(tables::SM_META).map_err(io_err)?,
        &txn.open_table(tables::DATA_IDS).map_err(io_err)?,
        &txn.open_table(tables::SESSION_IDS).map_err(io_err)?,
        region,
    )
}

/// `region`'s state from its `sm_meta` record and its `data_ids` and `session_ids`
/// entries, read or write transaction alike.
pub(crate) fn state_from(
    meta: &impl ReadableTable<u64, &'static [u8]>,
    data_ids: &impl ReadableTable<u64, u64>,
    session_ids: &impl ReadableTable<u64, u64>,
    region: u64,
) -> io::Result<SmState> {
    let mut state = match meta.get(region).map_err(io_err)? {
        Some(v) => decode::<SmMetaRecord>(v.value())?.state(region),
        None => SmState::default(),
    };
    state.data_id = data_ids.get(region).map_err(io_err)?.map_or(region, |v| v.value());
    state.session_id = session_ids.get(region).map_err(io_err)?.map_or(state.data_id, |v| v.value());
    Ok(state)
}

/// The range of `region`'s live record as of `txn`, or the whole key space if it has none
/// (a tombstone, or no record): what bounds its rows under a data id shared with others.
fn record_range(record: Option<&[u8]>) -> io::Result<(Vec<u8>, Vec<u8>)> {
    Ok(match record.map(decode::<RegionRecord>).transpose()?.and_then(|r| r.to_descriptor()) {
        Some(d) => (d.start_key, d.end_key),
        None => (Vec::new(), Vec::new()),
    })
}

/// The data id `region`'s rows are stored under, as of `txn`: one integer lookup.
pub fn read_data_id(txn: &redb::ReadTransaction, region: u64) -> io::Result<u64> {
    let ids = txn.open_table(tables::DATA_IDS).map_err(io_err)?;
    Ok(ids.get(region).map_err(io_err)?.map_or(region, |v| v.value()))
}

/// The data id `region`'s rows are stored under, as of `txn` (a write transaction).
pub fn read_data_id_mut(txn: &WriteTransaction, region: u64) -> io::Result<u64> {
    let ids = txn.open_table(tables::DATA_IDS).map_err(io_err)?;
    let id = ids.get(region).map_err(io_err)?.map_or(region, |v| v.value());
    Ok(id)
}

/// The state of `region` as of `txn` (a write transaction).
fn read_state_mut(txn: &WriteTransaction, region: u64) -> io::Result<SmState> {
    state_from(
        &txn.open_table(tables::SM_META).map_err(io_err)?,
        &txn.open_table(tables::DATA_IDS).map_err(io_err)?,
        &txn.open_table(tables::SESSION_IDS).map_err(io_err)?,
        region,
    )
}

/// Rows that are garbage, deleted in bounded steps by [`collect_garbage`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GcItem {
    /// The data rows of `[start, end)` under `data_id` (empty `end`: to the end). Only a
    /// range: other regions may keep rows of other ranges under the same data id.
    Rows {
        /// Data id.
        data_id: u64,
        /// First key.
        start: Vec<u8>,
        /// End (exclusive; empty: unbounded).
        end: Vec<u8>,
    },
    /// Every dedup and session row under `session_id`.
    Sessions {
        /// Session id.
        session_id: u64,
    },
}

/// `node_meta` name of the [`GcItem`] list.
const GC_ITEMS: &str = "gc_items";

/// Lists `items` as garbage inside `txn` (the caller starts [`spawn_garbage_collection`]
/// after the commit).
pub fn queue_garbage(txn: &WriteTransaction, items: impl IntoIterator<Item = GcItem>) -> io::Result<()> {
    let t = txn.open_table(tables::NODE_META).map_err(io_err)?;
    let mut list: Vec<GcItem> =
        t.get(GC_ITEMS).map_err(io_err)?.map(|v| decode(v.value())).transpose()?.unwrap_or_default();
    drop(t);
    let before = list.len();
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
    if list.len() != before {
        set_node_meta(txn, GC_ITEMS, &list)?;
    }
    Ok(())
}

/// The garbage that the rows and sessions of `state` become, for a region whose record
/// (as of the same transaction) is `record`.
fn garbage_of(state: &SmState, record: Option<&[u8]>) -> io::Result<[GcItem; 2]> {
    let (start, end) = record_range(record)?;
    Ok([GcItem::Rows { data_id: state.data_id, start, end }, GcItem::Sessions { session_id: state.session_id }])
}

fn write_item(w: &mut impl Write, item: &SnapshotItem) -> io::Result<()> {
    let bytes = encode(item)?;
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("snapshot record too large"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)
}

/// A snapshot of a region prepared to merge was asked for after this node's replica of
/// its target absorbed it: its rows here now belong to the target (and may have changed,
/// or be collected), so they are no longer the source's final state.
#[derive(Debug, thiserror::Error)]
#[error("region {region} merged into its neighbour here: it has no state of its own to snapshot")]
pub struct MergedAway {
    /// The region merged away.
    pub region: u64,
}

/// Whether the region of `record`, prepared to merge, has been absorbed by its target's
/// replica on this node (as of the transaction `regions` belongs to): the target's range
/// covers the region's start at a newer version than the prepare names.
pub(crate) fn absorbed_here(
    regions: &impl ReadableTable<u64, &'static [u8]>,
    record: &RegionRecord,
) -> io::Result<bool> {
    let (Some(m), Some(desc)) = (record.merging(), record.to_descriptor()) else { return Ok(false) };
    let Some(target) = regions.get(m.target).map_err(io_err)? else { return Ok(false) };
    Ok(decode::<RegionRecord>(target.value())?
        .to_descriptor()
        .is_some_and(|t| t.contains(&desc.start_key) && t.epoch.version > m.target_epoch.1))
}

/// The applied state of `region` as of its last commit: what a snapshot written now would
/// reflect, without writing one. Refused ([`MergedAway`]) for a region merged into its
/// neighbour here, as [`cut`] is.
///
/// Read under the commit lock, with what staged applies left over the table, and nothing
/// committed (`Engine::read_settled`): a snapshot is built every few thousand entries of a
/// region, and a cut's commit, which writes the settle stage and, once the durable interval
/// has passed, the whole data overlay under the lock, held up every apply of the node for
/// it (50-90 ms under workload A, issue 6's twenty-third note).
pub fn applied_state(engine: &Engine, region: u64) -> io::Result<SmState> {
    engine.read_settled(|txn, overlay| {
        own_record(txn, region)?;
        let state = read_state(txn, region)?;
        Ok(match overlay.meta_get(region) {
            Some(row) => SmState {
                data_id: state.data_id,
                session_id: state.session_id,
                ..decode::<SmMetaRecord>(&row)?.state(region)
            },
            None => state,
        })
    })
}

/// `region`'s record as of `txn` (None if it has none), refused ([`MergedAway`]) once its
/// target here has absorbed it: what a snapshot of it may be taken from.
fn own_record(txn: &redb::ReadTransaction, region: u64) -> io::Result<Option<Vec<u8>>> {
    let regions = txn.open_table(tables::REGIONS).map_err(io_err)?;
    let record = regions.get(region).map_err(io_err)?.map(|r| r.value().to_vec());
    if let Some(record) = &record {
        if absorbed_here(&regions, &decode::<RegionRecord>(record)?)? {
            return Err(io::Error::other(MergedAway { region }));
        }
    }
    Ok(record)
}

/// A consistent view of a region for a snapshot: a read transaction at a commit boundary,
/// with the data overlay's rows and the staged exactly-once rows of the same commits
/// ([`cut`]).
pub struct Cut {
    txn: redb::ReadTransaction,
    fresh: Vec<(Vec<u8>, super::overlay::Row)>,
    /// Staged exactly-once rows: (session, seq, row).
    fresh_dedup: Vec<(u64, u64, Vec<u8>)>,
    state: SmState,
    record: Option<Vec<u8>>,
}

impl std::fmt::Debug for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cut").field("state", &self.state).field("fresh", &self.fresh.len()).finish()
    }
}

/// The region's state and rows as of one commit, to [`write`] later: a read transaction
/// taken under the commit lock (so it waits for a commit in progress, not for the region's
/// size). Returns the state the snapshot will reflect. Refused ([`MergedAway`]) for a
/// region merged into its neighbour here.
pub fn cut(engine: &Engine, region: u64) -> io::Result<(SmState, Cut)> {
    // The region's applied state and its rows as of one commit: the table's rows as the
    // transaction sees them, with the overlay's rows of the same commits over them.
    let (txn, (state, record, fresh, fresh_dedup)) = engine.read_cut(|txn, rows| {
        let state = read_state(txn, region)?;
        let record = own_record(txn, region)?;
        let (start, end) = record_range(record.as_deref())?;
        let (lo, hi) = data_range(state.data_id, &start, &end);
        let fresh = super::overlay::range_rows(rows, &lo, &hi, false, usize::MAX);
        let fresh_dedup = engine.overlay().dedup_rows(state.session_id);
        Ok((state, record, fresh, fresh_dedup))
    })?;
    Ok((state.clone(), Cut { txn, fresh, fresh_dedup, state, record }))
}

/// Streams the snapshot of `cut` into a new file at `path` and fsyncs it (blocking: run it
/// off the async runtime).
pub fn write(cut: Cut, path: &Path) -> io::Result<()> {
    let Cut { txn, fresh, fresh_dedup, state, record } = cut;
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    w.write_all(MAGIC)?;
    write_item(&mut w, &SnapshotItem::Clock(state.clock))?;
    if let Some(record) = &record {
        write_item(&mut w, &SnapshotItem::Region(record.clone()))?;
    }
    let (mut pairs, mut dedup, mut sessions) = (0u64, 0u64, 0u64);
    let data = txn.open_table(tables::DATA).map_err(io_err)?;
    // Only the region's range: a region split off shares its parent's data id.
    let (start, end) = record_range(record.as_deref())?;
    let (lo, hi) = data_range(state.data_id, &start, &end);
    let rows = super::overlay::table_rows(&data, &lo, &hi, false)?;
    for row in super::overlay::merged(rows, fresh, false) {
        let (mut k, v) = row?;
        k.drain(..8);
        write_item(&mut w, &SnapshotItem::Pair(k, v))?;
        pairs += 1;
    }
    let sid = state.session_id;
    // The table's rows with the staged ones over them (a staged row replaces the table's:
    // a write applied again after a crash records its result again).
    let dd = txn.open_table(tables::DEDUP).map_err(io_err)?;
    let mut results = std::collections::BTreeMap::new();
    for row in dd.range((sid, 0u64, 0u64)..=(sid, u64::MAX, u64::MAX)).map_err(io_err)? {
        let (k, v) = row.map_err(io_err)?;
        let (_, s, seq) = k.value();
        results.insert((s, seq), v.value().to_vec());
    }
    results.extend(fresh_dedup.into_iter().map(|(s, seq, row)| ((s, seq), row)));
    for ((s, seq), row) in results {
        write_item(&mut w, &SnapshotItem::Dedup(s, seq, row))?;
        dedup += 1;
    }
    let ss = txn.open_table(tables::SESSIONS).map_err(io_err)?;
    for row in ss.range((sid, 0u64)..=(sid, u64::MAX)).map_err(io_err)? {
        let (k, v) = row.map_err(io_err)?;
        write_item(&mut w, &SnapshotItem::Session(k.value().1, v.value().to_vec()))?;
        sessions += 1;
    }
    write_item(&mut w, &SnapshotItem::End { pairs, dedup, sessions })?;
    w.into_inner().map_err(|e| e.into_error())?.sync_data()
}

/// Writes a snapshot of `region` ([`cut`] then [`write`], blocking), for tests. Returns the
/// state it reflects and the file.
#[cfg(test)]
pub fn build(engine: &Engine, region: u64) -> io::Result<(SmState, SnapshotFile)> {
    let (state, cut) = cut(engine, region)?;
    let file = SnapshotFile::adopt(new_path(engine, "built", region));
    write(cut, file.path())?;
    Ok((state, file))
}

/// Reads the records of a snapshot file in order.
#[derive(Debug)]
pub struct SnapshotReader {
    r: BufReader<File>,
    counts: (u64, u64, u64),
    ended: bool,
}

impl SnapshotReader {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path) -> io::Result<SnapshotReader> {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a Tessera snapshot (or an unknown version)"));
        }
        Ok(SnapshotReader { r, counts: (0, 0, 0), ended: false })
    }

    /// The next record, or `None` after the `End` record (which is checked against the
    /// records read, so a truncated or padded file is an error).
    pub fn next_item(&mut self) -> io::Result<Option<SnapshotItem>> {
        if self.ended {
            return Ok(None);
        }
        let truncated = |e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(io::ErrorKind::InvalidData, "snapshot file is truncated"),
            _ => e,
        };
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len).map_err(truncated)?;
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("snapshot record of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.r.read_exact(&mut buf).map_err(truncated)?;
        let item: SnapshotItem = decode(&buf)?;
        match &item {
            SnapshotItem::Pair(..) => self.counts.0 += 1,
            SnapshotItem::Dedup(..) => self.counts.1 += 1,
            SnapshotItem::Session(..) => self.counts.2 += 1,
            SnapshotItem::End { pairs, dedup, sessions } => {
                if (*pairs, *dedup, *sessions) != self.counts {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot record counts do not match"));
                }
                self.ended = true;
                let mut rest = [0u8; 1];
                if self.r.read(&mut rest)? != 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes after the end of the snapshot"));
                }
            }
            SnapshotItem::Clock(_) | SnapshotItem::Region(_) => {}
        }
        Ok(Some(item))
    }
}

/// Reads the whole file at `path`, checking every record and the final counts.
pub fn verify(path: &Path) -> io::Result<()> {
    let mut reader = SnapshotReader::open(path)?;
    while reader.next_item()?.is_some() {}
    if !reader.ended {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot file has no end record"));
    }
    Ok(())
}

/// Reads records until `max_bytes` of them (or the end); returns them with the reader.
fn read_step(mut reader: SnapshotReader, max_bytes: usize) -> io::Result<(SnapshotReader, Vec<SnapshotItem>)> {
    let mut items = Vec::new();
    let mut bytes = 0;
    while bytes < max_bytes {
        let Some(item) = reader.next_item()? else { break };
        bytes += match &item {
            SnapshotItem::Pair(k, v) => k.len() + v.len(),
            SnapshotItem::Dedup(_, _, r) | SnapshotItem::Session(_, r) | SnapshotItem::Region(r) => r.len() + 16,
            _ => 16,
        };
        items.push(item);
    }
    Ok((reader, items))
}

/// What an install produced: the region's new state, and its key and byte counts.
#[derive(Debug)]
pub struct Installed {
    /// The state now live.
    pub state: SmState,
    /// Keys in the region.
    pub keys: i64,
    /// Bytes of keys and values in the region.
    pub bytes: i64,
    /// The region's descriptor as of the snapshot (now also this replica's), if the
    /// snapshot carried one.
    pub descriptor: Option<tessera_wire::RegionDescriptor>,
    /// The region's merge state as of the snapshot.
    pub merging: Option<super::records::MergeState>,
}

fn node_meta_u64(txn: &WriteTransaction, name: &str) -> io::Result<Option<u64>> {
    let t = txn.open_table(tables::NODE_META).map_err(io_err)?;
    let v = t.get(name).map_err(io_err)?.map(|v| decode::<u64>(v.value())).transpose()?;
    Ok(v)
}

/// `node_meta` name of the data ids of installs in progress.
const STAGING: &str = "staging_data_ids";

fn id_list(txn: &WriteTransaction, name: &str) -> io::Result<Vec<u64>> {
    let t = txn.open_table(tables::NODE_META).map_err(io_err)?;
    let v = t.get(name).map_err(io_err)?.map(|v| decode::<Vec<u64>>(v.value())).transpose()?;
    Ok(v.unwrap_or_default())
}

fn gc_list(txn: &WriteTransaction) -> io::Result<Vec<u64>> {
    id_list(txn, "gc_data_ids")
}

/// A data id never used on this node (above every region id).
pub fn alloc_data_id(txn: &WriteTransaction) -> io::Result<u64> {
    let id = node_meta_u64(txn, "next_data_id")?.unwrap_or(FIRST_INSTALLED_DATA_ID);
    set_node_meta(txn, "next_data_id", &(id + 1))?;
    Ok(id)
}

/// At start-up: the installs a crash interrupted will never finish, so their data ids
/// become garbage. Run before [`spawn_garbage_collection`] and before any install starts.
pub async fn reclaim_abandoned_installs(engine: &Engine) -> io::Result<()> {
    job(engine, true, |txn| {
        let staging = id_list(txn, STAGING)?;
        if staging.is_empty() {
            return Ok(());
        }
        let mut gc = gc_list(txn)?;
        gc.extend(staging);
        set_node_meta(txn, "gc_data_ids", &gc)?;
        set_node_meta(txn, STAGING, &Vec::<u64>::new())
    })
    .await
}

fn set_node_meta<T: serde::Serialize>(txn: &WriteTransaction, name: &str, value: &T) -> io::Result<()> {
    let mut t = txn.open_table(tables::NODE_META).map_err(io_err)?;
    t.insert(name, encode(value)?.as_slice()).map_err(io_err)?;
    Ok(())
}

/// Runs `work` as one group-commit job and returns its output.
async fn job<T: Send + 'static>(
    engine: &Engine,
    durable: bool,
    work: impl FnOnce(&WriteTransaction) -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let out = Arc::new(std::sync::Mutex::new(None));
    let slot = out.clone();
    let work: super::engine::Work = Box::new(move |txn| {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(work(txn)?);
        Ok(())
    });
    if durable {
        engine.write(work).await?;
    } else {
        engine.write_lazy(work).await?;
    }
    let v = out.lock().unwrap_or_else(|p| p.into_inner()).take();
    v.ok_or_else(|| io::Error::other("storage job produced no output"))
}

/// Installs the snapshot in `file` as the state of `region` at `applied` with
/// `membership`, in bounded steps (see the module docs). Returns once the new state is
/// durable and live; the old rows are collected in the background.
pub async fn install(
    engine: &Engine,
    region: u64,
    file: &SnapshotFile,
    applied: Option<crate::raft::types::LogId>,
    membership: crate::raft::types::StoredMembership,
    range_version: Option<Arc<AtomicU64>>,
    abandon: Option<&AtomicBool>,
) -> io::Result<Installed> {
    file.written().await?;
    // A fresh data id, listed as an install in progress until it goes live: the collector
    // must not touch it meanwhile, and after a crash (or a failed install) it is garbage.
    let staging = job(engine, false, |txn| {
        let id = alloc_data_id(txn)?;
        let mut staging = id_list(txn, STAGING)?;
        staging.push(id);
        set_node_meta(txn, STAGING, &staging)?;
        Ok(id)
    })
    .await?;
    let result = install_into(engine, region, file, staging, applied, membership, range_version, abandon).await;
    if result.is_err() {
        // Abandoned: its rows are garbage now.
        let _ = job(engine, false, move |txn| {
            let mut staging_ids = id_list(txn, STAGING)?;
            staging_ids.retain(|id| *id != staging);
            set_node_meta(txn, STAGING, &staging_ids)?;
            let mut gc = gc_list(txn)?;
            gc.push(staging);
            set_node_meta(txn, "gc_data_ids", &gc)
        })
        .await;
        spawn_garbage_collection(engine.clone());
    }
    result
}

/// The body of [`install`], into the data id `staging`.
#[allow(clippy::too_many_arguments)]
async fn install_into(
    engine: &Engine,
    region: u64,
    file: &SnapshotFile,
    staging: u64,
    applied: Option<crate::raft::types::LogId>,
    membership: crate::raft::types::StoredMembership,
    range_version: Option<Arc<AtomicU64>>,
    abandon: Option<&AtomicBool>,
) -> io::Result<Installed> {
    // Checked before each step and before the switch: a replica being retired stops here
    // (its staging rows become garbage) rather than hold the retirement up.
    let abandoned = || -> io::Result<()> {
        match abandon.is_some_and(|a| a.load(Ordering::SeqCst)) {
            true => {
                Err(io::Error::other(format!("snapshot install of region {region} abandoned: its replica is retired")))
            }
            false => Ok(()),
        }
    };
    let path = file.path().to_path_buf();
    let mut reader =
        Some(tokio::task::spawn_blocking(move || SnapshotReader::open(&path)).await.map_err(io::Error::other)??);
    let (mut keys, mut bytes) = (0i64, 0i64);
    let mut clock = None;
    let mut region_record: Option<Vec<u8>> = None;
    loop {
        let r = reader.take().expect("reader is put back after each step");
        let (r, items) =
            tokio::task::spawn_blocking(move || read_step(r, INSTALL_STEP_BYTES)).await.map_err(io::Error::other)??;
        reader = Some(r);
        abandoned()?;
        if items.is_empty() {
            break;
        }
        for item in &items {
            match item {
                SnapshotItem::Pair(k, v) => {
                    keys += 1;
                    bytes += (k.len() + v.len()) as i64;
                }
                SnapshotItem::Clock(c) => clock = Some(*c),
                SnapshotItem::Region(r) => region_record = Some(r.clone()),
                _ => {}
            }
        }
        job(engine, false, move |txn| {
            let mut data = txn.open_table(tables::DATA).map_err(io_err)?;
            let mut dedup = txn.open_table(tables::DEDUP).map_err(io_err)?;
            let mut sessions = txn.open_table(tables::SESSIONS).map_err(io_err)?;
            for item in items {
                match item {
                    SnapshotItem::Pair(k, v) => {
                        data.insert(data_key(staging, &k).as_slice(), v.as_slice()).map_err(io_err)?;
                    }
                    SnapshotItem::Dedup(s, seq, rec) => {
                        dedup.insert((staging, s, seq), rec.as_slice()).map_err(io_err)?;
                    }
                    SnapshotItem::Session(s, rec) => {
                        sessions.insert((staging, s), rec.as_slice()).map_err(io_err)?;
                    }
                    SnapshotItem::Clock(_) | SnapshotItem::End { .. } | SnapshotItem::Region(_) => {}
                }
            }
            Ok(())
        })
        .await?;
    }
    let clock = clock.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "snapshot without a clock"))?;
    // One small durable commit makes the new state live and the old one garbage.
    let state = SmState { applied, membership, clock, data_id: staging, session_id: staging };
    let live = state.clone();
    let record = region_record.as_deref().map(decode::<RegionRecord>).transpose()?;
    let descriptor = record.as_ref().and_then(RegionRecord::to_descriptor);
    let merging = record.as_ref().and_then(RegionRecord::merging);
    let new_version = descriptor.as_ref().map(|d| d.epoch.version);
    job(engine, true, move |txn| {
        // Before the commit that switches the rows (see `RegionShared::range_version`): a
        // read admitted for the old range must not read the new rows. (The switch itself is
        // atomic: a read sees the old rows or the new ones.)
        if let (Some(v), Some(new)) = (&range_version, new_version) {
            v.store(new, Ordering::SeqCst);
        }
        let old = read_state_mut(txn, region)?;
        let mut regions = txn.open_table(tables::REGIONS).map_err(io_err)?;
        let old_record = regions.get(region).map_err(io_err)?.map(|r| r.value().to_vec());
        if let Some(record) = region_record {
            regions.insert(region, record.as_slice()).map_err(io_err)?;
        }
        drop(regions);
        let mut meta = txn.open_table(tables::SM_META).map_err(io_err)?;
        meta.insert(region, encode(&SmMetaRecord::from_state(&live))?.as_slice()).map_err(io_err)?;
        drop(meta);
        let mut ids = txn.open_table(tables::DATA_IDS).map_err(io_err)?;
        ids.insert(region, staging).map_err(io_err)?;
        drop(ids);
        txn.open_table(tables::SESSION_IDS).map_err(io_err)?.remove(region).map_err(io_err)?;
        let mut staging_ids = id_list(txn, STAGING)?;
        staging_ids.retain(|id| *id != staging);
        set_node_meta(txn, STAGING, &staging_ids)?;
        // The replaced rows: the old range under the old data id (other regions may share
        // it), and the old session rows.
        queue_garbage(txn, garbage_of(&old, old_record.as_deref())?)
    })
    .await?;
    spawn_garbage_collection(engine.clone());
    Ok(Installed { state, keys, bytes, descriptor, merging })
}

/// Retires `region`'s replica inside `txn`: its state-machine meta and data-id entry go,
/// its record becomes `tombstone`, and its rows (data, dedup, sessions) are listed as
/// garbage for [`collect_garbage`], which deletes them in bounded steps.
pub fn retire_region(txn: &WriteTransaction, region: u64, tombstone: &[u8]) -> io::Result<()> {
    let state = read_state_mut(txn, region)?;
    txn.open_table(tables::SM_META).map_err(io_err)?.remove(region).map_err(io_err)?;
    txn.open_table(tables::DATA_IDS).map_err(io_err)?.remove(region).map_err(io_err)?;
    txn.open_table(tables::SESSION_IDS).map_err(io_err)?.remove(region).map_err(io_err)?;
    let mut regions = txn.open_table(tables::REGIONS).map_err(io_err)?;
    let record = regions.get(region).map_err(io_err)?.map(|r| r.value().to_vec());
    regions.insert(region, tombstone).map_err(io_err)?;
    drop(regions);
    queue_garbage(txn, garbage_of(&state, record.as_deref())?)
}

/// Retires the replica of `region`, merged into its left neighbour `target`, inside `txn`:
/// as [`retire_region`], except that its data rows are garbage only if they are not the
/// target's (the target applied the commit with rows under the same data id, so they are
/// its own now; or it copied them; or it installed a snapshot under a fresh id).
pub fn retire_merged_region(txn: &WriteTransaction, region: u64, target: u64, tombstone: &[u8]) -> io::Result<()> {
    let state = read_state_mut(txn, region)?;
    let target_data_id = read_state_mut(txn, target)?.data_id;
    let mut regions = txn.open_table(tables::REGIONS).map_err(io_err)?;
    let record = regions.get(region).map_err(io_err)?.map(|r| r.value().to_vec());
    regions.insert(region, tombstone).map_err(io_err)?;
    drop(regions);
    txn.open_table(tables::SM_META).map_err(io_err)?.remove(region).map_err(io_err)?;
    txn.open_table(tables::DATA_IDS).map_err(io_err)?.remove(region).map_err(io_err)?;
    txn.open_table(tables::SESSION_IDS).map_err(io_err)?.remove(region).map_err(io_err)?;
    let mut garbage = vec![GcItem::Sessions { session_id: state.session_id }];
    if state.data_id != target_data_id {
        let (start, end) = record_range(record.as_deref())?;
        garbage.push(GcItem::Rows { data_id: state.data_id, start, end });
    }
    queue_garbage(txn, garbage)
}

/// Starts [`collect_garbage`] in the background (logging a failure).
pub fn spawn_garbage_collection(engine: Engine) {
    tokio::spawn(async move {
        if let Err(e) = collect_garbage(&engine).await {
            tracing::warn!(error = %e, "collecting replaced snapshot rows failed");
        }
    });
}

/// Deletes the rows of every data id listed as garbage, at most [`GC_STEP_ROWS`] rows per
/// group-commit job, until none is left. Safe to run concurrently with itself and to
/// interrupt: each step is idempotent.
pub async fn collect_garbage(engine: &Engine) -> io::Result<()> {
    loop {
        let more = job(engine, false, |txn| {
            let mut gc = gc_list(txn)?;
            let Some(&id) = gc.first() else { return collect_item_step(txn) };
            let mut left = GC_STEP_ROWS;
            {
                let mut data = txn.open_table(tables::DATA).map_err(io_err)?;
                let (lo, hi) = data_range(id, b"", b"");
                for row in data.extract_from_if(lo.as_slice()..hi.as_slice(), |_, _| true).map_err(io_err)?.take(left) {
                    row.map_err(io_err)?;
                    left -= 1;
                }
            }
            {
                let mut dedup = txn.open_table(tables::DEDUP).map_err(io_err)?;
                let range = (id, 0u64, 0u64)..=(id, u64::MAX, u64::MAX);
                for row in dedup.extract_from_if(range, |_, _| true).map_err(io_err)?.take(left) {
                    row.map_err(io_err)?;
                    left -= 1;
                }
            }
            {
                let mut sessions = txn.open_table(tables::SESSIONS).map_err(io_err)?;
                for row in
                    sessions.extract_from_if((id, 0u64)..=(id, u64::MAX), |_, _| true).map_err(io_err)?.take(left)
                {
                    row.map_err(io_err)?;
                    left -= 1;
                }
            }
            if left > 0 {
                // Fewer rows than a step: this id is done.
                gc.retain(|g| *g != id);
                set_node_meta(txn, "gc_data_ids", &gc)?;
            }
            Ok(true)
        })
        .await?;
        if !more {
            return Ok(());
        }
    }
}

/// One bounded step of collecting the first [`GcItem`]; false if there is none.
fn collect_item_step(txn: &WriteTransaction) -> io::Result<bool> {
    let t = txn.open_table(tables::NODE_META).map_err(io_err)?;
    let mut items: Vec<GcItem> =
        t.get(GC_ITEMS).map_err(io_err)?.map(|v| decode(v.value())).transpose()?.unwrap_or_default();
    drop(t);
    let Some(item) = items.first().cloned() else { return Ok(false) };
    let mut left = GC_STEP_ROWS;
    match &item {
        GcItem::Rows { data_id, start, end } => {
            let mut data = txn.open_table(tables::DATA).map_err(io_err)?;
            let (lo, hi) = data_range(*data_id, start, end);
            for row in data.extract_from_if(lo.as_slice()..hi.as_slice(), |_, _| true).map_err(io_err)?.take(left) {
                row.map_err(io_err)?;
                left -= 1;
            }
        }
        GcItem::Sessions { session_id: id } => {
            let id = *id;
            let mut dedup = txn.open_table(tables::DEDUP).map_err(io_err)?;
            for row in dedup
                .extract_from_if((id, 0u64, 0u64)..=(id, u64::MAX, u64::MAX), |_, _| true)
                .map_err(io_err)?
                .take(left)
            {
                row.map_err(io_err)?;
                left -= 1;
            }
            drop(dedup);
            let mut sessions = txn.open_table(tables::SESSIONS).map_err(io_err)?;
            for row in sessions.extract_from_if((id, 0u64)..=(id, u64::MAX), |_, _| true).map_err(io_err)?.take(left) {
                row.map_err(io_err)?;
                left -= 1;
            }
        }
    }
    if left > 0 {
        // Fewer rows than a step: this item is done.
        items.retain(|i| *i != item);
        set_node_meta(txn, GC_ITEMS, &items)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::StoredMembership;
    use crate::storage::records::SessionClock;

    async fn fill(engine: &Engine, region: u64, n: u32) {
        engine
            .write(Box::new(move |txn| {
                let mut data = txn.open_table(tables::DATA).map_err(io_err)?;
                for i in 0..n {
                    data.insert(data_key(region, format!("k{i:06}").as_bytes()).as_slice(), vec![7u8; 100].as_slice())
                        .map_err(io_err)?;
                }
                let mut dedup = txn.open_table(tables::DEDUP).map_err(io_err)?;
                dedup.insert((region, 9, 1), [1u8, 2].as_slice()).map_err(io_err)?;
                Ok(())
            }))
            .await
            .unwrap();
    }

    fn rows(engine: &Engine, id: u64) -> (usize, usize) {
        let txn = engine.read().unwrap();
        let data = txn.open_table(tables::DATA).unwrap();
        let (lo, hi) = data_range(id, b"", b"");
        let n = data.range(lo.as_slice()..hi.as_slice()).unwrap().count();
        let dedup = txn.open_table(tables::DEDUP).unwrap();
        let d = dedup.range((id, 0u64, 0u64)..=(id, u64::MAX, u64::MAX)).unwrap().count();
        (n, d)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_built_snapshot_installs_elsewhere_in_steps_and_replaces_the_old_state() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let leader = Engine::open(&a.path().join("db.redb")).unwrap();
        let follower = Engine::open(&b.path().join("db.redb")).unwrap();
        // 60,000 pairs of 100 bytes: about 7 MiB, so the install takes several steps.
        fill(&leader, 5, 60_000).await;
        // The follower has old, different state for the region.
        fill(&follower, 5, 10).await;
        let l = leader.clone();
        let (_, file) = tokio::task::spawn_blocking(move || build(&l, 5)).await.unwrap().unwrap();
        let commits_before = follower.stats().jobs.load(Ordering::Relaxed);
        let installed = install(&follower, 5, &file, None, StoredMembership::default(), None, None).await.unwrap();
        assert!(follower.stats().jobs.load(Ordering::Relaxed) - commits_before >= 3, "installed in several jobs");
        assert_eq!(installed.keys, 60_000);
        assert!(installed.state.data_id >= FIRST_INSTALLED_DATA_ID);
        assert_eq!(rows(&follower, installed.state.data_id), (60_000, 1));
        let txn = follower.read().unwrap();
        assert_eq!(read_state(&txn, 5).unwrap().data_id, installed.state.data_id, "the new rows are live");
        drop(txn);
        collect_garbage(&follower).await.unwrap();
        assert_eq!(rows(&follower, 5), (0, 0), "the old rows are collected");
        // Snapshot files are removed with their last handle.
        let path = file.path().to_path_buf();
        drop(file);
        assert!(!path.exists());
    }

    /// Regions 5 `[-inf, k000500)` and 6 `[k000500, +inf)` share data id 5, as after a
    /// split (6 keeps its sessions under its own id). Snapshots, installs and destruction of
    /// one never touch the other's rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn regions_sharing_a_data_id_keep_each_others_rows_through_installs_and_destruction() {
        use tessera_wire::{RegionDescriptor, RegionEpoch, RegionId};
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        fill(&engine, 5, 1000).await;
        let desc = |id: u64, start: &[u8], end: &[u8]| RegionDescriptor {
            id: RegionId(id),
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch: RegionEpoch { conf_ver: 6, version: 2 },
            peers: vec![],
        };
        let (left, right) = (desc(5, b"", b"k000500"), desc(6, b"k000500", b""));
        job(&engine, true, move |txn| {
            let mut regions = txn.open_table(tables::REGIONS).map_err(io_err)?;
            for d in [&left, &right] {
                regions.insert(d.id.0, encode(&RegionRecord::from_descriptor(d))?.as_slice()).map_err(io_err)?;
            }
            txn.open_table(tables::DATA_IDS).map_err(io_err)?.insert(6, 5).map_err(io_err)?;
            txn.open_table(tables::SESSION_IDS).map_err(io_err)?.insert(6, 6).map_err(io_err)?;
            txn.open_table(tables::DEDUP).map_err(io_err)?.insert((6, 9, 2), [3u8].as_slice()).map_err(io_err)?;
            Ok(())
        })
        .await
        .unwrap();
        // A snapshot of region 6 holds its half and its own session rows only.
        let e = engine.clone();
        let (state, file) = tokio::task::spawn_blocking(move || build(&e, 6)).await.unwrap().unwrap();
        assert_eq!((state.data_id, state.session_id), (5, 6));
        let mut reader = SnapshotReader::open(file.path()).unwrap();
        let (mut pairs, mut dedup) = (0, 0);
        while let Some(item) = reader.next_item().unwrap() {
            match item {
                SnapshotItem::Pair(k, _) => {
                    assert!(k.as_slice() >= b"k000500".as_slice());
                    pairs += 1;
                }
                SnapshotItem::Dedup(..) => dedup += 1,
                _ => {}
            }
        }
        assert_eq!((pairs, dedup), (500, 1));
        // Region 6 installs it (as a lagging replica would): its old half under id 5 and its
        // old session rows become garbage; region 5's rows and sessions stay.
        let installed = install(&engine, 6, &file, None, StoredMembership::default(), None, None).await.unwrap();
        collect_garbage(&engine).await.unwrap();
        assert_eq!(rows(&engine, 5), (500, 1), "region 5 keeps its half and its session rows");
        assert_eq!(rows(&engine, installed.state.data_id), (500, 1));
        assert_eq!(rows(&engine, 6), (0, 0), "region 6's old session rows are collected");
        // Region 5 is destroyed: only its own rows go.
        job(&engine, true, |txn| retire_region(txn, 5, b"tombstone")).await.unwrap();
        collect_garbage(&engine).await.unwrap();
        assert_eq!(rows(&engine, 5), (0, 0));
        assert_eq!(rows(&engine, installed.state.data_id), (500, 1), "region 6 keeps every row");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_snapshot_is_refused_and_leaves_the_old_state() {
        let a = tempfile::tempdir().unwrap();
        let engine = Engine::open(&a.path().join("db.redb")).unwrap();
        fill(&engine, 5, 1000).await;
        let e = engine.clone();
        let (_, file) = tokio::task::spawn_blocking(move || build(&e, 5)).await.unwrap().unwrap();
        let len = std::fs::metadata(file.path()).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(file.path()).unwrap();
        f.set_len(len - 10).unwrap();
        let r = install(&engine, 5, &file, None, StoredMembership::default(), None, None).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let txn = engine.read().unwrap();
        assert_eq!(read_state(&txn, 5).unwrap().data_id, 5, "still on the old rows");
        drop(txn);
        assert_eq!(rows(&engine, 5).0, 1000);
        // The abandoned staging rows are garbage.
        collect_garbage(&engine).await.unwrap();
        assert_eq!(rows(&engine, FIRST_INSTALLED_DATA_ID), (0, 0));
        assert_eq!(rows(&engine, 5).0, 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_collector_never_touches_an_install_in_progress_and_reclaims_it_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
        // An install in progress has written rows under its staging id; a replaced region's
        // rows are garbage.
        let staging = job(&engine, false, |txn| {
            let id = alloc_data_id(txn)?;
            set_node_meta(txn, STAGING, &vec![id])?;
            set_node_meta(txn, "gc_data_ids", &vec![9u64])?;
            Ok(id)
        })
        .await
        .unwrap();
        fill(&engine, staging, 100).await;
        fill(&engine, 9, 100).await;
        collect_garbage(&engine).await.unwrap();
        assert_eq!(rows(&engine, 9), (0, 0), "garbage is collected");
        assert_eq!(rows(&engine, staging).0, 100, "the install in progress is left alone");
        // After a restart, the interrupted install's rows are garbage.
        reclaim_abandoned_installs(&engine).await.unwrap();
        collect_garbage(&engine).await.unwrap();
        assert_eq!(rows(&engine, staging), (0, 0));
    }

    #[tokio::test]
    async fn a_file_written_in_the_background_is_ready_or_failed_only_once_its_write_reports() {
        let dir = tempfile::tempdir().unwrap();
        let (file, done) = SnapshotFile::pending(dir.path().join("a.snap"));
        let waiting = tokio::spawn({
            let file = file.clone();
            async move { file.written().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished() && !file.failed(), "not written yet");
        done.finish(&Ok(()));
        waiting.await.unwrap().unwrap();
        assert!(!file.failed());

        let (file, done) = SnapshotFile::pending(dir.path().join("b.snap"));
        done.finish(&Err(io::Error::other("disk full")));
        assert!(file.failed());
        assert!(file.written().await.unwrap_err().to_string().contains("disk full"));

        let (file, done) = SnapshotFile::pending(dir.path().join("c.snap"));
        drop(done);
        assert!(file.failed(), "a write that never reported failed");
        assert!(file.written().await.is_err());
        assert!(SnapshotFile::adopt(dir.path().join("d.snap")).written().await.is_ok(), "an adopted file is complete");
    }

    #[test]
    fn records_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.snap");
        let mut w = BufWriter::new(File::create(&path).unwrap());
        w.write_all(MAGIC).unwrap();
        let items = vec![
            SnapshotItem::Clock(SessionClock { clock_ms: 5, last_sweep_ms: 1 }),
            SnapshotItem::Pair(b"a".to_vec(), b"1".to_vec()),
            SnapshotItem::Session(3, vec![9]),
            SnapshotItem::End { pairs: 1, dedup: 0, sessions: 1 },
        ];
        for i in &items {
            write_item(&mut w, i).unwrap();
        }
        drop(w);
        let mut r = SnapshotReader::open(&path).unwrap();
        let mut back = Vec::new();
        while let Some(i) = r.next_item().unwrap() {
            back.push(i);
        }
        assert_eq!(back, items);
    }
}
