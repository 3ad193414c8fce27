//! Tessera's wire protocol.
//!
//! Everything that crosses a process boundary in Tessera is defined here: identifiers and
//! region metadata ([`RegionDescriptor`], [`RegionEpoch`]), the request and response messages
//! for clients, nodes and the placement driver ([`Request`], [`Response`]), the typed errors a
//! client acts on without asking PD ([`Error`]), and the frame codec ([`frame`]).
//!
//! These types are *boundaries*: postcard is not self-describing, so the encoding of every
//! type here is part of protocol version [`PROTOCOL_VERSION`]. Internal structs of the node,
//! PD or SDK are never serialized directly; they convert to and from these types.
//!
//! With the `quic` feature the crate also provides the QUIC transport (`quic` module): quinn
//! endpoints with TLS 1.3 and ALPN `tessera/1`, and request/response multiplexing over
//! long-lived bidirectional streams. Without it the crate has no I/O and builds for
//! `wasm32-unknown-unknown`.
//!
//! ```
//! use tessera_wire::{frame, Frame, FrameBody, Hello, Role};
//! let hello = Frame { request_id: 0, body: FrameBody::Hello(Hello::new(Role::Client)) };
//! let bytes = frame::encode(&hello).unwrap();
//! let (decoded, used) = frame::decode(&bytes, frame::DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
//! assert_eq!(used, bytes.len());
//! assert_eq!(decoded, hello);
//! ```

pub mod byte_pairs;
mod error;
pub mod frame;
mod ids;
mod kv;
mod limits;
mod pd;
#[cfg(feature = "quic")]
pub mod quic;
mod region;
pub mod token;
mod transport;

pub use error::{Error, RetryAction};
pub use frame::{Frame, FrameBody, FrameError, Hello, HelloAck, Role, TokenHello};
pub use ids::{NodeId, PeerId, RegionId, SessionId};
pub use kv::{KvOp, KvRequest, KvResponse, ReadConsistency, RequestHeader, SessionSeq, WriteCommand, WriteResult};
pub use limits::{validate_batch, validate_key, validate_value, Limits, MESSAGE_OVERHEAD, PAIR_OVERHEAD};
pub use pd::{
    MergeReport, NodeInfo, NodeState, NodeStats, OperatorInfo, OperatorState, PdRequest, PdResponse, RegionCommand,
    RegionCommandKind, RegionInfo, RegionRoute, RegionStats, WritePathStats, MAX_FAILURE_REASON,
};
pub use region::{key_in_range, LeaderHint, Peer, RegionDescriptor, RegionEpoch};
pub use transport::TransportError;

/// Version of the protocol spoken by this build. Sent in every [`Hello`]; peers with a
/// different version are refused with [`Error::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 6;

/// ALPN protocol identifier used on every Tessera QUIC connection.
pub const ALPN: &[u8] = b"tessera/1";

/// A request, as carried in [`FrameBody::Request`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    /// A key-value operation on one region, sent by a client to the region's leader.
    Kv(KvRequest),
    /// A Raft message for one region, sent node to node. The payload is opaque to this
    /// crate: it is encoded by `tessera-node`, whose Raft library version is pinned exactly.
    Raft(RaftRequest),
    /// A placement-driver request.
    Pd(PdRequest),
}

/// A response, as carried in [`FrameBody::Response`]: the typed success or a typed error.
pub type Response = Result<ResponseBody, Error>;

/// The success half of a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ResponseBody {
    /// Answer to [`Request::Kv`].
    Kv(KvResponse),
    /// Answer to [`Request::Raft`]: the node-encoded Raft response.
    Raft(RaftResponse),
    /// Answer to [`Request::Pd`].
    Pd(PdResponse),
}

/// Kinds of Raft RPC carried between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RaftRpcKind {
    /// `AppendEntries` (also heartbeats).
    AppendEntries,
    /// `RequestVote`.
    Vote,
    /// Pre-vote (does not disturb the current leader).
    PreVote,
    /// One chunk of a streamed snapshot.
    SnapshotChunk,
    /// Leadership transfer notification.
    TransferLeader,
    /// One `AppendEntries` of a pipelined replication stream (with its stream id and
    /// sequence number); the follower answers in sequence order.
    AppendStream,
}

/// A Raft RPC for one region, addressed to one peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RaftRequest {
    /// The region (Raft group) the message belongs to.
    pub region_id: RegionId,
    /// The peer the message is for; a node hosts at most one peer of a region.
    pub to_peer: PeerId,
    /// What the payload is.
    pub kind: RaftRpcKind,
    /// The node-encoded Raft message.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A node-encoded Raft response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RaftResponse {
    /// The node-encoded Raft response.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}
