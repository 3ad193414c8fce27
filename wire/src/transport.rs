//! How one request/response exchange can fail, independent of the transport carrying it
//! (QUIC natively; WebSocket or WebTransport in the JavaScript SDK). The client's retry
//! decision classifies these, so every transport must report failures in these terms.

/// Transport failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Could not establish the connection (unreachable, TLS refused, bad address).
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server refused the handshake with a typed error.
    #[error("handshake refused: {0}")]
    Refused(crate::Error),
    /// The connection was lost while the request was in flight: it may or may not have been
    /// delivered.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No response within the timeout: the request may or may not have been delivered.
    #[error("request timed out")]
    Timeout,
    /// The peer sent an invalid frame.
    #[error(transparent)]
    Frame(#[from] crate::FrameError),
    /// The request could not be encoded (it exceeds the frame limit): nothing was sent.
    #[error("request not sent: {0}")]
    Encode(crate::FrameError),
    /// The connection was already closed when the request was queued: nothing was sent.
    #[error("request not sent: connection closed: {0}")]
    NotSent(String),
    /// Local endpoint set-up failed (bind, TLS configuration).
    #[error("endpoint: {0}")]
    Endpoint(String),
}

impl TransportError {
    /// True when the request may have reached the server (so a write's fate is unknown).
    pub fn may_have_been_delivered(&self) -> bool {
        matches!(self, TransportError::ConnectionLost(_) | TransportError::Timeout)
    }
}
