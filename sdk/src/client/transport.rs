//! The transport the retry loop sends through: one request to one address, with a timeout.
//!
//! The native client uses the QUIC `ConnectionPool`, the wasm SDK WebSocket or WebTransport; simulation tests substitute a scripted fake
//! (`sim.rs`), so every classification of a failure can be driven end to end without a
//! network. The trait is the whole contract between the client and the network: nothing
//! else in the native layer talks to a socket.

use std::fmt::Debug;
use std::time::Duration;

use futures::future::BoxFuture;
use tessera_wire::{Request, Response, TransportError};

/// Sends requests and returns their answers.
///
/// Contract (what the retry decision relies on):
/// * The returned future resolves within about `timeout` (dial included), with
///   [`TransportError::Timeout`] or [`TransportError::Connect`] when it cannot do better.
/// * A failure says truthfully whether the request may have reached the server
///   ([`TransportError::may_have_been_delivered`]): `Timeout` and `ConnectionLost` may have,
///   every other error means it was not sent.
/// * A request is sent at most once per call: the transport never retries on its own.
pub trait Transport: Send + Sync + Debug {
    /// Sends `request` to `addr` and waits at most `timeout` for its answer.
    fn call<'a>(
        &'a self,
        addr: &'a str,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Response, TransportError>>;
}

#[cfg(feature = "native")]
impl Transport for tessera_wire::quic::ConnectionPool {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Response, TransportError>> {
        use futures::FutureExt;
        tessera_wire::quic::ConnectionPool::call(self, addr, request, timeout).boxed()
    }
}
