//! A real cluster on loopback for tests: one PD and N nodes in this process, QUIC with
//! mutual TLS, random ports below the ephemeral range (`ports.rs`: a restarted server
//! comes back on its port), certificates generated into a temporary directory.

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
    /// Adjusts PD's configuration (e.g. split thresholds).
    pub pd_tweak: fn(&mut PdConfig),
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
        // Off: a test process runs several nodes beside other test processes on few cores,
        // where spinning pollers would keep the CPUs from going idle, which cost throughput
        // under load (docs/life-of-a-write.md, "Idle polling"). Its own test turns it on.
        cfg.idle_poll = Duration::ZERO;
        (self.tweak)(&mut cfg);
        cfg
    }

    /// Starts PD and `nodes` nodes, and waits until every region has a leader.
    pub async fn start(nodes: u64, initial_regions: u32) -> TestCluster {
        Self::start_with(nodes, initial_regions, |_| {}).await
    }

    /// Like [`TestCluster::start`], with `tweak` applied to every node's configuration.
    pub async fn start_with(nodes: u64, initial_regions: u32, tweak: fn(&mut NodeConfig)) -> TestCluster {
        let c = Self::start_unready(nodes, initial_regions, tweak).await;
        c.wait_all_leaders(Duration::from_secs(30)).await;
        c
    }

    /// Starts PD (adjusted by `pd_tweak`) and `nodes` nodes, and waits until every region
    /// has a leader.
    pub async fn start_placed(nodes: u64, initial_regions: u32, pd_tweak: fn(&mut PdConfig)) -> TestCluster {
        let c = Self::start_full(nodes, initial_regions, |_| {}, pd_tweak).await;
        c.wait_all_leaders(Duration::from_secs(30)).await;
        c
    }

    /// Starts PD and `nodes` nodes, all also listening for WebSocket (web clients with
    /// tokens), and waits until every region has a leader.
    pub async fn start_web(nodes: u64, initial_regions: u32) -> TestCluster {
        let c = Self::start_full(nodes, initial_regions, |n| n.websocket = true, |p| p.websocket = true).await;
        c.wait_all_leaders(Duration::from_secs(30)).await;
        c
    }

    /// Like [`TestCluster::start_web`], with an operator's certificate for web clients
    /// (`wss://`, and WebTransport without pinning): `certs/node-99.pem`, valid for
    /// 127.0.0.1 and signed by the cluster CA.
    pub async fn start_web_tls(nodes: u64, initial_regions: u32) -> TestCluster {
        fn operator_cert(tls_ca: &std::path::Path) -> (PathBuf, PathBuf) {
            let dir = tls_ca.parent().unwrap();
            let files = TlsFiles::node(dir, NodeId(99));
            if !files.cert.exists() {
                tessera_certs::issue_node(dir, NodeId(99), &["127.0.0.1".into()]).unwrap();
            }
            (files.cert, files.key)
        }
        let c = Self::start_full(
            nodes,
            initial_regions,
            |n| {
                n.websocket = true;
                n.web_cert = Some(operator_cert(&n.tls.ca));
            },
            |p| {
                p.websocket = true;
                p.web_cert = Some(operator_cert(&p.tls.ca));
            },
        )
        .await;
        c.wait_all_leaders(Duration::from_secs(30)).await;
        c
    }

    /// Starts PD and the nodes without waiting for the regions to get leaders.
    pub async fn start_unready(nodes: u64, initial_regions: u32, tweak: fn(&mut NodeConfig)) -> TestCluster {
        Self::start_full(nodes, initial_regions, tweak, |_| {}).await
    }

    async fn start_full(
        nodes: u64,
        initial_regions: u32,
        tweak: fn(&mut NodeConfig),
        pd_tweak: fn(&mut PdConfig),
    ) -> TestCluster {
        Self::start_prepared(nodes, initial_regions, tweak, pd_tweak, |_, _| {}).await
    }

    /// Starts PD (configured by `pd_tweak`) and `nodes` nodes, calling `prepare` with each
    /// node's id and data directory (created, empty) before the node first starts (e.g. to
    /// mount a small filesystem there), and waits until every region has a leader.
    pub async fn start_on(
        nodes: u64,
        initial_regions: u32,
        pd_tweak: fn(&mut PdConfig),
        prepare: impl Fn(u64, &std::path::Path),
    ) -> TestCluster {
        let c = Self::start_prepared(nodes, initial_regions, |_| {}, pd_tweak, prepare).await;
        c.wait_all_leaders(Duration::from_secs(30)).await;
        c
    }

    async fn start_prepared(
        nodes: u64,
        initial_regions: u32,
        tweak: fn(&mut NodeConfig),
        pd_tweak: fn(&mut PdConfig),
        prepare: impl Fn(u64, &std::path::Path),
    ) -> TestCluster {
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
        let mut pd_cfg = PdConfig::new(restartable_addr(), dir.path().join("pd"), TlsFiles::pd(&certs));
        pd_cfg.initial_regions = initial_regions;
        pd_tweak(&mut pd_cfg);
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
            pd_tweak,
        };
        for id in 1..=nodes {
            let cfg = c.node_config(id, restartable_addr());
            std::fs::create_dir_all(&cfg.data_dir).expect("node directory");
            prepare(id, &cfg.data_dir);
            let node = Node::start(cfg).await.expect("start node");
            c.node_addrs.insert(id, node.local_addr());
            c.nodes.insert(id, Some(node));
        }
        c
    }

    pub async fn client(&self) -> Client {
        let mut cfg = ClientConfig::new(vec![self.pd_addr.to_string()], Some(self.client_tls()));
        cfg.request_timeout = Duration::from_secs(20);
        Client::connect(cfg).await.expect("client connect")
    }

    /// Waits until every running node hosts `initial_regions` regions and each of them has
    /// a leader among the running nodes.
    pub async fn wait_all_leaders(&self, timeout: Duration) {
        self.wait_for_nodes(timeout, "every region to have a leader", |c| {
            let leaders: usize = c.nodes.values().flatten().map(|n| n.leader_count()).sum();
            let hosted = c.nodes.values().flatten().map(|n| n.region_count()).max().unwrap_or(0);
            hosted >= c.initial_regions as usize && leaders >= hosted
        })
        .await
    }

    /// Waits, without polling, until `ready` holds: it is checked again each time a running
    /// node reports a change (a leader, an applied index, an installed snapshot).
    pub async fn wait_for_nodes(&self, timeout: Duration, what: &str, ready: impl Fn(&Self) -> bool) {
        let mut subscriptions: Vec<_> = self.nodes.values().flatten().map(|n| n.subscribe()).collect();
        let wait = async {
            while !ready(self) {
                let changes = subscriptions.iter_mut().map(|rx| Box::pin(rx.changed()));
                let (result, _, _) = futures::future::select_all(changes).await;
                result.expect("a node stopped while being waited on");
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"));
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
        let cfg = self.node_config(id, self.node_addrs[&id]);
        let node = start_on_same_port(&format!("node {id}"), || Node::start(cfg.clone())).await;
        self.nodes.insert(id, Some(node));
    }

    /// Starts a new node `id` (with a fresh certificate) that joins the running cluster.
    pub async fn add_node(&mut self, id: u64) {
        tessera_certs::ensure_dev_certs(&self.certs(), &[NodeId(id)]).expect("certs for the new node");
        let node = Node::start(self.node_config(id, restartable_addr())).await.expect("start node");
        self.node_addrs.insert(id, node.local_addr());
        self.nodes.insert(id, Some(node));
    }

    /// Polls PD's view of the cluster until `done` holds for it (PD offers no change
    /// notifications), panicking with the last view after `timeout`.
    pub async fn wait_for_pd(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[tessera_wire::NodeInfo], &[tessera_wire::RegionInfo]) -> bool,
    ) -> (Vec<tessera_wire::NodeInfo>, Vec<tessera_wire::RegionInfo>) {
        let client = self.client().await;
        let start = Instant::now();
        loop {
            let view = client.cluster_status().await.expect("cluster status");
            if done(&view.0, &view.1) {
                return view;
            }
            if start.elapsed() > timeout {
                let regions: Vec<String> = view
                    .1
                    .iter()
                    .map(|r| {
                        let peers: Vec<String> =
                            r.region.peers.iter().map(|p| format!("{}@{}", p.id.0, p.node_id.0)).collect();
                        format!(
                            "{} {:?} peers {:?} learners {} leader {:?}",
                            r.region.id,
                            r.region.epoch,
                            peers,
                            r.learners.len(),
                            r.leader.map(|l| l.node_id.0)
                        )
                    })
                    .collect();
                panic!("timed out after {timeout:?} waiting for {what}; regions:\n{}", regions.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every node and PD, then starts them all again from their directories.
    pub async fn restart_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        self.stop_all_nodes().await;
        if let Some(pd) = self.pd.take() {
            pd.shutdown().await;
        }
        let mut pd_cfg = PdConfig::new(self.pd_addr, self.dir.path().join("pd"), TlsFiles::pd(&self.certs()));
        pd_cfg.initial_regions = self.initial_regions;
        (self.pd_tweak)(&mut pd_cfg);
        self.pd = Some(start_on_same_port("PD", || PdServer::start(pd_cfg.clone())).await);
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

    /// Stops every running node, concurrently (data stays on disk).
    async fn stop_all_nodes(&mut self) {
        let nodes: Vec<Node> = self.nodes.values_mut().filter_map(Option::take).collect();
        futures::future::join_all(nodes.into_iter().map(Node::shutdown)).await;
    }

    pub async fn shutdown(mut self) {
        self.stop_all_nodes().await;
        if let Some(pd) = self.pd.take() {
            pd.shutdown().await;
        }
    }
}

/// An address for a server that may be restarted on it (see [`crate::ports::restartable_port`]).
fn restartable_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::ports::restartable_port()))
}

/// Starts a server on the address its stopped predecessor used. Shutdown is synchronous
/// (the socket and the database are released before it returns), and the port is outside
/// the range other tests' sockets draw from ([`restartable_addr`]), so one attempt must do.
async fn start_on_same_port<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    start: impl Fn() -> F,
) -> T {
    match start().await {
        Ok(server) => server,
        Err(e) => panic!("{what} did not restart on its port: {e:?}"),
    }
}

/// PD tweak for [`TestCluster::start_placed`]: no merges but those a test asks for.
pub fn no_merges(pd: &mut PdConfig) {
    pd.scheduler.merge_bytes = 0;
    pd.scheduler.merge_keys = 0;
}

/// Polls PD until operator `id` is no longer running (at most 60 s) and returns its state.
pub async fn wait_operator(client: &tessera::Client, id: u64) -> tessera_wire::OperatorState {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ops = client.operators().await.unwrap();
        let op = ops.iter().find(|o| o.id == id).unwrap_or_else(|| panic!("operator {id} unknown: {ops:?}"));
        if op.state != tessera_wire::OperatorState::Running {
            return op.state.clone();
        }
        assert!(std::time::Instant::now() < deadline, "operator {id} still running: {ops:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
