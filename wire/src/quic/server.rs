//! Server side: accept connections, authenticate, dispatch requests.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::client::quinn_client_config;
use super::stream::{self, ChunkRead, ChunkWrite, FrameReader};
use super::{
    TransportConfig, TransportError, CLOSE_HANDSHAKE_REFUSED, CLOSE_HANDSHAKE_TIMEOUT, CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR,
};
use crate::token::TokenClaims;
use crate::{Frame, FrameBody, Hello, HelloAck, Request, Response, Role, PROTOCOL_VERSION};

/// ALPN of HTTP/3, which WebTransport sessions from browsers use.
pub const H3_ALPN: &[u8] = b"h3";

/// Responses queued per stream before handlers wait for the writer.
const STREAM_QUEUE: usize = 256;
/// Requests of one stream being handled at once. Beyond it the stream is not read, so QUIC
/// flow control pushes back on the client instead of tasks piling up here.
const MAX_IN_FLIGHT_PER_STREAM: usize = 1024;
/// After refusing a handshake, how long the server waits for the client to read the
/// refusal and close before closing the connection itself.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// Bound on each phase of a graceful shutdown: in-flight handlers, then the endpoint's
/// closing handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After closing the endpoint, how long to wait for peers to acknowledge the close. The
/// close frame is already sent; waiting only retransmits it if lost, and a peer that is
/// itself gone would otherwise hold shutdown for its whole backed-off timer.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// After its last response, how long a stream waits for the client to acknowledge it.
const FLUSH_LINGER: Duration = Duration::from_secs(2);

/// An authenticated peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The role the peer proved (the [`Authenticator`]'s answer).
    pub role: Role,
    /// Its address.
    pub remote: SocketAddr,
    /// For a peer authenticated by a scoped token (web clients), what the token allows;
    /// services check it on every request. `None` for certificate-authenticated peers.
    pub grant: Option<Arc<TokenClaims>>,
}

/// Who an authenticated peer is: the [`Authenticator`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The role it proved.
    pub role: Role,
    /// The token's claims, when it authenticated with a token instead of a certificate.
    pub grant: Option<Arc<TokenClaims>>,
}

impl Principal {
    /// A certificate-authenticated peer acting as `role`.
    pub fn certified(role: Role) -> Principal {
        Principal { role, grant: None }
    }
}

/// Decides who a connecting peer is, from its [`Hello`] and TLS certificate chain, or for a
/// web client (no certificate) from the token of its [`crate::TokenHello`].
pub trait Authenticator: Send + Sync + 'static {
    /// Returns the verified principal, or the typed error sent back in the `HelloAck`
    /// (`Unauthenticated`, `PermissionDenied`, `UnsupportedVersion`).
    fn authenticate(
        &self,
        hello: &Hello,
        token: Option<&str>,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Principal, crate::Error>;
}

/// The `Hello` of a handshake frame, with the token of a `TokenHello`; `None` for any
/// other frame.
pub(crate) fn hello_of(body: FrameBody) -> Option<(Hello, Option<String>)> {
    match body {
        FrameBody::Hello(hello) => Some((hello, None)),
        FrameBody::TokenHello(t) => Some((t.hello(), Some(t.token))),
        _ => None,
    }
}

/// Handles requests of authenticated peers.
pub trait Service: Send + Sync + 'static {
    /// Answers one request. Called concurrently for requests in flight.
    fn call(self: Arc<Self>, peer: Arc<PeerInfo>, request: Request) -> impl Future<Output = Response> + Send + 'static;
}

/// A listening QUIC endpoint. The same endpoint can also dial out ([`Server::client`]), so a
/// node uses one UDP socket for everything.
#[derive(Debug)]
pub struct Server {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) config: TransportConfig,
    pub(crate) role: Role,
    pub(crate) client_config: Option<quinn::ClientConfig>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) released: super::SocketReleased,
}

impl Server {
    /// Binds `addr` with the given TLS server configuration (which must require client
    /// certificates). `role` is what this server answers in its `HelloAck`. The optional
    /// `client_tls` lets the same endpoint dial out (node to node, node to PD).
    pub fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        client_tls: Option<Arc<rustls::ClientConfig>>,
        role: Role,
        config: TransportConfig,
    ) -> Result<Server, TransportError> {
        config.validate().map_err(TransportError::Endpoint)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TransportError::Endpoint(format!("server TLS configuration: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(config.quinn_transport()?));
        let client_config = client_tls.map(|tls| quinn_client_config(tls, &config)).transpose()?;
        let (mut endpoint, released) = super::bind_endpoint(&config, Some(server_config), addr)?;
        if let Some(client_config) = &client_config {
            endpoint.set_default_client_config(client_config.clone());
        }
        let local_addr = endpoint.local_addr().map_err(|e| TransportError::Endpoint(e.to_string()))?;
        Ok(Server { endpoint, config, role, client_config, local_addr, released })
    }

    /// Resolves once this server's socket is closed: after `serve` returned and every
    /// handle of the endpoint (including [`Server::client`] endpoints and their
    /// connections) is dropped. Await it before binding the same port again.
    pub fn released(&self) -> super::SocketReleased {
        self.released.clone()
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A client endpoint sharing this server's socket and announcing the server's role.
    /// Without `client_tls` at bind, its `connect` fails with [`TransportError::Endpoint`].
    pub fn client(&self) -> ClientEndpointHandle {
        super::ClientEndpoint {
            endpoint: self.endpoint.clone(),
            client_config: self.client_config.clone(),
            role: self.role,
            config: self.config.clone(),
            protocol_version: PROTOCOL_VERSION,
        }
    }

    /// Accepts and serves connections until `shutdown` resolves, then closes the endpoint
    /// and waits for in-flight requests to finish.
    ///
    /// Shutdown: new connections are refused, open streams stop reading requests, handlers
    /// in flight finish and their responses are flushed (at most 5 s), then
    /// the endpoint closes every connection with [`super::CLOSE_NORMAL`].
    pub async fn serve<S: Service, A: Authenticator>(
        self,
        service: Arc<S>,
        auth: Arc<A>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        // Drop guard: every connection, stream and handler task holds a clone of `done`;
        // `recv` returns `None` once all of them are gone.
        let (done, mut all_done) = mpsc::channel::<()>(1);
        let ctx = Arc::new(ServeContext { service, auth, role: self.role, config: self.config.clone(), stop: stop_rx });
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::debug!(peer = %incoming.remote_address(), "connection limit reached; refusing");
                incoming.refuse();
                continue;
            };
            tokio::spawn(serve_connection(incoming, ctx.clone(), permit, done.clone()));
        }

        tracing::debug!(addr = %self.local_addr, "shutting down");
        let _ = stop_tx.send(true);
        drop(done);
        drop(ctx);
        // While in-flight requests finish, new connections are refused explicitly, so their
        // clients fail at once instead of waiting for a handshake that never comes.
        let drain = async {
            loop {
                tokio::select! {
                    _ = all_done.recv() => break,
                    incoming = self.endpoint.accept() => match incoming {
                        Some(incoming) => incoming.refuse(),
                        None => break,
                    },
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(addr = %self.local_addr, "requests still in flight at shutdown; abandoning them");
        }
        self.endpoint.close(VarInt::from_u32(CLOSE_NORMAL), b"server shutting down");
        let _ = tokio::time::timeout(CLOSE_LINGER, self.endpoint.wait_idle()).await;
    }
}

/// Re-export for the client handle type returned by [`Server::client`].
pub type ClientEndpointHandle = super::ClientEndpoint;

/// What every connection task needs.
pub(crate) struct ServeContext<S, A> {
    pub(crate) service: Arc<S>,
    pub(crate) auth: Arc<A>,
    pub(crate) role: Role,
    pub(crate) config: TransportConfig,
    pub(crate) stop: watch::Receiver<bool>,
}

pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the server is gone, which is a stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

fn close(conn: &quinn::Connection, code: u32, reason: &'static [u8]) {
    conn.close(VarInt::from_u32(code), reason);
}

/// What a request stream closes on a protocol violation or a panicked handler: the QUIC
/// connection, or a browser's WebTransport session.
pub(crate) trait Closer: Clone + Send + Sync + 'static {
    /// Closes with an application `code` and `reason`.
    fn close_with(&self, code: u32, reason: &'static [u8]);
}

impl Closer for quinn::Connection {
    fn close_with(&self, code: u32, reason: &'static [u8]) {
        close(self, code, reason);
    }
}

async fn serve_connection<S: Service, A: Authenticator>(
    incoming: quinn::Incoming,
    ctx: Arc<ServeContext<S, A>>,
    #[allow(clippy::used_underscore_binding)] _permit: OwnedSemaphorePermit,
    done: mpsc::Sender<()>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(error) => {
            tracing::debug!(peer = %remote, %error, "TLS handshake failed");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(H3_ALPN) {
        // A browser: WebTransport over HTTP/3, authenticated by a token.
        #[cfg(feature = "webtransport")]
        super::wt::serve_session(conn, ctx, _permit, done).await;
        #[cfg(not(feature = "webtransport"))]
        close(&conn, CLOSE_HANDSHAKE_REFUSED, b"WebTransport is not enabled");
        return;
    }
    // Web-enabled servers let TLS accept peers without a certificate (browsers cannot send
    // one); on the native protocol a certificate stays mandatory.
    if conn.peer_identity().is_none() {
        tracing::debug!(peer = %remote, "native connection without a client certificate; refusing");
        close(&conn, CLOSE_HANDSHAKE_REFUSED, b"client certificate required");
        return;
    }
    let handshake = tokio::time::timeout(ctx.config.connect_timeout, handshake(&conn, &ctx, remote)).await;
    let (peer, send, reader) = match handshake {
        Ok(Some(accepted)) => accepted,
        Ok(None) => return,
        Err(_) => {
            tracing::debug!(peer = %remote, "no handshake in time; closing");
            close(&conn, CLOSE_HANDSHAKE_TIMEOUT, b"handshake timeout");
            return;
        }
    };
    tracing::debug!(peer = %remote, role = ?peer.role, "peer authenticated");

    // The handshake stream is the first request stream.
    tokio::spawn(serve_stream(conn.clone(), peer.clone(), send, reader, ctx.clone(), done.clone()));
    let mut stop = ctx.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            accepted = conn.accept_bi() => accepted,
        };
        match accepted {
            Ok((send, recv)) => {
                let reader = FrameReader::new(recv, ctx.config.max_frame_len);
                tokio::spawn(serve_stream(conn.clone(), peer.clone(), send, reader, ctx.clone(), done.clone()));
            }
            Err(error) => {
                tracing::debug!(peer = %remote, %error, "connection closed");
                break;
            }
        }
    }
    // The connection slot (`_permit`) is held until the connection is gone.
    if !*stop.borrow() {
        conn.closed().await;
    }
}

/// Reads the `Hello` from the first stream and authenticates it. On success returns the
/// peer and the stream, after sending the `HelloAck`; otherwise refuses the peer and closes
/// the connection.
async fn handshake<S: Service, A: Authenticator>(
    conn: &quinn::Connection,
    ctx: &ServeContext<S, A>,
    remote: SocketAddr,
) -> Option<(Arc<PeerInfo>, quinn::SendStream, FrameReader)> {
    let (mut send, recv) = match conn.accept_bi().await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(peer = %remote, %error, "connection closed before the handshake");
            return None;
        }
    };
    let mut reader = FrameReader::new(recv, ctx.config.max_frame_len);
    let first = match reader.next().await {
        Ok(Some(Frame { request_id, body })) => hello_of(body).ok_or(request_id),
        Ok(None) => {
            close(conn, CLOSE_PROTOCOL_ERROR, b"no Hello");
            return None;
        }
        Err(error) => {
            tracing::debug!(peer = %remote, %error, "invalid Hello; closing");
            close(conn, CLOSE_PROTOCOL_ERROR, b"malformed frame");
            return None;
        }
    };
    let (hello, token) = match first {
        Ok(first) => first,
        Err(request_id) => {
            tracing::debug!(peer = %remote, request_id, "frame before Hello; refusing");
            let error = crate::Error::Unauthenticated { reason: "the first frame must be Hello".into() };
            refuse(conn, &mut send, error, ctx.config.max_frame_len).await;
            return None;
        }
    };
    let certificates = conn
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|certs| *certs)
        .unwrap_or_default();
    match ctx.auth.authenticate(&hello, token.as_deref(), &certificates) {
        Ok(Principal { role, grant }) => {
            let ack = Frame {
                request_id: 0,
                body: FrameBody::HelloAck(Ok(HelloAck { protocol_version: PROTOCOL_VERSION, role: ctx.role })),
            };
            let bytes = match stream::encode(&ack, ctx.config.max_frame_len) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(peer = %remote, %error, "cannot encode HelloAck");
                    close(conn, CLOSE_INTERNAL_ERROR, b"internal error");
                    return None;
                }
            };
            if let Err(error) = send.write_all(&bytes).await {
                tracing::debug!(peer = %remote, %error, "connection lost during the handshake");
                return None;
            }
            Some((Arc::new(PeerInfo { role, remote, grant }), send, reader))
        }
        Err(error) => {
            tracing::debug!(peer = %remote, claimed = ?hello.role, %error, "handshake refused");
            refuse(conn, &mut send, error, ctx.config.max_frame_len).await;
            None
        }
    }
}

/// Sends `HelloAck(Err(error))`, gives the client a moment to read it and close, then
/// closes the connection.
async fn refuse(conn: &quinn::Connection, send: &mut quinn::SendStream, error: crate::Error, max_frame_len: u32) {
    let refusal = Frame { request_id: 0, body: FrameBody::HelloAck(Err(error)) };
    if let Ok(bytes) = stream::encode(&refusal, max_frame_len) {
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
            // The client closes as soon as it has read the refusal; closing first could
            // discard the refusal before it is delivered.
            let _ = tokio::time::timeout(REFUSAL_LINGER, conn.closed()).await;
        }
    }
    close(conn, CLOSE_HANDSHAKE_REFUSED, b"handshake refused");
}

/// Serves one request stream: reads requests, runs each in its own task, writes responses
/// through the stream's writer task.
pub(crate) async fn serve_stream<S, A, C, W, R>(
    conn: C,
    peer: Arc<PeerInfo>,
    mut send: W,
    mut reader: FrameReader<R>,
    ctx: Arc<ServeContext<S, A>>,
    done: mpsc::Sender<()>,
) where
    S: Service,
    A: Authenticator,
    C: Closer,
    W: ChunkWrite,
    R: ChunkRead,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let remote = peer.remote;
    let writer = tokio::spawn(async move {
        match stream::write_loop(&mut send, &mut rx).await {
            Ok(()) => {
                // Every response is queued in quinn; give the client a moment to
                // acknowledge them before the stream (and perhaps the endpoint) goes away.
                send.finish_stream();
                let _ = tokio::time::timeout(FLUSH_LINGER, send.acknowledged()).await;
            }
            Err(error) => tracing::debug!(peer = %remote, %error, "response stream failed"),
        }
    });

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_STREAM));
    let mut stop = ctx.stop.clone();
    loop {
        let (slot, next) = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            next = async {
                // The semaphore is never closed, so acquiring only waits.
                let slot = in_flight.clone().acquire_owned().await.ok();
                (slot, reader.next().await)
            } => next,
        };
        match next {
            Ok(Some(Frame { request_id, body: FrameBody::Request(request) })) => {
                let handler = Handler {
                    _slot: slot,
                    conn: conn.clone(),
                    peer: peer.clone(),
                    request_id,
                    tx: tx.clone(),
                    max_frame_len: ctx.config.max_frame_len,
                    _done: done.clone(),
                };
                let response = ctx.service.clone().call(peer.clone(), request);
                tokio::spawn(handler.run(response));
            }
            Ok(Some(Frame { request_id, .. })) => {
                tracing::debug!(peer = %remote, request_id, "unexpected frame kind; closing connection");
                conn.close_with(CLOSE_PROTOCOL_ERROR, b"unexpected frame");
                break;
            }
            // The client finished its side: no more requests, but responses still go out.
            Ok(None) => break,
            Err(error) if error.is_protocol_violation() => {
                tracing::debug!(peer = %remote, %error, "invalid frame; closing connection");
                conn.close_with(CLOSE_PROTOCOL_ERROR, b"malformed frame");
                break;
            }
            Err(error) => {
                tracing::debug!(peer = %remote, %error, "request stream closed");
                break;
            }
        }
    }
    drop(tx);
    // Handlers in flight hold senders; the writer ends once they have all answered. The
    // reader stays alive meanwhile, so the client's side of the stream is not stopped.
    let _ = writer.await;
    drop(reader);
    drop(done);
}

/// One request being answered.
struct Handler<C> {
    conn: C,
    peer: Arc<PeerInfo>,
    request_id: u64,
    tx: mpsc::Sender<Bytes>,
    max_frame_len: u32,
    /// Held until the response is queued: one of the stream's in-flight slots.
    _slot: Option<OwnedSemaphorePermit>,
    /// Held until the response is queued: shutdown waits for it.
    _done: mpsc::Sender<()>,
}

impl<C: Closer> Handler<C> {
    async fn run(self, response: impl Future<Output = Response> + Send + 'static) {
        let request_id = self.request_id;
        let remote = self.peer.remote;
        let response = match CatchUnwind::new(response).await {
            Ok(response) => response,
            Err(()) => {
                // The request's fate is unknown; losing the connection is how the client
                // learns that (ConnectionLost), rather than waiting for its timeout.
                tracing::error!(peer = %remote, request_id, "request handler panicked; closing connection");
                self.conn.close_with(CLOSE_INTERNAL_ERROR, b"internal error");
                return;
            }
        };
        let Some(bytes) = encode_response(request_id, response, self.max_frame_len) else {
            tracing::error!(peer = %remote, request_id, "cannot encode response; closing connection");
            self.conn.close_with(CLOSE_INTERNAL_ERROR, b"internal error");
            return;
        };
        // Fails only when the stream is gone, and with it the client's interest.
        let _ = self.tx.send(bytes).await;
    }
}

/// Encodes the answer to `request_id`. A response over the frame limit is replaced by
/// `ResponseTooLarge`, so the client gets a typed error instead of a lost connection;
/// `None` when even that cannot be encoded (the connection must close). Every transport
/// (QUIC, WebTransport, WebSocket) answers through this.
pub(crate) fn encode_response(request_id: u64, response: Response, max_frame_len: u32) -> Option<Bytes> {
    match stream::encode(&Frame::response(request_id, response), max_frame_len) {
        Ok(bytes) => Some(bytes),
        Err(crate::FrameError::TooLarge { len, max }) => {
            tracing::debug!(request_id, len, "response exceeds the frame limit");
            let error = crate::Error::ResponseTooLarge { len, max: u64::from(max) };
            stream::encode(&Frame::response(request_id, Err(error)), max_frame_len).ok()
        }
        Err(error) => {
            tracing::error!(request_id, %error, "cannot encode response");
            None
        }
    }
}

pin_project_lite::pin_project! {
    /// Runs a future, turning a panic into `Err(())` so one failing request cannot take the
    /// server's tasks down silently. The future stays where it is (inside its task), so a
    /// request's future is allocated and moved once, not boxed a second time.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(inner: F) -> CatchUnwind<F> {
        CatchUnwind { inner }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
