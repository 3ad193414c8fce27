//! The public client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::Stream;
use tessera_wire::quic::{ClientEndpoint, ConnectionPool};
use tessera_wire::{
    validate_key, validate_value, KvOp, KvResponse, NodeInfo, PdRequest, PdResponse, Peer, ReadConsistency,
    RegionDescriptor, RegionEpoch, RegionRoute, Role, SessionId, SessionSeq, WriteCommand, WriteResult,
};

use super::clock::TokioClock;
use super::config::ClientConfig;
use super::exec::{Inner, KvCall, KvOutcome, RouteBy, Routing};
use super::pd::PdCall;
use crate::core::plan::{all_in_region, group_by_region};
use crate::core::retry::RequestKind;
use crate::core::rng::SplitMix64;
use crate::core::route::CachedRegion;
use crate::core::time::{Clock, Timestamp};
use crate::{Error, ScanCursor, ScanOptions};

/// Outcome of [`Client::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// The swap happened.
    pub succeeded: bool,
    /// The value before the operation (`None`: absent).
    pub previous: Option<Vec<u8>>,
}

/// A connection to a Tessera cluster. Cheap to clone; clones share connections, the routing
/// cache and the session.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

type Pair = (Vec<u8>, Vec<u8>);

fn protocol(what: &str) -> Error {
    Error::Protocol { reason: format!("unexpected answer to {what}") }
}

impl Client {
    /// Connects: sets up the QUIC endpoint with the configured TLS files and allocates a
    /// session in PD (which must be reachable within `request_timeout`).
    pub async fn connect(cfg: ClientConfig) -> Result<Client, Error> {
        cfg.validate()?;
        let files = cfg.tls.as_ref().ok_or_else(|| Error::Config { reason: "TLS files are required".into() })?;
        let tls = tessera_certs::client_tls_config(files).map_err(|e| Error::Tls { reason: e.to_string() })?;
        let endpoint = ClientEndpoint::new(cfg.bind_addr(), tls, Role::Client, cfg.transport.clone())
            .map_err(|e| Error::Config { reason: format!("client endpoint: {e}") })?;
        let seed = cfg.rng_seed.unwrap_or_else(rand::random);
        let inner = Arc::new(Inner {
            pool: ConnectionPool::new(endpoint),
            session: OnceLock::new(),
            next_seq: AtomicU64::new(1),
            routing: Mutex::new(Routing::default()),
            rng: Mutex::new(SplitMix64::new(seed)),
            clock: TokioClock::new(),
            pd_preferred: Mutex::new(None),
            cfg,
        });
        let client = Client { inner };
        let session = match client.pd(PdRequest::AllocSession).await? {
            PdResponse::Session(s) => s,
            _ => return Err(protocol("AllocSession")),
        };
        client.inner.session.set(session).expect("session is set once, here");
        tracing::debug!(session = %session, "client connected");
        Ok(client)
    }

    /// This client's session id (shared by its clones).
    pub fn session_id(&self) -> SessionId {
        *self.inner.session.get().expect("a connected client has a session")
    }

    fn deadline(&self) -> Timestamp {
        self.inner.clock.deadline_after(self.inner.cfg.request_timeout)
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

    fn next_seq(&self) -> SessionSeq {
        SessionSeq { session: self.session_id(), seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed) }
    }

    /// A single-key write with a fresh sequence number, resent with that same number until
    /// it is known to have been applied or the deadline passes.
    async fn write(&self, key: &[u8], command: WriteCommand) -> Result<WriteResult, Error> {
        let seq = self.next_seq();
        let op = KvOp::Write { session: Some(seq), command };
        let call = KvCall {
            route: RouteBy::Key(key.to_vec()),
            kind: RequestKind::Write { exactly_once: true },
            consistency: ReadConsistency::Linearizable,
            build: move |_: &RegionDescriptor| Some(op.clone()),
        };
        match self.kv(call, self.deadline()).await? {
            (_, KvResponse::Write(r)) => Ok(r),
            _ => Err(protocol("a write")),
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

    /// Splits the positions `todo` of `keys` into per-region groups of at most
    /// `max_batch_keys`, as the cache knows them now. Keys of unknown regions form one
    /// group, routed by its first key; it is replanned once that lookup is done.
    fn plan<K: AsRef<[u8]>>(&self, keys: &[K], todo: &[usize]) -> Vec<Vec<usize>> {
        let subset: Vec<&[u8]> = todo.iter().map(|&i| keys[i].as_ref()).collect();
        let plan = group_by_region(&self.inner.routing().cache, &subset);
        let max = self.inner.cfg.limits.max_batch_keys.max(1);
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for g in plan.groups.iter().map(|g| &g.indices).chain(std::iter::once(&plan.missing)) {
            for chunk in g.chunks(max) {
                groups.push(chunk.iter().map(|&j| todo[j]).collect());
            }
        }
        groups
    }

    /// Serves a batch region by region: plans the keys' indices into groups by the cached
    /// regions, sends one call per group (built by `make_call`) concurrently, hands each
    /// answer to `on_done`, and plans again the groups whose region changed shape, until
    /// every key is served or the deadline passes.
    async fn per_region<K, F>(
        &self,
        keys: &[K],
        deadline: Timestamp,
        make_call: impl Fn(&[usize]) -> KvCall<F>,
        mut on_done: impl FnMut(Vec<usize>, KvResponse) -> Result<(), Error>,
    ) -> Result<(), Error>
    where
        K: AsRef<[u8]>,
        F: Fn(&RegionDescriptor) -> Option<KvOp> + Send,
    {
        let mut todo: Vec<usize> = (0..keys.len()).collect();
        while !todo.is_empty() {
            if self.inner.clock.now() >= deadline {
                return Err(Error::DeadlineExceeded);
            }
            let groups = self.plan(keys, &todo);
            let calls = groups.iter().map(|group| self.inner.retry(make_call(group), deadline));
            let results = futures::future::join_all(calls).await;
            todo.clear();
            for (group, result) in groups.into_iter().zip(results) {
                match result? {
                    KvOutcome::Replan => todo.extend(group),
                    KvOutcome::Done { response, .. } => on_done(group, response)?,
                }
            }
        }
        Ok(())
    }

    /// Reads several keys, in any number of regions; one result per key, in order.
    pub async fn batch_get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        for k in keys {
            self.check_key(k.as_ref())?;
        }
        let mut out: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        let make_call = |group: &[usize]| {
            let group_keys: Vec<Vec<u8>> = group.iter().map(|&i| keys[i].as_ref().to_vec()).collect();
            KvCall {
                route: RouteBy::Key(group_keys[0].clone()),
                kind: RequestKind::Read,
                consistency: ReadConsistency::Linearizable,
                build: move |r: &RegionDescriptor| {
                    all_in_region(r, &group_keys).then(|| KvOp::BatchGet { keys: group_keys.clone() })
                },
            }
        };
        self.per_region(keys, self.deadline(), make_call, |group, response| match response {
            KvResponse::Values(values) if values.len() == group.len() => {
                for (i, v) in group.into_iter().zip(values) {
                    out[i] = v;
                }
                Ok(())
            }
            _ => Err(protocol("BatchGet")),
        })
        .await?;
        Ok(out)
    }

    /// Writes several pairs. Atomic per region, not across regions: on error some regions'
    /// pairs may have been written. Each region's part is one write with its own sequence
    /// number. (If a region splits between attempts of its part, the part is replanned with
    /// new sequence numbers; puts are idempotent, so at worst a pair is written twice.)
    pub async fn batch_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, pairs: &[(K, V)]) -> Result<(), Error> {
        for (k, v) in pairs {
            self.check_key(k.as_ref())?;
            self.check_value(v.as_ref())?;
        }
        let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_ref()).collect();
        let make_call = |group: &[usize]| {
            let group_pairs: Vec<Pair> =
                group.iter().map(|&i| (pairs[i].0.as_ref().to_vec(), pairs[i].1.as_ref().to_vec())).collect();
            let seq = self.next_seq();
            KvCall {
                route: RouteBy::Key(group_pairs[0].0.clone()),
                kind: RequestKind::Write { exactly_once: true },
                consistency: ReadConsistency::Linearizable,
                build: move |r: &RegionDescriptor| {
                    group_pairs.iter().all(|(k, _)| r.contains(k)).then(|| KvOp::Write {
                        session: Some(seq),
                        command: WriteCommand::BatchPut { pairs: group_pairs.clone() },
                    })
                },
            }
        };
        self.per_region(&keys, self.deadline(), make_call, |_, response| match response {
            KvResponse::Write(WriteResult::Done) => Ok(()),
            _ => Err(protocol("BatchPut")),
        })
        .await
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

#[cfg(test)]
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
    }
}
