//! The JavaScript platform: WebSocket transport, JS timers and randomness, and the
//! `WasmClient` class the TypeScript wrapper (`js/index.js`) builds on.
//!
//! wasm32 is single-threaded: every JS object lives on the one thread, and the client's
//! `Send + Sync` bounds are met with `SendWrapper`, which would panic if a value ever moved
//! to another thread (it cannot, here).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Either};
use futures::FutureExt;
use js_sys::{Array, Object, Promise, Reflect, Uint8Array};
use send_wrapper::SendWrapper;
use tessera::platform::{Clock, Timer, Timestamp, Transport, TransportError};
use tessera::{Client, ClientConfig, ScanCursor, ScanOptions};
use tessera_wire::{ReadConsistency, Request, Response};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    BinaryType, MessageEvent, ReadableStreamDefaultReader, WebSocket, WebTransport, WebTransportBidirectionalStream,
    WebTransportHash, WebTransportOptions, WritableStreamDefaultWriter,
};

use crate::endpoint;
use crate::mux::{self, FrameBuffer, Incoming, Mux};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues, catch)]
    fn get_random_values(buf: &Uint8Array) -> Result<JsValue, JsValue>;
}

// ---------------------------------------------------------------------------------------
// Time

/// Milliseconds since the client was created, from `performance.now()` (monotonic).
#[derive(Debug)]
struct JsClock {
    origin: f64,
}

impl Clock for JsClock {
    fn now(&self) -> Timestamp {
        Timestamp((performance_now() - self.origin).max(0.0) as u64)
    }
}

impl Timer for JsClock {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        SendWrapper::new(sleep(d)).boxed()
    }
}

/// A `setTimeout` as a future; dropping it clears the timer, so an answered request leaves
/// no timer behind to keep Node.js alive.
struct Sleep {
    promise: wasm_bindgen_futures::JsFuture,
    handle: JsValue,
}

impl Drop for Sleep {
    fn drop(&mut self) {
        clear_timeout(&self.handle);
    }
}

impl std::future::Future for Sleep {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.promise.poll_unpin(cx).map(|_| ())
    }
}

fn sleep(d: Duration) -> Sleep {
    let ms = i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    let mut handle = JsValue::UNDEFINED;
    let promise = Promise::new(&mut |resolve, _reject| {
        handle = set_timeout(&resolve, ms);
    });
    Sleep { promise: wasm_bindgen_futures::JsFuture::from(promise), handle }
}

/// 64 random bits from `crypto.getRandomValues` (or the clock, where there is no crypto).
fn random_seed() -> u64 {
    let buf = Uint8Array::new_with_length(8);
    if get_random_values(&buf).is_ok() {
        let mut bytes = [0u8; 8];
        buf.copy_to(&mut bytes);
        u64::from_le_bytes(bytes)
    } else {
        (performance_now() * 1000.0) as u64 ^ (js_sys::Date::now() as u64).rotate_left(32)
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket transport

enum ConnState {
    /// Dialling or saying Hello; these wait for the outcome.
    Opening(Vec<futures::channel::oneshot::Sender<Result<(), TransportError>>>),
    Ready,
    Closed(TransportError),
}

/// The socket of a connection.
enum Socket {
    Ws(WebSocket),
    /// A WebTransport session and the writer of its one request stream (once open).
    Wt {
        session: WebTransport,
        writer: RefCell<Option<WritableStreamDefaultWriter>>,
    },
}

impl Socket {
    fn send(&self, bytes: &[u8]) -> Result<(), String> {
        // A copy owned by JS: Node's `ws` may queue the buffer it is given, and a view into
        // wasm memory would change under it.
        let copy = Uint8Array::from(bytes);
        match self {
            Socket::Ws(ws) => {
                ws.send_with_js_u8_array(&copy).map_err(|e| e.as_string().unwrap_or_else(|| "send failed".into()))
            }
            Socket::Wt { writer, .. } => match &*writer.borrow() {
                // Writes are queued in order by the stream; a failure shows as the stream closing.
                Some(writer) => {
                    let _ = writer.write_with_chunk(&copy);
                    Ok(())
                }
                None => Err("the stream is not open".into()),
            },
        }
    }

    fn close(&self) {
        match self {
            Socket::Ws(ws) => {
                let _ = ws.close();
            }
            Socket::Wt { session, .. } => session.close(),
        }
    }
}

/// One socket to one server.
struct Conn {
    addr: String,
    socket: Socket,
    mux: RefCell<Mux>,
    state: RefCell<ConnState>,
    closures: RefCell<Vec<Box<dyn std::any::Any>>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Detach the handlers before their closures go, then close: a late event must not
        // call into a dropped closure.
        if let Socket::Ws(ws) = &self.socket {
            ws.set_onopen(None);
            ws.set_onmessage(None);
            ws.set_onclose(None);
            ws.set_onerror(None);
        }
        self.socket.close();
    }
}

impl Conn {
    fn settle(&self, outcome: Result<(), TransportError>) {
        let previous = std::mem::replace(
            &mut *self.state.borrow_mut(),
            match &outcome {
                Ok(()) => ConnState::Ready,
                Err(e) => ConnState::Closed(e.clone()),
            },
        );
        if let ConnState::Opening(waiters) = previous {
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
        }
    }

    fn on_message(&self, data: &[u8]) {
        let outcome = self.mux.borrow_mut().on_message(data);
        match outcome {
            Ok(Incoming::Answered) => {}
            Ok(Incoming::HelloAck(Ok(_))) => self.settle(Ok(())),
            Ok(Incoming::HelloAck(Err(e))) => {
                self.settle(Err(TransportError::Refused(e)));
                self.socket.close();
            }
            Err(reason) => self.on_closed(format!("protocol violation: {reason}")),
        }
    }

    fn on_closed(&self, reason: String) {
        let opening = matches!(*self.state.borrow(), ConnState::Opening(_));
        if opening {
            self.settle(Err(TransportError::Connect { addr: self.addr.clone(), reason: reason.clone() }));
        } else if matches!(*self.state.borrow(), ConnState::Ready) {
            *self.state.borrow_mut() = ConnState::Closed(TransportError::ConnectionLost(reason.clone()));
        }
        self.mux.borrow_mut().fail_all(&reason);
        self.socket.close();
    }

    /// Resolves once the handshake is done (or failed).
    fn ready(&self) -> futures::future::LocalBoxFuture<'static, Result<(), TransportError>> {
        match &mut *self.state.borrow_mut() {
            ConnState::Ready => futures::future::ready(Ok(())).boxed_local(),
            ConnState::Closed(e) => futures::future::ready(Err(e.clone())).boxed_local(),
            ConnState::Opening(waiters) => {
                let (tx, rx) = futures::channel::oneshot::channel();
                waiters.push(tx);
                let addr = self.addr.clone();
                rx.map(move |r| {
                    r.unwrap_or_else(|_| Err(TransportError::Connect { addr, reason: "socket dropped".into() }))
                })
                .boxed_local()
            }
        }
    }

    fn is_closed(&self) -> bool {
        matches!(*self.state.borrow(), ConnState::Closed(_))
    }
}

fn dial(addr: &str, secure: bool, token: &str) -> Result<Rc<Conn>, TransportError> {
    let connect_error = |e: JsValue| TransportError::Connect {
        addr: addr.to_string(),
        reason: e.as_string().unwrap_or_else(|| format!("{e:?}")),
    };
    let ws = WebSocket::new(&endpoint::url(addr, secure)).map_err(connect_error)?;
    ws.set_binary_type(BinaryType::Arraybuffer);
    let conn = Rc::new(Conn {
        addr: addr.to_string(),
        socket: Socket::Ws(ws.clone()),
        mux: RefCell::new(Mux::default()),
        state: RefCell::new(ConnState::Opening(Vec::new())),
        closures: RefCell::new(Vec::new()),
    });
    let hello = mux::hello(token);
    let weak = Rc::downgrade(&conn);
    let on_open = Closure::<dyn FnMut()>::new(move || {
        if let Some(conn) = weak.upgrade() {
            if conn.socket.send(&hello).is_err() {
                conn.on_closed("cannot send Hello".into());
            }
        }
    });
    let weak = Rc::downgrade(&conn);
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        let Some(conn) = weak.upgrade() else { return };
        let data = event.data();
        if data.is_instance_of::<js_sys::ArrayBuffer>() {
            conn.on_message(&Uint8Array::new(&data).to_vec());
        } else if let Some(view) = data.dyn_ref::<Uint8Array>() {
            // Node's `ws` may hand over a Buffer, which is a Uint8Array.
            conn.on_message(&view.to_vec());
        } else {
            conn.on_closed("non-binary message".into());
        }
    });
    let weak = Rc::downgrade(&conn);
    let on_close = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
        if let Some(conn) = weak.upgrade() {
            let code = Reflect::get(&event, &"code".into()).ok().and_then(|c| c.as_f64()).unwrap_or(0.0);
            let reason = Reflect::get(&event, &"reason".into()).ok().and_then(|r| r.as_string()).unwrap_or_default();
            conn.on_closed(format!("socket closed (code {code}{}{reason})", if reason.is_empty() { "" } else { ": " }));
        }
    });
    let weak = Rc::downgrade(&conn);
    let on_error = Closure::<dyn FnMut(JsValue)>::new(move |_event: JsValue| {
        if let Some(conn) = weak.upgrade() {
            conn.on_closed("socket error".into());
        }
    });
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    conn.closures.borrow_mut().extend([
        Box::new(on_open) as Box<dyn std::any::Any>,
        Box::new(on_message),
        Box::new(on_close),
        Box::new(on_error),
    ]);
    Ok(conn)
}

/// Opens a WebTransport session to `addr` pinned to `hashes`, then its request stream, and
/// says Hello on it. Runs in the background; the connection settles when the server
/// answers (or the session fails).
fn dial_wt(addr: &str, hashes: &[[u8; 32]], token: &str) -> Result<Rc<Conn>, TransportError> {
    let options = WebTransportOptions::new();
    let pinned: Vec<WebTransportHash> = hashes
        .iter()
        .map(|h| {
            let hash = WebTransportHash::new();
            hash.set_algorithm("sha-256");
            hash.set_value_u8_array(&Uint8Array::from(&h[..]));
            hash
        })
        .collect();
    // No hashes: the server has a WebPKI certificate the browser trusts by itself.
    if !pinned.is_empty() {
        options.set_server_certificate_hashes(&pinned);
    }
    let session = WebTransport::new_with_options(&format!("https://{addr}/"), &options).map_err(|e| {
        TransportError::Connect { addr: addr.to_string(), reason: e.as_string().unwrap_or_else(|| format!("{e:?}")) }
    })?;
    let conn = Rc::new(Conn {
        addr: addr.to_string(),
        socket: Socket::Wt { session: session.clone(), writer: RefCell::new(None) },
        mux: RefCell::new(Mux::default()),
        state: RefCell::new(ConnState::Opening(Vec::new())),
        closures: RefCell::new(Vec::new()),
    });
    let weak = Rc::downgrade(&conn);
    let hello = mux::hello(token);
    wasm_bindgen_futures::spawn_local(async move {
        let fail = |reason: &str| {
            if let Some(conn) = weak.upgrade() {
                conn.on_closed(reason.to_string());
            }
        };
        if wasm_bindgen_futures::JsFuture::from(js_sys::Promise::from(JsValue::from(session.ready()))).await.is_err() {
            return fail("WebTransport session failed (certificate hash, or no server)");
        }
        let stream = match wasm_bindgen_futures::JsFuture::from(js_sys::Promise::from(JsValue::from(
            session.create_bidirectional_stream(),
        )))
        .await
        {
            Ok(stream) => stream.unchecked_into::<WebTransportBidirectionalStream>(),
            Err(_) => return fail("cannot open a WebTransport stream"),
        };
        let writer = match stream.writable().get_writer() {
            Ok(writer) => writer,
            Err(_) => return fail("cannot write to the WebTransport stream"),
        };
        let reader = stream.readable().get_reader().unchecked_into::<ReadableStreamDefaultReader>();
        match weak.upgrade() {
            Some(conn) => {
                if let Socket::Wt { writer: slot, .. } = &conn.socket {
                    *slot.borrow_mut() = Some(writer);
                }
                if conn.socket.send(&hello).is_err() {
                    return conn.on_closed("cannot send Hello".into());
                }
            }
            None => return,
        }
        let mut frames = FrameBuffer::default();
        loop {
            let read = wasm_bindgen_futures::JsFuture::from(reader.read()).await;
            let Some(conn) = weak.upgrade() else { return };
            let chunk = match read {
                Ok(result) => result,
                Err(_) => return conn.on_closed("WebTransport stream failed".into()),
            };
            if Reflect::get(&chunk, &"done".into()).ok().and_then(|d| d.as_bool()).unwrap_or(true) {
                return conn.on_closed("WebTransport stream finished".into());
            }
            let Ok(value) = Reflect::get(&chunk, &"value".into()) else { continue };
            frames.push(&Uint8Array::new(&value).to_vec());
            loop {
                match frames.next_frame() {
                    Ok(Some(frame)) => conn.on_message(&frame),
                    Ok(None) => break,
                    Err(reason) => return conn.on_closed(format!("protocol violation: {reason}")),
                }
            }
        }
    });
    Ok(conn)
}

/// How a client reaches servers.
enum Kind {
    WebSocket {
        secure: bool,
    },
    /// WebTransport, pinning every certificate hash known (PD's from the options, the
    /// nodes' from PD's node list).
    WebTransport {
        hashes: RefCell<Vec<[u8; 32]>>,
    },
}

struct WsInner {
    token: String,
    kind: Kind,
    conns: RefCell<HashMap<String, Rc<Conn>>>,
    /// Set by `close`: background work stops.
    closed: Cell<bool>,
}

/// How often a WebTransport client refreshes the nodes' certificate hashes.
const HASH_REFRESH: Duration = Duration::from_secs(60);

/// Adds the certificate hashes PD lists for the nodes to the pinned set.
async fn refresh_hashes(client: &Client, transport: &WsInner) -> Result<(), tessera::Error> {
    let nodes = client.nodes().await?;
    if let Kind::WebTransport { hashes } = &transport.kind {
        let mut hashes = hashes.borrow_mut();
        for hash in nodes.iter().filter_map(|n| n.web_cert_hash.as_deref()) {
            if let Ok(hash) = <[u8; 32]>::try_from(hash) {
                if !hashes.contains(&hash) {
                    hashes.push(hash);
                }
            }
        }
    }
    Ok(())
}

impl WsInner {
    fn conn(&self, addr: &str) -> Result<Rc<Conn>, TransportError> {
        if let Some(conn) = self.conns.borrow().get(addr).filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = match &self.kind {
            Kind::WebSocket { secure } => dial(addr, *secure, &self.token)?,
            Kind::WebTransport { hashes } => dial_wt(addr, &hashes.borrow(), &self.token)?,
        };
        // Replaces a closed socket (dropped here, outside its own event handlers).
        self.conns.borrow_mut().insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    async fn call(&self, addr: &str, request: Request, timeout: Duration) -> Result<Response, TransportError> {
        let started = performance_now();
        let conn = self.conn(addr)?;
        match futures::future::select(conn.ready(), sleep(timeout)).await {
            Either::Left((ready, _)) => ready?,
            Either::Right(_) => {
                return Err(TransportError::Connect { addr: addr.to_string(), reason: "connect timed out".into() })
            }
        }
        let (id, bytes, answer) = conn.mux.borrow_mut().request(request)?;
        if let Err(e) = conn.socket.send(&bytes) {
            conn.mux.borrow_mut().cancel(id);
            return Err(TransportError::NotSent(e));
        }
        let spent = Duration::from_millis((performance_now() - started).max(0.0) as u64);
        match futures::future::select(answer, sleep(timeout.saturating_sub(spent))).await {
            Either::Left((Ok(answer), _)) => answer,
            Either::Left((Err(_), _)) => Err(TransportError::ConnectionLost("socket dropped".into())),
            Either::Right(_) => {
                conn.mux.borrow_mut().cancel(id);
                Err(TransportError::Timeout)
            }
        }
    }
}

/// The client's transport: one WebSocket per server, requests multiplexed by id.
struct WsTransport(SendWrapper<Rc<WsInner>>);

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsTransport")
    }
}

impl Transport for WsTransport {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Response, TransportError>> {
        let inner: Rc<WsInner> = Rc::clone(&self.0);
        let addr = addr.to_string();
        SendWrapper::new(async move { inner.call(&addr, request, timeout).await }).boxed()
    }
}

// ---------------------------------------------------------------------------------------
// Errors and values

/// A JS `Error` with the SDK's stable `code` (and, for partial batches, the positions).
fn js_error(e: tessera::Error) -> JsValue {
    let error = js_sys::Error::new(&e.to_string());
    error.set_name("TesseraError");
    let set = |k: &str, v: &JsValue| {
        let _ = Reflect::set(&error, &k.into(), v);
    };
    set("code", &e.code().into());
    set("undetermined", &e.is_undetermined().into());
    if let tessera::Error::PartialBatch { applied, undetermined, total, .. } = &e {
        let list = |v: &[usize]| v.iter().map(|i| JsValue::from(*i as f64)).collect::<Array>();
        set("applied", &list(applied));
        set("undeterminedPositions", &list(undetermined));
        set("total", &(*total as f64).into());
    }
    error.into()
}

fn config_error(reason: impl Into<String>) -> JsValue {
    js_error(tessera::Error::Config { reason: reason.into() })
}

fn bytes(v: &[u8]) -> JsValue {
    Uint8Array::from(v).into()
}

fn opt_bytes(v: Option<Vec<u8>>) -> JsValue {
    v.map(|v| bytes(&v)).unwrap_or(JsValue::NULL)
}

fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in fields {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o.into()
}

fn get(options: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(options, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn millis(options: &JsValue, key: &str) -> Result<Option<Duration>, JsValue> {
    match get(options, key) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(ms) if ms.is_finite() && ms >= 0.0 => Ok(Some(Duration::from_millis(ms as u64))),
            _ => Err(config_error(format!("{key} must be a non-negative number of milliseconds"))),
        },
    }
}

// ---------------------------------------------------------------------------------------
// The class JS sees

/// A Tessera client. Use the `Client` wrapper of the npm package rather than this class.
#[wasm_bindgen]
pub struct WasmClient {
    client: Client,
    transport: Rc<WsInner>,
}

/// A scan position, resumable.
#[wasm_bindgen]
#[derive(Debug)]
pub struct WasmScanCursor {
    cursor: ScanCursor,
}

impl std::fmt::Debug for WasmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmClient").field("client", &self.client).finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl WasmClient {
    /// Connects with `{ pd: string[], token: string, webtransport?: string[],
    /// certHashes?: string[], transport?: "websocket" | "webtransport", requestTimeoutMs?,
    /// attemptTimeoutMs? }`: PD endpoints as `ws://host:port` (or `wss://`), PD's WebTransport
    /// URLs with its certificate hashes, and a token from `tessera token create`.
    /// WebTransport is used where the runtime has it and URLs are given, unless `transport`
    /// says otherwise.
    pub async fn connect(options: JsValue) -> Result<WasmClient, JsValue> {
        let token = get(&options, "token")
            .and_then(|t| t.as_string())
            .ok_or_else(|| config_error("options.token is required (see `tessera token create`)"))?;
        let strings = |key: &str| -> Vec<String> {
            get(&options, key)
                .map(|v| Array::from(&v).iter().filter_map(|v| v.as_string()).collect())
                .unwrap_or_default()
        };
        let wt_urls = strings("webtransport");
        let has_webtransport = Reflect::has(&js_sys::global(), &"WebTransport".into()).unwrap_or(false);
        let use_wt = match get(&options, "transport").and_then(|t| t.as_string()).as_deref() {
            Some("webtransport") => true,
            Some("websocket") => false,
            None => has_webtransport && !wt_urls.is_empty(),
            Some(other) => return Err(config_error(format!("unknown transport {other:?}"))),
        };
        let (addrs, kind) = if use_wt {
            if wt_urls.is_empty() {
                return Err(config_error("options.webtransport (PD WebTransport URLs) is required for WebTransport"));
            }
            let addrs = wt_urls.iter().map(|u| endpoint::parse_webtransport(u)).collect::<Result<Vec<_>, _>>();
            let hashes = strings("certHashes").iter().map(|h| endpoint::parse_hash(h)).collect::<Result<Vec<_>, _>>();
            (addrs.map_err(config_error)?, Kind::WebTransport { hashes: RefCell::new(hashes.map_err(config_error)?) })
        } else {
            let pd = strings("pd");
            if pd.is_empty() {
                return Err(config_error("options.pd (PD WebSocket URLs) is required"));
            }
            let endpoints =
                pd.iter().map(|e| endpoint::parse(e)).collect::<Result<Vec<_>, _>>().map_err(config_error)?;
            let secure = endpoints.first().is_some_and(|e| e.secure);
            if endpoints.iter().any(|e| e.secure != secure) {
                return Err(config_error("PD endpoints mix ws:// and wss://"));
            }
            (endpoints.into_iter().map(|e| e.addr).collect(), Kind::WebSocket { secure })
        };
        let mut cfg = ClientConfig::with_endpoints(addrs);
        if let Some(t) = millis(&options, "requestTimeoutMs")? {
            cfg.request_timeout = t;
        }
        if let Some(t) = millis(&options, "attemptTimeoutMs")? {
            cfg.attempt_timeout = t;
        }
        let transport = Rc::new(WsInner { token, kind, conns: RefCell::new(HashMap::new()), closed: Cell::new(false) });
        let platform = Arc::new(WsTransport(SendWrapper::new(transport.clone())));
        let clock = Arc::new(JsClock { origin: performance_now() });
        let client = Client::with_platform(cfg, platform, clock, random_seed()).await.map_err(js_error)?;
        if matches!(transport.kind, Kind::WebTransport { .. }) {
            // Nodes are pinned by the hashes PD publishes; learn them now and keep them
            // current (a node's certificate rotates every few days, a node may join).
            refresh_hashes(&client, &transport).await.map_err(js_error)?;
            let (client, transport) = (client.clone(), transport.clone());
            wasm_bindgen_futures::spawn_local(async move {
                while !transport.closed.get() {
                    sleep(HASH_REFRESH).await;
                    if !transport.closed.get() {
                        let _ = refresh_hashes(&client, &transport).await;
                    }
                }
            });
        }
        Ok(WasmClient { client, transport })
    }

    /// `"webtransport"` or `"websocket"`: how this client reaches the cluster.
    #[wasm_bindgen(getter)]
    pub fn transport(&self) -> String {
        match self.transport.kind {
            Kind::WebTransport { .. } => "webtransport".into(),
            Kind::WebSocket { .. } => "websocket".into(),
        }
    }

    fn handle(&self, timeout_ms: Option<f64>) -> Client {
        match timeout_ms {
            Some(ms) if ms.is_finite() && ms >= 0.0 => self.client.with_timeout(Duration::from_millis(ms as u64)),
            _ => self.client.clone(),
        }
    }

    /// The value of `key`, or `null`.
    pub async fn get(&self, key: Vec<u8>, timeout_ms: Option<f64>) -> Result<JsValue, JsValue> {
        self.handle(timeout_ms).get(&key).await.map(opt_bytes).map_err(js_error)
    }

    /// The value of `key` from any replica (may miss recent writes).
    #[wasm_bindgen(js_name = getStale)]
    pub async fn get_stale(&self, key: Vec<u8>, timeout_ms: Option<f64>) -> Result<JsValue, JsValue> {
        self.handle(timeout_ms).get_with(&key, ReadConsistency::Stale).await.map(opt_bytes).map_err(js_error)
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>, timeout_ms: Option<f64>) -> Result<(), JsValue> {
        self.handle(timeout_ms).put(&key, &value).await.map_err(js_error)
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, key: Vec<u8>, timeout_ms: Option<f64>) -> Result<bool, JsValue> {
        self.handle(timeout_ms).delete(&key).await.map_err(js_error)
    }

    /// Appends `value` to `key`'s value; the new length.
    pub async fn append(&self, key: Vec<u8>, value: Vec<u8>, timeout_ms: Option<f64>) -> Result<f64, JsValue> {
        self.handle(timeout_ms).append(&key, &value).await.map(|n| n as f64).map_err(js_error)
    }

    /// Sets (or with `new` null, deletes) `key` if its value is `expected` (null: absent).
    /// Resolves to `{ succeeded, previous }`.
    #[wasm_bindgen(js_name = compareAndSwap)]
    pub async fn compare_and_swap(
        &self,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        timeout_ms: Option<f64>,
    ) -> Result<JsValue, JsValue> {
        let outcome = self
            .handle(timeout_ms)
            .compare_and_swap(&key, expected.as_deref(), new.as_deref())
            .await
            .map_err(js_error)?;
        Ok(object(&[("succeeded", outcome.succeeded.into()), ("previous", opt_bytes(outcome.previous))]))
    }

    /// The values of `keys` (`null` where absent), in order.
    #[wasm_bindgen(js_name = batchGet)]
    pub async fn batch_get(&self, keys: Array, timeout_ms: Option<f64>) -> Result<Array, JsValue> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| Uint8Array::new(&k).to_vec()).collect();
        let values = self.handle(timeout_ms).batch_get(&keys).await.map_err(js_error)?;
        Ok(values.into_iter().map(opt_bytes).collect())
    }

    /// Writes every pair; `keys[i]` gets `values[i]`.
    #[wasm_bindgen(js_name = batchPut)]
    pub async fn batch_put(&self, keys: Array, values: Array, timeout_ms: Option<f64>) -> Result<(), JsValue> {
        if keys.length() != values.length() {
            return Err(js_error(tessera::Error::InvalidArgument {
                reason: "keys and values differ in length".into(),
            }));
        }
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = keys
            .iter()
            .zip(values.iter())
            .map(|(k, v)| (Uint8Array::new(&k).to_vec(), Uint8Array::new(&v).to_vec()))
            .collect();
        self.handle(timeout_ms).batch_put(&pairs).await.map_err(js_error)
    }

    /// A cursor over `[start, end)` (empty `end`: to the end), or `undefined` when the range
    /// is empty.
    #[wasm_bindgen(js_name = scanCursor)]
    pub fn scan_cursor(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: Option<f64>,
        reverse: bool,
        page_size: Option<u32>,
        stale: bool,
    ) -> Result<Option<WasmScanCursor>, JsValue> {
        let mut opts = ScanOptions { limit: limit.map(|l| l.max(0.0) as u64), reverse, ..ScanOptions::default() };
        if let Some(size) = page_size {
            opts.page_size = size.max(1);
        }
        if stale {
            opts.consistency = ReadConsistency::Stale;
        }
        let cursor = ScanCursor::new(&start, &end, &opts).map_err(js_error)?;
        Ok(cursor.map(|cursor| WasmScanCursor { cursor }))
    }

    /// One page: `{ pairs: [Uint8Array, Uint8Array][], next?: WasmScanCursor }`.
    #[wasm_bindgen(js_name = scanPage)]
    pub async fn scan_page(&self, cursor: &WasmScanCursor, timeout_ms: Option<f64>) -> Result<JsValue, JsValue> {
        let (pairs, next) = self.handle(timeout_ms).scan_page(cursor.cursor.clone()).await.map_err(js_error)?;
        let pairs: Array = pairs.iter().map(|(k, v)| Array::of2(&bytes(k), &bytes(v))).collect::<Array>();
        let next = next.map(|cursor| JsValue::from(WasmScanCursor { cursor })).unwrap_or(JsValue::UNDEFINED);
        Ok(object(&[("pairs", pairs.into()), ("next", next)]))
    }

    /// Nodes and regions as PD knows them: `{ nodes: [...], regions: [...] }`.
    #[wasm_bindgen(js_name = clusterStatus)]
    pub async fn cluster_status(&self) -> Result<JsValue, JsValue> {
        let (nodes, regions) = self.client.cluster_status().await.map_err(js_error)?;
        let nodes: Array = nodes
            .iter()
            .map(|n| {
                object(&[
                    ("id", (n.id.0 as f64).into()),
                    ("addr", n.addr.clone().into()),
                    ("up", (n.state == tessera::NodeState::Up).into()),
                    ("regions", (n.region_count as f64).into()),
                    ("leaders", (n.leader_count as f64).into()),
                    ("usedBytes", (n.used_bytes as f64).into()),
                ])
            })
            .collect();
        let regions: Array = regions
            .iter()
            .map(|r| {
                let peers: Array = r.region.peers.iter().map(|p| JsValue::from(p.node_id.0 as f64)).collect();
                object(&[
                    ("id", (r.region.id.0 as f64).into()),
                    ("start", bytes(&r.region.start_key)),
                    ("end", bytes(&r.region.end_key)),
                    ("nodes", peers.into()),
                    ("leader", r.leader.map(|l| JsValue::from(l.node_id.0 as f64)).unwrap_or(JsValue::NULL)),
                    ("keys", (r.approximate_keys as f64).into()),
                    ("bytes", (r.approximate_size as f64).into()),
                ])
            })
            .collect();
        Ok(object(&[("nodes", nodes.into()), ("regions", regions.into())]))
    }

    /// Test hook: caches a follower of `key`'s region as its leader, so the next request
    /// goes to a replica that answers `NotLeader`. Returns that follower's node id.
    #[doc(hidden)]
    #[wasm_bindgen(js_name = debugCacheFollowerAsLeader)]
    pub async fn debug_cache_follower_as_leader(&self, key: Vec<u8>) -> Result<f64, JsValue> {
        let routes = self.client.regions().await.map_err(js_error)?;
        let route = routes
            .into_iter()
            .find(|r| r.region.contains(&key))
            .ok_or_else(|| js_error(tessera::Error::Unavailable { reason: "no route for the key".into() }))?;
        let follower = route
            .region
            .peers
            .iter()
            .find(|p| Some(p.id) != route.leader.map(|l| l.id))
            .copied()
            .ok_or_else(|| js_error(tessera::Error::Unavailable { reason: "no follower".into() }))?;
        self.client.debug_cache_route(route.region, Some(follower), route.peer_addrs);
        Ok(follower.node_id.0 as f64)
    }

    /// Test hook: the node id the routing cache holds as `key`'s leader, if any.
    #[doc(hidden)]
    #[wasm_bindgen(js_name = debugCachedLeaderNode)]
    pub fn debug_cached_leader_node(&self, key: Vec<u8>) -> Option<f64> {
        self.client.debug_cached_leader(&key).map(|p| p.node_id.0 as f64)
    }

    /// Closes every socket. Operations after `close` fail.
    pub fn close(&self) {
        self.transport.closed.set(true);
        self.transport.conns.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    //! The glue, in Node.js (`wasm-bindgen-test-runner`): timers, randomness, errors.
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    async fn the_clock_advances_across_a_js_timer() {
        let clock = JsClock { origin: performance_now() };
        let before = clock.now();
        clock.sleep(Duration::from_millis(30)).await;
        let slept = clock.now().0 - before.0;
        assert!(slept >= 25, "slept {slept} ms");
    }

    #[wasm_bindgen_test]
    async fn a_dropped_sleep_does_not_fire() {
        // Dropping clears the timer; a race with a shorter one ends on the shorter.
        let started = performance_now();
        let long = sleep(Duration::from_secs(30));
        let short = sleep(Duration::from_millis(5));
        match futures::future::select(Box::pin(long), Box::pin(short)).await {
            Either::Left(_) => panic!("the 30 s timer fired first"),
            Either::Right(_) => {}
        }
        assert!(performance_now() - started < 1000.0);
    }

    #[wasm_bindgen_test]
    fn seeds_come_from_crypto_and_differ() {
        let seeds: std::collections::HashSet<u64> = (0..8).map(|_| random_seed()).collect();
        assert_eq!(seeds.len(), 8);
    }

    #[wasm_bindgen_test]
    fn errors_reach_js_with_their_code_and_batch_positions() {
        let error = js_error(tessera::Error::KeyTooLarge { len: 9, max: 8 });
        assert_eq!(Reflect::get(&error, &"code".into()).unwrap(), "KeyTooLarge");
        assert!(error.is_instance_of::<js_sys::Error>());
        let partial = js_error(tessera::Error::PartialBatch {
            total: 3,
            applied: vec![0, 2],
            undetermined: vec![1],
            error: Box::new(tessera::Error::Undetermined { reason: "x".into() }),
        });
        assert_eq!(Reflect::get(&partial, &"undetermined".into()).unwrap(), true);
        let applied = Array::from(&Reflect::get(&partial, &"applied".into()).unwrap());
        assert_eq!(applied.to_vec(), vec![JsValue::from(0.0), JsValue::from(2.0)]);
    }

    #[wasm_bindgen_test]
    async fn an_unreachable_server_fails_the_call_as_not_sent_within_its_timeout() {
        let transport = WsInner {
            token: "t".into(),
            kind: Kind::WebSocket { secure: false },
            conns: RefCell::new(HashMap::new()),
            closed: Cell::new(false),
        };
        // Port 9 (discard) is closed on loopback: the socket fails at once.
        let request = Request::Pd(tessera_wire::PdRequest::GetNodes);
        let failure = transport.call("127.0.0.1:9", request, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(failure, TransportError::Connect { .. }), "{failure:?}");
        assert!(!failure.may_have_been_delivered());
    }
}
