//! The SDK's public error type.

/// Why a client operation failed.
///
/// The distinction that matters most for writes: every variant except [`Error::Undetermined`]
/// and [`Error::PartialBatch`] means the write was **not** applied; `Undetermined` means it
/// may or may not have been; `PartialBatch` lists which pairs of a batch were applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The write's fate is unknown: it may have been applied. Raised only when the request's
    /// deadline passed (or a non-retryable failure occurred) after an attempt that may have
    /// reached the server. Read the key to learn the outcome.
    #[error("write outcome undetermined: {reason}")]
    Undetermined {
        /// The last failure seen.
        reason: String,
    },
    /// The request's deadline passed before it completed; a write was not applied.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The request is malformed (empty key, inverted range, oversized batch, ...).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// A key is longer than the limit.
    #[error("key of {len} bytes exceeds the maximum of {max}")]
    KeyTooLarge {
        /// Key length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// A value is longer than the limit.
    #[error("value of {len} bytes exceeds the maximum of {max}")]
    ValueTooLarge {
        /// Value length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// No route to the data before the deadline: PD unreachable, no replica answered, or
    /// the region's leader kept refusing (`RegionUnavailable`: no quorum of its replicas
    /// can write). Nothing was applied.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// The last failure seen.
        reason: String,
    },
    /// A server error the client does not retry (authentication, permission, storage
    /// failure, version mismatch, ...).
    #[error("server error: {0}")]
    Server(tessera_wire::Error),
    /// The client configuration is invalid.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The TLS files could not be loaded or do not form a usable configuration.
    #[error("tls: {reason}")]
    Tls {
        /// What went wrong.
        reason: String,
    },
    /// Some parts of a multi-region batch failed. Positions index the caller's batch:
    /// `applied` were written; `undetermined` may or may not have been; every other
    /// position was not written. `error` is the first failure that was not undetermined
    /// (or an undetermined one if all were).
    #[error("batch partly applied: {} of {total} applied, {} undetermined: {error}", applied.len(), undetermined.len())]
    PartialBatch {
        /// Pairs in the batch.
        total: usize,
        /// Positions applied.
        applied: Vec<usize>,
        /// Positions whose fate is unknown.
        undetermined: Vec<usize>,
        /// The failure.
        error: Box<Error>,
    },
    /// A peer broke the protocol (undecodable frame, answer of the wrong type).
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    /// The public form of a server error that is surfaced to the caller.
    pub fn from_server(e: tessera_wire::Error) -> Error {
        use tessera_wire::Error as W;
        match e {
            W::DeadlineExceeded => Error::DeadlineExceeded,
            W::KeyTooLarge { len, max } => Error::KeyTooLarge { len, max },
            W::ValueTooLarge { len, max } => Error::ValueTooLarge { len, max },
            W::InvalidRequest { reason } => Error::InvalidArgument { reason },
            W::BatchTooLarge { len, max } => {
                Error::InvalidArgument { reason: format!("batch of {len} entries exceeds the maximum of {max}") }
            }
            W::BatchBytesTooLarge { bytes, max } => {
                Error::InvalidArgument { reason: format!("batch of {bytes} bytes exceeds the maximum of {max}") }
            }
            other => Error::Server(other),
        }
    }

    /// A stable name for the kind of failure, the same in every SDK (Rust, JavaScript,
    /// Python): `Undetermined`, `DeadlineExceeded`, `InvalidArgument`, `KeyTooLarge`,
    /// `ValueTooLarge`, `Unavailable`, `Unauthenticated`, `PermissionDenied`,
    /// `UnsupportedVersion`, `StorageUnavailable`, `SessionExpired`, `ServerError` (any
    /// other server error), `Config`, `Tls`, `PartialBatch`, `Protocol`.
    pub fn code(&self) -> &'static str {
        use tessera_wire::Error as W;
        match self {
            Error::Undetermined { .. } => "Undetermined",
            Error::DeadlineExceeded => "DeadlineExceeded",
            Error::InvalidArgument { .. } => "InvalidArgument",
            Error::KeyTooLarge { .. } => "KeyTooLarge",
            Error::ValueTooLarge { .. } => "ValueTooLarge",
            Error::Unavailable { .. } => "Unavailable",
            Error::Server(W::Unauthenticated { .. }) => "Unauthenticated",
            Error::Server(W::PermissionDenied { .. }) => "PermissionDenied",
            Error::Server(W::UnsupportedVersion { .. }) => "UnsupportedVersion",
            Error::Server(W::StorageUnavailable { .. }) => "StorageUnavailable",
            Error::Server(W::SessionExpired { .. }) => "SessionExpired",
            Error::Server(_) => "ServerError",
            Error::Config { .. } => "Config",
            Error::Tls { .. } => "Tls",
            Error::PartialBatch { .. } => "PartialBatch",
            Error::Protocol { .. } => "Protocol",
        }
    }

    /// True when a write that failed with this error may nonetheless have been applied
    /// (for a batch: some of its pairs).
    pub fn is_undetermined(&self) -> bool {
        match self {
            Error::Undetermined { .. } => true,
            Error::PartialBatch { undetermined, .. } => !undetermined.is_empty(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_rejections_map_to_public_variants() {
        use tessera_wire::Error as W;
        assert_eq!(Error::from_server(W::KeyTooLarge { len: 9, max: 8 }), Error::KeyTooLarge { len: 9, max: 8 });
        assert!(matches!(Error::from_server(W::InvalidRequest { reason: "x".into() }), Error::InvalidArgument { .. }));
        assert!(matches!(Error::from_server(W::BatchTooLarge { len: 2, max: 1 }), Error::InvalidArgument { .. }));
        assert_eq!(Error::from_server(W::DeadlineExceeded), Error::DeadlineExceeded);
        assert!(matches!(Error::from_server(W::NotBootstrapped), Error::Server(W::NotBootstrapped)));
    }

    #[test]
    fn codes_are_stable_names() {
        use tessera_wire::Error as W;
        let denied = Error::Server(W::PermissionDenied { reason: "x".into() });
        let cases = [
            (Error::Undetermined { reason: "x".into() }, "Undetermined"),
            (Error::KeyTooLarge { len: 9, max: 8 }, "KeyTooLarge"),
            (Error::ValueTooLarge { len: 9, max: 8 }, "ValueTooLarge"),
            (Error::Server(W::Unauthenticated { reason: "x".into() }), "Unauthenticated"),
            (denied.clone(), "PermissionDenied"),
            (Error::Server(W::NotBootstrapped), "ServerError"),
            (
                Error::PartialBatch { total: 2, applied: vec![0], undetermined: vec![], error: Box::new(denied) },
                "PartialBatch",
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error:?}");
        }
    }
}
