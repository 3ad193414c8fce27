//! Read-only views of a node's database, for tests and offline checks of a stopped node.

use std::collections::BTreeMap;
use std::io;

use redb::ReadableTable;

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

/// Every pair of `region`'s applied state, in key order.
pub fn region_pairs(engine: &Engine, region: u64) -> io::Result<Pairs> {
    let (pairs, _) = read_scan(engine, region, b"", b"", usize::MAX, usize::MAX, false)?;
    Ok(pairs)
}

/// Ids of the regions the node hosts.
pub fn region_ids(engine: &Engine) -> io::Result<Vec<u64>> {
    let txn = engine.read()?;
    let t = txn.open_table(tables::REGIONS).map_err(io_err)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(io_err)? {
        out.push(row.map_err(io_err)?.0.value());
    }
    Ok(out)
}
