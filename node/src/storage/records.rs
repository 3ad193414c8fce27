//! On-disk records. Each is an enum whose variant is its format version, so a later version
//! can read what an earlier one wrote. They are postcard-encoded.
//!
//! Raft log entries and votes are stored as openraft's own serde encoding; openraft is
//! pinned to an exact version, and a change of that pin must come with a migration.

use serde::{Deserialize, Serialize};
use tessera_wire::{NodeId, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId};

use crate::raft::types::{ApplyResult, LogId, StoredMembership};

/// A region hosted by this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionRecord {
    /// Version 1.
    V1 {
        /// Region id.
        id: u64,
        /// Start key.
        start_key: Vec<u8>,
        /// End key (empty: unbounded).
        end_key: Vec<u8>,
        /// Epoch (conf_ver, version).
        epoch: (u64, u64),
        /// (peer id, node id) pairs.
        peers: Vec<(u64, u64)>,
    },
    /// The region's replica on this node was destroyed (moved away or removed) when the
    /// region had this epoch. Keeps a stale copy of the region (a late PD answer, a peer
    /// back from a partition) from bringing the replica back; a newer epoch that includes
    /// this node again may.
    TombstoneV1 {
        /// Region id.
        id: u64,
        /// Epoch (conf_ver, version) of the region when its replica here was destroyed.
        epoch: (u64, u64),
        /// The destroyed replica's peer id: a replica with that id is never created again
        /// (it would come back with an empty log its leader believes it has).
        peer: u64,
    },
    /// Version 2: version 1 with the region's merge state, written while it is prepared
    /// to merge (version 1 otherwise).
    V2 {
        /// Region id.
        id: u64,
        /// Start key.
        start_key: Vec<u8>,
        /// End key (empty: unbounded).
        end_key: Vec<u8>,
        /// Epoch (conf_ver, version).
        epoch: (u64, u64),
        /// (peer id, node id) pairs.
        peers: Vec<(u64, u64)>,
        /// Set while the region is prepared to merge into its left neighbour.
        merging: Option<MergeState>,
    },
}

/// A region prepared to merge into `target`: it serves no reads or writes until `target`
/// absorbs it (and its replicas are destroyed) or the merge is rolled back. Part of the
/// replicated state: in the region record, and so in snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeState {
    /// The region absorbing this one (its left neighbour).
    pub target: u64,
    /// The target's epoch (conf_ver, version) the merge was prepared against.
    pub target_epoch: (u64, u64),
    /// Log index of the prepare.
    pub prepare_index: u64,
}

impl RegionRecord {
    /// From a descriptor and its merge state.
    pub fn with_merge(d: &RegionDescriptor, merging: Option<MergeState>) -> Self {
        match (RegionRecord::from_descriptor(d), merging) {
            (RegionRecord::V1 { id, start_key, end_key, epoch, peers }, Some(m)) => {
                RegionRecord::V2 { id, start_key, end_key, epoch, peers, merging: Some(m) }
            }
            (r, _) => r,
        }
    }

    /// The merge state (`None` unless prepared to merge).
    pub fn merging(&self) -> Option<MergeState> {
        match self {
            RegionRecord::V2 { merging, .. } => *merging,
            _ => None,
        }
    }

    /// From a descriptor.
    pub fn from_descriptor(d: &RegionDescriptor) -> Self {
        RegionRecord::V1 {
            id: d.id.0,
            start_key: d.start_key.clone(),
            end_key: d.end_key.clone(),
            epoch: (d.epoch.conf_ver, d.epoch.version),
            peers: d.peers.iter().map(|p| (p.id.0, p.node_id.0)).collect(),
        }
    }

    /// To a descriptor; `None` for a tombstone.
    pub fn to_descriptor(&self) -> Option<RegionDescriptor> {
        match self {
            RegionRecord::V1 { id, start_key, end_key, epoch, peers }
            | RegionRecord::V2 { id, start_key, end_key, epoch, peers, .. } => Some(RegionDescriptor {
                id: RegionId(*id),
                start_key: start_key.clone(),
                end_key: end_key.clone(),
                epoch: RegionEpoch { conf_ver: epoch.0, version: epoch.1 },
                peers: peers.iter().map(|(p, n)| Peer { id: PeerId(*p), node_id: NodeId(*n) }).collect(),
            }),
            RegionRecord::TombstoneV1 { .. } => None,
        }
    }

    /// The tombstone of the replica `peer` of `desc`.
    pub fn tombstone(desc: &RegionDescriptor, peer: PeerId) -> Self {
        RegionRecord::TombstoneV1 { id: desc.id.0, epoch: (desc.epoch.conf_ver, desc.epoch.version), peer: peer.0 }
    }

    /// The epoch and peer id of a tombstone.
    pub fn tombstone_of(&self) -> Option<(RegionEpoch, PeerId)> {
        match self {
            RegionRecord::TombstoneV1 { epoch, peer, .. } => {
                Some((RegionEpoch { conf_ver: epoch.0, version: epoch.1 }, PeerId(*peer)))
            }
            RegionRecord::V1 { .. } | RegionRecord::V2 { .. } => None,
        }
    }
}

/// State machine metadata, written in the same transaction as the data it describes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SmMetaRecord {
    /// Version 1.
    V1 {
        /// Last applied log id.
        applied: Option<LogId>,
        /// Last applied membership.
        membership: StoredMembership,
    },
    /// Version 2: with the region's session clock and the id its rows are stored under.
    V2 {
        /// Last applied log id.
        applied: Option<LogId>,
        /// Last applied membership.
        membership: StoredMembership,
        /// The session clock.
        clock: SessionClock,
        /// The key prefix of the region's rows in `data`, `dedup` and `sessions` (see
        /// [`SmState::data_id`]).
        data_id: u64,
    },
}

/// A region's state-machine metadata, whatever the record version.
#[derive(Debug, Clone, Default)]
pub struct SmState {
    /// Last applied log id.
    pub applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// The session clock.
    pub clock: SessionClock,
    /// The key prefix of the region's rows in the `data` table. It starts as the region id
    /// and changes when a snapshot is installed: the snapshot is written under a fresh id,
    /// then one small commit switches to it, so a region's state is never half replaced.
    /// A region split off keeps its parent's data id, so a split moves no rows: regions
    /// sharing a data id have disjoint ranges, and every reader and collector of a region's
    /// rows bounds itself by the region's range.
    pub data_id: u64,
    /// The key prefix of the region's rows in the `dedup` and `sessions` tables: the data
    /// id, except for a region split off (its own region id, where the split copied its
    /// parent's session rows), since session rows are not split by key.
    pub session_id: u64,
}

impl SmMetaRecord {
    /// The state of `region` this record describes (version 1 has a zero clock and keeps
    /// its rows under the region id).
    pub fn state(self, region: u64) -> SmState {
        match self {
            SmMetaRecord::V1 { applied, membership } => {
                SmState { applied, membership, clock: SessionClock::default(), data_id: region, session_id: region }
            }
            SmMetaRecord::V2 { applied, membership, clock, data_id } => {
                SmState { applied, membership, clock, data_id, session_id: data_id }
            }
        }
    }

    /// The current record of `state`.
    pub fn from_state(state: &SmState) -> SmMetaRecord {
        SmMetaRecord::V2 {
            applied: state.applied,
            membership: state.membership.clone(),
            clock: state.clock,
            data_id: state.data_id,
        }
    }
}

/// The region's clock for session expiry: the largest leader timestamp applied, and when
/// sessions were last swept. Part of the replicated state (in `sm_meta` and snapshots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClock {
    /// Largest leader timestamp applied (ms since the Unix epoch).
    pub clock_ms: u64,
    /// Region clock at the last sweep of idle sessions.
    pub last_sweep_ms: u64,
}

/// A client session as one region knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionRecord {
    /// Version 1.
    V1 {
        /// Region clock of the session's last write here.
        last_seen_ms: u64,
        /// The largest acknowledgement (first pending sequence number) received: results
        /// of lower sequence numbers are forgotten, and those numbers refused.
        floor: u64,
        /// Set when the session expired (region clock at expiry): its writes are refused
        /// with `SessionExpired` until the tombstone itself is dropped.
        expired_at_ms: Option<u64>,
    },
}

/// A remembered write result for exactly-once application.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DedupRecord {
    /// Version 1: the write applied whole (every row written before version 2, and every
    /// write of one key).
    V1 {
        /// Log index the write was applied at.
        index: u64,
        /// Its result.
        result: ApplyResult,
    },
    /// Version 2: a batch write, with the keys applied under its `(session, seq)` in this
    /// region's lineage. The parts of a batch planned again after a split share its seq;
    /// a part whose keys are not all here was not applied here (docs/storage.md,
    /// "Batches across regions").
    V2 {
        /// Log index the write (its last part) was applied at.
        index: u64,
        /// Its result.
        result: ApplyResult,
        /// The keys applied, sorted and without duplicates.
        keys: Vec<Vec<u8>>,
    },
}

/// One record of a snapshot file (see `storage::snapshot`). The file's header names the
/// format version; these are the records of version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotItem {
    /// First record: the session clock.
    Clock(SessionClock),
    /// A key and its value.
    Pair(Vec<u8>, Vec<u8>),
    /// A row of the dedup table: session, seq, postcard `DedupRecord`.
    Dedup(u64, u64, Vec<u8>),
    /// A row of the sessions table: session, postcard `SessionRecord`.
    Session(u64, Vec<u8>),
    /// Last record: how many of each came before, so a truncated file is detected.
    End {
        /// `Pair` records.
        pairs: u64,
        /// `Dedup` records.
        dedup: u64,
        /// `Session` records.
        sessions: u64,
    },
    /// Second record (snapshots of format 2): the region's postcard `RegionRecord` (its
    /// range, epoch and voters) as of the snapshot, which the installing replica adopts.
    Region(Vec<u8>),
}

/// Encodes a record.
pub fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Decodes a record.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> std::io::Result<T> {
    postcard::from_bytes(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
