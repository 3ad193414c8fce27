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
//!
//! Invariants:
//! * Every length prefix is checked against [`TransportConfig::max_frame_len`] before any
//!   buffer grows for it; a buffer never holds more than one frame plus one read chunk.
//! * A peer that sends a malformed or oversized frame loses its whole connection (closed
//!   with [`CLOSE_PROTOCOL_ERROR`]); other connections are unaffected.
//! * No request is dispatched on a connection before its `Hello` was authenticated.
//! * When a client connection dies, every request pending on it fails with
//!   [`TransportError::ConnectionLost`].

mod client;
mod config;
mod pool;
mod server;
mod socket;
mod stream;
#[cfg(feature = "ws")]
mod ws;
#[cfg(feature = "webtransport")]
mod wt;

pub use crate::transport::TransportError;
pub use client::{ClientEndpoint, Connection};
pub use config::{ResetKeySeed, TransportConfig};
pub use pool::ConnectionPool;
pub use server::{Authenticator, ClientEndpointHandle, PeerInfo, Principal, Server, Service, H3_ALPN};
pub use socket::SocketReleased;
#[cfg(feature = "ws")]
pub use ws::WsServer;

/// QUIC application close code: orderly close (shutdown, or the last handle dropped).
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application close code: the peer sent a malformed, oversized or unexpected frame.
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;
/// QUIC application close code: the handshake was refused (see the `HelloAck` error).
pub const CLOSE_HANDSHAKE_REFUSED: u32 = 2;
/// QUIC application close code: the handshake did not complete in time.
pub const CLOSE_HANDSHAKE_TIMEOUT: u32 = 3;
/// QUIC application close code: a request handler panicked; requests in flight on the
/// connection have unknown fate.
pub const CLOSE_INTERNAL_ERROR: u32 = 4;

/// Binds a UDP socket at `addr` and starts a quinn endpoint on it with `config`'s
/// stateless-reset key; `server` makes it accept connections too. The second value resolves
/// once the socket is closed again.
pub(crate) fn bind_endpoint(
    config: &TransportConfig,
    server: Option<quinn::ServerConfig>,
    addr: std::net::SocketAddr,
) -> Result<(quinn::Endpoint, SocketReleased), TransportError> {
    let bind_error = |e: std::io::Error| TransportError::Endpoint(format!("bind {addr}: {e}"));
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
    let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Endpoint("no async runtime".into()))?;
    let (socket, released) = socket::track(runtime.wrap_udp_socket(socket).map_err(bind_error)?);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(config.quinn_endpoint(), server, socket, runtime)
        .map_err(bind_error)?;
    Ok((endpoint, released))
}
