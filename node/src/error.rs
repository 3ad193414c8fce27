//! Node start-up errors.

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Certificates could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The data directory or database could not be opened.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The listening endpoint could not be created.
    #[error("transport: {0}")]
    Transport(String),
    /// A region's Raft group failed to start.
    #[error("region {region_id}: {reason}")]
    Region {
        /// Region id.
        region_id: u64,
        /// Cause.
        reason: String,
    },
}
