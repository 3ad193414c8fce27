//! Web clients: the WebSocket listener of nodes and PD, and scoped tokens enforced on every
//! request. A raw WebSocket client speaks the frame protocol here, so each refusal is seen
//! exactly as a JavaScript client would see it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tessera_certs::{create_token, sign_claims, unix_now, TokenSpec};
use tessera_wire::token::{Ops, TokenClaims};
use tessera_wire::{
    frame, Error, Frame, FrameBody, Hello, KvOp, KvRequest, KvResponse, PdRequest, PdResponse, PeerId, RaftRequest,
    RaftRpcKind, ReadConsistency, RegionId, RegionRoute, Request, RequestHeader, ResponseBody, Role, TokenHello,
    WriteCommand, WriteResult,
};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::TestCluster;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// A raw web client: one WebSocket, one request at a time.
struct WebPeer {
    ws: Ws,
    next_id: u64,
}

async fn send_frame(ws: &mut Ws, frame: &Frame) {
    ws.send(Message::Binary(frame::encode(frame).unwrap().into())).await.unwrap();
}

/// The next frame, or `None` once the server closed the socket.
async fn next_frame(ws: &mut Ws) -> Option<Frame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("server answers in time") {
            Some(Ok(Message::Binary(data))) => {
                let (frame, used) = frame::decode(&data, frame::DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
                assert_eq!(used, data.len(), "one frame per message");
                return Some(frame);
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

impl WebPeer {
    /// Connects to `addr` (a QUIC address; the WebSocket listens on the same port number)
    /// and says `Hello` with `token`. Returns the handshake refusal on failure.
    async fn connect(addr: &str, token: Option<String>) -> Result<WebPeer, Error> {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}")).await.expect("WebSocket connects");
        let body = match token {
            Some(token) => FrameBody::TokenHello(TokenHello::new(token)),
            None => FrameBody::Hello(Hello::new(Role::Client)),
        };
        send_frame(&mut ws, &Frame { request_id: 0, body }).await;
        match next_frame(&mut ws).await {
            Some(Frame { body: FrameBody::HelloAck(Ok(_)), .. }) => Ok(WebPeer { ws, next_id: 1 }),
            Some(Frame { body: FrameBody::HelloAck(Err(e)), .. }) => {
                assert!(next_frame(&mut ws).await.is_none(), "a refused socket is closed");
                Err(e)
            }
            other => panic!("unexpected answer to Hello: {other:?}"),
        }
    }

    /// Sends `request`; `None` when the socket was closed instead of answering.
    async fn call(&mut self, request: Request) -> Option<Result<ResponseBody, Error>> {
        let id = self.next_id;
        self.next_id += 1;
        send_frame(&mut self.ws, &Frame::request(id, request)).await;
        match next_frame(&mut self.ws).await? {
            Frame { request_id, body: FrameBody::Response(response) } => {
                assert_eq!(request_id, id);
                Some(response)
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }

    async fn pd(&mut self, request: PdRequest) -> Result<PdResponse, Error> {
        match self.call(Request::Pd(request)).await.expect("PD answers") {
            Ok(ResponseBody::Pd(r)) => Ok(r),
            Ok(other) => panic!("non-PD answer {other:?}"),
            Err(e) => Err(e),
        }
    }

    async fn kv(&mut self, route: &RegionRoute, op: KvOp) -> Result<KvResponse, Error> {
        let header = RequestHeader {
            region_id: route.region.id,
            epoch: route.region.epoch,
            timeout_ms: 5000,
            consistency: ReadConsistency::Linearizable,
        };
        match self.call(Request::Kv(KvRequest { header, op })).await.expect("the node answers") {
            Ok(ResponseBody::Kv(r)) => Ok(r),
            Ok(other) => panic!("non-KV answer {other:?}"),
            Err(e) => Err(e),
        }
    }
}

fn token(c: &TestCluster, prefix: &str, read: bool, write: bool) -> (String, TokenClaims) {
    let spec = TokenSpec {
        prefix: prefix.as_bytes().to_vec(),
        ops: Ops { read, write },
        ttl: Duration::from_secs(600),
        name: "test".into(),
    };
    create_token(&c.certs(), &spec).unwrap()
}

/// The route of `key` with its leader, and the leader's address.
async fn leader_route(c: &TestCluster, key: &[u8]) -> (RegionRoute, String) {
    let route = c.route_with_leader(key).await;
    let leader = route.leader.expect("led");
    let idx = route.region.peers.iter().position(|p| p.id == leader.id).unwrap();
    let addr = route.peer_addrs[idx].clone();
    (route, addr)
}

fn put(key: &[u8], value: &[u8]) -> KvOp {
    KvOp::Write { session: None, command: WriteCommand::Put { key: key.to_vec(), value: value.to_vec() } }
}

fn denied<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::PermissionDenied { .. }))
}

fn unauthenticated<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Unauthenticated { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_scopes_keys_scans_and_operations_on_every_request() {
    let c = TestCluster::start_web(3, 1).await;
    let native = c.client().await;
    native.put(b"web/a", b"1").await.unwrap();
    native.put(b"web/b", b"2").await.unwrap();
    native.put(b"private", b"secret").await.unwrap();
    native.put(b"zzz", b"after").await.unwrap();

    let (rw, _) = token(&c, "web/", true, true);
    let pd_addr = c.pd_addr.to_string();
    let mut pd = WebPeer::connect(&pd_addr, Some(rw.clone())).await.unwrap();
    let Ok(PdResponse::Region(route)) = pd.pd(PdRequest::GetRegion { key: b"web/a".to_vec() }).await else {
        panic!("a token may look regions up");
    };
    assert!(matches!(pd.pd(PdRequest::AllocSession).await, Ok(PdResponse::Session(_))));
    assert!(denied(pd.pd(PdRequest::SplitRegion { key: b"m".to_vec() }).await), "no administration");
    assert!(denied(pd.pd(PdRequest::RevokeToken { id: 1, expires_at: u64::MAX }).await));

    let (route, leader) = leader_route(&c, &route.region.start_key.clone()).await;
    let mut node = WebPeer::connect(&leader, Some(rw)).await.unwrap();
    assert_eq!(node.kv(&route, KvOp::Get { key: b"web/a".to_vec() }).await, Ok(KvResponse::Value(Some(b"1".to_vec()))));
    assert_eq!(node.kv(&route, put(b"web/c", b"3")).await, Ok(KvResponse::Write(WriteResult::Done)));
    assert_eq!(native.get(b"web/c").await.unwrap(), Some(b"3".to_vec()), "the web write is a real write");
    assert!(denied(node.kv(&route, KvOp::Get { key: b"private".to_vec() }).await), "key outside the prefix");
    assert!(denied(node.kv(&route, put(b"private", b"x")).await));
    assert_eq!(native.get(b"private").await.unwrap(), Some(b"secret".to_vec()), "the refused write did nothing");
    let batch = KvOp::BatchGet { keys: vec![b"web/a".to_vec(), b"private".to_vec()] };
    assert!(denied(node.kv(&route, batch).await), "one key outside the prefix refuses the batch");

    // A scan of everything sees only the prefix, forward and reverse.
    for reverse in [false, true] {
        let scan = KvOp::Scan { start: vec![], end: vec![], limit: 100, reverse };
        let Ok(KvResponse::Scan { pairs, .. }) = node.kv(&route, scan).await else { panic!("scan") };
        let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_slice()).collect();
        let mut expected: Vec<&[u8]> = vec![b"web/a", b"web/b", b"web/c"];
        if reverse {
            expected.reverse();
        }
        assert_eq!(keys, expected, "reverse={reverse}");
    }
    let disjoint = KvOp::Scan { start: b"x".to_vec(), end: vec![], limit: 100, reverse: false };
    assert_eq!(node.kv(&route, disjoint).await, Ok(KvResponse::Scan { pairs: vec![], resume_key: None }));

    // A token never carries Raft.
    let raft = Request::Raft(RaftRequest {
        region_id: RegionId(route.region.id.0),
        to_peer: PeerId(1),
        kind: RaftRpcKind::AppendEntries,
        payload: vec![1, 2, 3],
    });
    assert!(denied(node.call(raft).await.expect("answered")), "tokens cannot send Raft messages");

    // Read-only cannot write; write-only cannot read.
    let (read_only, _) = token(&c, "web/", true, false);
    let mut reader = WebPeer::connect(&leader, Some(read_only)).await.unwrap();
    assert!(reader.kv(&route, KvOp::Get { key: b"web/a".to_vec() }).await.is_ok());
    assert!(denied(reader.kv(&route, put(b"web/a", b"overwritten")).await));
    let (write_only, _) = token(&c, "web/", false, true);
    let mut writer = WebPeer::connect(&leader, Some(write_only)).await.unwrap();
    assert!(denied(writer.kv(&route, KvOp::Get { key: b"web/a".to_vec() }).await));
    assert_eq!(native.get(b"web/a").await.unwrap(), Some(b"1".to_vec()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_expired_tampered_foreign_and_revoked_tokens_get_nothing() {
    let c = TestCluster::start_web(3, 1).await;
    let native = c.client().await;
    native.put(b"k", b"v").await.unwrap();
    let (route, leader) = leader_route(&c, b"k").await;

    assert!(unauthenticated(WebPeer::connect(&leader, None).await.map(|_| ())), "no token, no service");
    assert!(unauthenticated(WebPeer::connect(&c.pd_addr.to_string(), None).await.map(|_| ())));

    let now = unix_now();
    let expired = TokenClaims {
        id: 11,
        name: "old".into(),
        prefix: vec![],
        ops: Ops { read: true, write: true },
        issued_at: now - 100,
        expires_at: now - 1,
    };
    let expired = sign_claims(&c.certs(), &expired).unwrap();
    assert!(unauthenticated(WebPeer::connect(&leader, Some(expired)).await.map(|_| ())), "expired");

    let (good, claims) = token(&c, "", true, true);
    let (body, signature) = good.trim_start_matches("tst1.").split_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let tampered = format!("tst1.{body}.{}", String::from_utf8(flipped).unwrap());
    assert!(unauthenticated(WebPeer::connect(&leader, Some(tampered)).await.map(|_| ())), "tampered");

    let other = tempfile::tempdir().unwrap();
    tessera_certs::ensure_token_key(other.path()).unwrap();
    let spec = TokenSpec {
        prefix: vec![],
        ops: Ops { read: true, write: true },
        ttl: Duration::from_secs(60),
        name: "x".into(),
    };
    let (foreign, _) = create_token(other.path(), &spec).unwrap();
    assert!(unauthenticated(WebPeer::connect(&leader, Some(foreign)).await.map(|_| ())), "another cluster's key");

    // Revocation reaches a connection that is already open.
    let mut open = WebPeer::connect(&leader, Some(good.clone())).await.unwrap();
    assert!(open.kv(&route, KvOp::Get { key: b"k".to_vec() }).await.is_ok());
    native.revoke_token(claims.id, claims.expires_at).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open.kv(&route, KvOp::Get { key: b"k".to_vec() }).await {
            Err(Error::Unauthenticated { reason }) => {
                assert!(reason.contains("revoked"), "{reason}");
                break;
            }
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the node never learned of the revocation"),
            Err(e) => panic!("unexpected error {e:?}"),
        }
        // Waits for the node's next heartbeat answer; there is no event to await from here.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unauthenticated(WebPeer::connect(&leader, Some(good.clone())).await.map(|_| ())), "revoked at handshake");
    assert!(unauthenticated(WebPeer::connect(&c.pd_addr.to_string(), Some(good)).await.map(|_| ())));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_web_frames_close_only_their_socket() {
    let c = TestCluster::start_web(3, 1).await;
    let (rw, _) = token(&c, "", true, true);
    let (route, leader) = leader_route(&c, b"k").await;
    let mut healthy = WebPeer::connect(&leader, Some(rw.clone())).await.unwrap();

    // Garbage before the Hello, garbage after it, a text message, and a length prefix that
    // announces more than the frame limit: each closes that socket.
    let garbage: [Message; 3] = [
        Message::Binary(vec![0, 0, 0, 3, 0xff, 0xff, 0xff].into()),
        Message::Text("hello".into()),
        Message::Binary(vec![0xff, 0xff, 0xff, 0xff].into()),
    ];
    for message in garbage {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{leader}")).await.unwrap();
        ws.send(message.clone()).await.unwrap();
        assert!(next_frame(&mut ws).await.is_none(), "{message:?} before Hello closes the socket");

        let mut peer = WebPeer::connect(&leader, Some(rw.clone())).await.unwrap();
        peer.ws.send(message.clone()).await.unwrap();
        assert!(next_frame(&mut peer.ws).await.is_none(), "{message:?} after Hello closes the socket");
    }
    assert!(healthy.kv(&route, KvOp::Get { key: b"k".to_vec() }).await.is_ok(), "other sockets are unaffected");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_operator_certificate_web_clients_use_wss() {
    let c = TestCluster::start_web_tls(3, 1).await;
    let (rw, _) = token(&c, "", true, true);
    let (route, leader) = leader_route(&c, b"k").await;
    let mut roots = rustls::RootCertStore::empty();
    for ca in tessera_certs::load_certs(&c.certs().join("ca.pem")).unwrap() {
        roots.add(ca).unwrap();
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(&leader).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector.connect(name, tcp).await.expect("the node speaks TLS on its WebSocket port");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{leader}"), stream).await.unwrap();
    send_frame_tls(&mut ws, &Frame { request_id: 0, body: FrameBody::TokenHello(TokenHello::new(rw)) }).await;
    let ack = next_frame_tls(&mut ws).await;
    assert!(matches!(ack, Some(Frame { body: FrameBody::HelloAck(Ok(_)), .. })), "{ack:?}");
    let header = RequestHeader {
        region_id: route.region.id,
        epoch: route.region.epoch,
        timeout_ms: 5000,
        consistency: ReadConsistency::Linearizable,
    };
    let request = Request::Kv(KvRequest { header, op: put(b"k", b"over tls") });
    send_frame_tls(&mut ws, &Frame::request(1, request)).await;
    let answer = next_frame_tls(&mut ws).await;
    assert!(matches!(answer, Some(Frame { body: FrameBody::Response(Ok(_)), .. })), "{answer:?}");
    assert_eq!(c.client().await.get(b"k").await.unwrap(), Some(b"over tls".to_vec()));

    // Plain ws:// to a TLS listener gets nothing.
    let plain = tokio_tungstenite::connect_async(format!("ws://{leader}")).await;
    assert!(plain.is_err(), "a plain WebSocket is not served next to TLS");
    c.shutdown().await;
}

type TlsWs = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn send_frame_tls(ws: &mut TlsWs, frame: &Frame) {
    ws.send(Message::Binary(frame::encode(frame).unwrap().into())).await.unwrap();
}

async fn next_frame_tls(ws: &mut TlsWs) -> Option<Frame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("server answers in time") {
            Some(Ok(Message::Binary(data))) => {
                return Some(frame::decode(&data, frame::DEFAULT_MAX_FRAME_LEN).unwrap()?.0)
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}
