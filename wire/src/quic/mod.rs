//! The QUIC transport (feature `quic`).
//!
//! One quinn connection per peer pair, shared by every region. A connection opens with a
//! [`Hello`](crate::Hello) on its first bidirectional stream, answered by a
//! [`HelloAck`](crate::HelloAck); after that the client keeps a small set of long-lived
//! bidirectional streams and multiplexes requests over them, matched to responses by
//! request id, so many requests are in flight per connection.
//!
//! The server side is [`Server`]: it accepts connections (bounded by a semaphore), runs the
//! handshake through an [`Authenticator`] that checks the claimed role against the TLS
//! certificate, and calls a [`Service`] for every request.

mod client;
mod config;
mod server;

pub use client::{ClientEndpoint, Connection, ConnectionPool};
pub use config::TransportConfig;
pub use server::{Authenticator, PeerInfo, Server, Service};

/// Transport failure.
#[derive(Debug, thiserror::Error)]
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
    /// A frame could not be encoded or the peer sent an invalid one.
    #[error(transparent)]
    Frame(#[from] crate::FrameError),
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
