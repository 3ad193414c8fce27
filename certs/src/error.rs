//! The error type of this crate.

use std::path::PathBuf;

/// Failure of a certificate operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Reading, writing or creating a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// A file this operation would create exists already (it never overwrites a CA).
    #[error("{} exists already; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Only one half of a certificate/key pair exists, so the pair cannot be used or safely
    /// regenerated without deciding which half is stale.
    #[error("{} exists but {} does not", present.display(), missing.display())]
    IncompletePair {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// A PEM file holds no usable certificate or private key.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating a key pair or signing a certificate failed.
    #[error("certificate generation failed: {reason}")]
    Generate {
        /// The generator's message.
        reason: String,
    },
    /// A certificate is not valid DER-encoded X.509.
    #[error("certificate cannot be parsed: {reason}")]
    Parse {
        /// The parser's message.
        reason: String,
    },
    /// A certificate carries no `tessera://` URI subject alternative name.
    #[error("certificate carries no tessera:// identity")]
    NoIdentity,
    /// A certificate's `tessera://` URI is malformed, or there is more than one.
    #[error("invalid certificate identity {uri:?}: {reason}")]
    InvalidIdentity {
        /// The offending URI.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A client name or host name cannot be put in a certificate or a file name.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Building a rustls configuration failed.
    #[error("TLS configuration: {reason}")]
    Tls {
        /// rustls' message.
        reason: String,
    },
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CertError::Io { path: path.into(), source }
    }

    pub(crate) fn generate(e: impl std::fmt::Display) -> Self {
        CertError::Generate { reason: e.to_string() }
    }

    pub(crate) fn tls(e: impl std::fmt::Display) -> Self {
        CertError::Tls { reason: e.to_string() }
    }
}
