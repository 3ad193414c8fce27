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
    /// Format version 1 of a client write.
    WriteV1 {
        /// Session and sequence number for exactly-once application.
        session: Option<(u64, u64)>,
        /// The mutation.
        op: LogOp,
    },
}

/// A mutation, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogOp {
    /// Set.
    Put(Vec<u8>, Vec<u8>),
    /// Remove.
    Delete(Vec<u8>),
    /// Append bytes.
    Append(Vec<u8>, Vec<u8>),
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
    BatchPut(Vec<(Vec<u8>, Vec<u8>)>),
    /// Append bytes unless the value would grow past `max_len`; then the write is refused
    /// (the cap travels in the entry so every replica decides the same).
    AppendCapped {
        /// Key.
        key: Vec<u8>,
        /// Bytes appended.
        value: Vec<u8>,
        /// Longest value allowed.
        max_len: u64,
    },
}

impl fmt::Display for LogCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print keys or values: they may be sensitive.
        match self {
            LogCommand::WriteV1 { session, op } => {
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
    }
}

impl LogOp {
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
    /// grow a value to.
    pub fn from_wire(session: Option<SessionSeq>, command: WriteCommand, max_value_len: usize) -> LogCommand {
        let op = match command {
            WriteCommand::Put { key, value } => LogOp::Put(key, value),
            WriteCommand::Delete { key } => LogOp::Delete(key),
            WriteCommand::Append { key, value } => LogOp::AppendCapped { key, value, max_len: max_value_len as u64 },
            WriteCommand::CompareAndSwap { key, expected, new } => LogOp::Cas { key, expected, new },
            WriteCommand::BatchPut { pairs } => LogOp::BatchPut(pairs),
        };
        LogCommand::WriteV1 { session: session.map(|s| (s.session.0, s.seq)), op }
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

/// Snapshot bytes (built and installed whole; streamed over the network in chunks).
pub type SnapshotData = std::io::Cursor<Vec<u8>>;

/// A region's Raft handle.
pub type Raft = openraft::Raft<TypeConfig, crate::storage::RegionStateMachine>;

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
