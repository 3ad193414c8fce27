//! The endpoint's UDP socket, wrapped to signal when it is closed.
//!
//! quinn closes its socket from its driver task once the endpoint and every connection are
//! gone, some time after the last handle is dropped. A server restarted on the same port
//! must wait for that: [`SocketReleased`] resolves once the socket's file descriptor is
//! closed, so shutdown can return only when the port is free again.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::watch;

/// Resolves once the endpoint's socket is closed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SocketReleased(watch::Receiver<bool>);

impl SocketReleased {
    /// Waits until the socket is closed, at most `timeout`; returns whether it was.
    pub async fn wait(mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.0.wait_for(|closed| *closed)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Delegates to the runtime's socket; its drop (after every poller's) means the socket is
/// being closed.
struct Tracked {
    inner: Arc<dyn AsyncUdpSocket>,
    closed: watch::Sender<bool>,
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Every poller holds this wrapper, so none holds `inner` any more: it is dropped,
        // and the descriptor closed, right after this, before any waiter can run.
        self.closed.send_replace(true);
    }
}

/// A poller that keeps the wrapper (not only the inner socket) alive.
struct TrackedPoller {
    inner: Pin<Box<dyn UdpPoller>>,
    _owner: Arc<Tracked>,
}

impl fmt::Debug for TrackedPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl UdpPoller for TrackedPoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_writable(cx)
    }
}

impl AsyncUdpSocket for Tracked {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        let inner = self.inner.clone().create_io_poller();
        Box::pin(TrackedPoller { inner, _owner: self })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Wraps `socket` so that its closing can be awaited.
pub(crate) fn track(socket: Arc<dyn AsyncUdpSocket>) -> (Arc<dyn AsyncUdpSocket>, SocketReleased) {
    let (closed, rx) = watch::channel(false);
    (Arc::new(Tracked { inner: socket, closed }), SocketReleased(rx))
}
