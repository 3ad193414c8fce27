//! openraft state machine for one region.
//!
//! `apply` runs inside the engine's group commit: the data changes, the exactly-once dedup
//! rows and the `applied` log id are written in one transaction, and responses are sent
//! only after it is durable.
//!
//! Exactly-once: a write carrying (session, seq) is applied once; its result is kept in
//! the replicated dedup table, and a retry of the same (session, seq) returns the stored
//! result without re-executing. Rows are evicted deterministically (same on every replica)
//! once they are [`DEDUP_WINDOW`] log entries old, which bounds the table; a client retries
//! only within its request deadline, far shorter than that window at any realistic rate.

use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::ReadableTable;
use tessera_wire::{RegionDescriptor, RegionId};

use super::engine::{io_err, Engine};
use super::records::{decode, encode, DedupRecord, SmMetaRecord, SnapshotRecord};
use super::tables::{self, data_key, data_range};
use crate::raft::types::{
    ApplyResult, LogCommand, LogId, LogOp, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// Key-value pairs, in scan order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
/// The last snapshot built or installed: its metadata and bytes.
type CurrentSnapshot = Arc<Mutex<Option<(SnapshotMeta, Vec<u8>)>>>;
/// What one apply batch produced: results in entry order, and the change in (keys, bytes).
type ApplyOutput = Arc<Mutex<(Vec<ApplyResult>, i64, i64)>>;

/// Dedup rows older than this many log entries are evicted.
pub const DEDUP_WINDOW: u64 = 200_000;

/// Region state shared between the state machine, the request path and heartbeats.
#[derive(Debug)]
pub struct RegionShared {
    /// Region id.
    pub region_id: RegionId,
    /// The region's current shape.
    pub descriptor: RwLock<RegionDescriptor>,
    /// Approximate number of keys.
    pub approx_keys: AtomicI64,
    /// Approximate bytes of keys and values.
    pub approx_bytes: AtomicI64,
}

impl RegionShared {
    /// New shared state for `descriptor`.
    pub fn new(descriptor: RegionDescriptor) -> Arc<Self> {
        Arc::new(RegionShared {
            region_id: descriptor.id,
            descriptor: RwLock::new(descriptor),
            approx_keys: AtomicI64::new(0),
            approx_bytes: AtomicI64::new(0),
        })
    }

    /// A copy of the current descriptor.
    pub fn descriptor(&self) -> RegionDescriptor {
        self.descriptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The state machine of one region.
#[derive(Debug)]
pub struct RegionStateMachine {
    region: u64,
    engine: Engine,
    applied: Option<LogId>,
    membership: StoredMembership,
    current: CurrentSnapshot,
    shared: Arc<RegionShared>,
}

impl RegionStateMachine {
    /// Loads the region's applied state and counts its keys.
    pub fn open(engine: &Engine, shared: Arc<RegionShared>) -> io::Result<RegionStateMachine> {
        let region = shared.region_id.0;
        let txn = engine.read()?;
        let (applied, membership) = read_sm_meta(&txn, region)?;
        let data = txn.open_table(tables::DATA).map_err(io_err)?;
        let (lo, hi) = data_range(region, b"", b"");
        let (mut keys, mut bytes) = (0i64, 0i64);
        for row in data.range(lo.as_slice()..hi.as_slice()).map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            keys += 1;
            bytes += (k.value().len() - 8 + v.value().len()) as i64;
        }
        shared.approx_keys.store(keys, Ordering::Relaxed);
        shared.approx_bytes.store(bytes, Ordering::Relaxed);
        Ok(RegionStateMachine {
            region,
            engine: engine.clone(),
            applied,
            membership,
            current: Default::default(),
            shared,
        })
    }
}

/// The applied log id and membership recorded for `region` (none for a new region).
fn read_sm_meta(txn: &redb::ReadTransaction, region: u64) -> io::Result<(Option<LogId>, StoredMembership)> {
    let meta = txn.open_table(tables::SM_META).map_err(io_err)?;
    Ok(match meta.get(region).map_err(io_err)? {
        Some(v) => match decode::<SmMetaRecord>(v.value())? {
            SmMetaRecord::V1 { applied, membership } => (applied, membership),
        },
        None => (None, StoredMembership::default()),
    })
}

/// Reads one key of `region` from the applied state.
pub fn read_get(engine: &Engine, region: u64, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let txn = engine.read()?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    Ok(t.get(data_key(region, key).as_slice()).map_err(io_err)?.map(|v| v.value().to_vec()))
}

/// Reads keys of `region` from one consistent snapshot, in order, for a prefix of `keys`:
/// it stops once the values read reach `max_bytes` (always answering at least one key).
pub fn read_batch(
    engine: &Engine,
    region: u64,
    keys: &[Vec<u8>],
    max_bytes: usize,
) -> io::Result<Vec<Option<Vec<u8>>>> {
    let txn = engine.read()?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    let mut out = Vec::with_capacity(keys.len());
    let mut bytes = 0;
    for k in keys {
        if !out.is_empty() && bytes >= max_bytes {
            break;
        }
        let v = t.get(data_key(region, k).as_slice()).map_err(io_err)?.map(|v| v.value().to_vec());
        bytes += k.len() + v.as_ref().map_or(0, Vec::len);
        out.push(v);
    }
    Ok(out)
}

/// A page of the scan of `[start, end)` of `region`; returns the pairs and, if the page
/// was cut by `limit` pairs or by `max_bytes` of keys and values (a page always holds at
/// least one pair), where to resume (the next key for forward scans; the exclusive end for
/// reverse scans).
pub fn read_scan(
    engine: &Engine,
    region: u64,
    start: &[u8],
    end: &[u8],
    limit: usize,
    max_bytes: usize,
    reverse: bool,
) -> io::Result<(Pairs, Option<Vec<u8>>)> {
    let txn = engine.read()?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    let (lo, hi) = data_range(region, start, end);
    let range = t.range(lo.as_slice()..hi.as_slice()).map_err(io_err)?;
    let rows: Box<dyn Iterator<Item = _>> = if reverse { Box::new(range.rev()) } else { Box::new(range) };
    let mut out = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let (k, v) = row.map_err(io_err)?;
        let key = k.value()[8..].to_vec();
        if out.len() >= limit || (!out.is_empty() && bytes >= max_bytes) {
            // Where the next page starts: this key for a forward scan; for a reverse scan
            // the exclusive end just past it.
            let resume = if reverse { [key.as_slice(), &[0]].concat() } else { key };
            return Ok((out, Some(resume)));
        }
        bytes += key.len() + v.value().len();
        out.push((key, v.value().to_vec()));
    }
    Ok((out, None))
}

type DataTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// Executes one operation against the data table. Returns the result and the change in
/// (keys, bytes).
fn execute(data: &mut DataTable<'_>, region: u64, op: &LogOp) -> io::Result<(ApplyResult, i64, i64)> {
    let get = |data: &DataTable<'_>, key: &[u8]| -> io::Result<Option<Vec<u8>>> {
        Ok(data.get(data_key(region, key).as_slice()).map_err(io_err)?.map(|v| v.value().to_vec()))
    };
    let put = |data: &mut DataTable<'_>, key: &[u8], value: &[u8]| -> io::Result<(i64, i64)> {
        let old = data.insert(data_key(region, key).as_slice(), value).map_err(io_err)?.map(|v| v.value().len());
        Ok(match old {
            Some(old_len) => (0, value.len() as i64 - old_len as i64),
            None => (1, (key.len() + value.len()) as i64),
        })
    };
    let del = |data: &mut DataTable<'_>, key: &[u8]| -> io::Result<Option<usize>> {
        Ok(data.remove(data_key(region, key).as_slice()).map_err(io_err)?.map(|v| v.value().len()))
    };
    Ok(match op {
        LogOp::Put(k, v) => {
            let (dk, db) = put(data, k, v)?;
            (ApplyResult::Done, dk, db)
        }
        LogOp::Delete(k) => match del(data, k)? {
            Some(len) => (ApplyResult::Deleted(true), -1, -((k.len() + len) as i64)),
            None => (ApplyResult::Deleted(false), 0, 0),
        },
        LogOp::Append(k, v) => {
            let mut cur = get(data, k)?.unwrap_or_default();
            cur.extend_from_slice(v);
            let (dk, db) = put(data, k, &cur)?;
            (ApplyResult::Appended(cur.len() as u64), dk, db)
        }
        LogOp::AppendCapped { key, value, max_len } => {
            let mut cur = get(data, key)?.unwrap_or_default();
            let len = (cur.len() + value.len()) as u64;
            if len > *max_len {
                return Ok((ApplyResult::ValueTooLarge { len, max: *max_len }, 0, 0));
            }
            cur.extend_from_slice(value);
            let (dk, db) = put(data, key, &cur)?;
            (ApplyResult::Appended(len), dk, db)
        }
        LogOp::Cas { key, expected, new } => {
            let cur = get(data, key)?;
            if cur == *expected {
                let (dk, db) = match new {
                    Some(v) => put(data, key, v)?,
                    None => match del(data, key)? {
                        Some(len) => (-1, -((key.len() + len) as i64)),
                        None => (0, 0),
                    },
                };
                (ApplyResult::Cas(true, cur), dk, db)
            } else {
                (ApplyResult::Cas(false, cur), 0, 0)
            }
        }
        LogOp::BatchPut(pairs) => {
            let (mut tk, mut tb) = (0, 0);
            for (k, v) in pairs {
                let (dk, db) = put(data, k, v)?;
                tk += dk;
                tb += db;
            }
            (ApplyResult::Done, tk, tb)
        }
    })
}

impl RaftStateMachine<TypeConfig> for RegionStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = RegionSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let region = self.region;
        let mut membership = self.membership.clone();
        let mut applied = self.applied;
        let mut work_items = Vec::with_capacity(batch.len());
        let mut responders = Vec::with_capacity(batch.len());
        for (entry, responder) in batch {
            let log_id = entry.log_id();
            applied = Some(log_id);
            match entry.payload {
                EntryPayload::Blank => work_items.push((log_id.index(), None)),
                EntryPayload::Normal(cmd) => work_items.push((log_id.index(), Some(cmd))),
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(log_id), m);
                    work_items.push((log_id.index(), None));
                }
            }
            responders.push(responder);
        }
        let meta_bytes = encode(&SmMetaRecord::V1 { applied, membership: membership.clone() })?;
        let results: ApplyOutput = Default::default();
        let out = results.clone();
        self.engine
            .write_lazy(Box::new(move |txn| {
                let mut data = txn.open_table(tables::DATA).map_err(io_err)?;
                let mut dedup = txn.open_table(tables::DEDUP).map_err(io_err)?;
                let mut dedup_index = txn.open_table(tables::DEDUP_INDEX).map_err(io_err)?;
                let mut res = Vec::with_capacity(work_items.len());
                let (mut dk, mut db) = (0, 0);
                let mut last_index = 0;
                for (index, cmd) in work_items {
                    last_index = index;
                    let Some(LogCommand::WriteV1 { session, op }) = cmd else {
                        res.push(ApplyResult::None);
                        continue;
                    };
                    if let Some((s, seq)) = session {
                        if let Some(prev) = dedup.get((region, s, seq)).map_err(io_err)? {
                            let DedupRecord::V1 { result, .. } = decode::<DedupRecord>(prev.value())?;
                            res.push(result);
                            continue;
                        }
                    }
                    let (r, k, b) = execute(&mut data, region, &op)?;
                    dk += k;
                    db += b;
                    if let Some((s, seq)) = session {
                        let rec = encode(&DedupRecord::V1 { index, result: r.clone() })?;
                        dedup.insert((region, s, seq), rec.as_slice()).map_err(io_err)?;
                        dedup_index.insert((region, index), (s, seq)).map_err(io_err)?;
                    }
                    res.push(r);
                }
                if last_index > DEDUP_WINDOW {
                    let horizon = last_index - DEDUP_WINDOW;
                    let mut old = Vec::new();
                    for row in
                        dedup_index.extract_from_if((region, 0u64)..(region, horizon), |_, _| true).map_err(io_err)?
                    {
                        let (_, v) = row.map_err(io_err)?;
                        old.push(v.value());
                    }
                    for (s, seq) in old {
                        dedup.remove((region, s, seq)).map_err(io_err)?;
                    }
                }
                let mut meta = txn.open_table(tables::SM_META).map_err(io_err)?;
                meta.insert(region, meta_bytes.as_slice()).map_err(io_err)?;
                *out.lock().unwrap_or_else(|p| p.into_inner()) = (res, dk, db);
                Ok(())
            }))
            .await?;
        self.applied = applied;
        self.membership = membership;
        let (res, dk, db) = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
        self.shared.approx_keys.fetch_add(dk, Ordering::Relaxed);
        self.shared.approx_bytes.fetch_add(db, Ordering::Relaxed);
        for (responder, r) in responders.into_iter().zip(res) {
            if let Some(responder) = responder {
                responder.send(r);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        RegionSnapshotBuilder { region: self.region, engine: self.engine.clone(), current: self.current.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let SnapshotRecord::V1 { pairs, dedup } = decode::<SnapshotRecord>(&bytes)?;
        let region = self.region;
        let meta_bytes =
            encode(&SmMetaRecord::V1 { applied: meta.last_log_id, membership: meta.last_membership.clone() })?;
        let (keys, total) = (pairs.len() as i64, pairs.iter().map(|(k, v)| (k.len() + v.len()) as i64).sum::<i64>());
        self.engine
            .write(Box::new(move |txn| {
                let mut data = txn.open_table(tables::DATA).map_err(io_err)?;
                let (lo, hi) = data_range(region, b"", b"");
                data.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false).map_err(io_err)?;
                for (k, v) in &pairs {
                    data.insert(data_key(region, k).as_slice(), v.as_slice()).map_err(io_err)?;
                }
                let mut dd = txn.open_table(tables::DEDUP).map_err(io_err)?;
                dd.retain_in((region, 0u64, 0u64)..=(region, u64::MAX, u64::MAX), |_, _| false).map_err(io_err)?;
                let mut di = txn.open_table(tables::DEDUP_INDEX).map_err(io_err)?;
                di.retain_in((region, 0u64)..=(region, u64::MAX), |_, _| false).map_err(io_err)?;
                for (s, seq, rec) in &dedup {
                    let DedupRecord::V1 { index, .. } = decode::<DedupRecord>(rec)?;
                    dd.insert((region, *s, *seq), rec.as_slice()).map_err(io_err)?;
                    di.insert((region, index), (*s, *seq)).map_err(io_err)?;
                }
                let mut m = txn.open_table(tables::SM_META).map_err(io_err)?;
                m.insert(region, meta_bytes.as_slice()).map_err(io_err)?;
                Ok(())
            }))
            .await?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.shared.approx_keys.store(keys, Ordering::Relaxed);
        self.shared.approx_bytes.store(total, Ordering::Relaxed);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: std::io::Cursor::new(data.clone()) }))
    }
}

/// Builds a snapshot from one consistent read transaction, concurrently with applies.
#[derive(Debug)]
pub struct RegionSnapshotBuilder {
    region: u64,
    engine: Engine,
    current: CurrentSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for RegionSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let region = self.region;
        let txn = self.engine.read()?;
        let (applied, membership) = read_sm_meta(&txn, region)?;
        let data = txn.open_table(tables::DATA).map_err(io_err)?;
        let (lo, hi) = data_range(region, b"", b"");
        let mut pairs = Vec::new();
        for row in data.range(lo.as_slice()..hi.as_slice()).map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            pairs.push((k.value()[8..].to_vec(), v.value().to_vec()));
        }
        let dd = txn.open_table(tables::DEDUP).map_err(io_err)?;
        let mut dedup = Vec::new();
        for row in dd.range((region, 0u64, 0u64)..=(region, u64::MAX, u64::MAX)).map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            let (_, s, seq) = k.value();
            dedup.push((s, seq, v.value().to_vec()));
        }
        let bytes = encode(&SnapshotRecord::V1 { pairs, dedup })?;
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: std::io::Cursor::new(bytes) })
    }
}
