//! Typed errors carried in responses.
//!
//! Each variant says what the client should do next ([`Error::retry_action`]): most region
//! errors carry enough information to fix the client's routing cache without asking PD.

use crate::{LeaderHint, RegionDescriptor, RegionId};

/// An error answer. Carried on the wire; every variant is part of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The receiving replica is not the region's leader. `leader` is the current leader if
    /// the replica knows it.
    #[error("not leader of region {region_id}; leader hint: {leader:?}")]
    NotLeader {
        /// The region asked for.
        region_id: RegionId,
        /// The leader, when known.
        leader: Option<LeaderHint>,
    },
    /// The request's region epoch is stale (the region split or changed members). `current`
    /// holds the regions that now cover the old range, as this node knows them.
    #[error("region epoch does not match; {} current region(s)", current.len())]
    EpochNotMatch {
        /// The region(s) now covering the requested range.
        current: Vec<RegionDescriptor>,
    },
    /// A key of the request lies outside the region's range.
    #[error("key is not in region {region_id}")]
    KeyNotInRegion {
        /// The key (first offending key).
        key: Vec<u8>,
        /// The region addressed.
        region_id: RegionId,
        /// The region's start key.
        start_key: Vec<u8>,
        /// The region's end key (empty: unbounded).
        end_key: Vec<u8>,
    },
    /// The node hosts no replica of this region.
    #[error("region {region_id} not found on this node")]
    RegionNotFound {
        /// The region asked for.
        region_id: RegionId,
    },
    /// The server is overloaded (or the region is not ready yet); retry after the delay.
    #[error("server busy; retry after {retry_after_ms} ms")]
    ServerBusy {
        /// Suggested delay.
        retry_after_ms: u32,
    },
    /// The request's deadline passed before it completed. For a write its fate is unknown.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// A key is longer than allowed.
    #[error("key of {len} bytes exceeds the maximum of {max}")]
    KeyTooLarge {
        /// Key length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// A value is longer than allowed.
    #[error("value of {len} bytes exceeds the maximum of {max}")]
    ValueTooLarge {
        /// Value length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// A batch has too many entries.
    #[error("batch of {len} entries exceeds the maximum of {max}")]
    BatchTooLarge {
        /// Entries in the batch.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// A batch holds too many key and value bytes. The SDK splits batches to fit; a client
    /// that sees this sent one request too large.
    #[error("batch of {bytes} bytes exceeds the maximum of {max}")]
    BatchBytesTooLarge {
        /// Key and value bytes in the batch.
        bytes: u64,
        /// Limit.
        max: u64,
    },
    /// The answer to a read would not fit in one frame. Nothing was changed.
    #[error("response of {len} bytes exceeds the frame limit of {max}")]
    ResponseTooLarge {
        /// Encoded length of the answer.
        len: u64,
        /// Frame limit.
        max: u64,
    },
    /// The request's client session expired (idle longer than the server's session
    /// lifetime), so the server can no longer tell whether this write was applied before.
    /// It was not applied now. Open a new session (reconnect) and check the key.
    #[error("client session {session} expired")]
    SessionExpired {
        /// The session.
        session: crate::SessionId,
    },
    /// The request is malformed (empty key, inverted scan range, ...).
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The peer's protocol version is not supported.
    #[error("unsupported protocol version {theirs} (this server speaks {ours})")]
    UnsupportedVersion {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The caller is not authenticated as what it claims (certificate identity mismatch).
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// Why.
        reason: String,
    },
    /// The caller's identity may not perform this request (e.g. a client sending Raft).
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// Why.
        reason: String,
    },
    /// The node's storage failed and it refuses work until restarted (fail-stop). Nothing
    /// of the request was applied there; clients retry on the region's other replicas.
    #[error("storage unavailable: {reason}")]
    StorageUnavailable {
        /// The storage failure.
        reason: String,
    },
    /// The cluster has not been bootstrapped yet (fewer nodes than replicas registered).
    #[error("cluster not bootstrapped yet")]
    NotBootstrapped,
    /// The PD node is not the PD leader.
    #[error("not the PD leader; leader hint: {leader:?}")]
    PdNotLeader {
        /// Address of the PD leader, when known.
        leader: Option<String>,
    },
    /// The region is temporarily unable to serve (no leader elected, shutting down, a
    /// leader that no quorum of its replicas can answer, ...). For a write the proposal was
    /// not accepted, so retrying is safe.
    #[error("region {region_id} unavailable: {reason}")]
    RegionUnavailable {
        /// The region.
        region_id: RegionId,
        /// Why.
        reason: String,
    },
    /// A write was accepted by Raft but its outcome is unknown to this node (leadership was
    /// lost before it was applied). Retry with the same session sequence number.
    #[error("write outcome undetermined in region {region_id}")]
    WriteUndetermined {
        /// The region.
        region_id: RegionId,
    },
}

/// What a client does with an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Update the cached leader (from the hint, or by asking PD) and retry at once.
    UpdateLeader,
    /// Replace cached regions with the ones carried in the error, then retry.
    ReplaceRegions,
    /// Drop the cached region and look it up again in PD, then retry.
    InvalidateRegion,
    /// Wait (jittered backoff, at least the server's hint) and retry.
    Backoff,
    /// This node cannot serve (its storage fail-stopped): forget it as the region's leader,
    /// back off, and retry on another replica, as for a node that cannot be reached.
    OtherReplica,
    /// Return the error to the caller.
    Surface,
}

impl Error {
    /// The action a client takes on this error.
    pub fn retry_action(&self) -> RetryAction {
        match self {
            Error::NotLeader { .. } => RetryAction::UpdateLeader,
            Error::EpochNotMatch { current } if !current.is_empty() => RetryAction::ReplaceRegions,
            Error::EpochNotMatch { .. } | Error::KeyNotInRegion { .. } | Error::RegionNotFound { .. } => {
                RetryAction::InvalidateRegion
            }
            Error::ServerBusy { .. }
            | Error::RegionUnavailable { .. }
            | Error::WriteUndetermined { .. }
            | Error::NotBootstrapped
            | Error::PdNotLeader { .. } => RetryAction::Backoff,
            // Down for this request: the region's other replicas serve once one leads.
            Error::StorageUnavailable { .. } => RetryAction::OtherReplica,
            Error::DeadlineExceeded
            | Error::KeyTooLarge { .. }
            | Error::ValueTooLarge { .. }
            | Error::BatchTooLarge { .. }
            | Error::BatchBytesTooLarge { .. }
            | Error::ResponseTooLarge { .. }
            | Error::SessionExpired { .. }
            | Error::InvalidRequest { .. }
            | Error::UnsupportedVersion { .. }
            | Error::Unauthenticated { .. }
            | Error::PermissionDenied { .. } => RetryAction::Surface,
        }
    }

    /// True when a write that failed with this error may have been applied.
    pub fn write_may_have_applied(&self) -> bool {
        matches!(self, Error::DeadlineExceeded | Error::WriteUndetermined { .. })
    }
}
