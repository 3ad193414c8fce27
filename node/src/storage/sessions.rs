//! Exactly-once application of client writes: sessions, their acknowledgements and expiry.
//!
//! Every client write carries (session, seq, first_pending). A region remembers the result
//! of each applied (session, seq) in the `dedup` table, so a retry returns the remembered
//! result instead of applying again. The client's acknowledgement `first_pending` (every
//! lower seq has been answered and will never be sent again, Raft thesis §6.3) lets the
//! region forget results below it; a seq below the acknowledged floor is refused
//! (`Acknowledged`): it can only be a stale duplicate nobody waits for.
//!
//! Sessions that write nothing to a region for `session_ttl_ms` of the region's clock
//! expire there: their results are dropped and a tombstone refuses their later writes with
//! `SessionExpired`, so a retry delivered after expiry is never silently applied twice.
//! Tombstones are dropped after [`TOMBSTONE_TTL_MS`].
//!
//! Determinism: everything here depends only on the log (the leader's timestamp and TTL
//! travel in each entry, and the region's clock only moves forward), so every replica keeps
//! the same rows.

use std::io;

use redb::ReadableTable;

use super::engine::{io_err, TxnRef};
use super::overlay::Overlay;
use super::records::{decode, encode, DedupRecord, SessionClock, SessionRecord};
use super::tables;
use crate::raft::types::{ApplyResult, LogOp, SessionRef};

/// Sessions are swept for expiry at most this often (region clock).
pub const SWEEP_INTERVAL_MS: u64 = 10_000;
/// A tombstone of an expired session is kept this long (region clock): a client suspended
/// longer than this with a write in flight could have it applied twice.
pub const TOMBSTONE_TTL_MS: u64 = 24 * 3600 * 1000;

/// What to do with a write of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Apply it, then [`Sessions::record`] its result.
    Apply,
    /// A part of a batch whose other keys were applied under the same seq (see
    /// [`DedupRecord::V2`]): apply only this batch of the keys not applied yet, then
    /// [`Sessions::record`] it.
    ApplyPart(LogOp),
    /// Already applied: answer with this result, change nothing.
    Replay(ApplyResult),
    /// Refused: answer with this result, change nothing.
    Refuse(ApplyResult),
}

/// The session tables of one region, inside a write transaction.
///
/// A batch of writes from one session (every client shares its session across its
/// requests) reads and rewrites that session's row once per write. So the rows a batch
/// touches are kept in memory and written back by [`Sessions::flush`], with one range
/// delete per session of the results its acknowledgement lets go. Whoever applies writes
/// must `flush` before the transaction commits; the methods here that scan the tables
/// flush first.
///
/// Results are recorded in the engine's dedup stage, not the table (`overlay.rs`, "The
/// dedup stage"): most are forgotten before they would reach it. Lookups read the stage,
/// then the table; the methods that scan the table first write the region's staged rows
/// into it.
pub struct Sessions<'t> {
    region: u64,
    tables: Tables<'t>,
    stage: &'t Overlay,
    cache: std::collections::HashMap<u64, Cached>,
}

/// A session row as this batch sees it.
#[derive(Debug, Clone, Copy)]
struct Cached {
    record: Option<SessionRecord>,
    /// Changed since read: to be written back.
    dirty: bool,
    /// The floor of the row in the table: the table holds no result below it.
    table_floor: u64,
}

impl std::fmt::Debug for Sessions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("region", &self.region).finish_non_exhaustive()
    }
}

/// The session tables, as the transaction an apply runs in opens them.
enum Tables<'t> {
    /// A write transaction's.
    Write {
        sessions: redb::Table<'t, (u64, u64), &'static [u8]>,
        dedup: redb::Table<'t, (u64, u64, u64), &'static [u8]>,
    },
    /// A staged apply's read transaction's: what it writes goes to the overlay.
    Read {
        sessions: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
        dedup: redb::ReadOnlyTable<(u64, u64, u64), &'static [u8]>,
    },
}

type SessionsTable<'t> = redb::Table<'t, (u64, u64), &'static [u8]>;
type DedupTable<'t> = redb::Table<'t, (u64, u64, u64), &'static [u8]>;

impl<'t> Sessions<'t> {
    /// Opens the tables of `region` in the transaction of an apply, with the engine's
    /// stages `stage`. In a staged apply's read transaction
    /// ([`crate::storage::engine::Engine::apply_plain`]) its session rows and deletions go
    /// to the overlay (only [`Sessions::admit`], [`Sessions::record`], [`Sessions::flush`]
    /// and [`Sessions::sweep`] work there).
    pub fn open(txn: TxnRef<'t>, region: u64, stage: &'t Overlay) -> io::Result<Sessions<'t>> {
        let tables = match txn {
            TxnRef::Write(txn) => Tables::Write {
                sessions: txn.open_table(tables::SESSIONS).map_err(io_err)?,
                dedup: txn.open_table(tables::DEDUP).map_err(io_err)?,
            },
            TxnRef::Read(txn) => Tables::Read {
                sessions: txn.open_table(tables::SESSIONS).map_err(io_err)?,
                dedup: txn.open_table(tables::DEDUP).map_err(io_err)?,
            },
        };
        Ok(Sessions { region, tables, stage, cache: std::collections::HashMap::new() })
    }

    /// The write transaction's tables; an error in a staged apply.
    fn write(&mut self) -> io::Result<(&mut SessionsTable<'t>, &mut DedupTable<'t>)> {
        match &mut self.tables {
            Tables::Write { sessions, dedup } => Ok((sessions, dedup)),
            Tables::Read { .. } => Err(super::engine::staged_cannot_write("the session tables")),
        }
    }

    /// Session `id`'s row: staged by a staged apply, else in the table.
    fn session_row(&self, id: u64) -> io::Result<Option<SessionRecord>> {
        let key = (self.region, id);
        let staged = self.stage.session_get(key);
        match &self.tables {
            Tables::Write { sessions, .. } => staged_or_table(staged, sessions, key),
            Tables::Read { sessions, .. } => staged_or_table(staged, sessions, key),
        }
    }

    /// Every session row of the region, staged over the table's, in id order, with the
    /// cache flushed and forgotten first ([`Sessions::sweep`]). In a write transaction the
    /// region's staged results are written into the table too.
    fn session_rows(&mut self) -> io::Result<Vec<(u64, SessionRecord)>> {
        let region = self.region;
        let range = (region, 0)..=(region, u64::MAX);
        let mut rows = std::collections::BTreeMap::new();
        match &self.tables {
            Tables::Write { .. } => self.flush_and_forget()?,
            Tables::Read { .. } => {
                self.flush()?;
                self.cache.clear();
            }
        }
        let table = match &self.tables {
            Tables::Write { sessions, .. } => sessions.range(range),
            Tables::Read { sessions, .. } => sessions.range(range),
        };
        for row in table.map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            rows.insert(k.value().1, v.value().to_vec());
        }
        for (id, row) in self.stage.session_rows(region) {
            match row {
                Some(row) => rows.insert(id, row),
                None => rows.remove(&id),
            };
        }
        rows.into_iter().map(|(id, row)| Ok((id, decode::<SessionRecord>(&row)?))).collect()
    }

    /// Writes back the session rows this batch changed, and drops the results below each
    /// one's new floor. Must run before the transaction commits (or the staged apply ends).
    pub fn flush(&mut self) -> io::Result<()> {
        let region = self.region;
        for (&id, c) in self.cache.iter_mut().filter(|(_, c)| c.dirty) {
            let Some(record) = &c.record else { continue };
            let SessionRecord::V1 { floor, .. } = record;
            let row = encode(record)?;
            if *floor > c.table_floor {
                self.stage.dedup_forget(region, id, c.table_floor..*floor);
            }
            match &mut self.tables {
                Tables::Write { sessions, dedup } => {
                    if *floor > c.table_floor {
                        dedup
                            .retain_in((region, id, c.table_floor)..(region, id, *floor), |_, _| false)
                            .map_err(io_err)?;
                    }
                    sessions.insert((region, id), row.as_slice()).map_err(io_err)?;
                }
                Tables::Read { .. } => {
                    self.stage.dedup_delete(region, id, c.table_floor..*floor)?;
                    self.stage.session_put((region, id), row);
                }
            }
            c.table_floor = c.table_floor.max(*floor);
            c.dirty = false;
        }
        Ok(())
    }

    /// [`Sessions::flush`], writes the region's staged results into the table and forgets
    /// the cache: for the methods that work on the tables directly.
    fn flush_and_forget(&mut self) -> io::Result<()> {
        self.flush()?;
        self.settle(self.region)?;
        self.cache.clear();
        Ok(())
    }

    /// Writes the staged results of the rows kept under `region` into the table.
    fn settle(&mut self, region: u64) -> io::Result<()> {
        let rows = self.stage.dedup_take(region);
        let (_, dedup) = self.write()?;
        for (key, row) in rows {
            dedup.insert(key, row.as_slice()).map_err(io_err)?;
        }
        Ok(())
    }

    /// The result recorded for `seq` of session `id`: staged, else in the table.
    fn result_row(&self, id: u64, seq: u64) -> io::Result<Option<DedupRecord>> {
        let key = (self.region, id, seq);
        let staged = self.stage.dedup_get(key).map(Some);
        match &self.tables {
            Tables::Write { dedup, .. } => staged_or_table(staged, dedup, key),
            Tables::Read { dedup, .. } => staged_or_table(staged, dedup, key),
        }
    }

    /// Copies every session and dedup row of this region to the data id `to` (a split: the
    /// new region answers retries of writes applied before it, whichever half their key
    /// went to). Returns the rows copied.
    pub fn copy_to(&mut self, to: u64) -> io::Result<u64> {
        use redb::ReadableTable;
        self.flush_and_forget()?;
        let from = self.region;
        let sessions: Vec<(u64, Vec<u8>)> = self
            .write()?
            .0
            .range((from, 0u64)..=(from, u64::MAX))
            .map_err(io_err)?
            .map(|r| r.map(|(k, v)| (k.value().1, v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        let dedup: Vec<(u64, u64, Vec<u8>)> = self
            .write()?
            .1
            .range((from, 0u64, 0u64)..=(from, u64::MAX, u64::MAX))
            .map_err(io_err)?
            .map(|r| {
                r.map(|(k, v)| {
                    let (_, s, seq) = k.value();
                    (s, seq, v.value().to_vec())
                })
            })
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        let n = (sessions.len() + dedup.len()) as u64;
        for (s, v) in sessions {
            self.write()?.0.insert((to, s), v.as_slice()).map_err(io_err)?;
        }
        for (s, seq, v) in dedup {
            self.write()?.1.insert((to, s, seq), v.as_slice()).map_err(io_err)?;
        }
        Ok(n)
    }

    /// Merges the session and dedup rows kept under `from` (a region merged into this
    /// one) into this region's (a merge: retries of writes the source applied are
    /// answered by the merged region). The source's rows stay; they are collected with
    /// the source. A session known to both keeps the larger floor and last-seen time and
    /// the results of both at or above the floor; if either side expired it, the merged
    /// session is expired (its writes refused), since the expired side can no longer tell
    /// which of its writes applied. Returns the sessions merged.
    pub fn absorb(&mut self, from: u64) -> io::Result<u64> {
        self.flush_and_forget()?;
        self.settle(from)?;
        let sessions: Vec<(u64, SessionRecord)> = self
            .write()?
            .0
            .range((from, 0u64)..=(from, u64::MAX))
            .map_err(io_err)?
            .map(|r| r.map_err(io_err).and_then(|(k, v)| Ok((k.value().1, decode(v.value())?))))
            .collect::<io::Result<_>>()?;
        let n = sessions.len() as u64;
        for (id, theirs) in sessions {
            let SessionRecord::V1 { last_seen_ms: seen_b, floor: floor_b, expired_at_ms: exp_b } = theirs;
            let (seen, floor, expired) = match self.session(id)? {
                None => (seen_b, floor_b, exp_b),
                Some(SessionRecord::V1 { last_seen_ms, floor, expired_at_ms }) => {
                    let expired = match (expired_at_ms, exp_b) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    (last_seen_ms.max(seen_b), floor.max(floor_b), expired)
                }
            };
            let region = self.region;
            if expired.is_some() {
                self.write()?.1.retain_in((region, id, 0)..=(region, id, u64::MAX), |_, _| false).map_err(io_err)?;
            } else {
                self.write()?.1.retain_in((region, id, 0)..(region, id, floor), |_, _| false).map_err(io_err)?;
                let rows: Vec<(u64, Vec<u8>)> = self
                    .write()?
                    .1
                    .range((from, id, floor)..=(from, id, u64::MAX))
                    .map_err(io_err)?
                    .map(|r| r.map(|(k, v)| (k.value().2, v.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(io_err)?;
                for (seq, v) in rows {
                    let merged = match self.write()?.1.get((region, id, seq)).map_err(io_err)? {
                        Some(ours) => unite(&decode(ours.value())?, decode(&v)?),
                        None => None,
                    };
                    let v = match merged {
                        Some(record) => encode(&record)?,
                        None => v,
                    };
                    self.write()?.1.insert((region, id, seq), v.as_slice()).map_err(io_err)?;
                }
            }
            let record = encode(&SessionRecord::V1 { last_seen_ms: seen, floor, expired_at_ms: expired })?;
            self.write()?.0.insert((region, id), record.as_slice()).map_err(io_err)?;
        }
        // `session` cached the rows as they were before.
        self.cache.clear();
        Ok(n)
    }

    fn session(&mut self, id: u64) -> io::Result<Option<SessionRecord>> {
        Ok(self.cached(id)?.record)
    }

    /// Session `id`'s row as this batch sees it, read from the table the first time.
    fn cached(&mut self, id: u64) -> io::Result<&mut Cached> {
        if !self.cache.contains_key(&id) {
            let record = self.session_row(id)?;
            // (A staged row's floor: the rows below it are staged for deletion.)
            let table_floor = record.map_or(0, |SessionRecord::V1 { floor, .. }| floor);
            self.cache.insert(id, Cached { record, dirty: false, table_floor });
        }
        Ok(self.cache.get_mut(&id).expect("inserted above"))
    }

    /// Decides whether the write `s` (with mutation `op`) is applied.
    pub fn admit(&mut self, s: SessionRef, op: &LogOp) -> io::Result<Admit> {
        let floor = match self.session(s.id)? {
            Some(SessionRecord::V1 { expired_at_ms: Some(_), .. }) => {
                return Ok(Admit::Refuse(ApplyResult::SessionExpired(s.id)))
            }
            Some(SessionRecord::V1 { floor, .. }) => floor,
            None => 0,
        };
        if s.seq < floor {
            return Ok(Admit::Refuse(ApplyResult::Acknowledged));
        }
        let row = match self.result_row(s.id, s.seq)? {
            Some(row) => row,
            None => return Ok(Admit::Apply),
        };
        match (row, op) {
            (DedupRecord::V2 { keys, result, .. }, LogOp::BatchPut(pairs)) => {
                let rest: Vec<(Vec<u8>, Vec<u8>)> =
                    pairs.iter().filter(|(k, _)| keys.binary_search(k).is_err()).cloned().collect();
                if rest.is_empty() {
                    Ok(Admit::Replay(expand(result, op)))
                } else {
                    Ok(Admit::ApplyPart(LogOp::BatchPut(rest)))
                }
            }
            (DedupRecord::V1 { result, .. } | DedupRecord::V2 { result, .. }, _) => {
                Ok(Admit::Replay(expand(result, op)))
            }
        }
    }

    /// Records the result of the applied write `s` at log `index`, at region clock
    /// `clock_ms`, and forgets the results the client has acknowledged.
    pub fn record(
        &mut self,
        s: SessionRef,
        op: &LogOp,
        result: &ApplyResult,
        index: u64,
        clock_ms: u64,
    ) -> io::Result<()> {
        let old_floor = match self.session(s.id)? {
            Some(SessionRecord::V1 { floor, .. }) => floor,
            None => 0,
        };
        let floor = old_floor.max(s.first_pending.min(s.seq));
        let record = match op {
            // A batch names its keys, joining those of the parts applied before it.
            LogOp::BatchPut(pairs) => {
                let mut keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
                if let Some(DedupRecord::V2 { keys: before, .. }) = self.result_row(s.id, s.seq)? {
                    keys.extend(before);
                }
                DedupRecord::V2 { index, result: compact(result, op), keys: key_set(keys) }
            }
            _ => DedupRecord::V1 { index, result: compact(result, op) },
        };
        self.stage.dedup_put((self.region, s.id, s.seq), encode(&record)?);
        // The results below the new floor are forgotten by `flush`.
        let c = self.cached(s.id)?;
        c.record = Some(SessionRecord::V1 { last_seen_ms: clock_ms, floor, expired_at_ms: None });
        c.dirty = true;
        Ok(())
    }

    /// Expires sessions idle for `ttl_ms` and drops old tombstones, at most once per
    /// [`SWEEP_INTERVAL_MS`] of region clock. In a staged apply's read transaction what it
    /// changes is staged like everything else (the tombstones and deletions of session
    /// rows, the deletion of the expired sessions' results): a staged sweep and one in a
    /// write transaction leave the same rows, as every replica must.
    pub fn sweep(&mut self, clock: &mut SessionClock, ttl_ms: u64) -> io::Result<()> {
        let now = clock.clock_ms;
        if now < clock.last_sweep_ms.saturating_add(SWEEP_INTERVAL_MS) {
            return Ok(());
        }
        clock.last_sweep_ms = now;
        let region = self.region;
        let (mut expire, mut forget) = (Vec::new(), Vec::new());
        for (id, record) in self.session_rows()? {
            match record {
                SessionRecord::V1 { expired_at_ms: Some(at), .. } => {
                    if now.saturating_sub(at) > TOMBSTONE_TTL_MS {
                        forget.push(id);
                    }
                }
                SessionRecord::V1 { last_seen_ms, floor, expired_at_ms: None } => {
                    if now.saturating_sub(last_seen_ms) > ttl_ms {
                        expire.push((id, floor));
                    }
                }
            }
        }
        for (id, floor) in expire {
            let tombstone = encode(&SessionRecord::V1 { last_seen_ms: now, floor, expired_at_ms: Some(now) })?;
            match &mut self.tables {
                Tables::Write { sessions, dedup } => {
                    dedup.retain_in((region, id, 0)..=(region, id, u64::MAX), |_, _| false).map_err(io_err)?;
                    sessions.insert((region, id), tombstone.as_slice()).map_err(io_err)?;
                }
                Tables::Read { .. } => {
                    self.stage.dedup_forget_session(region, id);
                    self.stage.dedup_delete_session(region, id)?;
                    self.stage.session_put((region, id), tombstone);
                }
            }
        }
        for id in forget {
            match &mut self.tables {
                Tables::Write { sessions, .. } => {
                    sessions.remove((region, id)).map_err(io_err)?;
                }
                Tables::Read { .. } => self.stage.session_delete((region, id)),
            }
        }
        Ok(())
    }
}

/// A row of a session table: the `staged` one if there is one (`Some(None)`: staged as
/// deleted), else `table`'s under `key`.
fn staged_or_table<K, T>(
    staged: Option<Option<Vec<u8>>>,
    table: &impl ReadableTable<K, &'static [u8]>,
    key: K,
) -> io::Result<Option<T>>
where
    K: redb::Key + for<'a> std::borrow::Borrow<K::SelfType<'a>> + 'static,
    T: serde::de::DeserializeOwned,
{
    if let Some(row) = staged {
        return row.map(|row| decode(&row)).transpose();
    }
    table.get(key).map_err(io_err)?.map(|row| decode(row.value())).transpose()
}

/// The row for one `(session, seq)` found in both regions of a merge, when it is not simply
/// theirs: parts of one batch applied on either side (after a split) cover the keys of
/// both; a row of a whole write (version 1) covers everything. `None`: take theirs.
fn unite(ours: &DedupRecord, theirs: DedupRecord) -> Option<DedupRecord> {
    match (ours, theirs) {
        (DedupRecord::V2 { index: a, keys: ours, .. }, DedupRecord::V2 { index: b, result, mut keys }) => {
            keys.extend(ours.iter().cloned());
            Some(DedupRecord::V2 { index: b.max(*a), result, keys: key_set(keys) })
        }
        (DedupRecord::V1 { .. }, DedupRecord::V2 { .. }) => Some(ours.clone()),
        (_, DedupRecord::V1 { .. }) => None,
    }
}

/// Keys as a [`DedupRecord::V2`] keeps them: sorted (looked up by binary search), each once.
fn key_set(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// What the dedup table keeps of a result: all of it, except that a successful
/// compare-and-swap's previous value equals the request's `expected`, which a retry carries.
fn compact(result: &ApplyResult, op: &LogOp) -> ApplyResult {
    match (result, op) {
        (ApplyResult::Cas(true, _), LogOp::Cas { .. }) => ApplyResult::Cas(true, None),
        (r, _) => r.clone(),
    }
}

/// The full result from what the dedup table kept (see [`compact`]).
fn expand(result: ApplyResult, op: &LogOp) -> ApplyResult {
    match (result, op) {
        (ApplyResult::Cas(true, None), LogOp::Cas { expected, .. }) => ApplyResult::Cas(true, expected.clone()),
        (r, _) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Engine;

    fn s(id: u64, seq: u64, first_pending: u64) -> SessionRef {
        SessionRef { id, seq, first_pending }
    }

    fn put() -> LogOp {
        LogOp::Put(b"k".to_vec(), b"v".to_vec())
    }

    /// Runs `f` in one committed write transaction of a fresh engine.
    struct Db {
        _dir: tempfile::TempDir,
        engine: Engine,
    }

    impl Db {
        fn new() -> Db {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(&dir.path().join("db.redb")).unwrap();
            Db { _dir: dir, engine }
        }

        async fn with<T: Send + 'static>(
            &self,
            f: impl FnOnce(&mut Sessions<'_>) -> io::Result<T> + Send + 'static,
        ) -> T {
            self.with_region(1, f).await
        }

        /// As [`Db::with`], on the session rows kept under `region`. Each call is one plain
        /// apply's transaction: results stay in the dedup stage across calls, as they do
        /// between a node's applies, until a call scans the tables.
        async fn with_region<T: Send + 'static>(
            &self,
            region: u64,
            f: impl FnOnce(&mut Sessions<'_>) -> io::Result<T> + Send + 'static,
        ) -> T {
            self.apply(region, false, f).await
        }

        /// As [`Db::with`], as a staged apply (no write transaction: what it writes waits
        /// in the overlay).
        async fn with_staged<T: Send + 'static>(
            &self,
            f: impl FnOnce(&mut Sessions<'_>) -> io::Result<T> + Send + 'static,
        ) -> T {
            let staged = || self.engine.stats().staged.load(std::sync::atomic::Ordering::Relaxed);
            let before = staged();
            // The writer answers a job inside its transaction: wait until it has left it.
            self.engine.wait_until_writer_idle().await;
            let v = self.apply(1, true, f).await;
            assert_eq!(staged(), before + 1, "staged");
            v
        }

        /// One plain apply of `f` on the session rows kept under `region`, then a flush.
        async fn apply<T: Send + 'static>(
            &self,
            region: u64,
            may_stage: bool,
            f: impl FnOnce(&mut Sessions<'_>) -> io::Result<T> + Send + 'static,
        ) -> T {
            let out = std::sync::Arc::new(std::sync::Mutex::new(None));
            let o = out.clone();
            let stage = self.engine.overlay().clone();
            self.engine
                .apply_plain(
                    Box::new(move |txn| {
                        let mut sessions = Sessions::open(txn, region, &stage)?;
                        *o.lock().unwrap() = Some(f(&mut sessions)?);
                        sessions.flush()
                    }),
                    may_stage,
                )
                .await
                .unwrap();
            let v = out.lock().unwrap().take().unwrap();
            v
        }

        /// The seqs of session 7 of region 1 with a result in the table (a plain read).
        fn table_seqs(&self) -> Vec<u64> {
            let txn = self.engine.read().unwrap();
            let t = txn.open_table(tables::DEDUP).unwrap();
            let seqs = t.range((1, 7, 0)..=(1, 7, u64::MAX)).unwrap().map(|r| r.unwrap().0.value().2).collect();
            seqs
        }

        /// Results kept: in the table and in the dedup stage.
        fn dedup_rows(&self) -> usize {
            let (txn, staged) = self.engine.read_cut(|_, _| Ok(self.engine.overlay().dedup_len())).unwrap();
            let t = txn.open_table(tables::DEDUP).unwrap();
            let n = t.iter().unwrap().count();
            n + staged
        }

        /// The kept result of `seq` of session 7 of region 1, wherever it is.
        fn result_row(&self, seq: u64) -> Option<Vec<u8>> {
            let (txn, staged) = self.engine.read_cut(|_, _| Ok(self.engine.overlay().dedup_get((1, 7, seq)))).unwrap();
            let t = txn.open_table(tables::DEDUP).unwrap();
            let in_table = t.get((1, 7, seq)).unwrap().map(|v| v.value().to_vec());
            staged.or(in_table)
        }
    }

    #[tokio::test]
    async fn a_retry_replays_the_recorded_result() {
        let db = Db::new();
        assert_eq!(db.with(|x| x.admit(s(7, 1, 1), &put())).await, Admit::Apply);
        db.with(|x| x.record(s(7, 1, 1), &put(), &ApplyResult::Done, 10, 1_000)).await;
        assert_eq!(db.with(|x| x.admit(s(7, 1, 1), &put())).await, Admit::Replay(ApplyResult::Done));
        // Another session's same seq is a different write.
        assert_eq!(db.with(|x| x.admit(s(8, 1, 1), &put())).await, Admit::Apply);
    }

    #[tokio::test]
    async fn staged_applies_keep_sessions_in_the_overlay_until_the_next_transaction_writes_them() {
        let db = Db::new();
        for seq in 1..=3 {
            db.with(move |x| x.record(s(7, seq, 1), &put(), &ApplyResult::Done, seq, 1_000)).await;
        }
        // A durable commit writes the staged results to the table.
        db.engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert_eq!(db.table_seqs(), vec![1, 2, 3]);
        // A staged apply of seq 4, acknowledging 1..=2.
        let admitted = db
            .with_staged(|x| {
                let admit = x.admit(s(7, 4, 3), &put())?;
                x.record(s(7, 4, 3), &put(), &ApplyResult::Done, 4, 2_000)?;
                Ok(admit)
            })
            .await;
        assert_eq!(admitted, Admit::Apply);
        assert_eq!(db.table_seqs(), vec![1, 2, 3], "a staged apply writes nothing to redb");
        assert!(db.engine.overlay().has_settle());
        // Later staged applies see its session row and results through the overlay.
        assert_eq!(db.with_staged(|x| x.admit(s(7, 2, 3), &put())).await, Admit::Refuse(ApplyResult::Acknowledged));
        assert_eq!(db.with_staged(|x| x.admit(s(7, 4, 3), &put())).await, Admit::Replay(ApplyResult::Done));
        // The next transaction writes the session row and drops the acknowledged results,
        // before its own jobs run.
        assert_eq!(db.with(|x| x.admit(s(7, 3, 3), &put())).await, Admit::Replay(ApplyResult::Done));
        assert!(!db.engine.overlay().has_settle());
        assert_eq!(db.table_seqs(), vec![3]);
        let txn = db.engine.read().unwrap();
        let row = txn.open_table(tables::SESSIONS).unwrap().get((1, 7)).unwrap().map(|v| v.value().to_vec());
        let record: SessionRecord = decode(&row.expect("the session row is in the table")).unwrap();
        assert_eq!(record, SessionRecord::V1 { last_seen_ms: 2_000, floor: 3, expired_at_ms: None });
    }

    #[tokio::test]
    async fn acknowledged_results_are_forgotten_and_their_seqs_refused() {
        let db = Db::new();
        for seq in 1..=5 {
            db.with(move |x| x.record(s(7, seq, 1), &put(), &ApplyResult::Done, seq, 1_000)).await;
        }
        assert_eq!(db.dedup_rows(), 5);
        // The client has its answers for 1..=3: seq 6 says so.
        db.with(|x| x.record(s(7, 6, 4), &put(), &ApplyResult::Done, 6, 1_000)).await;
        assert_eq!(db.dedup_rows(), 3, "rows 1..=3 dropped, 4..=6 kept");
        assert_eq!(db.with(|x| x.admit(s(7, 2, 4), &put())).await, Admit::Refuse(ApplyResult::Acknowledged));
        assert_eq!(db.with(|x| x.admit(s(7, 4, 4), &put())).await, Admit::Replay(ApplyResult::Done));
        // An acknowledgement never moves back.
        db.with(|x| x.record(s(7, 7, 2), &put(), &ApplyResult::Done, 7, 1_000)).await;
        assert_eq!(db.with(|x| x.admit(s(7, 3, 2), &put())).await, Admit::Refuse(ApplyResult::Acknowledged));
    }

    #[tokio::test]
    async fn a_batch_in_one_transaction_sees_its_own_session_changes_and_writes_them_back_once() {
        let db = Db::new();
        let answers = db
            .with(|x| {
                let mut answers = Vec::new();
                for seq in 1..=10 {
                    // Each write acknowledges the ones before it.
                    assert_eq!(x.admit(s(7, seq, seq), &put())?, Admit::Apply);
                    x.record(s(7, seq, seq), &put(), &ApplyResult::Done, seq, 1_000 + seq)?;
                }
                // Later in the same batch: a retry of an acknowledged write, and of the last.
                answers.push(x.admit(s(7, 4, 10), &put())?);
                answers.push(x.admit(s(7, 10, 10), &put())?);
                Ok(answers)
            })
            .await;
        assert_eq!(answers, vec![Admit::Refuse(ApplyResult::Acknowledged), Admit::Replay(ApplyResult::Done)]);
        assert_eq!(db.dedup_rows(), 1, "results 1..=9 were acknowledged within the batch");
        // The written-back row holds the batch's last floor and clock.
        assert_eq!(db.with(|x| x.admit(s(7, 9, 10), &put())).await, Admit::Refuse(ApplyResult::Acknowledged));
        assert_eq!(db.with(|x| x.admit(s(7, 10, 10), &put())).await, Admit::Replay(ApplyResult::Done));
        let row = {
            let txn = db.engine.read().unwrap();
            let t = txn.open_table(tables::SESSIONS).unwrap();
            let v = t.get((1, 7)).unwrap().unwrap();
            decode::<SessionRecord>(v.value()).unwrap()
        };
        assert_eq!(row, SessionRecord::V1 { last_seen_ms: 1_010, floor: 10, expired_at_ms: None });
    }

    #[tokio::test]
    async fn idle_sessions_expire_and_their_writes_are_refused() {
        let db = Db::new();
        db.with(|x| x.record(s(7, 1, 1), &put(), &ApplyResult::Done, 1, 1_000)).await;
        db.with(|x| x.record(s(8, 1, 1), &put(), &ApplyResult::Done, 2, 50_000)).await;
        let ttl = 60_000;
        // At 55 s nobody is idle for 60 s yet.
        let mut clock = SessionClock { clock_ms: 55_000, last_sweep_ms: 0 };
        db.with(move |x| x.sweep(&mut clock, ttl)).await;
        assert_eq!(db.dedup_rows(), 2);
        // At 70 s session 7 (last seen at 1 s) has expired; session 8 has not.
        let mut clock = SessionClock { clock_ms: 70_000, last_sweep_ms: 55_000 };
        db.with(move |x| x.sweep(&mut clock, ttl)).await;
        assert_eq!(db.dedup_rows(), 1);
        assert_eq!(
            db.with(|x| x.admit(s(7, 1, 1), &put())).await,
            Admit::Refuse(ApplyResult::SessionExpired(7)),
            "a retry after expiry is refused, not applied again"
        );
        assert_eq!(db.with(|x| x.admit(s(7, 9, 9), &put())).await, Admit::Refuse(ApplyResult::SessionExpired(7)));
        assert_eq!(db.with(|x| x.admit(s(8, 2, 2), &put())).await, Admit::Apply);
    }

    #[tokio::test]
    async fn sweeps_are_rate_limited_and_tombstones_are_dropped_eventually() {
        let db = Db::new();
        db.with(|x| x.record(s(7, 1, 1), &put(), &ApplyResult::Done, 1, 0)).await;
        // Within the sweep interval of the last sweep, nothing is swept.
        let mut clock = SessionClock { clock_ms: 100_000, last_sweep_ms: 95_000 };
        db.with(move |x| x.sweep(&mut clock, 1_000)).await;
        assert_eq!(db.with(|x| x.admit(s(7, 1, 1), &put())).await, Admit::Replay(ApplyResult::Done));
        let mut clock = SessionClock { clock_ms: 100_000, last_sweep_ms: 0 };
        db.with(move |x| x.sweep(&mut clock, 1_000)).await;
        assert_eq!(db.with(|x| x.admit(s(7, 1, 1), &put())).await, Admit::Refuse(ApplyResult::SessionExpired(7)));
        let later = 100_000 + TOMBSTONE_TTL_MS + 1;
        let mut clock = SessionClock { clock_ms: later, last_sweep_ms: 0 };
        db.with(move |x| x.sweep(&mut clock, 1_000)).await;
        assert_eq!(db.with(|x| x.admit(s(7, 1, 1), &put())).await, Admit::Apply, "the tombstone is gone");
    }

    /// Every row of the session tables, once a durable commit has written the stages out.
    async fn tables_after_a_durable_commit(db: &Db) -> (Vec<((u64, u64), Vec<u8>)>, Vec<((u64, u64, u64), Vec<u8>)>) {
        db.engine.write(Box::new(|_| Ok(()))).await.unwrap();
        assert!(!db.engine.overlay().has_settle());
        assert_eq!(db.engine.overlay().dedup_len(), 0);
        let txn = db.engine.read().unwrap();
        let sessions = txn.open_table(tables::SESSIONS).unwrap();
        let dedup = txn.open_table(tables::DEDUP).unwrap();
        let sessions = sessions.iter().unwrap().map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())).unwrap());
        let dedup = dedup.iter().unwrap().map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())).unwrap());
        (sessions.collect(), dedup.collect())
    }

    /// Replicas apply the same entry staged or in a write transaction, as their writers'
    /// timing has it: a sweep must leave the same rows either way. Session 7 expires with
    /// results in the table, in the stage and at the last seq; session 9's tombstone is
    /// forgotten; session 8 stays.
    #[tokio::test]
    async fn a_staged_sweep_leaves_the_rows_a_sweep_in_a_write_transaction_leaves() {
        let ttl = 60_000;
        let at = 100_000 + TOMBSTONE_TTL_MS + 1;
        let mut tables = Vec::new();
        for staged in [false, true] {
            let db = Db::new();
            db.with(|x| x.record(s(9, 1, 1), &put(), &ApplyResult::Done, 1, 0)).await;
            let mut clock = SessionClock { clock_ms: 100_000, last_sweep_ms: 0 };
            db.with(move |x| x.sweep(&mut clock, 1_000)).await;
            for seq in [1, 2] {
                db.with(move |x| x.record(s(7, seq, 1), &put(), &ApplyResult::Done, seq, at - 70_000)).await;
            }
            db.with(move |x| x.record(s(8, 1, 1), &put(), &ApplyResult::Done, 3, at - 10_000)).await;
            db.engine.write(Box::new(|_| Ok(()))).await.unwrap();
            assert_eq!(db.table_seqs(), vec![1, 2]);
            // Session 7's newest row and results only in the stages.
            for seq in [3, u64::MAX] {
                db.with_staged(move |x| x.record(s(7, seq, 1), &put(), &ApplyResult::Done, seq, at - 70_000)).await;
            }
            assert!(db.engine.overlay().has_settle());
            let sweep = move |x: &mut Sessions<'_>| {
                let mut clock = SessionClock { clock_ms: at, last_sweep_ms: 100_000 };
                x.sweep(&mut clock, ttl)
            };
            if staged {
                db.with_staged(sweep).await;
                assert_eq!(db.table_seqs(), vec![1, 2], "a staged sweep writes nothing to redb");
                assert_eq!(
                    db.with_staged(|x| x.admit(s(7, 4, 1), &put())).await,
                    Admit::Refuse(ApplyResult::SessionExpired(7))
                );
                assert_eq!(db.with_staged(|x| x.admit(s(9, 1, 1), &put())).await, Admit::Apply, "forgotten");
            } else {
                db.with(sweep).await;
            }
            assert_eq!(
                db.with(|x| x.admit(s(7, u64::MAX, 1), &put())).await,
                Admit::Refuse(ApplyResult::SessionExpired(7))
            );
            assert_eq!(db.with(|x| x.admit(s(8, 1, 1), &put())).await, Admit::Replay(ApplyResult::Done));
            assert_eq!(db.with(|x| x.admit(s(9, 1, 1), &put())).await, Admit::Apply);
            tables.push(tables_after_a_durable_commit(&db).await);
        }
        let (sessions, dedup) = &tables[0];
        assert_eq!(sessions.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![(1, 7), (1, 8)]);
        assert_eq!(dedup.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![(1, 8, 1)]);
        assert_eq!(tables[1], tables[0], "staged and in a write transaction, the same rows");
    }

    #[tokio::test]
    async fn a_successful_cas_is_remembered_without_its_previous_value() {
        let db = Db::new();
        let big = vec![9u8; 64 * 1024];
        let cas = LogOp::Cas { key: b"k".to_vec(), expected: Some(big.clone()), new: None };
        let (c, b) = (cas.clone(), big.clone());
        db.with(move |x| x.record(s(7, 1, 1), &c, &ApplyResult::Cas(true, Some(b)), 1, 0)).await;
        let row_len = db.result_row(1).unwrap().len();
        assert!(row_len < 64, "the dedup row does not copy the previous value");
        let c = cas.clone();
        assert_eq!(db.with(move |x| x.admit(s(7, 1, 1), &c)).await, Admit::Replay(ApplyResult::Cas(true, Some(big))));
        // A failed CAS keeps the current value: the reply needs it.
        let c = cas.clone();
        db.with(move |x| x.record(s(7, 2, 1), &c, &ApplyResult::Cas(false, Some(b"now".to_vec())), 2, 0)).await;
        assert_eq!(
            db.with(move |x| x.admit(s(7, 2, 1), &cas)).await,
            Admit::Replay(ApplyResult::Cas(false, Some(b"now".to_vec())))
        );
    }

    #[tokio::test]
    async fn a_merge_answers_retries_of_writes_either_region_applied() {
        let db = Db::new();
        // The target (rows under 1): session 7 applied seq 3 and 4 (acknowledged up to 3).
        db.with(|x| x.record(s(7, 3, 3), &put(), &ApplyResult::Done, 1, 1_000)).await;
        db.with(|x| x.record(s(7, 4, 3), &put(), &ApplyResult::Deleted(true), 2, 1_000)).await;
        // The source (rows under 2): session 7 applied seq 5 and 6 (acknowledged up to 5);
        // session 8 wrote only there.
        db.with_region(2, |x| x.record(s(7, 5, 5), &put(), &ApplyResult::Appended(9), 1, 2_000)).await;
        db.with_region(2, |x| x.record(s(7, 6, 5), &put(), &ApplyResult::Done, 2, 2_000)).await;
        db.with_region(2, |x| x.record(s(8, 1, 1), &put(), &ApplyResult::Done, 3, 2_000)).await;
        assert_eq!(db.with(|x| x.absorb(2)).await, 2, "two sessions merged");
        // The larger acknowledgement wins: seq 4 was acknowledged by the source's floor.
        assert_eq!(db.with(|x| x.admit(s(7, 4, 3), &put())).await, Admit::Refuse(ApplyResult::Acknowledged));
        // The source's results answer retries in the merged region, once.
        assert_eq!(db.with(|x| x.admit(s(7, 5, 5), &put())).await, Admit::Replay(ApplyResult::Appended(9)));
        assert_eq!(db.with(|x| x.admit(s(7, 6, 5), &put())).await, Admit::Replay(ApplyResult::Done));
        assert_eq!(db.with(|x| x.admit(s(8, 1, 1), &put())).await, Admit::Replay(ApplyResult::Done));
        // New writes apply.
        assert_eq!(db.with(|x| x.admit(s(7, 7, 5), &put())).await, Admit::Apply);
        assert_eq!(db.with(|x| x.admit(s(8, 2, 1), &put())).await, Admit::Apply);
    }

    fn batch(keys: &[&str]) -> LogOp {
        LogOp::BatchPut(keys.iter().map(|k| (k.as_bytes().to_vec(), b"v".to_vec())).collect())
    }

    /// A batch (seq 5) whose fate was unknown was planned again after a split: its part
    /// {a, b} applied in one half, then the halves merged back before the part {c, d}
    /// arrived. That part shares the seq but was never applied: it must be, not answered
    /// from the first part's row. Whichever side of the merge the first part applied in.
    #[tokio::test]
    async fn a_part_of_a_batch_is_applied_after_a_merge_back_even_though_another_part_shares_its_seq() {
        for first_in_target in [true, false] {
            let db = Db::new();
            let region = if first_in_target { 1 } else { 2 };
            db.with_region(region, |x| x.record(s(7, 5, 5), &batch(&["a", "b"]), &ApplyResult::Done, 3, 1_000)).await;
            db.with(|x| x.absorb(2)).await;
            assert_eq!(
                db.with(|x| x.admit(s(7, 5, 5), &batch(&["c", "d"]))).await,
                Admit::ApplyPart(batch(&["c", "d"])),
                "first part in the {}",
                if first_in_target { "target" } else { "source" }
            );
            db.with(|x| x.record(s(7, 5, 5), &batch(&["c", "d"]), &ApplyResult::Done, 9, 2_000)).await;
            // Now both parts are answered from the row, and a part mixing applied keys with
            // new ones applies only the new ones.
            for part in [&["a", "b"][..], &["c", "d"], &["d", "a"]] {
                assert_eq!(db.with(move |x| x.admit(s(7, 5, 5), &batch(part))).await, Admit::Replay(ApplyResult::Done));
            }
            assert_eq!(db.with(|x| x.admit(s(7, 5, 5), &batch(&["b", "e"]))).await, Admit::ApplyPart(batch(&["e"])));
        }
    }

    /// Parts of one batch applied on both sides of a split are both remembered by the
    /// merged region; a batch applied whole before a split answers its parts in either half.
    #[tokio::test]
    async fn merges_unite_the_keys_of_a_batch_and_splits_copy_them() {
        let db = Db::new();
        db.with(|x| x.record(s(7, 5, 5), &batch(&["a", "b"]), &ApplyResult::Done, 3, 1_000)).await;
        db.with_region(2, |x| x.record(s(7, 5, 5), &batch(&["c", "d"]), &ApplyResult::Done, 4, 1_000)).await;
        db.with(|x| x.absorb(2)).await;
        for part in [&["a", "b"][..], &["c", "d"]] {
            assert_eq!(db.with(move |x| x.admit(s(7, 5, 5), &batch(part))).await, Admit::Replay(ApplyResult::Done));
        }
        // Split: region 1's rows are copied to 3.
        db.with(|x| x.copy_to(3)).await;
        for part in [&["a"][..], &["d", "c"]] {
            assert_eq!(
                db.with_region(3, move |x| x.admit(s(7, 5, 5), &batch(part))).await,
                Admit::Replay(ApplyResult::Done)
            );
        }
        // A single-key write's row (version 1) still answers whatever the op.
        db.with(|x| x.record(s(7, 6, 5), &put(), &ApplyResult::Done, 5, 1_000)).await;
        assert_eq!(db.with(|x| x.admit(s(7, 6, 5), &put())).await, Admit::Replay(ApplyResult::Done));
    }

    #[tokio::test]
    async fn a_session_expired_on_either_side_of_a_merge_stays_expired() {
        let db = Db::new();
        db.with(|x| x.record(s(7, 1, 1), &put(), &ApplyResult::Done, 1, 100_000)).await;
        // Session 7 went idle in the source and expired there.
        db.with_region(2, |x| x.record(s(7, 2, 1), &put(), &ApplyResult::Done, 1, 1_000)).await;
        let mut clock = SessionClock { clock_ms: 70_000, last_sweep_ms: 0 };
        db.with_region(2, move |x| x.sweep(&mut clock, 60_000)).await;
        db.with(|x| x.absorb(2)).await;
        // Whether the source applied a retry of seq 2 can no longer be told: refused.
        assert_eq!(db.with(|x| x.admit(s(7, 2, 1), &put())).await, Admit::Refuse(ApplyResult::SessionExpired(7)));
        assert_eq!(db.with(|x| x.admit(s(7, 1, 1), &put())).await, Admit::Refuse(ApplyResult::SessionExpired(7)));
    }
}
