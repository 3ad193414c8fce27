//! openraft log storage for one region.
//!
//! The region's unpurged log is mirrored in memory (bounded by log compaction), so reads
//! never touch the disk and entries whose append is still being flushed are visible to
//! replication, as openraft expects. Every mutation is written through the engine's group
//! commit: `append` fires openraft's `IOFlushed` only after the fsync that made the entries
//! durable; `save_vote`, `truncate_after` and `purge` return only once durable.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::engine::{io_err, Engine};
use super::records::{decode, encode};
use super::tables;
use crate::raft::types::{Entry, LogId, TypeConfig, Vote};

#[derive(Debug, Default)]
struct LogMem {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// Raft log storage of one region. Clones share state.
#[derive(Debug, Clone)]
pub struct RegionLogStore {
    region: u64,
    engine: Engine,
    mem: Arc<Mutex<LogMem>>,
}

impl RegionLogStore {
    /// Loads the region's log, vote and purge point from the database.
    pub fn open(engine: &Engine, region: u64) -> io::Result<RegionLogStore> {
        let txn = engine.read()?;
        let mut mem = LogMem::default();
        let logs = txn.open_table(tables::LOGS).map_err(io_err)?;
        for row in logs.range((region, 0u64)..=(region, u64::MAX)).map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            let entry: Entry = decode(v.value())?;
            let (_, index) = k.value();
            if entry.index() != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("log entry at {index} has index {}", entry.index()),
                ));
            }
            mem.entries.insert(index, entry);
        }
        let meta = txn.open_table(tables::RAFT_META).map_err(io_err)?;
        if let Some(v) = meta.get((region, "vote")).map_err(io_err)? {
            mem.vote = Some(decode(v.value())?);
        }
        if let Some(v) = meta.get((region, "purged")).map_err(io_err)? {
            mem.last_purged = Some(decode(v.value())?);
        }
        if let Some(v) = meta.get((region, "committed")).map_err(io_err)? {
            mem.committed = Some(decode(v.value())?);
        }
        Ok(RegionLogStore { region, engine: engine.clone(), mem: Arc::new(Mutex::new(mem)) })
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, LogMem> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn put_meta(&self, name: &'static str, bytes: Vec<u8>) -> io::Result<()> {
        let region = self.region;
        self.engine
            .write(Box::new(move |txn| {
                let mut t = txn.open_table(tables::RAFT_META).map_err(io_err)?;
                t.insert((region, name), bytes.as_slice()).map_err(io_err)?;
                Ok(())
            }))
            .await
    }
}

impl RaftLogReader<TypeConfig> for RegionLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let mem = self.mem();
        let start = match range.start_bound() {
            Bound::Included(x) => Bound::Included(*x),
            Bound::Excluded(x) => Bound::Excluded(*x),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Bound::Included(*x),
            Bound::Excluded(x) => Bound::Excluded(*x),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(mem.entries.range((start, end)).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.mem().vote)
    }
}

impl RaftLogStorage<TypeConfig> for RegionLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.mem();
        let last = mem.entries.values().next_back().map(|e| e.log_id()).or_else(|| mem.last_purged);
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.engine.check()?;
        let bytes = encode(vote)?;
        self.put_meta("vote", bytes).await?;
        self.mem().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let Some(c) = committed else { return Ok(()) };
        let bytes = encode(&c)?;
        // Not required to be durable: losing it only means recovery learns the commit index
        // from the leader again. Queue it without waiting or forcing an fsync.
        let region = self.region;
        self.engine.submit_lazy(Box::new(move |txn| {
            let mut t = txn.open_table(tables::RAFT_META).map_err(io_err)?;
            t.insert((region, "committed"), bytes.as_slice()).map_err(io_err)?;
            Ok(())
        }));
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
        self.engine.check()?;
        let mut rows = Vec::new();
        {
            let mut mem = self.mem();
            for entry in entries {
                rows.push((entry.index(), encode(&entry)?));
                mem.entries.insert(entry.index(), entry);
            }
        }
        let region = self.region;
        let n = rows.len() as u64;
        self.engine.submit(
            Box::new(move |txn| {
                let mut t = txn.open_table(tables::LOGS).map_err(io_err)?;
                for (index, bytes) in rows {
                    t.insert((region, index), bytes.as_slice()).map_err(io_err)?;
                }
                Ok(())
            }),
            Box::new(move |r| callback.io_completed(r)),
            n,
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.as_ref().map(|l| l.index() + 1).unwrap_or(0);
        {
            let mut mem = self.mem();
            let _ = mem.entries.split_off(&from);
        }
        let region = self.region;
        self.engine
            .write(Box::new(move |txn| {
                let mut t = txn.open_table(tables::LOGS).map_err(io_err)?;
                t.retain_in((region, from)..=(region, u64::MAX), |_, _| false).map_err(io_err)?;
                Ok(())
            }))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index();
        let bytes = encode(&log_id)?;
        {
            let mut mem = self.mem();
            mem.entries = mem.entries.split_off(&(upto + 1));
            mem.last_purged = Some(log_id);
        }
        let region = self.region;
        self.engine
            .write(Box::new(move |txn| {
                let mut t = txn.open_table(tables::LOGS).map_err(io_err)?;
                t.retain_in((region, 0u64)..=(region, upto), |_, _| false).map_err(io_err)?;
                let mut m = txn.open_table(tables::RAFT_META).map_err(io_err)?;
                m.insert((region, "purged"), bytes.as_slice()).map_err(io_err)?;
                Ok(())
            }))
            .await
    }
}
