//! The PD request handler: authorization, the metadata state machine and its store.
//!
//! All state sits behind one async mutex. A request that mutates durable state runs on the
//! blocking pool, holds the lock across the mutation and the redb commit (which fsyncs), and
//! is answered only after the commit; so mutations are applied and committed in one order,
//! and each is durable before its answer. Lookups await the same lock on the async workers,
//! so a commit in progress never blocks a worker thread.
//!
//! Fail-stop: once a commit fails, or a handler panics while holding the state (memory may
//! then be ahead of disk), every later request is answered with `StorageUnavailable`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_certs::{unix_now, Revocations};

use tessera_wire::quic::{PeerInfo, Service};
use tessera_wire::{Error, NodeId, PdRequest, PdResponse, Request, Response, ResponseBody, Role};
use tokio::sync::Mutex;

use crate::meta::{ClusterMeta, MetaError, RegionReport};
use crate::operators::{ManualError, OperatorController};
use crate::scheduler::SchedulerConfig;
use crate::store::{Store, StoreError};

/// Longest node address accepted in `RegisterNode`.
const MAX_ADDR_LEN: usize = 255;

/// Suggested client back-off while a split leaves a key uncovered.
const GAP_RETRY_MS: u32 = 100;

struct State {
    meta: ClusterMeta,
    store: Store,
    /// Operators in flight and recently finished (soft state).
    ops: OperatorController,
    /// A handler panicked while holding the state.
    poisoned: bool,
    /// Revoked token ids and their expiry (seconds since the Unix epoch); durable.
    revoked: BTreeMap<u64, u64>,
    /// The same ids, as PD's own authenticator and web requests consult them.
    revocations: Revocations,
}

/// Marks the state poisoned if dropped during a panic.
struct PoisonOnPanic<'a>(&'a mut State);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned = true;
        }
    }
}

/// The PD service behind the transport.
pub(crate) struct PdService {
    state: Mutex<State>,
    /// Origin of the monotonic `now` passed to the state machine.
    epoch: Instant,
    /// Revoked token ids (shared with the state and PD's authenticator): checked on every
    /// token request without taking the state lock.
    revocations: Revocations,
}

impl std::fmt::Debug for PdService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdService").finish_non_exhaustive()
    }
}

impl PdService {
    /// A service over restored metadata; `epoch` is the instant `meta` was restored at (its
    /// `now` of zero).
    pub(crate) fn new(
        meta: ClusterMeta,
        store: Store,
        epoch: Instant,
        scheduler: SchedulerConfig,
        revocations: Revocations,
    ) -> Result<PdService, StoreError> {
        let ops = OperatorController::new(scheduler);
        let revoked: BTreeMap<u64, u64> = store.load_revoked()?.into_iter().collect();
        revocations.replace(revoked.keys().copied());
        let state = State { meta, store, ops, poisoned: false, revoked, revocations: revocations.clone() };
        Ok(PdService { state: Mutex::new(state), epoch, revocations })
    }

    /// Answers one PD request from a peer authenticated as `role`, blocking the thread on
    /// the lock and on the commit. Must not run on an async worker.
    #[cfg(test)]
    pub(crate) fn handle_blocking(&self, role: Role, request: PdRequest) -> Result<PdResponse, Error> {
        self.handle_blocking_as(role, false, request)
    }

    fn handle_blocking_as(&self, role: Role, token: bool, request: PdRequest) -> Result<PdResponse, Error> {
        authorize(role, token, &request)?;
        let mut state = self.state.blocking_lock();
        let now = self.epoch.elapsed();
        let guard = PoisonOnPanic(&mut state);
        apply(&mut *guard.0, now, request)
    }

    /// Answers a request that does not commit, awaiting the lock.
    async fn handle_async(&self, role: Role, token: bool, request: PdRequest) -> Result<PdResponse, Error> {
        authorize(role, token, &request)?;
        let mut state = self.state.lock().await;
        let now = self.epoch.elapsed();
        let guard = PoisonOnPanic(&mut state);
        apply(&mut *guard.0, now, request)
    }
}

/// Applies an authorized request to the state at `now`.
fn apply(state: &mut State, now: Duration, request: PdRequest) -> Result<PdResponse, Error> {
    if state.poisoned {
        return Err(Error::StorageUnavailable { reason: "PD state poisoned by an earlier panic".into() });
    }
    if let Some(reason) = state.store.failure() {
        return Err(Error::StorageUnavailable { reason: reason.to_owned() });
    }
    let State { meta, store, ops, revoked, revocations, .. } = state;
    match request {
        PdRequest::RegisterNode { node_id, addr, capacity_bytes } => {
            validate_addr(&addr)?;
            let changes = meta.register_node(node_id, addr, capacity_bytes, now);
            store.persist(meta, &changes).map_err(storage_error)?;
            tracing::info!(node_id = node_id.0, bootstrapped = meta.is_bootstrapped(), "node registered");
            Ok(PdResponse::Ok)
        }
        PdRequest::NodeHeartbeat { node_id, stats, hosted, merged } => {
            let assigned = meta.node_heartbeat(node_id, stats, &hosted, now).map_err(meta_error)?;
            let destroy_merged = meta.merged_reports(node_id, &hosted, &merged);
            if !assigned.create.is_empty() || !assigned.destroy.is_empty() {
                tracing::debug!(
                    node_id = node_id.0,
                    create = assigned.create.len(),
                    destroy = assigned.destroy.len(),
                    "node must create or destroy replicas"
                );
            }
            Ok(PdResponse::NodeHeartbeat {
                create: assigned.create,
                nodes: meta.nodes(now),
                destroy: assigned.destroy,
                destroy_merged,
                revoked_tokens: revoked.keys().copied().collect(),
            })
        }
        PdRequest::RegionHeartbeat { node_id, regions } => {
            let (outcomes, mut changes) = meta.region_heartbeat(node_id, &regions, now).map_err(meta_error)?;
            let reported: Vec<_> = regions
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| **o == RegionReport::Accepted)
                .map(|(r, _)| r.region.id)
                .collect();
            let (commands, allocated) = ops.on_region_heartbeat(meta, &reported, now);
            changes.merge(allocated);
            store.persist(meta, &changes).map_err(storage_error)?;
            let ignored = outcomes.iter().filter(|o| **o != RegionReport::Accepted).count();
            if ignored > 0 {
                tracing::debug!(node_id = node_id.0, ignored, "region heartbeats ignored");
            }
            Ok(PdResponse::RegionCommands(commands))
        }
        PdRequest::GetClusterStatus => {
            meta.scan_regions(b"", b"", 1).map_err(meta_error)?;
            Ok(PdResponse::ClusterStatus { nodes: meta.nodes(now), regions: meta.region_infos() })
        }
        PdRequest::SplitRegion { key } => {
            let (op_id, changes) = ops.split_at(meta, key, now).map_err(manual_error)?;
            store.persist(meta, &changes).map_err(storage_error)?;
            Ok(PdResponse::OperatorStarted { op_id })
        }
        PdRequest::RevokeToken { id, expires_at } => {
            let now_secs = unix_now();
            let mut list: BTreeMap<u64, u64> =
                revoked.iter().filter(|(_, exp)| **exp > now_secs).map(|(i, e)| (*i, *e)).collect();
            list.insert(id, expires_at);
            store.save_revoked(list.iter().map(|(i, e)| (*i, *e)).collect()).map_err(storage_error)?;
            *revoked = list;
            revocations.replace(revoked.keys().copied());
            tracing::info!(token_id = id, "token revoked");
            Ok(PdResponse::Ok)
        }
        PdRequest::MergeRegion { key } => {
            let (op_id, changes) = ops.merge_at(meta, key, now).map_err(manual_error)?;
            store.persist(meta, &changes).map_err(storage_error)?;
            Ok(PdResponse::OperatorStarted { op_id })
        }
        PdRequest::DrainNode { node_id } => {
            let changes = meta.set_draining(node_id, true).map_err(meta_error)?;
            store.persist(meta, &changes).map_err(storage_error)?;
            tracing::info!(node_id = node_id.0, "node draining");
            Ok(PdResponse::Ok)
        }
        PdRequest::RemoveNode { node_id } => {
            let changes = meta.remove_node(node_id).map_err(meta_error)?;
            store.persist(meta, &changes).map_err(storage_error)?;
            tracing::info!(node_id = node_id.0, "node removed");
            Ok(PdResponse::Ok)
        }
        PdRequest::GetOperators => Ok(PdResponse::Operators(ops.infos(now))),
        PdRequest::GetRegion { key } => meta.get_region(&key).map(PdResponse::Region).map_err(meta_error),
        PdRequest::GetRegionById { region_id } => {
            meta.get_region_by_id(region_id).map(PdResponse::Region).map_err(meta_error)
        }
        PdRequest::ScanRegions { start, end, limit } => {
            meta.scan_regions(&start, &end, limit).map(PdResponse::Regions).map_err(meta_error)
        }
        PdRequest::GetNodes => Ok(PdResponse::Nodes(meta.nodes(now))),
        PdRequest::AllocSession => {
            let (session, changes) = meta.alloc_session();
            store.persist(meta, &changes).map_err(storage_error)?;
            Ok(PdResponse::Session(session))
        }
    }
}

impl Service for PdService {
    async fn call(self: Arc<Self>, peer: Arc<PeerInfo>, request: Request) -> Response {
        let Request::Pd(request) = request else {
            return Err(Error::InvalidRequest { reason: "the PD serves only PD requests".into() });
        };
        let role = peer.role;
        // A token-authenticated peer: its token may have expired or been revoked since the
        // connection opened.
        let token = match &peer.grant {
            Some(grant) => {
                grant.check_time(unix_now())?;
                if self.revocations.is_revoked(grant.id) {
                    return Err(Error::Unauthenticated { reason: format!("token {:016x} was revoked", grant.id) });
                }
                true
            }
            None => false,
        };
        let response = if mutates(&request) {
            // Commits fsync: keep them off the async workers.
            tokio::task::spawn_blocking(move || self.handle_blocking_as(role, token, request))
                .await
                .unwrap_or_else(|e| Err(Error::StorageUnavailable { reason: format!("PD request task failed: {e}") }))
        } else {
            self.handle_async(role, token, request).await
        };
        response.map(ResponseBody::Pd)
    }
}

fn mutates(request: &PdRequest) -> bool {
    matches!(
        request,
        PdRequest::RegisterNode { .. }
            | PdRequest::RegionHeartbeat { .. }
            | PdRequest::AllocSession
            | PdRequest::SplitRegion { .. }
            | PdRequest::MergeRegion { .. }
            | PdRequest::DrainNode { .. }
            | PdRequest::RemoveNode { .. }
            | PdRequest::RevokeToken { .. }
    )
}

/// Node-scoped requests only from the node itself; everything else from any authenticated
/// peer (the transport has already checked the role against the certificate). A peer
/// holding a scoped `token` (a web client) may only find regions and nodes and open a
/// session: never administer the cluster or act for a node.
fn authorize(role: Role, token: bool, request: &PdRequest) -> Result<(), Error> {
    if token {
        return match request {
            PdRequest::GetRegion { .. }
            | PdRequest::GetRegionById { .. }
            | PdRequest::ScanRegions { .. }
            | PdRequest::GetNodes
            | PdRequest::AllocSession
            | PdRequest::GetClusterStatus => Ok(()),
            _ => {
                Err(Error::PermissionDenied { reason: "a token grants key-value access, not PD administration".into() })
            }
        };
    }
    let node_id = match request {
        PdRequest::RegisterNode { node_id, .. }
        | PdRequest::NodeHeartbeat { node_id, .. }
        | PdRequest::RegionHeartbeat { node_id, .. } => *node_id,
        // Cluster administration: operators' client certificates (and PD), never nodes.
        PdRequest::SplitRegion { .. }
        | PdRequest::MergeRegion { .. }
        | PdRequest::DrainNode { .. }
        | PdRequest::RemoveNode { .. }
        | PdRequest::RevokeToken { .. } => {
            return match role {
                Role::Client | Role::Pd => Ok(()),
                other => Err(Error::PermissionDenied { reason: format!("{other:?} may not administer the cluster") }),
            }
        }
        _ => return Ok(()),
    };
    match role {
        Role::Node(n) if n == node_id => Ok(()),
        other => {
            tracing::warn!(node_id = node_id.0, role = ?other, "node request from another identity refused");
            Err(Error::PermissionDenied {
                reason: format!("{other:?} may not act for node {}", NodeId::from(node_id.0)),
            })
        }
    }
}

fn validate_addr(addr: &str) -> Result<(), Error> {
    let bad = |reason: &str| Err(Error::InvalidRequest { reason: reason.to_owned() });
    if addr.is_empty() || addr.len() > MAX_ADDR_LEN {
        return bad("node address must be 1..=255 bytes");
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => bad("node address must be host:port"),
    }
}

fn meta_error(e: MetaError) -> Error {
    match e {
        MetaError::NotBootstrapped => Error::NotBootstrapped,
        MetaError::RegionNotFound { region_id } => Error::RegionNotFound { region_id },
        MetaError::NoRegionForKey => Error::ServerBusy { retry_after_ms: GAP_RETRY_MS },
        MetaError::NodeNotRegistered { node_id } => {
            Error::InvalidRequest { reason: format!("node {node_id} is not registered") }
        }
        other => Error::InvalidRequest { reason: other.to_string() },
    }
}

fn manual_error(e: ManualError) -> Error {
    match e {
        ManualError::NotBootstrapped => Error::NotBootstrapped,
        ManualError::Busy(..) | ManualError::NoLeader(..) | ManualError::NoRegion | ManualError::Merging(_) => {
            Error::ServerBusy { retry_after_ms: GAP_RETRY_MS }
        }
        ManualError::AlreadyBoundary(_) | ManualError::NoLeftNeighbour(_) | ManualError::NotMergeable(..) => {
            Error::InvalidRequest { reason: e.to_string() }
        }
    }
}

fn storage_error(e: StoreError) -> Error {
    Error::StorageUnavailable { reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaConfig;
    use tessera_wire::{NodeInfo, NodeStats, RegionId};

    fn service(dir: &std::path::Path) -> PdService {
        let store = Store::open(&dir.join("pd.redb")).unwrap();
        let meta = ClusterMeta::restore(MetaConfig::default(), store.load().unwrap(), Duration::ZERO);
        PdService::new(meta, store, Instant::now(), SchedulerConfig::default(), Revocations::default()).unwrap()
    }

    fn register(svc: &PdService, id: u64) -> Result<PdResponse, Error> {
        svc.handle_blocking(
            Role::Node(NodeId(id)),
            PdRequest::RegisterNode {
                node_id: NodeId(id),
                addr: format!("127.0.0.1:{}", 7000 + id),
                capacity_bytes: 1,
            },
        )
    }

    #[test]
    fn a_token_holder_may_find_regions_but_not_administer() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        register(&svc, 1).unwrap();
        let as_token = |req| svc.handle_blocking_as(Role::Client, true, req);
        assert!(matches!(as_token(PdRequest::GetNodes), Ok(PdResponse::Nodes(_))));
        assert!(matches!(as_token(PdRequest::AllocSession), Ok(PdResponse::Session(_))));
        for req in [
            PdRequest::SplitRegion { key: b"m".to_vec() },
            PdRequest::DrainNode { node_id: NodeId(1) },
            PdRequest::RemoveNode { node_id: NodeId(1) },
            PdRequest::RevokeToken { id: 1, expires_at: u64::MAX },
            PdRequest::RegisterNode { node_id: NodeId(1), addr: "127.0.0.1:1".into(), capacity_bytes: 1 },
        ] {
            assert!(matches!(as_token(req.clone()), Err(Error::PermissionDenied { .. })), "{req:?}");
        }
    }

    #[test]
    fn a_revocation_is_durable_and_reaches_nodes_in_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let revoke = |svc: &PdService, id, expires_at| {
            svc.handle_blocking(Role::Client, PdRequest::RevokeToken { id, expires_at })
        };
        let heartbeat = |svc: &PdService| {
            let hb = PdRequest::NodeHeartbeat {
                node_id: NodeId(1),
                stats: NodeStats::default(),
                hosted: vec![],
                merged: vec![],
            };
            match svc.handle_blocking(Role::Node(NodeId(1)), hb) {
                Ok(PdResponse::NodeHeartbeat { revoked_tokens, .. }) => revoked_tokens,
                other => panic!("{other:?}"),
            }
        };
        {
            let svc = service(dir.path());
            register(&svc, 1).unwrap();
            assert!(matches!(
                svc.handle_blocking(Role::Node(NodeId(1)), PdRequest::RevokeToken { id: 5, expires_at: u64::MAX }),
                Err(Error::PermissionDenied { .. })
            ));
            assert_eq!(revoke(&svc, 9, u64::MAX), Ok(PdResponse::Ok));
            assert_eq!(revoke(&svc, 3, u64::MAX), Ok(PdResponse::Ok));
            // Already expired: the next revocation forgets it.
            assert_eq!(revoke(&svc, 4, 1), Ok(PdResponse::Ok));
            assert_eq!(revoke(&svc, 10, u64::MAX), Ok(PdResponse::Ok));
            assert_eq!(heartbeat(&svc), vec![3, 9, 10]);
        }
        let revocations = Revocations::default();
        let store = Store::open(&dir.path().join("pd.redb")).unwrap();
        let meta = ClusterMeta::restore(MetaConfig::default(), store.load().unwrap(), Duration::ZERO);
        let svc = PdService::new(meta, store, Instant::now(), SchedulerConfig::default(), revocations.clone()).unwrap();
        assert_eq!(heartbeat(&svc), vec![3, 9, 10], "revocations survive a restart");
        assert!(revocations.is_revoked(9) && !revocations.is_revoked(4));
    }

    #[test]
    fn node_requests_need_the_matching_node_role() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let req = PdRequest::RegisterNode { node_id: NodeId(1), addr: "h:1".into(), capacity_bytes: 1 };
        for role in [Role::Client, Role::Pd, Role::Node(NodeId(2))] {
            assert!(matches!(svc.handle_blocking(role, req.clone()), Err(Error::PermissionDenied { .. })), "{role:?}");
        }
        let hb = PdRequest::NodeHeartbeat {
            node_id: NodeId(1),
            stats: NodeStats::default(),
            hosted: vec![],
            merged: vec![],
        };
        assert!(matches!(svc.handle_blocking(Role::Client, hb), Err(Error::PermissionDenied { .. })));
        let rhb = PdRequest::RegionHeartbeat { node_id: NodeId(1), regions: vec![] };
        assert!(matches!(svc.handle_blocking(Role::Node(NodeId(3)), rhb), Err(Error::PermissionDenied { .. })));
        assert_eq!(svc.handle_blocking(Role::Node(NodeId(1)), req), Ok(PdResponse::Ok));
    }

    #[test]
    fn lookups_before_bootstrap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        register(&svc, 1).unwrap();
        assert_eq!(
            svc.handle_blocking(Role::Client, PdRequest::GetRegion { key: b"a".to_vec() }),
            Err(Error::NotBootstrapped)
        );
        assert_eq!(
            svc.handle_blocking(Role::Client, PdRequest::ScanRegions { start: vec![], end: vec![], limit: 0 }),
            Err(Error::NotBootstrapped)
        );
        // Node listing and session allocation work before bootstrap.
        assert!(
            matches!(svc.handle_blocking(Role::Client, PdRequest::GetNodes), Ok(PdResponse::Nodes(n)) if n.len() == 1)
        );
        assert!(matches!(svc.handle_blocking(Role::Client, PdRequest::AllocSession), Ok(PdResponse::Session(_))));
    }

    #[test]
    fn bootstrap_then_lookups_and_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        for id in 1..=3 {
            register(&svc, id).unwrap();
        }
        let Ok(PdResponse::Region(route)) =
            svc.handle_blocking(Role::Client, PdRequest::GetRegion { key: b"k".to_vec() })
        else {
            panic!("no region after bootstrap");
        };
        assert_eq!(route.peer_addrs.len(), 3);
        assert_eq!(
            svc.handle_blocking(Role::Client, PdRequest::GetRegionById { region_id: RegionId(999) }),
            Err(Error::RegionNotFound { region_id: RegionId(999) })
        );
        let stats = NodeStats { region_count: 0, leader_count: 0, used_bytes: 4096, ..NodeStats::default() };
        let hb = PdRequest::NodeHeartbeat { node_id: NodeId(2), stats, hosted: vec![], merged: vec![] };
        let Ok(PdResponse::NodeHeartbeat { create, nodes, .. }) = svc.handle_blocking(Role::Node(NodeId(2)), hb) else {
            panic!("heartbeat failed");
        };
        assert_eq!(create, vec![route.region]);
        assert_eq!(nodes.len(), 3);
        // The heartbeat answer and the node listing both carry the reported bytes.
        let used = |nodes: &[NodeInfo]| nodes.iter().map(|n| (n.id, n.used_bytes)).collect::<Vec<_>>();
        let expected = vec![(NodeId(1), 0), (NodeId(2), 4096), (NodeId(3), 0)];
        assert_eq!(used(&nodes), expected);
        let Ok(PdResponse::Nodes(listed)) = svc.handle_blocking(Role::Client, PdRequest::GetNodes) else {
            panic!("node listing failed");
        };
        assert_eq!(used(&listed), expected);
    }

    #[test]
    fn bad_requests_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        for addr in ["", "nohostport", ":1", "h:notaport"] {
            let req = PdRequest::RegisterNode { node_id: NodeId(1), addr: addr.into(), capacity_bytes: 1 };
            assert!(
                matches!(svc.handle_blocking(Role::Node(NodeId(1)), req), Err(Error::InvalidRequest { .. })),
                "{addr}"
            );
        }
        let hb = PdRequest::NodeHeartbeat {
            node_id: NodeId(5),
            stats: NodeStats::default(),
            hosted: vec![],
            merged: vec![],
        };
        assert!(matches!(svc.handle_blocking(Role::Node(NodeId(5)), hb), Err(Error::InvalidRequest { .. })));
    }

    #[tokio::test]
    async fn non_pd_requests_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let svc = Arc::new(service(dir.path()));
        let peer = Arc::new(PeerInfo { role: Role::Client, remote: "127.0.0.1:1".parse().unwrap(), grant: None });
        let raft = Request::Raft(tessera_wire::RaftRequest {
            region_id: RegionId(1),
            to_peer: tessera_wire::PeerId(1),
            kind: tessera_wire::RaftRpcKind::Vote,
            payload: vec![],
        });
        assert!(matches!(svc.clone().call(peer.clone(), raft).await, Err(Error::InvalidRequest { .. })));
        let session = svc.call(peer, Request::Pd(PdRequest::AllocSession)).await;
        assert!(matches!(session, Ok(ResponseBody::Pd(PdResponse::Session(_)))));
    }

    #[test]
    fn storage_failure_fail_stops_every_request() {
        let (store, fail) = crate::store::testing::failing_store();
        let svc = PdService::new(
            ClusterMeta::new(MetaConfig::default()),
            store,
            Instant::now(),
            SchedulerConfig::default(),
            Revocations::default(),
        )
        .unwrap();
        register(&svc, 1).unwrap();
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(register(&svc, 2), Err(Error::StorageUnavailable { .. })));
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        for req in [PdRequest::GetNodes, PdRequest::AllocSession, PdRequest::GetRegion { key: vec![] }] {
            assert!(matches!(svc.handle_blocking(Role::Client, req), Err(Error::StorageUnavailable { .. })));
        }
        assert!(matches!(register(&svc, 3), Err(Error::StorageUnavailable { .. })));
    }

    #[test]
    fn panic_while_holding_state_fail_stops() {
        let (store, _) = crate::store::testing::failing_store();
        let svc = PdService::new(
            ClusterMeta::new(MetaConfig::default()),
            store,
            Instant::now(),
            SchedulerConfig::default(),
            Revocations::default(),
        )
        .unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut state = svc.state.blocking_lock();
            let _guard = PoisonOnPanic(&mut state);
            panic!("handler bug");
        }));
        assert!(caught.is_err());
        assert!(matches!(
            svc.handle_blocking(Role::Client, PdRequest::GetNodes),
            Err(Error::StorageUnavailable { .. })
        ));
    }

    #[test]
    fn sessions_survive_restart_without_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let svc = service(dir.path());
            let Ok(PdResponse::Session(s)) = svc.handle_blocking(Role::Client, PdRequest::AllocSession) else {
                panic!()
            };
            s
        };
        let svc = service(dir.path());
        let Ok(PdResponse::Session(second)) = svc.handle_blocking(Role::Client, PdRequest::AllocSession) else {
            panic!()
        };
        assert!(second > first);
    }
}
