//! `tessera._native`: the compiled half of the `tessera` Python package.
//!
//! A thin layer over the Rust client ([`tessera::Client`]): routing, retries, exactly-once
//! sessions, deadlines and error classes are the Rust ones. This crate only converts
//! arguments and results, and waits:
//!
//! - **Sync calls** run the client's future on the calling thread
//!   (`Runtime::block_on`) with the GIL released, in slices of [`SIGNAL_SLICE`]; between
//!   slices the GIL is taken back to run Python's signal handlers, so Ctrl-C interrupts a
//!   call (the future is dropped: a write in flight may or may not have been applied).
//! - **Async calls** (`*_async`) hand the future to the shared tokio runtime and return an
//!   asyncio awaitable (pyo3-async-runtimes).
//!
//! Both share one multi-threaded tokio runtime, owned by pyo3-async-runtimes, on which the
//! client's QUIC endpoint lives.
//!
//! Errors become instances of the exception classes in `tessera/_errors.py`, chosen by
//! [`class_of`], with the Rust error's stable [`tessera::Error::code`].
//!
//! The pure-Python package (`tessera/__init__.py`, `tessera/aio.py`) is the public API; this
//! module's names are private to it.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString};
use tessera::{Client, ClientConfig, Error, ReadConsistency, RegionRoute, ScanCursor, ScanOptions, TlsFiles};

/// How long a sync call waits with the GIL released before it checks for signals (Ctrl-C).
/// A finished call returns at once; this only bounds how late an interrupt is noticed.
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

type Pair = (Vec<u8>, Vec<u8>);

// ---------------------------------------------------------------------------------------
// Errors

/// The Python class (in `tessera._errors`) an error is raised as.
fn class_of(e: &Error) -> &'static str {
    use tessera_wire::Error as W;
    match e {
        Error::Undetermined { .. } => "Undetermined",
        Error::DeadlineExceeded => "DeadlineExceeded",
        Error::KeyTooLarge { .. } => "KeyTooLarge",
        Error::ValueTooLarge { .. } => "ValueTooLarge",
        Error::InvalidArgument { .. } | Error::Config { .. } => "InvalidArgument",
        Error::Unavailable { .. } => "Unavailable",
        Error::Tls { .. } => "AuthError",
        Error::PartialBatch { .. } => "PartialBatch",
        Error::Protocol { .. } => "ProtocolError",
        Error::Server(w) => match w {
            W::Unauthenticated { .. } | W::PermissionDenied { .. } => "AuthError",
            W::StorageUnavailable { .. } => "Unavailable",
            W::UnsupportedVersion { .. } => "ProtocolError",
            _ => "Error",
        },
        _ => "Error",
    }
}

/// The Python exception for `e`: an instance of its class with `code` and details set.
fn error_to_py(py: Python<'_>, e: &Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let class = py.import("tessera._errors")?.getattr(class_of(e))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("code", e.code())?;
        match e {
            Error::KeyTooLarge { len, max } | Error::ValueTooLarge { len, max } => {
                kwargs.set_item("size", *len)?;
                kwargs.set_item("limit", *max)?;
            }
            Error::PartialBatch { total, applied, undetermined, error } => {
                kwargs.set_item("total", *total)?;
                kwargs.set_item("applied", applied.clone())?;
                kwargs.set_item("undetermined", undetermined.clone())?;
                kwargs.set_item("cause", error_to_py(py, error).into_value(py))?;
            }
            _ => {}
        }
        Ok(PyErr::from_value(class.call((e.to_string(),), Some(&kwargs))?))
    };
    build().unwrap_or_else(|failed| failed)
}

/// Converts a client result, taking the GIL for an error (async calls end on a tokio
/// thread).
fn py_result<T>(r: Result<T, Error>) -> PyResult<T> {
    r.map_err(|e| Python::attach(|py| error_to_py(py, &e)))
}

/// An `InvalidArgument` raised by this layer (a bad timeout, a closed client).
fn invalid(py: Python<'_>, reason: &str) -> PyErr {
    error_to_py(py, &Error::InvalidArgument { reason: reason.to_string() })
}

// ---------------------------------------------------------------------------------------
// Arguments

/// Bytes of a key or value: `bytes`, `bytearray`, `memoryview` or `str` (UTF-8).
fn bytes_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned().into_bytes());
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    if obj.is_instance_of::<PyMemoryView>() {
        let copy = obj.call_method0("tobytes")?;
        return Ok(copy.cast::<PyBytes>()?.as_bytes().to_vec());
    }
    let type_name = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    Err(PyTypeError::new_err(format!("{what} must be bytes, bytearray, memoryview or str, not {type_name}")))
}

fn optional_bytes_arg(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Vec<u8>>> {
    match obj {
        Some(o) if !o.is_none() => bytes_arg(o, what).map(Some),
        _ => Ok(None),
    }
}

/// A timeout in seconds as a duration: finite and positive.
fn duration_arg(py: Python<'_>, seconds: f64, what: &str) -> PyResult<Duration> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(invalid(py, &format!("{what} must be a positive number of seconds, not {seconds}")));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| invalid(py, &format!("{what}: {e}")))
}

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

// ---------------------------------------------------------------------------------------
// Waiting

/// Runs `fut` to completion on the calling thread with the GIL released, checking for
/// signals every [`SIGNAL_SLICE`]. A signal handler that raises (Ctrl-C's
/// `KeyboardInterrupt`) ends the wait with its exception and drops the future.
fn wait<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T, Error>> + Send,
    T: Send,
{
    let mut fut = std::pin::pin!(fut);
    loop {
        let slice = py.detach(|| runtime().block_on(async { tokio::time::timeout(SIGNAL_SLICE, fut.as_mut()).await }));
        match slice {
            Ok(result) => return result.map_err(|e| error_to_py(py, &e)),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// Returns an asyncio awaitable of `fut`, run on the shared tokio runtime.
fn spawn<'py, T, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, async move { py_result(fut.await) })
}

// ---------------------------------------------------------------------------------------
// Connecting

/// The client configuration from `connect`'s arguments.
fn config(
    py: Python<'_>,
    pd: Vec<String>,
    ca: String,
    cert: String,
    key: String,
    timeout: Option<f64>,
    attempt_timeout: Option<f64>,
) -> PyResult<ClientConfig> {
    let tls = TlsFiles { ca: ca.into(), cert: cert.into(), key: key.into() };
    let mut cfg = ClientConfig::new(pd, Some(tls));
    if let Some(t) = timeout {
        cfg.request_timeout = duration_arg(py, t, "timeout")?;
    }
    if let Some(t) = attempt_timeout {
        cfg.attempt_timeout = duration_arg(py, t, "attempt_timeout")?;
    }
    Ok(cfg)
}

/// Connects to the cluster whose PD answers at one of `pd`, blocking until the client has
/// its session (or the timeout passed).
#[pyfunction]
#[pyo3(signature = (pd, ca, cert, key, *, timeout=None, attempt_timeout=None))]
#[allow(clippy::too_many_arguments)]
fn connect(
    py: Python<'_>,
    pd: Vec<String>,
    ca: String,
    cert: String,
    key: String,
    timeout: Option<f64>,
    attempt_timeout: Option<f64>,
) -> PyResult<NativeClient> {
    let cfg = config(py, pd, ca, cert, key, timeout, attempt_timeout)?;
    let client = wait(py, Client::connect(cfg))?;
    Ok(NativeClient::new(client))
}

/// [`connect`] as an awaitable.
#[pyfunction]
#[pyo3(signature = (pd, ca, cert, key, *, timeout=None, attempt_timeout=None))]
#[allow(clippy::too_many_arguments)]
fn connect_async(
    py: Python<'_>,
    pd: Vec<String>,
    ca: String,
    cert: String,
    key: String,
    timeout: Option<f64>,
    attempt_timeout: Option<f64>,
) -> PyResult<Bound<'_, PyAny>> {
    let cfg = config(py, pd, ca, cert, key, timeout, attempt_timeout)?;
    spawn(py, async move { Client::connect(cfg).await.map(NativeClient::new) })
}

// ---------------------------------------------------------------------------------------
// The client

/// A connected client. Sync methods block (GIL released); `*_async` methods return
/// awaitables. Every method takes `timeout` (seconds; `None`: the client's default).
#[pyclass(module = "tessera._native", frozen)]
#[derive(Debug)]
struct NativeClient {
    /// `None` once closed.
    client: Mutex<Option<Client>>,
}

/// A node as `status` reports it: (id, address, state, regions, leaders, used bytes,
/// capacity bytes, ms since its last healthy heartbeat, draining, storage failure).
type NodeRow = (u64, String, String, u64, u64, u64, u64, u64, bool, Option<String>);
/// A region as `status` reports it: (id, start, end, (conf_ver, version), voters as
/// (peer, node), learners, leader, approximate bytes, approximate keys).
type RegionRow = (u64, Vec<u8>, Vec<u8>, (u64, u64), Vec<(u64, u64)>, Vec<(u64, u64)>, Option<(u64, u64)>, u64, u64);

async fn status_rows(c: Client) -> Result<(Vec<NodeRow>, Vec<RegionRow>), Error> {
    let (nodes, regions) = c.cluster_status().await?;
    let peer = |p: &tessera::Peer| (p.id.0, p.node_id.0);
    let nodes = nodes
        .iter()
        .map(|n| {
            let state = match n.state {
                tessera::NodeState::Up => "up",
                tessera::NodeState::Down => "down",
            };
            (
                n.id.0,
                n.addr.clone(),
                state.to_string(),
                n.region_count,
                n.leader_count,
                n.used_bytes,
                n.capacity_bytes,
                n.last_heartbeat_ms_ago,
                n.draining,
                n.storage_failure.clone(),
            )
        })
        .collect();
    let regions = regions
        .iter()
        .map(|r| {
            let d = &r.region;
            (
                d.id.0,
                d.start_key.clone(),
                d.end_key.clone(),
                (d.epoch.conf_ver, d.epoch.version),
                d.peers.iter().map(peer).collect(),
                r.learners.iter().map(peer).collect(),
                r.leader.as_ref().map(peer),
                r.approximate_size,
                r.approximate_keys,
            )
        })
        .collect();
    Ok((nodes, regions))
}

/// PD's route of the region containing `key`, asked afresh (test hooks).
async fn route_of(c: &Client, key: &[u8]) -> Result<RegionRoute, Error> {
    let routes = c.regions().await?;
    routes
        .into_iter()
        .find(|r| r.region.contains(key))
        .ok_or_else(|| Error::Unavailable { reason: "no region contains the key".into() })
}

impl NativeClient {
    fn new(client: Client) -> NativeClient {
        NativeClient { client: Mutex::new(Some(client)) }
    }

    fn slot(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client, with `timeout` as its calls' deadline when given.
    fn handle(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Client> {
        let client = self.slot().clone().ok_or_else(|| invalid(py, "the client is closed"))?;
        match timeout {
            None => Ok(client),
            Some(t) => Ok(client.with_timeout(duration_arg(py, t, "timeout")?)),
        }
    }
}

impl NativeClient {
    /// Runs the future `op` makes from the client, blocking (GIL released) until it ends.
    fn call<T, F>(&self, py: Python<'_>, timeout: Option<f64>, op: impl FnOnce(Client) -> F) -> PyResult<T>
    where
        F: Future<Output = Result<T, Error>> + Send,
        T: Send,
    {
        let client = self.handle(py, timeout)?;
        wait(py, op(client))
    }
}

impl Drop for NativeClient {
    fn drop(&mut self) {
        // The QUIC endpoint is closed from inside the runtime it was made on.
        let _inside = runtime().enter();
        self.slot().take();
    }
}

#[pymethods]
impl NativeClient {
    /// Reads `key` (linearizable; `stale=True`: from any replica, possibly behind).
    #[pyo3(signature = (key, *, stale=false, timeout=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        stale: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<Vec<u8>>> {
        let key = bytes_arg(key, "key")?;
        self.call(py, timeout, |c| async move { c.get_with(&key, consistency(stale)).await })
    }

    /// [`NativeClient::get`] as an awaitable.
    #[pyo3(signature = (key, *, stale=false, timeout=None))]
    fn get_async<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        stale: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = bytes_arg(key, "key")?;
        let c = self.handle(py, timeout)?;
        spawn(py, async move { c.get_with(&key, consistency(stale)).await })
    }

    /// Sets `key` to `value`.
    #[pyo3(signature = (key, value, *, timeout=None))]
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let (key, value) = (bytes_arg(key, "key")?, bytes_arg(value, "value")?);
        self.call(py, timeout, |c| async move { c.put(&key, &value).await })
    }

    /// [`NativeClient::put`] as an awaitable.
    #[pyo3(signature = (key, value, *, timeout=None))]
    fn put_async<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (key, value) = (bytes_arg(key, "key")?, bytes_arg(value, "value")?);
        let c = self.handle(py, timeout)?;
        spawn(py, async move { c.put(&key, &value).await })
    }

    /// Removes `key`; returns whether it existed.
    #[pyo3(signature = (key, *, timeout=None))]
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>, timeout: Option<f64>) -> PyResult<bool> {
        let key = bytes_arg(key, "key")?;
        self.call(py, timeout, |c| async move { c.delete(&key).await })
    }

    /// [`NativeClient::delete`] as an awaitable.
    #[pyo3(signature = (key, *, timeout=None))]
    fn delete_async<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = bytes_arg(key, "key")?;
        let c = self.handle(py, timeout)?;
        spawn(py, async move { c.delete(&key).await })
    }

    /// Appends `value` to `key`'s value (absent: empty); returns the new length.
    #[pyo3(signature = (key, value, *, timeout=None))]
    fn append(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<u64> {
        let (key, value) = (bytes_arg(key, "key")?, bytes_arg(value, "value")?);
        self.call(py, timeout, |c| async move { c.append(&key, &value).await })
    }

    /// [`NativeClient::append`] as an awaitable.
    #[pyo3(signature = (key, value, *, timeout=None))]
    fn append_async<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (key, value) = (bytes_arg(key, "key")?, bytes_arg(value, "value")?);
        let c = self.handle(py, timeout)?;
        spawn(py, async move { c.append(&key, &value).await })
    }

    /// Sets `key` to `new` (`None`: deletes it) if its value is `expected` (`None`:
    /// absent); returns whether it did.
    #[pyo3(signature = (key, expected, new, *, timeout=None))]
    fn compare_and_swap(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        expected: Option<&Bound<'_, PyAny>>,
        new: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let key = bytes_arg(key, "key")?;
        let (expected, new) = (optional_bytes_arg(expected, "expected")?, optional_bytes_arg(new, "new")?);
        self.call(py, timeout, |c| async move {
            c.compare_and_swap(&key, expected.as_deref(), new.as_deref()).await.map(|o| o.succeeded)
        })
    }

    /// [`NativeClient::compare_and_swap`] as an awaitable.
    #[pyo3(signature = (key, expected, new, *, timeout=None))]
    fn compare_and_swap_async<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        expected: Option<&Bound<'_, PyAny>>,
        new: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = bytes_arg(key, "key")?;
        let (expected, new) = (optional_bytes_arg(expected, "expected")?, optional_bytes_arg(new, "new")?);
        let c = self.handle(py, timeout)?;
        spawn(
            py,
            async move { c.compare_and_swap(&key, expected.as_deref(), new.as_deref()).await.map(|o| o.succeeded) },
        )
    }

    /// Reads several keys in any regions; one value (or `None`) per key, in order.
    #[pyo3(signature = (keys, *, timeout=None))]
    fn batch_get(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Option<Vec<u8>>>> {
        let keys = keys.iter().map(|k| bytes_arg(k, "key")).collect::<PyResult<Vec<_>>>()?;
        self.call(py, timeout, |c| async move { c.batch_get(&keys).await })
    }

    /// [`NativeClient::batch_get`] as an awaitable.
    #[pyo3(signature = (keys, *, timeout=None))]
    fn batch_get_async<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let keys = keys.iter().map(|k| bytes_arg(k, "key")).collect::<PyResult<Vec<_>>>()?;
        let c = self.handle(py, timeout)?;
        spawn(py, async move { c.batch_get(&keys).await })
    }

    /// Writes several `(key, value)` pairs; atomic per region, not across regions.
    #[pyo3(signature = (pairs, *, timeout=None))]
    fn batch_put(
        &self,
        py: Python<'_>,
        pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let pairs = pairs_arg(&pairs)?;
        self.call(py, timeout, |c| async move { c.batch_put(&pairs).await })
    }

    /// [`NativeClient::batch_put`] as an awaitable.
    #[pyo3(signature = (pairs, *, timeout=None))]
    fn batch_put_async<'py>(
        &self,
        py: Python<'py>,
        pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pairs = pairs_arg(&pairs)?;
        let c = self.handle(py, timeout)?;
        spawn(py, async move { c.batch_put(&pairs).await })
    }

    /// A scan of `[start, end)` (`end` empty: to the end of the key space), read page by
    /// page with [`Scanner::next_page`]. Invalid ranges are refused here.
    #[pyo3(signature = (start, end, *, limit=None, reverse=false, page_size=256, stale=false, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        py: Python<'_>,
        start: &Bound<'_, PyAny>,
        end: &Bound<'_, PyAny>,
        limit: Option<u64>,
        reverse: bool,
        page_size: u32,
        stale: bool,
        timeout: Option<f64>,
    ) -> PyResult<Scanner> {
        let (start, end) = (bytes_arg(start, "start")?, bytes_arg(end, "end")?);
        if page_size == 0 {
            return Err(invalid(py, "page_size must be positive"));
        }
        let c = self.handle(py, timeout)?;
        let opts = ScanOptions { limit, reverse, consistency: consistency(stale), page_size };
        let cursor = ScanCursor::new(&start, &end, &opts).map_err(|e| error_to_py(py, &e))?;
        Ok(Scanner { client: c, cursor: Arc::new(Mutex::new(cursor)) })
    }

    /// The cluster's nodes and regions as PD sees them: `(nodes, regions)` rows.
    #[pyo3(signature = (*, timeout=None))]
    fn status(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<(Vec<NodeRow>, Vec<RegionRow>)> {
        self.call(py, timeout, status_rows)
    }

    /// [`NativeClient::status`] as an awaitable.
    #[pyo3(signature = (*, timeout=None))]
    fn status_async<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py, timeout)?;
        spawn(py, status_rows(c))
    }

    /// Drops the connections; later calls raise `InvalidArgument`. Idempotent.
    fn close(&self) {
        let _inside = runtime().enter();
        self.slot().take();
    }

    /// Whether [`NativeClient::close`] was called.
    #[getter]
    fn closed(&self) -> bool {
        self.slot().is_none()
    }

    /// This client's session id (it changes when the session is renewed).
    #[getter]
    fn session_id(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.handle(py, None)?.session_id().0)
    }

    // -- Test hooks: they reach into the routing cache, as the Rust SDK's cluster tests do.

    /// Test hook: caches a follower of `key`'s region as its leader; returns
    /// `(leader peer, follower peer)`.
    fn debug_cache_follower_as_leader(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<(u64, u64)> {
        let key = bytes_arg(key, "key")?;
        let c = self.handle(py, None)?;
        wait(py, async move {
            let route = route_of(&c, &key).await?;
            let leader = route.leader.ok_or_else(|| Error::Unavailable { reason: "no leader reported".into() })?;
            let follower = *route.region.peers.iter().find(|p| p.id != leader.id).expect("three replicas");
            c.debug_cache_route(route.region.clone(), Some(follower), route.peer_addrs.clone());
            Ok((leader.id.0, follower.id.0))
        })
    }

    /// Test hook: caches `key`'s region with an epoch one version behind; returns
    /// `(current epoch, cached epoch)` as `(conf_ver, version)` pairs.
    #[allow(clippy::type_complexity)]
    fn debug_cache_stale_epoch(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<((u64, u64), (u64, u64))> {
        let key = bytes_arg(key, "key")?;
        let c = self.handle(py, None)?;
        wait(py, async move {
            let route = route_of(&c, &key).await?;
            let current = route.region.epoch;
            let mut stale = route.region.clone();
            stale.epoch.version = current.version.saturating_sub(1);
            let cached = stale.epoch;
            c.debug_cache_route(stale, route.leader, route.peer_addrs.clone());
            Ok(((current.conf_ver, current.version), (cached.conf_ver, cached.version)))
        })
    }

    /// Test hook: the leader peer cached for `key`'s region.
    fn debug_cached_leader(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
        let key = bytes_arg(key, "key")?;
        Ok(self.handle(py, None)?.debug_cached_leader(&key).map(|p| p.id.0))
    }

    /// Test hook: the epoch cached for `key`'s region, as `(conf_ver, version)`.
    fn debug_cached_epoch(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<(u64, u64)>> {
        let key = bytes_arg(key, "key")?;
        Ok(self.handle(py, None)?.debug_cached_epoch(&key).map(|e| (e.conf_ver, e.version)))
    }

    /// Test hook: the node PD reports as leading `key`'s region (`None`: no leader yet).
    fn debug_leader_node(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
        let key = bytes_arg(key, "key")?;
        let c = self.handle(py, None)?;
        wait(py, async move { Ok(route_of(&c, &key).await?.leader.map(|p| p.node_id.0)) })
    }

    /// Test hook: one append sent twice with the same session sequence number, as a retry
    /// resends it; returns the new length each answer reported.
    #[pyo3(signature = (key, value, *, timeout=None))]
    fn debug_append_resent(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<(u64, u64)> {
        let (key, value) = (bytes_arg(key, "key")?, bytes_arg(value, "value")?);
        self.call(py, timeout, |c| async move { c.debug_append_resent(&key, &value).await })
    }

    /// [`NativeClient::debug_append_resent`] as an awaitable.
    #[pyo3(signature = (key, value, *, timeout=None))]
    fn debug_append_resent_async<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (key, value) = (bytes_arg(key, "key")?, bytes_arg(value, "value")?);
        let c = self.handle(py, timeout)?;
        spawn(py, async move { c.debug_append_resent(&key, &value).await })
    }
}

fn pairs_arg(pairs: &[(Bound<'_, PyAny>, Bound<'_, PyAny>)]) -> PyResult<Vec<Pair>> {
    pairs.iter().map(|(k, v)| Ok((bytes_arg(k, "key")?, bytes_arg(v, "value")?))).collect()
}

// ---------------------------------------------------------------------------------------
// Scans

/// Where a scan stands. Each page is one request with its own deadline; a failed page
/// leaves the position unchanged, so asking again retries it.
#[pyclass(module = "tessera._native", frozen)]
#[derive(Debug)]
struct Scanner {
    client: Client,
    /// `None`: the scan is complete.
    cursor: Arc<Mutex<Option<ScanCursor>>>,
}

fn lock_cursor(m: &Mutex<Option<ScanCursor>>) -> MutexGuard<'_, Option<ScanCursor>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fetches the page at the scan's position and moves it on; `None` once complete. A
/// page may be empty (a region holding no key of the range).
async fn next_page(client: Client, cursor: Arc<Mutex<Option<ScanCursor>>>) -> Result<Option<Vec<Pair>>, Error> {
    let Some(at) = lock_cursor(&cursor).clone() else {
        return Ok(None);
    };
    let (pairs, next) = client.scan_page(at).await?;
    *lock_cursor(&cursor) = next;
    Ok(Some(pairs))
}

#[pymethods]
impl Scanner {
    /// The next page of pairs (possibly empty), or `None` once the scan is complete.
    fn next_page(&self, py: Python<'_>) -> PyResult<Option<Vec<Pair>>> {
        wait(py, next_page(self.client.clone(), self.cursor.clone()))
    }

    /// [`Scanner::next_page`] as an awaitable.
    fn next_page_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        spawn(py, next_page(self.client.clone(), self.cursor.clone()))
    }

    /// Whether the scan is complete.
    #[getter]
    fn done(&self) -> bool {
        lock_cursor(&self.cursor).is_none()
    }
}

/// The compiled half of the `tessera` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(connect_async, m)?)?;
    m.add_class::<NativeClient>()?;
    m.add_class::<Scanner>()?;
    m.add("SIGNAL_SLICE_SECONDS", SIGNAL_SLICE.as_secs_f64())?;
    Ok(())
}
