//! Key-value requests and responses (client to region leader).

use crate::{RegionEpoch, RegionId, SessionId};

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ReadConsistency {
    /// Linearizable: served by the leader after confirming leadership (read index or lease).
    #[default]
    Linearizable,
    /// Served by any replica from its applied state; may miss recent writes.
    Stale,
}

/// Routing and deadline information every KV request carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestHeader {
    /// Target region.
    pub region_id: RegionId,
    /// The epoch the client believes the region has.
    pub epoch: RegionEpoch,
    /// Time the server may spend on the request, in milliseconds (0: server default).
    pub timeout_ms: u32,
    /// Read consistency (ignored for writes).
    pub consistency: ReadConsistency,
}

/// Identifies one write of a client session, for exactly-once application.
///
/// `first_pending` is the client's acknowledgement (Raft thesis §6.3): every write of the
/// session numbered below it has had its answer delivered to the client, which will never
/// resend it, so the servers may forget those results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SessionSeq {
    /// The session.
    pub session: SessionId,
    /// Per-session sequence number, increasing by one per write.
    pub seq: u64,
    /// The lowest sequence number of this session still awaiting its answer (at most `seq`).
    pub first_pending: u64,
}

/// A KV request to one region.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvRequest {
    /// Routing header.
    pub header: RequestHeader,
    /// The operation.
    pub op: KvOp,
}

/// A KV operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KvOp {
    /// Read one key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Read several keys of the region.
    BatchGet {
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// Read a page of `[start, end)` within the region, in key order or reversed.
    Scan {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end; empty for unbounded (the region's end bounds it anyway).
        end: Vec<u8>,
        /// Most pairs to return.
        limit: u32,
        /// Descending key order (`end` down to `start`).
        reverse: bool,
    },
    /// A replicated write.
    Write {
        /// Session and sequence number; `None` for writes that need no deduplication.
        session: Option<SessionSeq>,
        /// The command.
        command: WriteCommand,
    },
}

/// A write command, applied atomically by the region's state machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteCommand {
    /// Set a key.
    Put {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// Append bytes to a value; an absent key acts as a put.
    Append {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Bytes appended.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Set or delete a key only if its current value is `expected` (`None`: absent).
    CompareAndSwap {
        /// Key.
        key: Vec<u8>,
        /// Expected current value; `None` expects the key to be absent.
        expected: Option<Vec<u8>>,
        /// New value; `None` deletes.
        new: Option<Vec<u8>>,
    },
    /// Set several keys of one region atomically.
    BatchPut {
        /// Pairs.
        #[serde(with = "crate::byte_pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

impl WriteCommand {
    /// The keys the command touches.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteCommand::Put { key, .. }
            | WriteCommand::Delete { key }
            | WriteCommand::Append { key, .. }
            | WriteCommand::CompareAndSwap { key, .. } => vec![key.as_slice()],
            WriteCommand::BatchPut { pairs } => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
        }
    }
}

/// Result of an applied write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteResult {
    /// Put, batch put: done.
    Done,
    /// Delete: whether the key existed.
    Deleted {
        /// The key existed before.
        existed: bool,
    },
    /// Append: the value's new length.
    Appended {
        /// New length in bytes.
        new_len: u64,
    },
    /// Compare-and-swap outcome.
    CompareAndSwap {
        /// The swap happened.
        succeeded: bool,
        /// The value before the operation (`None`: absent).
        previous: Option<Vec<u8>>,
    },
}

/// A KV response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KvResponse {
    /// `Get`: the value, if present.
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// `BatchGet`: one entry per requested key, in request order, for a prefix of the keys.
    /// The answer stops once its values reach [`crate::Limits::max_response_bytes`] (it
    /// always holds at least one entry); the client asks again for the keys not answered.
    Values(Vec<Option<Vec<u8>>>),
    /// `Scan`: a page of pairs; `resume_key` is where to continue inside this region if the
    /// page was cut by `limit` or by [`crate::Limits::max_response_bytes`] (None: the
    /// region's part of the range is exhausted).
    Scan {
        /// Pairs in scan order.
        #[serde(with = "crate::byte_pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        /// Continue from here (inclusive for forward scans, exclusive end for reverse).
        resume_key: Option<Vec<u8>>,
    },
    /// `Write`: the applied result.
    Write(WriteResult),
}
