//! openraft state machine for one region.
//!
//! `apply` runs inside the engine's group commit: the data changes, the exactly-once rows
//! (`storage::sessions`) and the `applied` log id are written in one transaction, and
//! responses are sent once it is committed (it becomes durable with the next durable
//! commit; the Raft log it replays from already is).
//!
//! A region's rows live under its *data id* (`SmState::data_id`): readers look it up in the
//! same read transaction as the rows, so a snapshot install (`storage::snapshot`), which
//! writes the new state under a fresh id and then switches, is never seen half done.

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
use super::records::{encode, SmMetaRecord, SmState};
use super::sessions::{Admit, Sessions};
use super::snapshot::{self, SnapshotFile};
use super::tables::{self, data_key, data_range};
use crate::raft::types::{
    ApplyResult, LogCommand, LogOp, SessionRef, Snapshot, SnapshotData, SnapshotMeta, TypeConfig,
};

/// Key-value pairs, in scan order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
/// The last snapshot built or installed: its metadata and file.
type CurrentSnapshot = Arc<Mutex<Option<(SnapshotMeta, SnapshotFile)>>>;
/// What one apply batch produced: results in entry order, the change in (keys, bytes), and
/// the state after it.
type ApplyOutput = Arc<Mutex<Option<(Vec<ApplyResult>, i64, i64, SmState)>>>;

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
    /// Applied log id, membership, session clock and data id, as of the last apply.
    state: SmState,
    current: CurrentSnapshot,
    shared: Arc<RegionShared>,
}

impl RegionStateMachine {
    /// Loads the region's applied state and counts its keys.
    pub fn open(engine: &Engine, shared: Arc<RegionShared>) -> io::Result<RegionStateMachine> {
        let region = shared.region_id.0;
        let txn = engine.read()?;
        let state = snapshot::read_state(&txn, region)?;
        let data = txn.open_table(tables::DATA).map_err(io_err)?;
        let (lo, hi) = data_range(state.data_id, b"", b"");
        let (mut keys, mut bytes) = (0i64, 0i64);
        for row in data.range(lo.as_slice()..hi.as_slice()).map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            keys += 1;
            bytes += (k.value().len() - 8 + v.value().len()) as i64;
        }
        shared.approx_keys.store(keys, Ordering::Relaxed);
        shared.approx_bytes.store(bytes, Ordering::Relaxed);
        Ok(RegionStateMachine { region, engine: engine.clone(), state, current: Default::default(), shared })
    }
}

/// The data id `region`'s rows are stored under, as of `txn`.
fn data_id(txn: &redb::ReadTransaction, region: u64) -> io::Result<u64> {
    snapshot::read_data_id(txn, region)
}

/// Reads one key of `region` from the applied state.
pub fn read_get(engine: &Engine, region: u64, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let txn = engine.read()?;
    let id = data_id(&txn, region)?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    Ok(t.get(data_key(id, key).as_slice()).map_err(io_err)?.map(|v| v.value().to_vec()))
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
    let id = data_id(&txn, region)?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    let mut out = Vec::with_capacity(keys.len());
    let mut bytes = 0;
    for k in keys {
        if !out.is_empty() && bytes >= max_bytes {
            break;
        }
        let v = t.get(data_key(id, k).as_slice()).map_err(io_err)?.map(|v| v.value().to_vec());
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
    let id = data_id(&txn, region)?;
    let t = txn.open_table(tables::DATA).map_err(io_err)?;
    let (lo, hi) = data_range(id, start, end);
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

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<crate::raft::types::LogId>, crate::raft::types::StoredMembership), io::Error> {
        Ok((self.state.applied, self.state.membership.clone()))
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
        let started = std::time::Instant::now();
        let region = self.region;
        let mut next = self.state.clone();
        let mut work_items = Vec::with_capacity(batch.len());
        let mut responders = Vec::with_capacity(batch.len());
        for (entry, responder) in batch {
            let log_id = entry.log_id();
            next.applied = Some(log_id);
            match entry.payload {
                EntryPayload::Blank => work_items.push((log_id.index(), None)),
                EntryPayload::Normal(cmd) => work_items.push((log_id.index(), Some(cmd))),
                EntryPayload::Membership(m) => {
                    next.membership = crate::raft::types::StoredMembership::new(Some(log_id), m);
                    work_items.push((log_id.index(), None));
                }
            }
            responders.push(responder);
        }
        let results: ApplyOutput = Default::default();
        let out = results.clone();
        let mut state = next;
        self.engine
            .write_lazy(Box::new(move |txn| {
                let id = state.data_id;
                let mut data = txn.open_table(tables::DATA).map_err(io_err)?;
                let mut sessions = Sessions::open(txn, id)?;
                let mut res = Vec::with_capacity(work_items.len());
                let (mut dk, mut db) = (0, 0);
                for (index, cmd) in work_items {
                    let Some(cmd) = cmd else {
                        res.push(ApplyResult::None);
                        continue;
                    };
                    let (session, op) = match cmd {
                        LogCommand::WriteV1 { session, op } => {
                            // Version 1 carried no acknowledgement and no clock.
                            (session.map(|(id, seq)| SessionRef { id, seq, first_pending: 0 }), op)
                        }
                        LogCommand::WriteV2 { session, op, at_ms, session_ttl_ms } => {
                            state.clock.clock_ms = state.clock.clock_ms.max(at_ms);
                            sessions.sweep(&mut state.clock, session_ttl_ms)?;
                            (session, op)
                        }
                    };
                    if let Some(s) = session {
                        match sessions.admit(s, &op)? {
                            Admit::Apply => {}
                            Admit::Replay(r) | Admit::Refuse(r) => {
                                res.push(r);
                                continue;
                            }
                        }
                    }
                    let (r, k, b) = execute(&mut data, id, &op)?;
                    dk += k;
                    db += b;
                    if let Some(s) = session {
                        sessions.record(s, &op, &r, index, state.clock.clock_ms)?;
                    }
                    res.push(r);
                }
                let mut meta = txn.open_table(tables::SM_META).map_err(io_err)?;
                meta.insert(region, encode(&SmMetaRecord::from_state(&state))?.as_slice()).map_err(io_err)?;
                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some((res, dk, db, state));
                Ok(())
            }))
            .await?;
        crate::metrics::STAGES.apply.record(started.elapsed());
        let (res, dk, db, state) = results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("apply produced no output"))?;
        self.state = state;
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
        let installed =
            snapshot::install(&self.engine, self.region, &snapshot, meta.last_log_id, meta.last_membership.clone())
                .await?;
        self.state = installed.state;
        self.shared.approx_keys.store(installed.keys, Ordering::Relaxed);
        self.shared.approx_bytes.store(installed.bytes, Ordering::Relaxed);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(meta, file)| Snapshot { meta: meta.clone(), snapshot: file.clone() }))
    }
}

/// Builds a snapshot file from one consistent read transaction, concurrently with applies.
#[derive(Debug)]
pub struct RegionSnapshotBuilder {
    region: u64,
    engine: Engine,
    current: CurrentSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for RegionSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (engine, region) = (self.engine.clone(), self.region);
        let (state, file) =
            tokio::task::spawn_blocking(move || snapshot::build(&engine, region)).await.map_err(io::Error::other)??;
        let meta = SnapshotMeta { last_log_id: state.applied, last_membership: state.membership };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), file.clone()));
        Ok(Snapshot { meta, snapshot: file })
    }
}
