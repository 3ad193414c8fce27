//! Read-only views of a node's database, for tests and offline checks of a stopped node.

use std::collections::BTreeMap;
use std::io;

use redb::{ReadableTable, ReadableTableMetadata};

use super::engine::{io_err, Engine};
use super::records::decode;
use super::state_machine::{read_scan, Pairs};
use super::tables;
use super::wal::LogEngine;
use crate::raft::types::Vote;

/// The durable Raft vote of every region that has one, by region id.
pub fn votes(wal: &LogEngine) -> io::Result<BTreeMap<u64, Vote>> {
    let mut out = BTreeMap::new();
    for region in wal.regions() {
        if let Some(v) = wal.region_state(region).vote {
            out.insert(region, decode(&v)?);
        }
    }
    Ok(out)
}

/// Every pair of `region`'s applied state, in key order (within its range: regions split
/// off share their parent's data id).
pub fn region_pairs(engine: &Engine, region: u64) -> io::Result<Pairs> {
    let (start, end) = {
        let txn = engine.read()?;
        let t = txn.open_table(tables::REGIONS).map_err(io_err)?;
        let record =
            t.get(region).map_err(io_err)?.map(|v| decode::<super::records::RegionRecord>(v.value())).transpose()?;
        match record.and_then(|r| r.to_descriptor()) {
            Some(d) => (d.start_key, d.end_key),
            None => (Vec::new(), Vec::new()),
        }
    };
    let (pairs, _) = read_scan(engine, region, None, &start, &end, usize::MAX, usize::MAX, false)?;
    Ok(pairs)
}

/// Ids of the regions the node hosts (not those whose replica it destroyed).
pub fn region_ids(engine: &Engine) -> io::Result<Vec<u64>> {
    let txn = engine.read()?;
    let t = txn.open_table(tables::REGIONS).map_err(io_err)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(io_err)? {
        let (k, v) = row.map_err(io_err)?;
        if decode::<super::records::RegionRecord>(v.value())?.to_descriptor().is_some() {
            out.push(k.value());
        }
    }
    Ok(out)
}

/// Rows of each table of the state machines' database, for tests of replica destruction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Key-value rows, all regions.
    pub data: u64,
    /// Exactly-once rows.
    pub dedup: u64,
    /// Session rows.
    pub sessions: u64,
    /// State-machine meta rows (one per hosted region).
    pub sm_meta: u64,
    /// Live region records.
    pub regions: u64,
    /// Tombstones of destroyed replicas.
    pub tombstones: u64,
}

/// Counts the rows of every table.
pub fn row_counts(engine: &Engine) -> io::Result<RowCounts> {
    // Under the commit lock, so that no row moves from the dedup stage to the table between
    // the two counts.
    let (txn, staged_dedup) = engine.read_cut(|_, _| Ok(engine.overlay().dedup_len() as u64))?;
    let mut c = RowCounts {
        data: txn.open_table(tables::DATA).map_err(io_err)?.len().map_err(io_err)?,
        // With the rows staged in memory (`overlay.rs`, "The dedup stage").
        dedup: txn.open_table(tables::DEDUP).map_err(io_err)?.len().map_err(io_err)? + staged_dedup,
        sessions: txn.open_table(tables::SESSIONS).map_err(io_err)?.len().map_err(io_err)?,
        sm_meta: txn.open_table(tables::SM_META).map_err(io_err)?.len().map_err(io_err)?,
        ..RowCounts::default()
    };
    for row in txn.open_table(tables::REGIONS).map_err(io_err)?.iter().map_err(io_err)? {
        let (_, v) = row.map_err(io_err)?;
        match decode::<super::records::RegionRecord>(v.value())?.to_descriptor() {
            Some(_) => c.regions += 1,
            None => c.tombstones += 1,
        }
    }
    Ok(c)
}
