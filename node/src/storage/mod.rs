//! Node storage: one write-ahead log per node holding every region's Raft log and vote,
//! and one redb database per node holding every region's state machine.
//!
//! * [`wal`]: the Raft log engine: segmented, checksummed, one `fdatasync` per group
//!   commit of all regions' appends. A failed write fail-stops it.
//! * [`engine`]: the database and its single writer thread, which batches the writes of all
//!   regions into one write transaction (group commit), then completes them; an apply of
//!   plain writes is staged instead, with no transaction, when the writer holds none. A
//!   failed commit fail-stops the engine.
//! * [`overlay`]: the data overlay, the `data` rows applied and not yet written to redb,
//!   which every durable commit writes first; readers read through it. Beside it, what
//!   staged applies leave for the other tables.
//! * [`paced_file`]: redb's file, whose commits' write-back goes to the disk in steps so that
//!   log syncs on the same disk do not queue behind a whole durable commit.
//! * [`log_store`]: openraft's `RaftLogStorage` for one region, on the log engine.
//! * [`migrate`]: moves the Raft log of a data directory written before the log engine
//!   out of redb.
//! * [`state_machine`]: openraft's `RaftStateMachine` for one region, with the
//!   exactly-once dedup table.
//! * [`records`]: the on-disk record types (versioned; never wire types).

pub mod engine;
pub mod inspect;
pub mod log_store;
pub mod migrate;
pub mod overlay;
pub mod paced_file;
pub mod records;
pub mod sessions;
pub mod snapshot;
pub mod state_machine;
pub(crate) mod tables;
pub mod wal;

pub use engine::{CommitStats, Engine, StorageError};
pub use log_store::RegionLogStore;
pub use state_machine::{RegionShared, RegionStateMachine};

#[cfg(test)]
mod conformance {
    //! openraft's storage conformance suite, run against the log engine and the redb state machine.

    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError as RaftStorageError;
    use tessera_wire::{NodeId, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId};

    use super::*;
    use crate::raft::types::TypeConfig;

    /// Builds stores whose in-memory log tail holds `budget` bytes: the default, and one
    /// byte (so every durable entry but the newest is read back from redb).
    struct Builder {
        budget: usize,
    }

    impl StoreBuilder<TypeConfig, RegionLogStore, RegionStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, RegionLogStore, RegionStateMachine), RaftStorageError<TypeConfig>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = Engine::open(&dir.path().join("node.redb")).expect("open engine");
            let wal = wal::LogEngine::open(&dir.path().join("raft-log")).expect("open log engine");
            let desc = RegionDescriptor {
                id: RegionId(7),
                start_key: vec![],
                end_key: vec![],
                epoch: RegionEpoch { conf_ver: 1, version: 1 },
                peers: vec![Peer { id: PeerId(1), node_id: NodeId(1) }],
            };
            let log = RegionLogStore::open_with_budget(&engine, &wal, 7, self.budget).expect("open log");
            let sm = RegionStateMachine::open(&engine, RegionShared::new(desc, 0)).expect("open sm");
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_conformance_suite_passes() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            Suite::test_all(Builder { budget: log_store::TAIL_BYTES }).await.expect("conformance suite");
        });
    }

    #[test]
    fn openraft_storage_conformance_suite_passes_with_the_log_read_from_disk() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            Suite::test_all(Builder { budget: 1 }).await.expect("conformance suite");
        });
    }
}
