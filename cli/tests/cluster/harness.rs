//! A real cluster on loopback for tests: one PD and N nodes in this process, QUIC with
//! mutual TLS, ports from the OS, certificates generated into a temporary directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tessera::{Client, ClientConfig, RegionRoute, TlsFiles};
use tessera_node::{Node, NodeConfig, RaftTiming};
use tessera_pd::{PdConfig, PdServer};
use tessera_wire::NodeId;

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub pd: Option<PdServer>,
    pub pd_addr: SocketAddr,
    pub nodes: BTreeMap<u64, Option<Node>>,
    pub node_addrs: BTreeMap<u64, SocketAddr>,
    pub initial_regions: u32,
    /// Adjusts every node's configuration (e.g. snapshot thresholds).
    pub tweak: fn(&mut NodeConfig),
}

impl TestCluster {
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn client_tls(&self) -> TlsFiles {
        TlsFiles::client(&self.certs(), "dev")
    }

    fn node_config(&self, id: u64, listen: SocketAddr) -> NodeConfig {
        let mut cfg = NodeConfig::new(
            NodeId(id),
            listen,
            self.dir.path().join(format!("node-{id}")),
            vec![self.pd_addr.to_string()],
            TlsFiles::node(&self.certs(), NodeId(id)),
        );
        cfg.raft =
            RaftTiming { heartbeat_ms: 100, election_min_ms: 500, election_max_ms: 1000, ..RaftTiming::default() };
        cfg.heartbeat_interval = Duration::from_millis(100);
        (self.tweak)(&mut cfg);
        cfg
    }

    /// Starts PD and `nodes` nodes, and waits until every region has a leader.
    pub async fn start(nodes: u64, initial_regions: u32) -> TestCluster {
        Self::start_with(nodes, initial_regions, |_| {}).await
    }

    /// Like [`TestCluster::start`], with `tweak` applied to every node's configuration.
    pub async fn start_with(nodes: u64, initial_regions: u32, tweak: fn(&mut NodeConfig)) -> TestCluster {
        // Logs when asked for with RUST_LOG (e.g. RUST_LOG=tessera=debug).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let ids: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
        tessera_certs::ensure_dev_certs(&certs, &ids).expect("certs");
        let mut pd_cfg = PdConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("pd"), TlsFiles::pd(&certs));
        pd_cfg.initial_regions = initial_regions;
        let pd = PdServer::start(pd_cfg).await.expect("start PD");
        let pd_addr = pd.local_addr();
        let mut c = TestCluster {
            dir,
            pd: Some(pd),
            pd_addr,
            nodes: BTreeMap::new(),
            node_addrs: BTreeMap::new(),
            initial_regions,
            tweak,
        };
        for id in 1..=nodes {
            let node = Node::start(c.node_config(id, "127.0.0.1:0".parse().unwrap())).await.expect("start node");
            c.node_addrs.insert(id, node.local_addr());
            c.nodes.insert(id, Some(node));
        }
        c.wait_all_leaders(Duration::from_secs(30)).await;
        c
    }

    pub async fn client(&self) -> Client {
        let mut cfg = ClientConfig::new(vec![self.pd_addr.to_string()], Some(self.client_tls()));
        cfg.request_timeout = Duration::from_secs(20);
        Client::connect(cfg).await.expect("client connect")
    }

    /// Waits until PD reports `initial_regions` regions, each with a leader on a running
    /// node that agrees it is the leader.
    pub async fn wait_all_leaders(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let running: usize = self.nodes.values().flatten().map(|n| n.leader_count()).sum();
            let hosted = self.nodes.values().flatten().map(|n| n.region_count()).max().unwrap_or(0);
            if hosted >= self.initial_regions as usize && running >= hosted {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "regions did not all get a leader within {timeout:?} ({running}/{hosted})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn routes(&self) -> Vec<RegionRoute> {
        self.client().await.regions().await.expect("regions")
    }

    /// Stops node `id` (its data stays on disk).
    pub async fn stop_node(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id).and_then(Option::take) {
            node.shutdown().await;
        }
    }

    /// Starts node `id` again on its previous address.
    pub async fn restart_node(&mut self, id: u64) {
        self.stop_node(id).await;
        let addr = self.node_addrs[&id];
        let mut last = None;
        // The old socket is closed, but the OS may take a moment to release the port.
        for _ in 0..50 {
            match Node::start(self.node_config(id, addr)).await {
                Ok(node) => {
                    self.nodes.insert(id, Some(node));
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {id} did not restart: {last:?}");
    }

    /// Stops every node and PD, then starts them all again from their directories.
    pub async fn restart_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.stop_node(*id).await;
        }
        if let Some(pd) = self.pd.take() {
            pd.shutdown().await;
        }
        let mut pd_cfg = PdConfig::new(self.pd_addr, self.dir.path().join("pd"), TlsFiles::pd(&self.certs()));
        pd_cfg.initial_regions = self.initial_regions;
        let mut pd = None;
        for _ in 0..50 {
            match PdServer::start(pd_cfg.clone()).await {
                Ok(p) => {
                    pd = Some(p);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.pd = Some(pd.expect("PD restarts"));
        for id in ids {
            self.restart_node(id).await;
        }
        self.wait_all_leaders(Duration::from_secs(30)).await;
    }

    /// The node currently leading the region that contains `key`, as PD reports it after
    /// the leader's heartbeat.
    pub async fn leader_node_of(&self, key: &[u8]) -> u64 {
        let start = Instant::now();
        loop {
            for r in self.routes().await {
                if r.region.contains(key) {
                    if let Some(l) = r.leader {
                        if self.nodes.get(&l.node_id.0).is_some_and(|n| n.is_some()) {
                            return l.node_id.0;
                        }
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no leader for key");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The route of the region containing `key`, once PD knows a leader on a running node.
    pub async fn route_with_leader(&self, key: &[u8]) -> RegionRoute {
        let start = Instant::now();
        loop {
            for r in self.routes().await {
                if r.region.contains(key)
                    && r.leader.is_some_and(|l| self.nodes.get(&l.node_id.0).is_some_and(|n| n.is_some()))
                {
                    return r;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no leader reported for key");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
        if let Some(pd) = self.pd.take() {
            pd.shutdown().await;
        }
    }
}

/// Keys spread over the key space so that they land in different regions when the
/// cluster has several (region split points are spread over the first byte).
pub fn spread_key(i: usize, n: usize) -> Vec<u8> {
    let first = ((i * 256) / n.max(1)) as u8;
    let mut k = vec![first.max(1)];
    k.extend_from_slice(format!("key-{i:05}").as_bytes());
    k
}
