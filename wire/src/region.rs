//! Region metadata: key ranges, epochs and peers.

use crate::{NodeId, PeerId, RegionId};

/// Version of a region's shape.
///
/// `conf_ver` grows on every membership change, `version` on every split or merge. A request
/// carries the epoch its sender believes in; a node answers a stale one with
/// [`crate::Error::EpochNotMatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct RegionEpoch {
    /// Configuration (membership) version.
    pub conf_ver: u64,
    /// Range version (splits and merges).
    pub version: u64,
}

impl RegionEpoch {
    /// True when `self` is older than `other` in either dimension.
    pub fn is_stale_against(&self, other: &RegionEpoch) -> bool {
        self.conf_ver < other.conf_ver || self.version < other.version
    }
}

/// One replica of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    /// The replica's id (its Raft node id inside the group).
    pub id: PeerId,
    /// The node hosting it.
    pub node_id: NodeId,
}

/// A region: a contiguous key range `[start_key, end_key)` replicated by `peers`.
///
/// An empty `end_key` means "up to the end of the key space". The first region starts at
/// the empty key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RegionDescriptor {
    /// Region id.
    pub id: RegionId,
    /// Inclusive start of the range.
    pub start_key: Vec<u8>,
    /// Exclusive end of the range; empty for unbounded.
    pub end_key: Vec<u8>,
    /// Shape version.
    pub epoch: RegionEpoch,
    /// Replicas.
    pub peers: Vec<Peer>,
}

impl RegionDescriptor {
    /// Does the region's range contain `key`?
    pub fn contains(&self, key: &[u8]) -> bool {
        key_in_range(key, &self.start_key, &self.end_key)
    }

    /// The peer hosted on `node`, if any.
    pub fn peer_on(&self, node: NodeId) -> Option<Peer> {
        self.peers.iter().copied().find(|p| p.node_id == node)
    }

    /// The peer with id `peer`, if it belongs to the region.
    pub fn peer(&self, peer: PeerId) -> Option<Peer> {
        self.peers.iter().copied().find(|p| p.id == peer)
    }
}

/// `start <= key < end`, with an empty `end` meaning unbounded.
pub fn key_in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

/// Where a region's leader is believed to be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderHint {
    /// The leader replica.
    pub peer: Peer,
    /// The address of the node hosting it (`host:port`).
    pub addr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_end_key_is_unbounded() {
        assert!(key_in_range(b"zzzz", b"m", b""));
        assert!(!key_in_range(b"a", b"m", b""));
        assert!(key_in_range(b"m", b"m", b"n"));
        assert!(!key_in_range(b"n", b"m", b"n"));
    }

    #[test]
    fn stale_epoch_in_either_dimension() {
        let new = RegionEpoch { conf_ver: 2, version: 3 };
        assert!(RegionEpoch { conf_ver: 1, version: 3 }.is_stale_against(&new));
        assert!(RegionEpoch { conf_ver: 2, version: 2 }.is_stale_against(&new));
        assert!(!new.is_stale_against(&new));
    }
}
