//! Client side: connections with multiplexed request streams.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{mpsc, oneshot};

use super::stream::{self, FrameReader};
use super::{TransportConfig, TransportError, CLOSE_HANDSHAKE_REFUSED, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR};
use crate::{Frame, FrameBody, Hello, Request, Response, Role, PROTOCOL_VERSION};

/// Frames queued per request stream before `call` waits for the writer.
const STREAM_QUEUE: usize = 256;

/// Frames of at least this many bytes take turns on the request streams after the first
/// (see [`stream_for`]).
const LARGE_FRAME: usize = 64 * 1024;

/// The request stream, of `streams`, that a frame of `len` bytes is queued on. Frames
/// below [`LARGE_FRAME`] all share the first stream, so frames sent close together (a
/// node's `AppendEntries` for several regions, a client's concurrent requests) leave in one
/// write of one writer task, and their answers come back the same way. Larger frames
/// (snapshot chunks, big batches) take turns on the other streams, so that no small frame
/// waits behind one.
fn stream_for(len: usize, streams: usize, turn: &AtomicUsize) -> usize {
    if streams == 1 || len < LARGE_FRAME {
        0
    } else {
        1 + turn.fetch_add(1, Ordering::Relaxed) % (streams - 1)
    }
}

/// A client endpoint: dials servers and performs the `Hello` handshake as `role`.
#[derive(Debug, Clone)]
pub struct ClientEndpoint {
    pub(crate) endpoint: quinn::Endpoint,
    /// `None` for the endpoint of a server bound without client TLS: it cannot dial.
    pub(crate) client_config: Option<quinn::ClientConfig>,
    pub(crate) role: Role,
    pub(crate) config: TransportConfig,
    pub(crate) protocol_version: u32,
}

impl ClientEndpoint {
    /// Binds `bind` (usually port 0 on loopback or the unspecified address) for dialling
    /// out with `tls` (which should present this process's certificate).
    pub fn new(
        bind: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        role: Role,
        config: TransportConfig,
    ) -> Result<ClientEndpoint, TransportError> {
        config.validate().map_err(TransportError::Endpoint)?;
        let client_config = quinn_client_config(tls, &config)?;
        let (endpoint, _) = super::bind_endpoint(&config, None, bind)?;
        Ok(ClientEndpoint {
            endpoint,
            client_config: Some(client_config),
            role,
            config,
            protocol_version: PROTOCOL_VERSION,
        })
    }

    /// The same endpoint announcing `protocol_version` instead of [`PROTOCOL_VERSION`] in
    /// its `Hello`. For compatibility tests.
    pub fn with_protocol_version(mut self, protocol_version: u32) -> ClientEndpoint {
        self.protocol_version = protocol_version;
        self
    }

    /// The role announced in the `Hello`.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The local UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint.local_addr().map_err(|e| TransportError::Endpoint(e.to_string()))
    }

    /// Connects to `addr` (`host:port`; `host` is also the TLS server name) and runs the
    /// handshake, all within [`TransportConfig::connect_timeout`].
    pub async fn connect(&self, addr: &str) -> Result<Connection, TransportError> {
        let connect_error = |reason: String| TransportError::Connect { addr: addr.to_owned(), reason };
        let Some(client_config) = &self.client_config else {
            return Err(TransportError::Endpoint("endpoint has no client TLS configuration".into()));
        };
        let host = server_name(addr).ok_or_else(|| connect_error("expected host:port".into()))?;
        rustls_pki_types::ServerName::try_from(host).map_err(|e| connect_error(format!("invalid server name: {e}")))?;
        let dial = async {
            let remote = self.resolve(addr).await.map_err(connect_error)?;
            let connecting = self
                .endpoint
                .connect_with(client_config.clone(), remote, host)
                .map_err(|e| connect_error(e.to_string()))?;
            let conn = connecting.await.map_err(|e| connect_error(e.to_string()))?;
            self.handshake(addr, conn).await
        };
        match tokio::time::timeout(self.config.connect_timeout, dial).await {
            Ok(result) => result,
            Err(_) => Err(connect_error(format!("no handshake within {:?}", self.config.connect_timeout))),
        }
    }

    async fn resolve(&self, addr: &str) -> Result<SocketAddr, String> {
        let want_v6 = self.endpoint.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr).await.map_err(|e| e.to_string())?.collect();
        candidates
            .iter()
            .find(|a| a.is_ipv6() == want_v6)
            .or(candidates.first())
            .copied()
            .ok_or_else(|| "no address found".to_owned())
    }

    /// Sends `Hello` on the first stream and reads the `HelloAck`; that stream then becomes
    /// the first request stream.
    async fn handshake(&self, addr: &str, conn: quinn::Connection) -> Result<Connection, TransportError> {
        let fail = |conn: &quinn::Connection, code: u32, reason: String| {
            conn.close(VarInt::from_u32(code), b"handshake failed");
            TransportError::Connect { addr: addr.to_owned(), reason }
        };
        let max = self.config.max_frame_len;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| fail(&conn, CLOSE_NORMAL, e.to_string()))?;
        let hello = Frame {
            request_id: 0,
            body: FrameBody::Hello(Hello { protocol_version: self.protocol_version, role: self.role }),
        };
        let bytes = stream::encode(&hello, max)?;
        send.write_all(&bytes).await.map_err(|e| fail(&conn, CLOSE_NORMAL, e.to_string()))?;
        let mut reader = FrameReader::new(recv, max);
        let ack = match reader.next().await {
            Ok(Some(Frame { body: FrameBody::HelloAck(ack), .. })) => ack,
            Ok(Some(_)) => {
                return Err(fail(&conn, CLOSE_PROTOCOL_ERROR, "server answered Hello with another frame".into()))
            }
            Ok(None) => return Err(fail(&conn, CLOSE_PROTOCOL_ERROR, "server closed the handshake stream".into())),
            Err(e) => {
                let code = if e.is_protocol_violation() { CLOSE_PROTOCOL_ERROR } else { CLOSE_NORMAL };
                return Err(fail(&conn, code, e.to_string()));
            }
        };
        let ack = match ack {
            Ok(ack) => ack,
            Err(error) => {
                conn.close(VarInt::from_u32(CLOSE_HANDSHAKE_REFUSED), b"handshake refused");
                return Err(TransportError::Refused(error));
            }
        };
        if ack.protocol_version != self.protocol_version {
            return Err(fail(
                &conn,
                CLOSE_PROTOCOL_ERROR,
                format!("server speaks protocol version {}, we speak {}", ack.protocol_version, self.protocol_version),
            ));
        }

        let pending = Arc::new(PendingTable::default());
        let mut streams = Vec::with_capacity(self.config.streams_per_connection);
        streams.push(spawn_stream(conn.clone(), send, reader, pending.clone()));
        for _ in 1..self.config.streams_per_connection {
            let (send, recv) = conn.open_bi().await.map_err(|e| fail(&conn, CLOSE_NORMAL, e.to_string()))?;
            streams.push(spawn_stream(conn.clone(), send, FrameReader::new(recv, max), pending.clone()));
        }
        tracing::debug!(peer = %conn.remote_address(), server_role = ?ack.role, "connected");
        let received = conn.stats().udp_rx.datagrams;
        Ok(Connection {
            inner: Arc::new(ConnectionInner {
                remote: conn.remote_address(),
                conn,
                server_role: ack.role,
                next_request_id: AtomicU64::new(1),
                large_turn: AtomicUsize::new(0),
                streams,
                pending,
                max_frame_len: max,
                liveness: self.config.liveness_timeout,
                heard: Mutex::new((received, tokio::time::Instant::now())),
            }),
        })
    }
}

pub(crate) fn quinn_client_config(
    tls: Arc<rustls::ClientConfig>,
    config: &TransportConfig,
) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Endpoint(format!("client TLS configuration: {e}")))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(Arc::new(config.quinn_transport()?));
    Ok(client_config)
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn server_name(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// Requests awaiting their response on one connection, shared by its stream readers.
#[derive(Debug, Default)]
struct PendingTable(Mutex<Pending>);

#[derive(Debug, Default)]
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Response>>,
    /// Set once the connection is unusable; no waiter is added after that.
    lost: Option<String>,
}

impl PendingTable {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails every pending request (their receivers see the sender dropped) and every
    /// later one.
    fn fail_all(&self, reason: String) {
        let waiters = {
            let mut pending = self.lock();
            pending.lost.get_or_insert(reason);
            std::mem::take(&mut pending.waiters)
        };
        drop(waiters);
    }
}

/// Removes a request from the pending table when its `call` ends for any reason (answer,
/// timeout, cancellation).
struct PendingGuard<'a> {
    table: &'a PendingTable,
    request_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.table.lock().waiters.remove(&self.request_id);
    }
}

/// Starts the writer and reader tasks of one request stream; returns its send queue.
fn spawn_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    pending: Arc<PendingTable>,
) -> mpsc::Sender<Bytes> {
    let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
    let writer_conn = conn.clone();
    tokio::spawn(async move {
        if let Err(error) = stream::write_loop(&mut send, &mut rx).await {
            tracing::debug!(peer = %writer_conn.remote_address(), %error, "request stream write failed");
            // Requests queued behind the failure would never be sent: give up on the
            // connection so they fail fast instead of timing out.
            writer_conn.close(VarInt::from_u32(CLOSE_NORMAL), b"stream failed");
        }
    });
    tokio::spawn(async move {
        let peer = conn.remote_address();
        let reason = loop {
            match reader.next().await {
                Ok(Some(Frame { request_id, body: FrameBody::Response(response) })) => {
                    // No waiter: the call timed out or was cancelled; the answer is dropped.
                    let waiter = pending.lock().waiters.remove(&request_id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(response);
                    }
                }
                Ok(Some(Frame { request_id, .. })) => {
                    tracing::debug!(%peer, request_id, "server sent a non-response frame; closing");
                    conn.close(VarInt::from_u32(CLOSE_PROTOCOL_ERROR), b"unexpected frame");
                    break "server sent an unexpected frame".to_owned();
                }
                Ok(None) => {
                    conn.close(VarInt::from_u32(CLOSE_NORMAL), b"stream finished");
                    break "server finished the stream".to_owned();
                }
                Err(error) => {
                    if error.is_protocol_violation() {
                        tracing::debug!(%peer, %error, "invalid frame from server; closing");
                        conn.close(VarInt::from_u32(CLOSE_PROTOCOL_ERROR), b"malformed frame");
                    }
                    break error.to_string();
                }
            }
        };
        let reason = conn.close_reason().map(|e| e.to_string()).unwrap_or(reason);
        pending.fail_all(reason);
    });
    tx
}

/// An established, authenticated connection. Cheap to clone; clones share the connection.
/// The connection is closed when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Connection {
    pub(crate) inner: Arc<ConnectionInner>,
}

pub(crate) struct ConnectionInner {
    conn: quinn::Connection,
    remote: SocketAddr,
    server_role: Role,
    /// Per-connection request ids; 0 is the handshake.
    next_request_id: AtomicU64,
    /// Which of the streams after the first the next large frame takes ([`stream_for`]).
    large_turn: AtomicUsize,
    /// Send queues of the request streams; never empty.
    streams: Vec<mpsc::Sender<Bytes>>,
    pending: Arc<PendingTable>,
    max_frame_len: u32,
    /// See [`TransportConfig::liveness_timeout`].
    liveness: Duration,
    /// Datagrams received so far, and when that count last changed (as last checked).
    heard: Mutex<(u64, tokio::time::Instant)>,
}

impl ConnectionInner {
    /// How long the connection has heard nothing from its peer, if that is longer than
    /// the liveness timeout. Checked against the connection's own history, so every
    /// request waiting on a dead peer learns it at the same moment, whenever it started.
    fn silent_for(&self) -> Option<Duration> {
        let received = self.conn.stats().udp_rx.datagrams;
        let now = tokio::time::Instant::now();
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        if received != heard.0 {
            *heard = (received, now);
            return None;
        }
        let silent = now - heard.1;
        (silent >= self.liveness).then_some(silent)
    }
}

impl fmt::Debug for ConnectionInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote)
            .field("server_role", &self.server_role)
            .field("streams", &self.streams.len())
            .field("closed", &self.conn.close_reason().is_some())
            .finish()
    }
}

impl Drop for ConnectionInner {
    fn drop(&mut self) {
        // The stream tasks keep the quinn connection alive; close it explicitly.
        self.conn.close(VarInt::from_u32(CLOSE_NORMAL), b"connection dropped");
    }
}

impl Connection {
    /// Sends `request` and waits for its response, at most `timeout`.
    ///
    /// [`TransportError::Timeout`] and [`TransportError::ConnectionLost`] leave the fate of
    /// the request unknown; [`TransportError::Encode`] and [`TransportError::NotSent`] mean
    /// nothing was sent. While waiting, the connection is watched: if it receives nothing at
    /// all for [`TransportConfig::liveness_timeout`] (a live peer acknowledges keep-alives),
    /// the peer is declared dead and the connection closed, failing every request on it.
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Response, TransportError> {
        let inner = &*self.inner;
        let request_id = inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let bytes = stream::encode(&Frame::request(request_id, request), inner.max_frame_len)
            .map_err(TransportError::Encode)?;
        let (tx, mut rx) = oneshot::channel();
        {
            let mut pending = inner.pending.lock();
            if let Some(reason) = &pending.lost {
                return Err(TransportError::NotSent(reason.clone()));
            }
            pending.waiters.insert(request_id, tx);
        }
        let _guard = PendingGuard { table: &inner.pending, request_id };
        let index = stream_for(bytes.len(), inner.streams.len(), &inner.large_turn);
        let deadline = tokio::time::Instant::now() + timeout;
        // Queueing waits only for room in the stream's queue; a request still unqueued when
        // time runs out was never sent.
        match tokio::time::timeout_at(deadline, inner.streams[index].send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(TransportError::NotSent(self.lost_reason())),
            Err(_) => return Err(TransportError::NotSent("request queue full until the timeout".into())),
        }
        let period = inner.liveness / 4;
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                answer = &mut rx => return answer.map_err(|_| self.lost()),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(peer = %inner.remote, request_id, "request timed out");
                    return Err(TransportError::Timeout);
                }
                _ = check.tick() => {
                    if let Some(silent) = inner.silent_for() {
                        tracing::debug!(peer = %inner.remote, request_id, ?silent, "peer silent; closing the connection");
                        inner.conn.close(VarInt::from_u32(CLOSE_NORMAL), b"peer unresponsive");
                        inner.pending.fail_all(format!("peer silent for {silent:?}"));
                        return Err(self.lost());
                    }
                }
            }
        }
    }

    fn lost_reason(&self) -> String {
        let inner = &*self.inner;
        inner
            .pending
            .lock()
            .lost
            .clone()
            .or_else(|| inner.conn.close_reason().map(|e| e.to_string()))
            .unwrap_or_else(|| "request stream closed".to_owned())
    }

    fn lost(&self) -> TransportError {
        TransportError::ConnectionLost(self.lost_reason())
    }

    /// The role the server proved in its `HelloAck`.
    pub fn server_role(&self) -> Role {
        self.inner.server_role
    }

    /// The server's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.remote
    }

    /// True once the connection is closed or lost.
    pub fn is_closed(&self) -> bool {
        self.inner.conn.close_reason().is_some() || self.inner.pending.lock().lost.is_some()
    }

    /// Closes the connection now; requests in flight fail with `ConnectionLost`.
    pub fn close(&self) {
        self.inner.conn.close(VarInt::from_u32(CLOSE_NORMAL), b"closed by client");
    }

    /// Resolves when the connection is closed or lost, with the reason.
    pub async fn closed(&self) -> String {
        self.inner.conn.closed().await.to_string()
    }

    /// True when `self` and `other` are clones of one connection.
    pub fn same_connection(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::{server_name, stream_for, LARGE_FRAME};
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn small_frames_share_the_first_stream_and_large_ones_take_turns_on_the_others() {
        let turn = AtomicUsize::new(0);
        for len in [0, 100, LARGE_FRAME - 1] {
            assert_eq!(stream_for(len, 4, &turn), 0, "{len} bytes");
        }
        let large: Vec<usize> = (0..6).map(|i| stream_for(LARGE_FRAME + i, 4, &turn)).collect();
        assert_eq!(large, [1, 2, 3, 1, 2, 3]);
        // Small frames in between do not take a turn.
        assert_eq!(stream_for(10, 4, &turn), 0);
        assert_eq!(stream_for(4 << 20, 4, &turn), 1);
        // With one stream, everything goes on it.
        assert_eq!(stream_for(4 << 20, 1, &turn), 0);
        assert_eq!(stream_for(10, 1, &turn), 0);
    }

    #[test]
    fn server_name_is_the_host_part() {
        assert_eq!(server_name("localhost:7000"), Some("localhost"));
        assert_eq!(server_name("127.0.0.1:1"), Some("127.0.0.1"));
        assert_eq!(server_name("[::1]:7000"), Some("::1"));
        assert_eq!(server_name("localhost"), None);
        assert_eq!(server_name(":7000"), None);
        assert_eq!(server_name("host:port"), None);
    }
}
