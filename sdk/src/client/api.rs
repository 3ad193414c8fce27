//! The public client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::Stream;
use tessera_wire::{
    validate_key, validate_value, KvOp, KvResponse, NodeInfo, PdRequest, PdResponse, Peer, ReadConsistency,
    RegionDescriptor, RegionEpoch, RegionRoute, SessionId, SessionSeq, WriteCommand, WriteResult,
};

use super::clock::Timer;
use super::config::ClientConfig;
use super::exec::{Inner, KvCall, KvOutcome, RouteBy, Routing};
use super::pd::PdCall;
use super::transport::Transport;
use crate::core::plan::{all_in_region, chunk_by_size, group_by_region};
use crate::core::retry::RequestKind;
use crate::core::rng::SplitMix64;
use crate::core::route::CachedRegion;
use crate::core::session::SessionSeqs;
use crate::core::time::Timestamp;
use crate::{Error, ScanCursor, ScanOptions};

/// Outcome of [`Client::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// The swap happened.
    pub succeeded: bool,
    /// The value before the operation (`None`: absent).
    pub previous: Option<Vec<u8>>,
}

/// A sequence number taken by a write call: pending until dropped.
struct PendingSeq {
    inner: Arc<Inner>,
    session: SessionId,
    seq: u64,
}

impl PendingSeq {
    /// Makes the request's session field afresh for each attempt, so that it carries the
    /// session's current acknowledgement. (The session cannot be renewed while this write
    /// is pending, so the acknowledgement is always of this write's session.)
    fn session_seq(&self) -> impl Fn() -> SessionSeq + Send + 'static {
        let (inner, session, seq) = (self.inner.clone(), self.session, self.seq);
        move || SessionSeq { session, seq, first_pending: inner.seqs().first_pending() }
    }
}

impl Drop for PendingSeq {
    fn drop(&mut self) {
        self.inner.seqs().finish(self.seq);
    }
}

/// How the parts of a batch ended.
#[derive(Debug, Default)]
struct BatchOutcome {
    /// Positions served.
    done: Vec<usize>,
    /// Failed parts: their positions and error.
    failed: Vec<(Vec<usize>, Error)>,
}

impl BatchOutcome {
    /// `Ok` when every part succeeded; the error of the only part when the batch was one
    /// part that failed; otherwise [`Error::PartialBatch`] with the exact positions.
    fn into_result(mut self, total: usize) -> Result<(), Error> {
        if self.failed.is_empty() {
            return Ok(());
        }
        if self.done.is_empty() && self.failed.len() == 1 {
            return Err(self.failed.remove(0).1);
        }
        self.done.sort_unstable();
        let mut undetermined: Vec<usize> = self
            .failed
            .iter()
            .filter(|(_, e)| e.is_undetermined())
            .flat_map(|(group, _)| group.iter().copied())
            .collect();
        undetermined.sort_unstable();
        let error = self.failed.iter().find(|(_, e)| !e.is_undetermined()).unwrap_or(&self.failed[0]).1.clone();
        Err(Error::PartialBatch { total, applied: self.done, undetermined, error: Box::new(error) })
    }
}

/// A connection to a Tessera cluster. Cheap to clone; clones share connections, the routing
/// cache and the session.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Deadline of this handle's operations, when set by [`Client::with_timeout`].
    timeout: Option<std::time::Duration>,
}

type Pair = (Vec<u8>, Vec<u8>);

fn protocol(what: &str) -> Error {
    Error::Protocol { reason: format!("unexpected answer to {what}") }
}

impl Client {
    /// Connects: sets up the QUIC endpoint with the configured TLS files and allocates a
    /// session in PD (which must be reachable within `request_timeout`).
    #[cfg(feature = "native")]
    pub async fn connect(cfg: ClientConfig) -> Result<Client, Error> {
        use tessera_wire::quic::{ClientEndpoint, ConnectionPool};
        cfg.validate()?;
        let files = cfg.tls.as_ref().ok_or_else(|| Error::Config {
            reason: "TLS files are required: the cluster only accepts mutually authenticated QUIC".into(),
        })?;
        let tls = tessera_certs::client_tls_config(files).map_err(|e| Error::Tls { reason: e.to_string() })?;
        let endpoint = ClientEndpoint::new(cfg.bind_addr(), tls, tessera_wire::Role::Client, cfg.transport.clone())
            .map_err(|e| Error::Config { reason: format!("client endpoint: {e}") })?;
        let pool = ConnectionPool::new(endpoint);
        let seed = cfg.rng_seed.unwrap_or_else(rand::random);
        Client::with_platform(cfg, Arc::new(pool), Arc::new(super::clock::TokioClock::new()), seed).await
    }

    /// A client over `transport` on `clock`, once it has allocated a session in PD.
    /// [`Client::connect`] passes the QUIC pool and tokio's clock; the wasm SDK passes
    /// WebSocket or WebTransport and JS timers; simulation tests a scripted transport and
    /// a manual clock. `seed` seeds the backoff jitter (used when `cfg.rng_seed` is unset).
    pub async fn with_platform(
        cfg: ClientConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Timer>,
        seed: u64,
    ) -> Result<Client, Error> {
        cfg.validate()?;
        let seed = cfg.rng_seed.unwrap_or(seed);
        let inner = Arc::new(Inner {
            transport,
            seqs: Mutex::new(SessionSeqs::default()),
            renewing: futures::lock::Mutex::new(()),
            routing: Mutex::new(Routing::default()),
            rng: Mutex::new(SplitMix64::new(seed)),
            clock,
            pd_preferred: Mutex::new(None),
            cfg,
        });
        let client = Client { inner, timeout: None };
        let session = client.alloc_session().await?;
        *client.inner.seqs() = SessionSeqs::new(session, client.inner.clock.now());
        tracing::debug!(session = %session, "client connected");
        Ok(client)
    }

    async fn alloc_session(&self) -> Result<SessionId, Error> {
        match self.pd(PdRequest::AllocSession).await? {
            PdResponse::Session(s) => Ok(s),
            _ => Err(protocol("AllocSession")),
        }
    }

    /// This client's current session id (shared by its clones). It changes when the
    /// session is renewed after a long idle time or after the cluster expired it.
    pub fn session_id(&self) -> SessionId {
        self.inner.seqs().id()
    }

    /// Replaces the session before a write if it has been idle for
    /// [`ClientConfig::session_renew_after`] or a server said it expired (and no write of
    /// it is in flight), so that the cluster never refuses a fresh write as expired.
    async fn renew_session_if_needed(&self) -> Result<(), Error> {
        let renew_after = self.inner.cfg.session_renew_after;
        let due = |client: &Client| client.inner.seqs().needs_renewal(client.inner.clock.now(), renew_after);
        if !due(self) {
            return Ok(());
        }
        let _renewing = self.inner.renewing.lock().await;
        if !due(self) {
            return Ok(());
        }
        let fresh = self.alloc_session().await?;
        let old = self.session_id();
        if self.inner.seqs().renew(fresh, self.inner.clock.now(), renew_after) {
            tracing::debug!(old = %old, session = %fresh, "client session renewed");
        }
        Ok(())
    }

    /// Remembers a `SessionExpired` answer, so the next write renews the session.
    fn note(&self, error: &Error) {
        let expired = |e: &Error| {
            if let Error::Server(tessera_wire::Error::SessionExpired { session }) = e {
                self.inner.seqs().mark_expired(*session);
            }
        };
        match error {
            Error::PartialBatch { error, .. } => expired(error),
            e => expired(e),
        }
    }

    fn deadline(&self) -> Timestamp {
        self.inner.clock.deadline_after(self.timeout.unwrap_or(self.inner.cfg.request_timeout))
    }

    /// A handle on the same client (connections, routing cache, session) whose operations
    /// have `timeout` as their deadline, retries included, instead of
    /// [`ClientConfig::request_timeout`]: `client.with_timeout(d).get(key)`. A zero timeout
    /// fails at once with `DeadlineExceeded`.
    pub fn with_timeout(&self, timeout: std::time::Duration) -> Client {
        Client { inner: self.inner.clone(), timeout: Some(timeout) }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        validate_key(key, &self.inner.cfg.limits).map_err(Error::from_server)
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Error> {
        validate_value(value, &self.inner.cfg.limits).map_err(Error::from_server)
    }

    async fn pd(&self, request: PdRequest) -> Result<PdResponse, Error> {
        self.inner.retry(PdCall { request }, self.deadline()).await
    }

    /// Runs a single-region KV call to completion.
    async fn kv<F>(&self, call: KvCall<F>, deadline: Timestamp) -> Result<(RegionDescriptor, KvResponse), Error>
    where
        F: Fn(&RegionDescriptor) -> Option<KvOp> + Send,
    {
        match self.inner.retry(call, deadline).await? {
            KvOutcome::Done { region, response } => Ok((region, response)),
            KvOutcome::Replan => Err(protocol("a single-key request (it cannot straddle regions)")),
        }
    }

    /// Reads `key` (linearizable).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// Reads `key` with the given consistency.
    pub async fn get_with(&self, key: &[u8], consistency: ReadConsistency) -> Result<Option<Vec<u8>>, Error> {
        self.check_key(key)?;
        let op = KvOp::Get { key: key.to_vec() };
        let call = KvCall {
            route: RouteBy::Key(key.to_vec()),
            kind: RequestKind::Read,
            consistency,
            build: move |_: &RegionDescriptor| Some(op.clone()),
        };
        match self.kv(call, self.deadline()).await? {
            (_, KvResponse::Value(v)) => Ok(v),
            _ => Err(protocol("Get")),
        }
    }

    /// Takes the session's next sequence number; it stays pending (held back from the
    /// acknowledgement every request carries) until the guard is dropped, which is when the
    /// call returns or is cancelled: after that it is never sent again.
    fn begin_write(&self) -> PendingSeq {
        let now = self.inner.clock.now();
        let (session, seq) = {
            let mut seqs = self.inner.seqs();
            (seqs.id(), seqs.begin_at(now))
        };
        PendingSeq { inner: self.inner.clone(), session, seq }
    }

    /// A single-key write with a fresh sequence number, resent with that same number until
    /// it is known to have been applied or the deadline passes.
    async fn write(&self, key: &[u8], command: WriteCommand) -> Result<WriteResult, Error> {
        self.write_times(key, command, 1).await.map(|mut results| results.remove(0))
    }

    /// [`Client::write`] run `times` times in a row with one sequence number, as the retry
    /// loop resends a write whose answer was lost; the results of each run, in order.
    async fn write_times(&self, key: &[u8], command: WriteCommand, times: usize) -> Result<Vec<WriteResult>, Error> {
        self.renew_session_if_needed().await?;
        let pending = self.begin_write();
        let mut results = Vec::with_capacity(times);
        for _ in 0..times {
            results.push(self.write_once(key, command.clone(), &pending).await?);
        }
        drop(pending);
        Ok(results)
    }

    /// Test hook: sends an append twice with the *same* session sequence number, each
    /// through the retry loop, exactly as a retry after a lost answer resends it; returns
    /// both answers (the new length each reported). The second must repeat the first.
    #[doc(hidden)]
    pub async fn debug_append_resent(&self, key: &[u8], value: &[u8]) -> Result<(u64, u64), Error> {
        self.check_key(key)?;
        self.check_value(value)?;
        let command = WriteCommand::Append { key: key.to_vec(), value: value.to_vec() };
        match self.write_times(key, command, 2).await?.as_slice() {
            [WriteResult::Appended { new_len: a }, WriteResult::Appended { new_len: b }] => Ok((*a, *b)),
            _ => Err(protocol("Append")),
        }
    }

    /// One run of the retry loop for a write under `pending`'s sequence number.
    async fn write_once(&self, key: &[u8], command: WriteCommand, pending: &PendingSeq) -> Result<WriteResult, Error> {
        let call = KvCall {
            route: RouteBy::Key(key.to_vec()),
            kind: RequestKind::Write { exactly_once: true },
            consistency: ReadConsistency::Linearizable,
            build: {
                let session = pending.session_seq();
                move |_: &RegionDescriptor| Some(KvOp::Write { session: Some(session()), command: command.clone() })
            },
        };
        let result = self.kv(call, self.deadline()).await;
        match result {
            Ok((_, KvResponse::Write(r))) => Ok(r),
            Ok(_) => Err(protocol("a write")),
            Err(e) => {
                self.note(&e);
                Err(e)
            }
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.check_key(key)?;
        self.check_value(value)?;
        match self.write(key, WriteCommand::Put { key: key.to_vec(), value: value.to_vec() }).await? {
            WriteResult::Done => Ok(()),
            _ => Err(protocol("Put")),
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        self.check_key(key)?;
        match self.write(key, WriteCommand::Delete { key: key.to_vec() }).await? {
            WriteResult::Deleted { existed } => Ok(existed),
            _ => Err(protocol("Delete")),
        }
    }

    /// Appends `value` to the value of `key` (an absent key acts as empty); returns the new
    /// length.
    pub async fn append(&self, key: &[u8], value: &[u8]) -> Result<u64, Error> {
        self.check_key(key)?;
        self.check_value(value)?;
        match self.write(key, WriteCommand::Append { key: key.to_vec(), value: value.to_vec() }).await? {
            WriteResult::Appended { new_len } => Ok(new_len),
            _ => Err(protocol("Append")),
        }
    }

    /// Sets `key` to `new` (`None`: deletes it) if its current value is `expected` (`None`:
    /// absent).
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome, Error> {
        self.check_key(key)?;
        for v in expected.iter().chain(new.iter()) {
            self.check_value(v)?;
        }
        let command = WriteCommand::CompareAndSwap {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        };
        match self.write(key, command).await? {
            WriteResult::CompareAndSwap { succeeded, previous } => Ok(CasOutcome { succeeded, previous }),
            _ => Err(protocol("CompareAndSwap")),
        }
    }

    /// Splits the positions `todo` of `keys` into per-region groups, as the cache knows
    /// them now, each cut to at most `max_batch_keys` keys and `max_bytes` bytes (by
    /// `size`). Keys of unknown regions form groups routed by their first key; they are
    /// replanned once that lookup is done.
    fn plan(&self, keys: &[&[u8]], todo: &[usize], max_bytes: usize, size: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
        let subset: Vec<&[u8]> = todo.iter().map(|&i| keys[i]).collect();
        let plan = group_by_region(&self.inner.routing().cache, &subset);
        let max_keys = self.inner.cfg.limits.max_batch_keys;
        let mut groups = Vec::new();
        for g in plan.groups.iter().map(|g| &g.indices).chain(std::iter::once(&plan.missing)) {
            let g: Vec<usize> = g.iter().map(|&j| todo[j]).collect();
            groups.extend(chunk_by_size(&g, max_keys, max_bytes, &size));
        }
        groups
    }

    /// Serves a batch region by region.
    ///
    /// Plans the keys into groups by the cached regions (cut by `max_bytes` of `size`),
    /// gives each group an id from `begin` (a write's sequence number), sends one call per
    /// group concurrently (built by `make_call`), and hands each answer to `on_done`, which
    /// returns the positions it did not serve (a read answered in part). A group whose
    /// region changed shape is planned again by region only. If the group may already have
    /// been applied (an attempt's fate is unknown), its parts keep the group's id, so that a
    /// part applied under it before the change is answered from the region's record of it
    /// rather than applied twice. Otherwise each part takes an id of its own: parts sharing
    /// an id could meet again in one region (a merge) and the second would be taken for a
    /// replay of the first, answered done without being written.
    /// Runs every group to its end, then reports every failure with its positions.
    async fn per_region<T: Copy, F>(
        &self,
        keys: &[&[u8]],
        max_bytes: usize,
        size: impl Fn(usize) -> usize,
        mut begin: impl FnMut() -> T,
        make_call: impl Fn(&[usize], T) -> KvCall<F>,
        mut on_done: impl FnMut(&[usize], KvResponse) -> Result<Vec<usize>, Error>,
    ) -> BatchOutcome
    where
        F: Fn(&RegionDescriptor) -> Option<KvOp> + Send,
    {
        let deadline = self.deadline();
        let mut outcome = BatchOutcome::default();
        let all: Vec<usize> = (0..keys.len()).collect();
        // (positions, id, may already have been delivered)
        let mut todo: Vec<(Vec<usize>, T, bool)> =
            self.plan(keys, &all, max_bytes, &size).into_iter().map(|g| (g, begin(), false)).collect();
        while !todo.is_empty() {
            let calls = todo
                .iter()
                .map(|(group, id, delivered)| self.inner.retry_from(make_call(group, *id), deadline, *delivered));
            let results = futures::future::join_all(calls).await;
            let mut next = Vec::new();
            let mut unserved = Vec::new();
            for ((group, id, _), result) in std::mem::take(&mut todo).into_iter().zip(results) {
                match result {
                    Ok((KvOutcome::Replan, delivered)) => {
                        // By region only: the group already fits the count and byte limits.
                        for part in self.plan(keys, &group, usize::MAX, &size) {
                            let id = if delivered { id } else { begin() };
                            next.push((part, id, delivered));
                        }
                    }
                    Ok((KvOutcome::Done { response, .. }, _)) => match on_done(&group, response) {
                        Ok(rest) => {
                            outcome.done.extend(group.iter().filter(|i| !rest.contains(i)));
                            unserved.extend(rest);
                        }
                        Err(e) => outcome.failed.push((group, e)),
                    },
                    Err(e) => outcome.failed.push((group, e)),
                }
            }
            if !unserved.is_empty() {
                next.extend(self.plan(keys, &unserved, max_bytes, &size).into_iter().map(|g| (g, begin(), false)));
            }
            todo = next;
        }
        outcome
    }

    /// Reads several keys, in any number of regions; one result per key, in order. Large
    /// answers arrive in several round trips (each answer is capped by bytes).
    pub async fn batch_get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        for k in keys {
            self.check_key(k.as_ref())?;
        }
        let refs: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        let mut out: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        let make_call = |group: &[usize], (): ()| {
            let group_keys: Vec<Vec<u8>> = group.iter().map(|&i| refs[i].to_vec()).collect();
            KvCall {
                route: RouteBy::Key(group_keys[0].clone()),
                kind: RequestKind::Read,
                consistency: ReadConsistency::Linearizable,
                build: move |r: &RegionDescriptor| {
                    all_in_region(r, &group_keys).then(|| KvOp::BatchGet { keys: group_keys.clone() })
                },
            }
        };
        let outcome = self
            .per_region(
                &refs,
                usize::MAX,
                |_| 0,
                || (),
                make_call,
                |group, response| match response {
                    KvResponse::Values(values) if !values.is_empty() && values.len() <= group.len() => {
                        let rest = group[values.len()..].to_vec();
                        for (&i, v) in group.iter().zip(values) {
                            out[i] = v;
                        }
                        Ok(rest)
                    }
                    _ => Err(protocol("BatchGet")),
                },
            )
            .await;
        match outcome.failed.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(out),
        }
    }

    /// Writes several pairs. Atomic per region, not across regions. The pairs of each
    /// region are sent as one write (or several, to respect the batch count and byte
    /// limits), each with its own sequence number kept across retries, so every pair is
    /// applied at most once. If some parts fail, the error is [`Error::PartialBatch`], which
    /// says exactly which pairs were applied and which may have been.
    pub async fn batch_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, pairs: &[(K, V)]) -> Result<(), Error> {
        for (k, v) in pairs {
            self.check_key(k.as_ref())?;
            self.check_value(v.as_ref())?;
        }
        self.renew_session_if_needed().await?;
        let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_ref()).collect();
        let size = |i: usize| pairs[i].0.as_ref().len() + pairs[i].1.as_ref().len();
        let mut seqs = Vec::new();
        let begin = || {
            let pending = self.begin_write();
            let id = (pending.session, pending.seq);
            seqs.push(pending);
            id
        };
        let make_call = |group: &[usize], (session, seq): (SessionId, u64)| {
            let group_pairs: Vec<Pair> =
                group.iter().map(|&i| (pairs[i].0.as_ref().to_vec(), pairs[i].1.as_ref().to_vec())).collect();
            let inner = self.inner.clone();
            KvCall {
                route: RouteBy::Key(group_pairs[0].0.clone()),
                kind: RequestKind::Write { exactly_once: true },
                consistency: ReadConsistency::Linearizable,
                build: move |r: &RegionDescriptor| {
                    group_pairs.iter().all(|(k, _)| r.contains(k)).then(|| KvOp::Write {
                        session: Some(SessionSeq { session, seq, first_pending: inner.seqs().first_pending() }),
                        command: WriteCommand::BatchPut { pairs: group_pairs.clone() },
                    })
                },
            }
        };
        let max_bytes = self.inner.cfg.limits.max_batch_bytes;
        let outcome = self
            .per_region(&keys, max_bytes, size, begin, make_call, |_, response| match response {
                KvResponse::Write(WriteResult::Done) => Ok(Vec::new()),
                _ => Err(protocol("BatchPut")),
            })
            .await;
        drop(seqs);
        let result = outcome.into_result(pairs.len());
        if let Err(e) = &result {
            self.note(e);
        }
        result
    }

    /// One page of a scan, from the region serving `cursor`'s position: the pairs (possibly
    /// none, when that region holds no keys of the range) and the cursor to continue from
    /// (`None`: the scan is complete).
    pub async fn scan_page(&self, cursor: ScanCursor) -> Result<(Vec<Pair>, Option<ScanCursor>), Error> {
        let route = if cursor.reverse {
            RouteBy::Before { key: cursor.next_key.clone(), lower: cursor.end.clone() }
        } else {
            RouteBy::Key(cursor.next_key.clone())
        };
        let consistency = cursor.consistency;
        let page_cursor = cursor.clone();
        let call = KvCall {
            route,
            kind: RequestKind::Read,
            consistency,
            build: move |r: &RegionDescriptor| page_cursor.is_served_by(r).then(|| page_cursor.page_request(r)),
        };
        match self.kv(call, self.deadline()).await? {
            (region, KvResponse::Scan { pairs, resume_key }) => {
                let next = cursor.advance(&region, pairs.len(), resume_key)?;
                Ok((pairs, next))
            }
            _ => Err(protocol("Scan")),
        }
    }

    /// Scans `[start, end)` (empty `end`: to the end of the key space) across regions, page
    /// by page. The stream is `Unpin`, so `StreamExt::next` works on it directly. It ends
    /// after the first error. Each page is its own request with its
    /// own deadline; the scan as a whole is not a snapshot.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        opts: ScanOptions,
    ) -> impl Stream<Item = Result<Pair, Error>> + Send + Unpin + 'static {
        enum State {
            Failed(Error),
            Paging { cursor: Option<ScanCursor>, buffered: VecDeque<Pair> },
            Done,
        }
        let first = match ScanCursor::new(start, end, &opts) {
            Ok(cursor) => State::Paging { cursor, buffered: VecDeque::new() },
            Err(e) => State::Failed(e),
        };
        Box::pin(futures::stream::unfold((self.clone(), first), |(client, mut state)| async move {
            loop {
                match state {
                    State::Done => return None,
                    State::Failed(e) => return Some((Err(e), (client, State::Done))),
                    State::Paging { cursor, mut buffered } => {
                        if let Some(pair) = buffered.pop_front() {
                            return Some((Ok(pair), (client, State::Paging { cursor, buffered })));
                        }
                        let cursor = cursor?;
                        state = match client.scan_page(cursor).await {
                            Ok((pairs, next)) => State::Paging { cursor: next, buffered: pairs.into() },
                            Err(e) => State::Failed(e),
                        };
                    }
                }
            }
        }))
    }

    /// All nodes, as PD sees them.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        match self.pd(PdRequest::GetNodes).await? {
            PdResponse::Nodes(nodes) => Ok(nodes),
            _ => Err(protocol("GetNodes")),
        }
    }

    /// All regions over the whole key space, with leaders and addresses, as PD sees them.
    /// Also refreshes the routing cache.
    pub async fn regions(&self) -> Result<Vec<RegionRoute>, Error> {
        match self.pd(PdRequest::ScanRegions { start: Vec::new(), end: Vec::new(), limit: 0 }).await? {
            PdResponse::Regions(routes) => {
                let mut routing = self.inner.routing();
                for r in &routes {
                    routing.cache.insert(CachedRegion::from_route(r.clone()));
                }
                Ok(routes)
            }
            _ => Err(protocol("ScanRegions")),
        }
    }

    /// Every node and every region with roles (voters, learners, leader) and approximate
    /// sizes, as PD sees them.
    pub async fn cluster_status(&self) -> Result<(Vec<NodeInfo>, Vec<tessera_wire::RegionInfo>), Error> {
        match self.pd(PdRequest::GetClusterStatus).await? {
            PdResponse::ClusterStatus { nodes, regions } => Ok((nodes, regions)),
            _ => Err(protocol("GetClusterStatus")),
        }
    }

    /// Running and recently finished placement operators (admin).
    pub async fn operators(&self) -> Result<Vec<tessera_wire::OperatorInfo>, Error> {
        match self.pd(PdRequest::GetOperators).await? {
            PdResponse::Operators(ops) => Ok(ops),
            _ => Err(protocol("GetOperators")),
        }
    }

    /// Asks PD to split the region containing `key` at `key` (admin). Returns the
    /// operator's id once it is planned; [`Client::operators`] tells when it finished.
    pub async fn split_region(&self, key: &[u8]) -> Result<u64, Error> {
        match self.pd(PdRequest::SplitRegion { key: key.to_vec() }).await? {
            PdResponse::OperatorStarted { op_id } => Ok(op_id),
            _ => Err(protocol("SplitRegion")),
        }
    }

    /// Asks PD to merge the region containing `key` into its left neighbour (admin).
    /// Returns the operator's id once it is planned; [`Client::operators`] tells when it
    /// finished. Refused (`InvalidRequest`, with the reason) when the region has no left
    /// neighbour or the two cannot merge as they are (voters on different nodes, a
    /// replica being added).
    pub async fn merge_region(&self, key: &[u8]) -> Result<u64, Error> {
        match self.pd(PdRequest::MergeRegion { key: key.to_vec() }).await? {
            PdResponse::OperatorStarted { op_id } => Ok(op_id),
            _ => Err(protocol("MergeRegion")),
        }
    }

    /// Asks PD to move every replica off `node` (admin).
    pub async fn drain_node(&self, node: tessera_wire::NodeId) -> Result<(), Error> {
        match self.pd(PdRequest::DrainNode { node_id: node }).await? {
            PdResponse::Ok => Ok(()),
            _ => Err(protocol("DrainNode")),
        }
    }

    /// Revokes the scoped token `id` (admin). `expires_at` is the token's expiry (seconds
    /// since the Unix epoch), after which PD forgets the revocation. Nodes refuse the token
    /// once their next heartbeat brings the list (within a second or so).
    pub async fn revoke_token(&self, id: u64, expires_at: u64) -> Result<(), Error> {
        match self.pd(PdRequest::RevokeToken { id, expires_at }).await? {
            PdResponse::Ok => Ok(()),
            _ => Err(protocol("RevokeToken")),
        }
    }

    /// Asks PD to forget `node`, which must host no replica (admin).
    pub async fn remove_node(&self, node: tessera_wire::NodeId) -> Result<(), Error> {
        match self.pd(PdRequest::RemoveNode { node_id: node }).await? {
            PdResponse::Ok => Ok(()),
            _ => Err(protocol("RemoveNode")),
        }
    }

    /// Test hook: puts `region` in the routing cache regardless of epochs, evicting what it
    /// overlaps (to exercise stale-route handling).
    #[doc(hidden)]
    pub fn debug_cache_route(&self, region: RegionDescriptor, leader: Option<Peer>, peer_addrs: Vec<String>) {
        self.inner.routing().cache.force_insert(CachedRegion { descriptor: region, leader, peer_addrs });
    }

    /// The leader cached for the region containing `key` (test hook).
    #[doc(hidden)]
    pub fn debug_cached_leader(&self, key: &[u8]) -> Option<Peer> {
        self.inner.routing().cache.get(key).and_then(|r| r.leader)
    }

    /// The epoch cached for the region containing `key` (test hook).
    #[doc(hidden)]
    pub fn debug_cached_epoch(&self, key: &[u8]) -> Option<RegionEpoch> {
        self.inner.routing().cache.get(key).map(|r| r.descriptor.epoch)
    }
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn client_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<Client>();
    }

    /// Never run: checks at compile time that every operation's future can be spawned.
    #[allow(dead_code)]
    fn operation_futures_are_send(c: Client, cursor: ScanCursor) {
        assert_send(&c.get(b"k"));
        assert_send(&c.put(b"k", b"v"));
        assert_send(&c.delete(b"k"));
        assert_send(&c.append(b"k", b"v"));
        assert_send(&c.compare_and_swap(b"k", None, Some(b"v")));
        assert_send(&c.batch_get(&[b"a", b"b"]));
        assert_send(&c.batch_put(&[(b"a", b"1")]));
        assert_send(&c.scan_page(cursor));
        assert_send(&c.nodes());
        assert_send(&c.regions());
        assert_send(&Client::connect(ClientConfig::new(vec![], None)));
    }

    #[tokio::test]
    async fn connect_without_reachable_pd_is_unavailable_at_deadline() {
        let dir = tempfile::tempdir().unwrap();
        tessera_certs::ensure_dev_certs(dir.path(), &[]).unwrap();
        // A bound, silent UDP socket: nothing answers QUIC there.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let mut cfg =
            ClientConfig::new(vec![addr], Some(crate::TlsFiles::client(dir.path(), tessera_certs::DEV_CLIENT)));
        cfg.request_timeout = Duration::from_millis(1500);
        cfg.attempt_timeout = Duration::from_millis(300);
        cfg.transport.connect_timeout = Duration::from_millis(300);
        cfg.rng_seed = Some(1);
        let started = tokio::time::Instant::now();
        let err = Client::connect(cfg).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "the deadline bounds the retries");
    }

    #[tokio::test]
    async fn connect_rejects_invalid_config_before_any_io() {
        let err = Client::connect(ClientConfig::new(vec![], None)).await.unwrap_err();
        assert!(matches!(err, Error::Config { .. }));
        let err = Client::connect(ClientConfig::new(vec!["127.0.0.1:1".into()], None)).await.unwrap_err();
        assert!(matches!(err, Error::Config { ref reason } if reason.contains("TLS")), "{err:?}");
    }
}
