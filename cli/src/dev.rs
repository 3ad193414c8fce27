//! `tessera dev`: PD and N nodes in one process on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tessera::{Client, ClientConfig};
use tessera_certs::TlsFiles;
use tessera_node::{Node, NodeConfig};
use tessera_pd::{PdConfig, PdServer};
use tessera_wire::NodeId;

use crate::layout::DevLayout;

/// Options of `tessera dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Number of storage nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub nodes: u64,
    /// Regions created at bootstrap, their split points spread over the key space.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub initial_regions: u32,
    /// Placement policy: when regions split and merge, how evenly replicas spread.
    #[command(flatten)]
    pub placement: crate::placement::PlacementArgs,
    /// Also serve a web page (on loopback, printed at start) showing nodes and regions live,
    /// with a key browser; it uses the JavaScript SDK, which must be built
    /// (`cd sdk-wasm && npm ci && npm run build`).
    #[arg(long)]
    pub web: bool,
    /// Port of the web page (default: the previous run's, else one chosen by the OS).
    #[arg(long, requires = "web")]
    pub web_port: Option<u16>,
    /// The JavaScript SDK directory the page is served from (default: sdk-wasm/ of the
    /// source tree).
    #[arg(long, requires = "web")]
    pub web_root: Option<std::path::PathBuf>,
}

impl DevArgs {
    /// `n` nodes and `initial_regions` regions with the default placement policy.
    pub fn new(nodes: u64, initial_regions: u32) -> DevArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            placement: crate::placement::PlacementArgs,
        }
        DevArgs {
            nodes,
            initial_regions,
            placement: Defaults::parse_from(["tessera"]).placement,
            web: false,
            web_port: None,
            web_root: None,
        }
    }
}

fn listen_addr(recorded: Option<&String>) -> anyhow::Result<SocketAddr> {
    match recorded {
        Some(a) => a.parse().with_context(|| format!("bad recorded address {a}")),
        None => Ok(SocketAddr::from(([127, 0, 0, 1], 0))),
    }
}

/// A running dev cluster.
pub struct DevCluster {
    pub pd: PdServer,
    pub nodes: Vec<Node>,
    pub pd_addr: String,
    /// Certificate directory.
    pub certs: std::path::PathBuf,
}

/// Starts the dev cluster described by `args` in `data`.
pub async fn start(data: &Path, args: &DevArgs) -> anyhow::Result<DevCluster> {
    let layout = DevLayout::new(data);
    std::fs::create_dir_all(&layout.root).with_context(|| format!("creating {}", layout.root.display()))?;
    let ids: Vec<NodeId> = (1..=args.nodes).map(NodeId).collect();
    let fresh = !layout.certs().join("ca.pem").exists();
    tessera_certs::ensure_dev_certs(&layout.certs(), &ids).context("generating certificates")?;
    if fresh {
        println!("generated a cluster CA and certificates in {}", layout.certs().display());
    }
    let mut addrs = layout.read_addrs()?;
    let mut pd_cfg = PdConfig::new(listen_addr(addrs.get("pd"))?, layout.pd(), TlsFiles::pd(&layout.certs()));
    pd_cfg.initial_regions = args.initial_regions;
    pd_cfg.replicas = (args.nodes as usize).min(3);
    pd_cfg.scheduler = args.placement.scheduler(pd_cfg.replicas);
    pd_cfg.websocket = true;
    pd_cfg.webtransport = true;
    let pd =
        PdServer::start(pd_cfg).await.context("starting PD (is another `tessera dev` using this data directory?)")?;
    let pd_addr = pd.local_addr().to_string();
    addrs.insert("pd".into(), pd_addr.clone());
    let mut nodes = Vec::new();
    for id in &ids {
        let key = format!("node.{}", id.0);
        let cfg = NodeConfig::new(
            *id,
            listen_addr(addrs.get(&key))?,
            layout.node(id.0),
            vec![pd_addr.clone()],
            TlsFiles::node(&layout.certs(), *id),
        );
        let mut cfg = cfg;
        cfg.websocket = true;
        cfg.webtransport = true;
        let node = Node::start(cfg).await.with_context(|| format!("starting node {}", id.0))?;
        addrs.insert(key, node.local_addr().to_string());
        nodes.push(node);
    }
    layout.write_addrs(&addrs)?;
    write_web_config(&layout, &pd_addr, pd.web_cert_hash())?;
    Ok(DevCluster { pd, nodes, pd_addr, certs: layout.certs() })
}

/// Lifetime of the dev token in `web.json`; a new one is written at every start.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Writes `DATA/web.json`: what a web client (the JS SDK) needs to connect: PD's WebSocket
/// URL and a token for every key. The same object works in Node.js and in a browser.
fn write_web_config(layout: &DevLayout, pd_addr: &str, pd_cert_hash: Option<[u8; 32]>) -> anyhow::Result<()> {
    let spec = tessera_certs::TokenSpec {
        prefix: Vec::new(),
        ops: tessera_wire::token::Ops { read: true, write: true },
        ttl: DEV_TOKEN_TTL,
        name: "dev".into(),
    };
    let (token, _) = tessera_certs::create_token(&layout.certs(), &spec).context("creating the dev token")?;
    let web = serde_json::json!({
        "pd": [format!("ws://{pd_addr}")],
        "webtransport": pd_cert_hash.map(|_| vec![format!("https://{pd_addr}/")]).unwrap_or_default(),
        // Hex SHA-256 of PD's browser certificate (nodes' come from PD's node list). It
        // rotates every 6 days; a restart of `tessera dev` writes the current one.
        "certHashes": pd_cert_hash.map(|h| vec![h.iter().map(|b| format!("{b:02x}")).collect::<String>()]).unwrap_or_default(),
        "token": token,
    });
    let path = layout.web_config();
    let text = serde_json::to_string_pretty(&web)? + "\n";
    // The token grants every key: readable by the owner only.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl std::fmt::Debug for DevCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCluster").field("pd_addr", &self.pd_addr).field("nodes", &self.nodes.len()).finish()
    }
}

impl DevCluster {
    /// Waits until every region has a leader, as the nodes see it and as PD reports it to
    /// clients (so `tessera status` right after shows them), bounded by `timeout`.
    pub async fn wait_ready(&self, expected_regions: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        let local_ready = || {
            let regions = self.nodes.iter().map(|n| n.region_count()).max().unwrap_or(0);
            let leaders: usize = self.nodes.iter().map(|n| n.leader_count()).sum();
            regions >= expected_regions && leaders >= regions && regions > 0
        };
        let mut client = None;
        loop {
            if local_ready() {
                if client.is_none() {
                    let cfg = ClientConfig::new(vec![self.pd_addr.clone()], Some(TlsFiles::client(&self.certs, "dev")));
                    client = Client::connect(cfg).await.ok();
                }
                if let Some(c) = &client {
                    let routes = c.regions().await.unwrap_or_default();
                    let nodes = c.nodes().await.unwrap_or_default();
                    let all_led = routes.len() >= expected_regions && routes.iter().all(|r| r.leader.is_some());
                    // Nodes beyond the first three start empty and receive replicas from
                    // the balancer; ready means registered, with every region led.
                    let all_reported = nodes.len() >= self.nodes.len();
                    if all_led && all_reported {
                        return true;
                    }
                }
            }
            if start.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the nodes, then PD.
    pub async fn shutdown(self) {
        // Concurrently: each node lingers briefly for its peers to acknowledge the close.
        futures::future::join_all(self.nodes.into_iter().map(Node::shutdown)).await;
        self.pd.shutdown().await;
    }
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; Ok("Ctrl-C") }
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}

/// Runs the dev cluster until Ctrl-C or SIGTERM.
pub async fn run(data: &Path, args: DevArgs) -> anyhow::Result<()> {
    println!("starting Tessera dev cluster in {} ...", data.display());
    // Before the cluster starts: a missing package is a usage error, reported at once.
    let web_root = if args.web { Some(crate::web_page::package_dir(args.web_root.as_deref())?) } else { None };
    let cluster = start(data, &args).await?;
    println!("PD      {}", cluster.pd_addr);
    for n in &cluster.nodes {
        println!("node {}  {}  ({} regions recovered)", n.node_id().0, n.local_addr(), n.region_count());
    }
    let expected = cluster.nodes.iter().map(|n| n.region_count()).max().unwrap_or(0).max(args.initial_regions as usize);
    if cluster.wait_ready(expected, Duration::from_secs(60)).await {
        println!("ready: {} regions, each with a leader ({})", expected, crate::worker_threads_note());
    } else {
        println!("warning: not every region has a leader yet; see `tessera status`");
    }
    let data_arg = data.display();
    println!();
    println!("connect with:");
    println!("  tessera --data {data_arg} put hello world");
    println!("  tessera --data {data_arg} get hello");
    println!("  tessera --data {data_arg} status");
    println!(
        "or from code: ClientConfig::new(vec![\"{}\".into()], Some(TlsFiles::client(\"{data_arg}/certs\", \"dev\")))",
        cluster.pd_addr
    );
    println!(
        "or from JavaScript: Client.connect(JSON.parse(fs.readFileSync(\"{}\")))",
        DevLayout::new(data).web_config().display()
    );
    if let Some(root) = web_root {
        let layout = DevLayout::new(data);
        let mut addrs = layout.read_addrs()?;
        let port = match (args.web_port, addrs.get("web").and_then(|a| a.parse::<SocketAddr>().ok())) {
            (Some(port), _) => port,
            (None, Some(previous)) => previous.port(),
            (None, None) => 0,
        };
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let addr = match crate::web_page::serve(at(port), root.clone(), layout.web_config()).await {
            Ok(addr) => addr,
            // The previous run's port is taken: any port will do.
            Err(_) if args.web_port.is_none() && port != 0 => {
                crate::web_page::serve(at(0), root, layout.web_config()).await?
            }
            Err(e) => return Err(e),
        };
        addrs.insert("web".into(), addr.to_string());
        layout.write_addrs(&addrs)?;
        println!("web page: http://{addr}/");
    }
    println!("press Ctrl-C to stop");
    let sig = wait_for_signal().await?;
    println!("{sig}: stopping ...");
    cluster.shutdown().await;
    println!("stopped");
    Ok(())
}
