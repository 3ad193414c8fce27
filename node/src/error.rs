//! Node start-up errors. Each keeps its cause as `source()`, so a caller (or a log line with
//! `{:#}`/`anyhow`'s chain) sees the underlying TLS, transport, I/O or Raft error.

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Certificates could not be loaded.
    #[error("TLS files")]
    Tls(#[source] tessera_certs::CertError),
    /// The node's private key could not be read (to derive its stateless-reset key).
    #[error("reading {path}")]
    Key {
        /// The key file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The data directory or database could not be opened.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The listening endpoint could not be created.
    #[error("transport")]
    Transport(#[source] tessera_wire::quic::TransportError),
    /// A region hosted here has no peer on this node (a corrupt region record).
    #[error("region {region_id}: this node hosts no peer of it")]
    NotAPeer {
        /// Region id.
        region_id: u64,
    },
    /// A region's Raft group failed to start: its storage could not be read, or openraft
    /// refused to start.
    #[error("region {region_id}")]
    Region {
        /// Region id.
        region_id: u64,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
