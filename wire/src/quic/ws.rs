//! WebSocket listener (feature `ws`): how Node.js and edge runtimes, which have no
//! WebTransport, reach nodes and PD.
//!
//! Every binary message carries exactly one frame, encoded as on QUIC (length prefix
//! included), so both ends share the frame codec. The first message must be a `Hello`; the
//! peer has no certificate, so the [`Authenticator`] sees an empty chain and decides from
//! the token in the `Hello`. After the `HelloAck`, requests are multiplexed by request id
//! and answered as they complete, in any order, like one QUIC stream.
//!
//! Invariants, as on QUIC: no request is dispatched before the `Hello` was authenticated;
//! a malformed or oversized frame (or a text message) closes the socket; one socket's
//! failure never touches another.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::server::{CatchUnwind, PeerInfo, Principal, ServeContext};
use super::{Authenticator, Service, TransportConfig};
use crate::frame::{self, LEN_PREFIX};
use crate::{Frame, FrameBody, HelloAck, PROTOCOL_VERSION};

/// Responses queued per socket before handlers wait for the writer.
const SOCKET_QUEUE: usize = 256;
/// Requests of one socket being handled at once; beyond it the socket is not read, so TCP
/// flow control pushes back on the client.
const MAX_IN_FLIGHT_PER_SOCKET: usize = 1024;
/// Bound on in-flight handlers at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The byte stream under a WebSocket: plain TCP, or TLS (`wss://`).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Socket = WebSocketStream<Box<dyn Io>>;

/// A WebSocket listener serving the same [`Service`] as a QUIC [`super::Server`].
pub struct WsServer {
    listener: TcpListener,
    config: TransportConfig,
    role: crate::Role,
    local_addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for WsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsServer").field("local_addr", &self.local_addr).field("tls", &self.tls.is_some()).finish()
    }
}

impl WsServer {
    /// Binds TCP `addr` (the same port number as the node's QUIC endpoint is fine: TCP and
    /// UDP ports are separate). `role` is what this server answers in its `HelloAck`.
    pub async fn bind(
        addr: SocketAddr,
        role: crate::Role,
        config: TransportConfig,
    ) -> Result<WsServer, crate::TransportError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| crate::TransportError::Endpoint(format!("bind WebSocket {addr}: {e}")))?;
        let local_addr = listener.local_addr().map_err(|e| crate::TransportError::Endpoint(e.to_string()))?;
        Ok(WsServer { listener, config, role, local_addr, tls: None })
    }

    /// Serves `wss://` instead of `ws://`, with `tls` (a certificate clients trust by
    /// themselves, e.g. WebPKI: web clients present tokens, not certificates).
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> WsServer {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(tls));
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts and serves sockets until `shutdown` resolves, then stops reading requests,
    /// lets handlers in flight answer (at most 5 s) and closes every socket.
    pub async fn serve<S: Service, A: Authenticator>(
        self,
        service: Arc<S>,
        auth: Arc<A>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done, mut all_done) = mpsc::channel::<()>(1);
        let ctx = Arc::new(ServeContext { service, auth, role: self.role, config: self.config.clone(), stop: stop_rx });
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(addr = %self.local_addr, %error, "WebSocket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::debug!(peer = %remote, "connection limit reached; refusing WebSocket");
                continue;
            };
            tokio::spawn(serve_socket(tcp, remote, ctx.clone(), self.tls.clone(), permit, done.clone()));
        }
        let _ = stop_tx.send(true);
        drop(done);
        drop(ctx);
        drop(self.listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, all_done.recv()).await.is_err() {
            tracing::warn!(addr = %self.local_addr, "WebSocket requests still in flight at shutdown");
        }
    }
}

fn close_frame(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// Encodes `frame` as one binary message.
fn message(frame: &Frame, max_frame_len: u32) -> Option<Message> {
    match super::stream::encode(frame, max_frame_len) {
        Ok(bytes) => Some(Message::Binary(bytes)),
        Err(error) => {
            tracing::error!(%error, "cannot encode a WebSocket frame");
            None
        }
    }
}

/// Decodes one binary message holding exactly one frame.
fn decode(data: &[u8], max_frame_len: u32) -> Result<Frame, String> {
    match frame::decode(data, max_frame_len) {
        Ok(Some((frame, used))) if used == data.len() => Ok(frame),
        Ok(Some(_)) => Err("a message holds more than one frame".into()),
        Ok(None) if data.len() < LEN_PREFIX => Err("message shorter than a length prefix".into()),
        Ok(None) => Err("message holds an incomplete frame".into()),
        Err(error) => Err(error.to_string()),
    }
}

async fn serve_socket<S: Service, A: Authenticator>(
    tcp: TcpStream,
    remote: SocketAddr,
    ctx: Arc<ServeContext<S, A>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    _permit: OwnedSemaphorePermit,
    done: mpsc::Sender<()>,
) {
    let _ = tcp.set_nodelay(true);
    let max_frame_len = ctx.config.max_frame_len;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(max_frame_len as usize + LEN_PREFIX))
        .max_frame_size(Some(max_frame_len as usize + LEN_PREFIX));
    let io: Box<dyn Io> = match &tls {
        None => Box::new(tcp),
        Some(acceptor) => match tokio::time::timeout(ctx.config.connect_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(error)) => {
                tracing::debug!(peer = %remote, %error, "WebSocket TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %remote, "no WebSocket TLS handshake in time");
                return;
            }
        },
    };
    let accept = tokio_tungstenite::accept_async_with_config(io, Some(ws_config));
    let mut socket = match tokio::time::timeout(ctx.config.connect_timeout, accept).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            tracing::debug!(peer = %remote, %error, "WebSocket upgrade failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %remote, "no WebSocket upgrade in time");
            return;
        }
    };
    let handshake = tokio::time::timeout(ctx.config.connect_timeout, handshake(&mut socket, &ctx, remote)).await;
    let peer = match handshake {
        Ok(Some(peer)) => peer,
        Ok(None) => return,
        Err(_) => {
            let _ = socket.send(close_frame(CloseCode::Policy, "no Hello in time")).await;
            return;
        }
    };
    tracing::debug!(peer = %remote, role = ?peer.role, token = peer.grant.as_ref().map(|g| g.id), "WebSocket peer authenticated");

    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(SOCKET_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let close = matches!(message, Message::Close(_));
            if sink.feed(message).await.is_err() {
                return;
            }
            // Batch what is already queued into one flush.
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() || close {
                return;
            }
        }
        let _ = sink.close().await;
    });

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_SOCKET));
    let mut stop = ctx.stop.clone();
    loop {
        let (slot, next) = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            next = async {
                let slot = in_flight.clone().acquire_owned().await.ok();
                (slot, stream.next().await)
            } => next,
        };
        let data = match next {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                let _ = tx.send(close_frame(CloseCode::Unsupported, "binary frames only")).await;
                break;
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(error)) => {
                tracing::debug!(peer = %remote, %error, "WebSocket failed");
                break;
            }
        };
        match decode(&data, max_frame_len) {
            Ok(Frame { request_id, body: FrameBody::Request(request) }) => {
                let response = ctx.service.clone().call(peer.clone(), request);
                let tx = tx.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let _done = done;
                    let answer = match CatchUnwind::new(response).await {
                        Ok(response) => response_message(request_id, response, max_frame_len),
                        Err(()) => {
                            tracing::error!(peer = %remote, request_id, "request handler panicked; closing socket");
                            Some(close_frame(CloseCode::Error, "internal error"))
                        }
                    };
                    if let Some(answer) = answer {
                        let _ = tx.send(answer).await;
                    }
                });
            }
            Ok(Frame { request_id, .. }) => {
                tracing::debug!(peer = %remote, request_id, "unexpected frame kind; closing socket");
                let _ = tx.send(close_frame(CloseCode::Protocol, "unexpected frame")).await;
                break;
            }
            Err(reason) => {
                tracing::debug!(peer = %remote, %reason, "invalid frame; closing socket");
                let _ = tx.send(close_frame(CloseCode::Protocol, "malformed frame")).await;
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    drop(done);
}

fn response_message(request_id: u64, response: crate::Response, max_frame_len: u32) -> Option<Message> {
    Some(match super::server::encode_response(request_id, response, max_frame_len) {
        Some(bytes) => Message::Binary(bytes),
        None => close_frame(CloseCode::Error, "internal error"),
    })
}

/// Reads the `Hello`, authenticates it and answers the `HelloAck`. `None` when refused
/// (the refusal is sent and the socket closed).
async fn handshake<S: Service, A: Authenticator>(
    socket: &mut Socket,
    ctx: &ServeContext<S, A>,
    remote: SocketAddr,
) -> Option<Arc<PeerInfo>> {
    let max_frame_len = ctx.config.max_frame_len;
    let (hello, token) = loop {
        match socket.next().await {
            Some(Ok(Message::Binary(data))) => {
                match decode(&data, max_frame_len).map(|f| super::server::hello_of(f.body)) {
                    Ok(Some(hello)) => break hello,
                    Ok(None) => {
                        let error = crate::Error::Unauthenticated { reason: "the first frame must be Hello".into() };
                        refuse(socket, error, max_frame_len).await;
                        return None;
                    }
                    Err(reason) => {
                        tracing::debug!(peer = %remote, %reason, "invalid Hello; closing socket");
                        let _ = socket.send(close_frame(CloseCode::Protocol, "malformed frame")).await;
                        return None;
                    }
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        }
    };
    match ctx.auth.authenticate(&hello, token.as_deref(), &[]) {
        Ok(Principal { role, grant }) => {
            let ack = Frame {
                request_id: 0,
                body: FrameBody::HelloAck(Ok(HelloAck { protocol_version: PROTOCOL_VERSION, role: ctx.role })),
            };
            let ack = message(&ack, max_frame_len)?;
            socket.send(ack).await.ok()?;
            Some(Arc::new(PeerInfo { role, remote, grant }))
        }
        Err(error) => {
            tracing::debug!(peer = %remote, claimed = ?hello.role, %error, "WebSocket handshake refused");
            refuse(socket, error, max_frame_len).await;
            None
        }
    }
}

async fn refuse(socket: &mut Socket, error: crate::Error, max_frame_len: u32) {
    let refusal = Frame { request_id: 0, body: FrameBody::HelloAck(Err(error)) };
    if let Some(refusal) = message(&refusal, max_frame_len) {
        let _ = socket.send(refusal).await;
    }
    let _ = socket.send(close_frame(CloseCode::Policy, "handshake refused")).await;
}
