//! PD over the real transport: loopback QUIC, mutual TLS with dev certificates.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tessera_certs::{client_tls_config, ensure_dev_certs, TlsFiles, DEV_CLIENT};
use tessera_pd::{PdConfig, PdServer};
use tessera_wire::quic::{ClientEndpoint, Connection, TransportConfig, TransportError};
use tessera_wire::{Error, NodeId, NodeState, NodeStats, PdRequest, PdResponse, RegionId, Request, ResponseBody, Role};

const TIMEOUT: Duration = Duration::from_secs(10);
const NODES: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

struct Cluster {
    _dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    data: std::path::PathBuf,
    pd: Option<PdServer>,
    addr: String,
}

impl Cluster {
    async fn start(initial_regions: u32) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        ensure_dev_certs(&certs, &NODES).unwrap();
        let data = dir.path().join("pd");
        let pd = start_pd(&certs, &data, initial_regions).await;
        let addr = pd.local_addr().to_string();
        Cluster { _dir: dir, certs, data, pd: Some(pd), addr }
    }

    async fn restart(&mut self, initial_regions: u32) {
        self.pd.take().unwrap().shutdown().await;
        let pd = start_pd(&self.certs, &self.data, initial_regions).await;
        self.addr = pd.local_addr().to_string();
        self.pd = Some(pd);
    }

    async fn connect(&self, files: TlsFiles, role: Role) -> Result<Connection, TransportError> {
        let tls = client_tls_config(&files).unwrap();
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let endpoint = ClientEndpoint::new(bind, tls, role, TransportConfig::default()).unwrap();
        endpoint.connect(&self.addr).await
    }

    async fn node(&self, id: NodeId) -> Connection {
        self.connect(TlsFiles::node(&self.certs, id), Role::Node(id)).await.unwrap()
    }

    async fn client(&self) -> Connection {
        self.connect(TlsFiles::client(&self.certs, DEV_CLIENT), Role::Client).await.unwrap()
    }

    async fn shutdown(mut self) {
        self.pd.take().unwrap().shutdown().await;
    }
}

async fn start_pd(certs: &Path, data: &Path, initial_regions: u32) -> PdServer {
    let mut cfg = PdConfig::new("127.0.0.1:0".parse().unwrap(), data, TlsFiles::pd(certs));
    cfg.initial_regions = initial_regions;
    PdServer::start(cfg).await.unwrap()
}

async fn pd(conn: &Connection, req: PdRequest) -> Result<PdResponse, Error> {
    match conn.call(Request::Pd(req), TIMEOUT).await.unwrap() {
        Ok(ResponseBody::Pd(resp)) => Ok(resp),
        Ok(other) => panic!("non-PD response {other:?}"),
        Err(e) => Err(e),
    }
}

async fn register(conn: &Connection, id: NodeId) -> Result<PdResponse, Error> {
    let req =
        PdRequest::RegisterNode { node_id: id, addr: format!("127.0.0.1:{}", 7000 + id.0), capacity_bytes: 1 << 30 };
    pd(conn, req).await
}

#[tokio::test]
async fn three_nodes_bootstrap_and_regions_are_routable() {
    let cluster = Cluster::start(4).await;
    let client = cluster.client().await;
    let mut nodes = Vec::new();
    for id in NODES {
        nodes.push((id, cluster.node(id).await));
    }

    for (id, conn) in &nodes[..2] {
        assert_eq!(register(conn, *id).await, Ok(PdResponse::Ok));
    }
    assert_eq!(pd(&client, PdRequest::GetRegion { key: b"k".to_vec() }).await, Err(Error::NotBootstrapped));
    let (id, conn) = &nodes[2];
    assert_eq!(register(conn, *id).await, Ok(PdResponse::Ok));

    // Every node is told to create all four regions, and sees all three nodes.
    let mut all_regions = Vec::new();
    for (id, conn) in &nodes {
        let hb = PdRequest::NodeHeartbeat { node_id: *id, stats: NodeStats::default(), hosted: vec![], merged: vec![] };
        let Ok(PdResponse::NodeHeartbeat { create, nodes: infos, .. }) = pd(conn, hb).await else {
            panic!("heartbeat of {id} failed");
        };
        assert_eq!(create.len(), 4, "{id}");
        assert!(create.iter().all(|r| r.peer_on(*id).is_some()));
        assert_eq!(infos.len(), 3);
        assert!(infos.iter().all(|n| n.state == NodeState::Up));
        all_regions = create;
    }
    let hosted: Vec<RegionId> = all_regions.iter().map(|r| r.id).collect();
    let hb = PdRequest::NodeHeartbeat { node_id: NODES[0], stats: NodeStats::default(), hosted, merged: vec![] };
    assert!(matches!(pd(&nodes[0].1, hb).await, Ok(PdResponse::NodeHeartbeat { create, .. }) if create.is_empty()));

    let Ok(PdResponse::Region(route)) = pd(&client, PdRequest::GetRegion { key: vec![0x90, 7] }).await else {
        panic!("GetRegion failed");
    };
    assert_eq!((route.region.start_key.clone(), route.region.end_key.clone()), (vec![128], vec![192]));
    assert_eq!(route.leader, None);
    let expected: Vec<String> =
        route.region.peers.iter().map(|p| format!("127.0.0.1:{}", 7000 + p.node_id.0)).collect();
    assert_eq!(route.peer_addrs, expected);

    // The leader reports; the route then names it.
    let leader = route.region.peer_on(NodeId(2)).unwrap();
    let stats = tessera_wire::RegionStats::new(route.region.clone(), leader, 3);
    let rhb = PdRequest::RegionHeartbeat { node_id: NodeId(2), regions: vec![stats] };
    assert!(matches!(pd(&nodes[1].1, rhb).await, Ok(PdResponse::RegionCommands(_))));
    let Ok(PdResponse::Region(by_id)) = pd(&client, PdRequest::GetRegionById { region_id: route.region.id }).await
    else {
        panic!("GetRegionById failed");
    };
    assert_eq!(by_id.leader, Some(leader));

    assert_eq!(
        pd(&client, PdRequest::GetRegionById { region_id: RegionId(9999) }).await,
        Err(Error::RegionNotFound { region_id: RegionId(9999) })
    );
    let Ok(PdResponse::Regions(all)) =
        pd(&client, PdRequest::ScanRegions { start: vec![], end: vec![], limit: 0 }).await
    else {
        panic!("ScanRegions failed");
    };
    assert_eq!(all.len(), 4);
    assert!(matches!(pd(&client, PdRequest::GetNodes).await, Ok(PdResponse::Nodes(n)) if n.len() == 3));
    let Ok(PdResponse::Session(s1)) = pd(&client, PdRequest::AllocSession).await else { panic!() };
    let Ok(PdResponse::Session(s2)) = pd(&client, PdRequest::AllocSession).await else { panic!() };
    assert!(s2 > s1);

    cluster.shutdown().await;
}

#[tokio::test]
async fn node_requests_from_other_identities_are_refused() {
    let cluster = Cluster::start(1).await;

    // A client certificate claiming to be node 1 is refused at the handshake.
    let err = cluster.connect(TlsFiles::client(&cluster.certs, DEV_CLIENT), Role::Node(NodeId(1))).await.unwrap_err();
    assert!(matches!(err, TransportError::Refused(Error::PermissionDenied { .. })), "{err}");

    // An honest client may not register a node.
    let client = cluster.client().await;
    assert!(matches!(register(&client, NodeId(1)).await, Err(Error::PermissionDenied { .. })));

    // Node 2 may not register, or heartbeat for, node 1.
    let node2 = cluster.node(NodeId(2)).await;
    assert!(matches!(register(&node2, NodeId(1)).await, Err(Error::PermissionDenied { .. })));
    let hb =
        PdRequest::NodeHeartbeat { node_id: NodeId(1), stats: NodeStats::default(), hosted: vec![], merged: vec![] };
    assert!(matches!(pd(&node2, hb).await, Err(Error::PermissionDenied { .. })));
    assert_eq!(register(&node2, NodeId(2)).await, Ok(PdResponse::Ok));

    // Non-PD requests are invalid here.
    let raft = Request::Raft(tessera_wire::RaftRequest {
        region_id: RegionId(1),
        to_peer: tessera_wire::PeerId(1),
        kind: tessera_wire::RaftRpcKind::Vote,
        payload: vec![],
    });
    assert!(matches!(node2.call(raft, TIMEOUT).await.unwrap(), Err(Error::InvalidRequest { .. })));

    cluster.shutdown().await;
}

#[tokio::test]
async fn restart_recovers_regions_and_never_reuses_sessions() {
    let mut cluster = Cluster::start(2).await;
    for id in NODES {
        assert_eq!(register(&cluster.node(id).await, id).await, Ok(PdResponse::Ok));
    }
    let client = cluster.client().await;
    let Ok(PdResponse::Regions(before)) =
        pd(&client, PdRequest::ScanRegions { start: vec![], end: vec![], limit: 0 }).await
    else {
        panic!("ScanRegions failed");
    };
    let Ok(PdResponse::Session(s1)) = pd(&client, PdRequest::AllocSession).await else { panic!() };

    // `initial_regions` differs on restart: the persisted bootstrap wins.
    cluster.restart(8).await;
    let client = cluster.client().await;
    let Ok(PdResponse::Regions(after)) =
        pd(&client, PdRequest::ScanRegions { start: vec![], end: vec![], limit: 0 }).await
    else {
        panic!("ScanRegions after restart failed");
    };
    assert_eq!(after, before);
    let Ok(PdResponse::Session(s2)) = pd(&client, PdRequest::AllocSession).await else { panic!() };
    assert!(s2 > s1);
    assert!(matches!(pd(&client, PdRequest::GetNodes).await, Ok(PdResponse::Nodes(n)) if n.len() == 3));

    cluster.shutdown().await;
}
