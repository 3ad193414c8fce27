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
}

impl RegionRecord {
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

    /// To a descriptor.
    pub fn to_descriptor(&self) -> RegionDescriptor {
        match self {
            RegionRecord::V1 { id, start_key, end_key, epoch, peers } => RegionDescriptor {
                id: RegionId(*id),
                start_key: start_key.clone(),
                end_key: end_key.clone(),
                epoch: RegionEpoch { conf_ver: epoch.0, version: epoch.1 },
                peers: peers.iter().map(|(p, n)| Peer { id: PeerId(*p), node_id: NodeId(*n) }).collect(),
            },
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
}

/// A remembered write result for exactly-once application.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DedupRecord {
    /// Version 1.
    V1 {
        /// Log index the write was applied at.
        index: u64,
        /// Its result.
        result: ApplyResult,
    },
}

/// A snapshot of one region's state machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SnapshotRecord {
    /// Version 1.
    V1 {
        /// All pairs of the region, in key order.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        /// The dedup table: (session, seq, encoded DedupRecord).
        dedup: Vec<(u64, u64, Vec<u8>)>,
    },
}

/// Encodes a record.
pub fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Decodes a record.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> std::io::Result<T> {
    postcard::from_bytes(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
