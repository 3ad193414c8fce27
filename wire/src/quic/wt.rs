//! WebTransport sessions from browsers (feature `webtransport`), on the same QUIC endpoint
//! as the native protocol: a connection that negotiated ALPN `h3` lands here.
//!
//! The browser opens a long-lived bidirectional stream and sends a `TokenHello` first; after
//! the `HelloAck` it multiplexes requests by id on that stream and on any others it opens,
//! exactly like a native client's streams (the same [`super::server::serve_stream`]). A
//! session has no client certificate: the [`Authenticator`] decides from the token.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::server::{hello_of, serve_stream, stopped, Closer, PeerInfo, Principal, ServeContext};
use super::stream::{self, ChunkRead, ChunkWrite, FrameReader};
use super::{Authenticator, Service, CLOSE_HANDSHAKE_REFUSED, CLOSE_HANDSHAKE_TIMEOUT, CLOSE_PROTOCOL_ERROR};
use crate::{Frame, FrameBody, HelloAck, PROTOCOL_VERSION};

impl Closer for web_transport_quinn::Session {
    fn close_with(&self, code: u32, reason: &'static [u8]) {
        self.close(code, reason);
    }
}

impl ChunkRead for web_transport_quinn::RecvStream {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, String> {
        match self.read_chunk(max, true).await {
            Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl ChunkWrite for web_transport_quinn::SendStream {
    async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), String> {
        web_transport_quinn::SendStream::write_all_chunks(self, chunks).await.map_err(|e| e.to_string())
    }
    fn finish_stream(&mut self) {
        let _ = self.finish();
    }
    async fn acknowledged(&mut self) {
        let _ = self.stopped().await;
    }
}

type WtReader = FrameReader<web_transport_quinn::RecvStream>;

/// Serves one browser connection: the HTTP/3 CONNECT, the token handshake, then requests.
pub(crate) async fn serve_session<S: Service, A: Authenticator>(
    conn: quinn::Connection,
    ctx: Arc<ServeContext<S, A>>,
    _permit: OwnedSemaphorePermit,
    done: mpsc::Sender<()>,
) {
    let remote = conn.remote_address();
    let timeout = ctx.config.connect_timeout;
    let request = match tokio::time::timeout(timeout, web_transport_quinn::Request::accept(conn.clone())).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            tracing::debug!(peer = %remote, %error, "WebTransport CONNECT failed");
            return;
        }
        Err(_) => {
            conn.close(CLOSE_HANDSHAKE_TIMEOUT.into(), b"no CONNECT in time");
            return;
        }
    };
    let session = match request.ok().await {
        Ok(session) => session,
        Err(error) => {
            tracing::debug!(peer = %remote, %error, "WebTransport session failed");
            return;
        }
    };
    let accepted = tokio::time::timeout(timeout, handshake(&session, &ctx, remote)).await;
    let (peer, send, reader) = match accepted {
        Ok(Some(accepted)) => accepted,
        Ok(None) => return,
        Err(_) => {
            session.close(CLOSE_HANDSHAKE_TIMEOUT, b"no Hello in time");
            return;
        }
    };
    tracing::debug!(peer = %remote, token = peer.grant.as_ref().map(|g| g.id), "WebTransport peer authenticated");
    tokio::spawn(serve_stream(session.clone(), peer.clone(), send, reader, ctx.clone(), done.clone()));
    let mut stop = ctx.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            accepted = session.accept_bi() => accepted,
        };
        match accepted {
            Ok((send, recv)) => {
                let reader = FrameReader::new(recv, ctx.config.max_frame_len);
                tokio::spawn(serve_stream(session.clone(), peer.clone(), send, reader, ctx.clone(), done.clone()));
            }
            Err(error) => {
                tracing::debug!(peer = %remote, %error, "WebTransport session closed");
                break;
            }
        }
    }
    if !*stop.borrow() {
        session.closed().await;
    }
}

async fn handshake<S: Service, A: Authenticator>(
    session: &web_transport_quinn::Session,
    ctx: &ServeContext<S, A>,
    remote: SocketAddr,
) -> Option<(Arc<PeerInfo>, web_transport_quinn::SendStream, WtReader)> {
    let (mut send, recv) = session.accept_bi().await.ok()?;
    let max = ctx.config.max_frame_len;
    let mut reader = FrameReader::new(recv, max);
    let (hello, token) = match reader.next().await {
        Ok(Some(Frame { body, .. })) => match hello_of(body) {
            Some(first) => first,
            None => {
                let error = crate::Error::Unauthenticated { reason: "the first frame must be Hello".into() };
                refuse(session, &mut send, error, max).await;
                return None;
            }
        },
        _ => {
            session.close(CLOSE_PROTOCOL_ERROR, b"malformed frame");
            return None;
        }
    };
    match ctx.auth.authenticate(&hello, token.as_deref(), &[]) {
        Ok(Principal { role, grant }) => {
            let ack = Frame {
                request_id: 0,
                body: FrameBody::HelloAck(Ok(HelloAck { protocol_version: PROTOCOL_VERSION, role: ctx.role })),
            };
            let bytes = stream::encode(&ack, max).ok()?;
            send.write_all(&bytes).await.ok()?;
            Some((Arc::new(PeerInfo { role, remote, grant }), send, reader))
        }
        Err(error) => {
            tracing::debug!(peer = %remote, %error, "WebTransport handshake refused");
            refuse(session, &mut send, error, max).await;
            None
        }
    }
}

async fn refuse(
    session: &web_transport_quinn::Session,
    send: &mut web_transport_quinn::SendStream,
    error: crate::Error,
    max: u32,
) {
    let refusal = Frame { request_id: 0, body: FrameBody::HelloAck(Err(error)) };
    if let Ok(bytes) = stream::encode(&refusal, max) {
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await;
        }
    }
    session.close(CLOSE_HANDSHAKE_REFUSED, b"handshake refused");
}
