//! Moves the Raft log of a data directory written before the log engine out of redb.
//!
//! Before the write-ahead log, every region's entries lived in redb's `raft_log` table and
//! its vote, commit mark and purge point in `raft_meta`. At start-up, if those tables hold
//! anything, their rows are written to the log engine (synced), then deleted from redb in one
//! durable transaction. Both steps are idempotent: a crash between them repeats the copy,
//! which rewrites the same entries at the same indexes.

use std::collections::BTreeMap;
use std::io;

use redb::{ReadableTable, ReadableTableMetadata};

use super::engine::{io_err, Engine};
use super::tables;
use super::wal::{LogEngine, Op};

/// Bytes of entries per log-engine write while copying.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Copies the Raft log out of redb if a previous version left one there. Returns the number
/// of entries moved.
pub fn raft_log_out_of_redb(engine: &Engine, wal: &LogEngine) -> io::Result<u64> {
    let txn = engine.read()?;
    let logs = txn.open_table(tables::LOGS).map_err(io_err)?;
    let meta = txn.open_table(tables::RAFT_META).map_err(io_err)?;
    if logs.is_empty().map_err(io_err)? && meta.is_empty().map_err(io_err)? {
        return Ok(0);
    }
    tracing::info!("moving the Raft log out of the state machine's database into the log engine");
    // Purge points first (they drop older entries), then entries, then votes and commit marks.
    let mut metas: BTreeMap<(u64, String), Vec<u8>> = BTreeMap::new();
    for row in meta.iter().map_err(io_err)? {
        let (k, v) = row.map_err(io_err)?;
        let (region, name) = k.value();
        metas.insert((region, name.to_owned()), v.value().to_vec());
    }
    for ((region, name), bytes) in &metas {
        if name == "purged" {
            let log_id: crate::raft::types::LogId = super::records::decode(bytes)?;
            wal.write_blocking(vec![Op::Purge { region: *region, upto: log_id.index, log_id: bytes.clone() }])?;
        }
    }
    let mut moved = 0u64;
    let mut pending: Option<(u64, u64, Vec<Vec<u8>>, usize)> = None;
    let flush = |p: &mut Option<(u64, u64, Vec<Vec<u8>>, usize)>| -> io::Result<()> {
        if let Some((region, first, entries, _)) = p.take() {
            wal.write_blocking(vec![Op::Entries { region, first, entries }])?;
        }
        Ok(())
    };
    for row in logs.iter().map_err(io_err)? {
        let (k, v) = row.map_err(io_err)?;
        let (region, index) = k.value();
        let contiguous = pending.as_ref().is_some_and(|(r, first, entries, bytes)| {
            *r == region && first + entries.len() as u64 == index && *bytes < CHUNK_BYTES
        });
        if !contiguous {
            flush(&mut pending)?;
            pending = Some((region, index, Vec::new(), 0));
        }
        if let Some((_, _, entries, bytes)) = pending.as_mut() {
            *bytes += v.value().len();
            entries.push(v.value().to_vec());
        }
        moved += 1;
    }
    flush(&mut pending)?;
    let mut rest = Vec::new();
    for ((region, name), bytes) in metas {
        match name.as_str() {
            "vote" => rest.push(Op::Vote { region, vote: bytes }),
            "committed" => rest.push(Op::Committed { region, committed: bytes }),
            _ => {}
        }
    }
    wal.write_blocking(rest)?;
    drop((logs, meta, txn));
    // Everything is durable in the log engine: drop the old rows.
    let (tx, rx) = std::sync::mpsc::channel();
    engine.submit(
        Box::new(|txn| {
            let mut logs = txn.open_table(tables::LOGS).map_err(io_err)?;
            logs.retain(|_, _| false).map_err(io_err)?;
            let mut meta = txn.open_table(tables::RAFT_META).map_err(io_err)?;
            meta.retain(|_, _| false).map_err(io_err)?;
            Ok(())
        }),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
        0,
    );
    rx.recv().map_err(|_| io::Error::other("storage writer dropped a job"))??;
    tracing::info!(entries = moved, "Raft log moved into the log engine");
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    use super::*;
    use crate::raft::types::{Entry, LogCommand, LogOp, TypeConfig, Vote};
    use crate::storage::records::encode;

    #[test]
    fn an_old_data_directory_keeps_its_log_vote_and_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("node.redb")).unwrap();
        let entry = |i: u64| Entry {
            log_id: log_id::<TypeConfig>(2, 1, i),
            payload: EntryPayload::Normal(LogCommand::WriteV1 {
                session: None,
                op: LogOp::Put(b"k".to_vec(), vec![i as u8]),
            }),
        };
        let vote = Vote::new(2, 1);
        let purged = log_id::<TypeConfig>(1, 1, 4);
        // What the previous version wrote: entries 5..=9 of region 3, its vote and purge point.
        let (rows, vote_b, purged_b) = (
            (5..=9).map(|i| (i, encode(&entry(i)).unwrap())).collect::<Vec<_>>(),
            encode(&vote).unwrap(),
            encode(&purged).unwrap(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        engine.submit(
            Box::new(move |txn| {
                let mut logs = txn.open_table(tables::LOGS).map_err(io_err)?;
                for (i, b) in &rows {
                    logs.insert((3u64, *i), b.as_slice()).map_err(io_err)?;
                }
                let mut meta = txn.open_table(tables::RAFT_META).map_err(io_err)?;
                meta.insert((3u64, "vote"), vote_b.as_slice()).map_err(io_err)?;
                meta.insert((3u64, "purged"), purged_b.as_slice()).map_err(io_err)?;
                Ok(())
            }),
            Box::new(move |r| tx.send(r).unwrap()),
            5,
        );
        rx.recv().unwrap().unwrap();
        let wal = LogEngine::open(&dir.path().join("raft-log")).unwrap();
        assert_eq!(raft_log_out_of_redb(&engine, &wal).unwrap(), 5);
        let state = wal.region_state(3);
        assert_eq!(state.entries, Some((5, 9)));
        assert_eq!(state.purged.map(|p| p.0), Some(4));
        assert_eq!(super::super::records::decode::<Vote>(&state.vote.unwrap()).unwrap(), vote);
        let got = wal.read(3, 5, 10, usize::MAX).unwrap();
        assert_eq!(super::super::records::decode::<Entry>(&got[4].1).unwrap(), entry(9));
        // The old rows are gone, so a second start moves nothing.
        assert_eq!(raft_log_out_of_redb(&engine, &wal).unwrap(), 0);
        assert!(engine.read().unwrap().open_table(tables::LOGS).unwrap().is_empty().unwrap());
    }
}
