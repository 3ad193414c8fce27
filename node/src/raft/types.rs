//! The Raft type configuration and the commands carried in Raft log entries.
//!
//! Log commands and apply results are *storage* types (they live in the Raft log on disk),
//! distinct from the wire types; conversions happen at the service boundary.

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_wire::{SessionSeq, WriteCommand, WriteResult};

/// What a replica of a region knows about another replica: the node hosting it. Addresses
/// are resolved through the node's address book at send time, because a node's address can
/// change across restarts while its id cannot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// Hosting node id.
    pub node_id: u64,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.node_id)
    }
}

/// A replicated command: one entry of a region's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogCommand {
    /// Format version 1 of a client write (read for logs written before version 2).
    WriteV1 {
        /// Session and sequence number for exactly-once application.
        session: Option<(u64, u64)>,
        /// The mutation.
        op: LogOp,
    },
    /// Format version 2 of a client write: with the client's acknowledgement and the
    /// leader's clock, so every replica expires sessions identically.
    WriteV2 {
        /// Session, sequence number and acknowledgement, for exactly-once application.
        session: Option<SessionRef>,
        /// The mutation.
        op: LogOp,
        /// The proposing leader's wall clock (ms since the Unix epoch). Replicas keep the
        /// largest seen as the region's clock, which only moves forward.
        at_ms: u64,
        /// Sessions idle longer than this (ms) expire; from the proposing leader's config.
        session_ttl_ms: u64,
    },
    /// Split the region at `key`: the region keeps `[start, key)`, and `[key, end)` becomes
    /// region `new_region_id` with the replicas `new_peers` (peer id, node id), one on each
    /// node hosting a voter. Applied only if the region's range version is still
    /// `version`; every replica applies it at the same index and seeds the new region's
    /// group from its own state.
    SplitV1 {
        /// First key of the new region.
        key: Vec<u8>,
        /// The range version the split was proposed against.
        version: u64,
        /// Id of the new region.
        new_region_id: u64,
        /// Its replicas: (peer id, node id).
        new_peers: Vec<(u64, u64)>,
    },
    /// Prepare to merge into `target`, the left neighbour: applied only if the region's
    /// epoch is still (`conf_ver`, `version`) and it is not prepared already. The region
    /// then refuses every later write, so its state as of this entry is final, and raises
    /// its range version.
    PrepareMergeV1 {
        /// The epoch the prepare was proposed against.
        conf_ver: u64,
        /// See `conf_ver`.
        version: u64,
        /// The region that will absorb this one.
        target: u64,
        /// The target's epoch (conf_ver, version) the merge is prepared against.
        target_epoch: (u64, u64),
    },
    /// Absorb the right neighbour `source`, prepared at `prepare_index` of its log: applied
    /// only if this region's epoch is still `target_epoch`, its range ends where the
    /// source's starts, and both have voters on the same nodes. Each replica first waits
    /// for its own replica of the source to apply the prepare.
    CommitMergeV1 {
        /// This region's epoch (conf_ver, version) the merge was prepared against.
        target_epoch: (u64, u64),
        /// The source's id.
        source: u64,
        /// The source's start key.
        source_start: Vec<u8>,
        /// The source's end key (empty: unbounded).
        source_end: Vec<u8>,
        /// The source's epoch (conf_ver, version) after its prepare.
        source_epoch: (u64, u64),
        /// The source's voters: (peer id, node id).
        source_peers: Vec<(u64, u64)>,
        /// Log index of the prepare in the source's log.
        prepare_index: u64,
    },
    /// Serve again after a prepare whose merge can no longer happen (the target's epoch
    /// moved past the one prepared against without absorbing this region).
    RollbackMergeV1 {
        /// The prepare rolled back: refused unless it is the current one.
        prepare_index: u64,
    },
}

/// A write's place in its client session (the log's copy of [`SessionSeq`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// Session id.
    pub id: u64,
    /// Sequence number of this write.
    pub seq: u64,
    /// Every write of the session numbered below this has been answered to the client and
    /// will never be sent again.
    pub first_pending: u64,
}

impl LogCommand {
    /// The commit of the merge of `source` (as prepared: its epoch after the prepare at
    /// `prepare_index`) into the region whose epoch is `target`.
    pub fn commit_merge(
        target: tessera_wire::RegionEpoch,
        source: &tessera_wire::RegionDescriptor,
        prepare_index: u64,
    ) -> LogCommand {
        LogCommand::CommitMergeV1 {
            target_epoch: (target.conf_ver, target.version),
            source: source.id.0,
            source_start: source.start_key.clone(),
            source_end: source.end_key.clone(),
            source_epoch: (source.epoch.conf_ver, source.epoch.version),
            source_peers: source.peers.iter().map(|p| (p.id.0, p.node_id.0)).collect(),
            prepare_index,
        }
    }

    /// The mutation of a client write, whatever the format version; `None` for an admin
    /// command.
    pub fn op(&self) -> Option<&LogOp> {
        match self {
            LogCommand::WriteV1 { op, .. } | LogCommand::WriteV2 { op, .. } => Some(op),
            LogCommand::SplitV1 { .. }
            | LogCommand::PrepareMergeV1 { .. }
            | LogCommand::CommitMergeV1 { .. }
            | LogCommand::RollbackMergeV1 { .. } => None,
        }
    }

    /// An upper bound on the command's postcard encoding.
    pub fn encoded_len_bound(&self) -> usize {
        match self {
            LogCommand::WriteV1 { op, .. } | LogCommand::WriteV2 { op, .. } => op.encoded_len_bound() + 48,
            LogCommand::SplitV1 { key, new_peers, .. } => key.len() + 32 + new_peers.len() * 20,
            LogCommand::PrepareMergeV1 { .. } | LogCommand::RollbackMergeV1 { .. } => 64,
            LogCommand::CommitMergeV1 { source_start, source_end, source_peers, .. } => {
                source_start.len() + source_end.len() + source_peers.len() * 20 + 96
            }
        }
    }
}

/// A mutation, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogOp {
    /// Set.
    Put(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Vec<u8>),
    /// Remove.
    Delete(Vec<u8>),
    /// Append bytes.
    Append(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Vec<u8>),
    /// Compare-and-swap.
    Cas {
        /// Key.
        key: Vec<u8>,
        /// Expected value (None: absent).
        expected: Option<Vec<u8>>,
        /// New value (None: delete).
        new: Option<Vec<u8>>,
    },
    /// Several puts.
    BatchPut(#[serde(with = "tessera_wire::byte_pairs")] Vec<(Vec<u8>, Vec<u8>)>),
    /// Append bytes unless the value would grow past `max_len`; then the write is refused
    /// (the cap travels in the entry so every replica decides the same).
    AppendCapped {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Bytes appended.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Longest value allowed.
        max_len: u64,
    },
}

impl fmt::Display for LogCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print keys or values: they may be sensitive.
        let session = match self {
            LogCommand::WriteV1 { session, .. } => *session,
            LogCommand::WriteV2 { session, .. } => session.map(|s| (s.id, s.seq)),
            LogCommand::SplitV1 { version, new_region_id, .. } => {
                return write!(f, "split(version={version}, new_region={new_region_id})")
            }
            LogCommand::PrepareMergeV1 { target, .. } => return write!(f, "prepare_merge(target={target})"),
            LogCommand::CommitMergeV1 { source, .. } => return write!(f, "commit_merge(source={source})"),
            LogCommand::RollbackMergeV1 { prepare_index } => return write!(f, "rollback_merge({prepare_index})"),
        };
        let Some(op) = self.op() else { return write!(f, "admin") };
        let kind = match op {
            LogOp::Put(..) => "put",
            LogOp::Delete(..) => "delete",
            LogOp::Append(..) | LogOp::AppendCapped { .. } => "append",
            LogOp::Cas { .. } => "cas",
            LogOp::BatchPut(p) => return write!(f, "batch_put({}) session={session:?}", p.len()),
        };
        write!(f, "{kind} session={session:?}")
    }
}

impl LogOp {
    /// The keys the mutation touches.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            LogOp::Put(k, _) | LogOp::Delete(k) | LogOp::Append(k, _) => vec![k],
            LogOp::AppendCapped { key, .. } | LogOp::Cas { key, .. } => vec![key],
            LogOp::BatchPut(pairs) => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
        }
    }

    /// An upper bound on the op's postcard encoding, from its key and value lengths.
    pub fn encoded_len_bound(&self) -> usize {
        const P: usize = tessera_wire::PAIR_OVERHEAD;
        let opt = |v: &Option<Vec<u8>>| v.as_ref().map_or(1, |v| v.len() + P);
        16 + match self {
            LogOp::Put(k, v) | LogOp::Append(k, v) => k.len() + v.len() + P,
            LogOp::AppendCapped { key, value, .. } => key.len() + value.len() + P + 10,
            LogOp::Delete(k) => k.len() + P,
            LogOp::Cas { key, expected, new } => key.len() + P + opt(expected) + opt(new),
            LogOp::BatchPut(pairs) => pairs.iter().map(|(k, v)| k.len() + v.len() + P).sum::<usize>() + 5,
        }
    }
}

impl LogCommand {
    /// Converts a wire write into a log command; `max_value_len` caps what an append may
    /// grow a value to, `at_ms` is the leader's clock and `session_ttl_ms` its session
    /// lifetime.
    pub fn from_wire(
        session: Option<SessionSeq>,
        command: WriteCommand,
        max_value_len: usize,
        at_ms: u64,
        session_ttl_ms: u64,
    ) -> LogCommand {
        let op = match command {
            WriteCommand::Put { key, value } => LogOp::Put(key, value),
            WriteCommand::Delete { key } => LogOp::Delete(key),
            WriteCommand::Append { key, value } => LogOp::AppendCapped { key, value, max_len: max_value_len as u64 },
            WriteCommand::CompareAndSwap { key, expected, new } => LogOp::Cas { key, expected, new },
            WriteCommand::BatchPut { pairs } => LogOp::BatchPut(pairs),
        };
        let session = session.map(|s| SessionRef { id: s.session.0, seq: s.seq, first_pending: s.first_pending });
        LogCommand::WriteV2 { session, op, at_ms, session_ttl_ms }
    }
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ApplyResult {
    /// A blank or membership entry.
    #[default]
    None,
    /// Put or batch put.
    Done,
    /// Delete.
    Deleted(bool),
    /// Append: new length.
    Appended(u64),
    /// CAS: succeeded, previous value.
    Cas(bool, Option<Vec<u8>>),
    /// The write was refused by the state machine and changed nothing: an append would
    /// have grown the value to `len` bytes, past `max`.
    ValueTooLarge {
        /// Length the value would have had.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// Refused, nothing changed: the write's session expired, so whether an earlier copy
    /// of it was applied can no longer be told.
    SessionExpired(u64),
    /// Refused, nothing changed: the client had already acknowledged this sequence number
    /// (a stale duplicate delivered late; the client no longer waits for it).
    Acknowledged,
    /// Refused, nothing changed: a key of the write left the region's range (a split
    /// applied between the proposal and its entry). The client retries on the region that
    /// now holds the key.
    KeyNotInRange,
    /// A split applied: the region now ends at the split key.
    Split,
    /// A split refused: the region's range changed since it was proposed, or the key is
    /// not strictly inside the range.
    SplitRefused,
    /// The region is prepared to merge: it refuses writes from now on.
    MergePrepared,
    /// The region absorbed its right neighbour.
    Merged,
    /// A merge command refused (the epoch moved on, the regions are not adjacent or not
    /// on the same nodes, or the prepare is not the current one); nothing changed.
    MergeRefused,
    /// A prepared merge was rolled back: the region serves again.
    MergeRolledBack,
}

impl ApplyResult {
    /// Converts to the wire answer: a write result, or the typed error of a refused write.
    pub fn to_wire(&self) -> Result<WriteResult, tessera_wire::Error> {
        Ok(match self {
            ApplyResult::None | ApplyResult::Done => WriteResult::Done,
            ApplyResult::Deleted(existed) => WriteResult::Deleted { existed: *existed },
            ApplyResult::Appended(n) => WriteResult::Appended { new_len: *n },
            ApplyResult::Cas(succeeded, previous) => {
                WriteResult::CompareAndSwap { succeeded: *succeeded, previous: previous.clone() }
            }
            ApplyResult::ValueTooLarge { len, max } => {
                return Err(tessera_wire::Error::ValueTooLarge { len: *len, max: *max })
            }
            ApplyResult::SessionExpired(id) => {
                return Err(tessera_wire::Error::SessionExpired { session: tessera_wire::SessionId(*id) })
            }
            ApplyResult::Acknowledged => {
                return Err(tessera_wire::Error::InvalidRequest {
                    reason: "the session had already acknowledged this sequence number".into(),
                })
            }
            // The service replaces the empty list with the descriptors it holds.
            ApplyResult::KeyNotInRange | ApplyResult::SplitRefused | ApplyResult::MergeRefused => {
                return Err(tessera_wire::Error::EpochNotMatch { current: vec![] })
            }
            ApplyResult::Split | ApplyResult::MergePrepared | ApplyResult::Merged | ApplyResult::MergeRolledBack => {
                WriteResult::Done
            }
        })
    }
}

openraft::declare_raft_types!(
    /// Tessera's Raft types: peer ids are `u64` ([`tessera_wire::PeerId`]), log entries
    /// carry [`LogCommand`]s.
    pub TypeConfig:
        D = LogCommand,
        R = ApplyResult,
        NodeId = u64,
        Node = PeerNode,
);

/// A snapshot: a file built, received and installed record by record (see
/// `storage::snapshot`), never held in memory whole.
pub type SnapshotData = crate::storage::snapshot::SnapshotFile;

/// A region's Raft handle.
pub type Raft = openraft::Raft<TypeConfig, crate::storage::RegionStateMachine>;

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type Membership = openraft::Membership<u64, PeerNode>;
