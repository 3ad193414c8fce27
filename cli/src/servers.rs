//! `tessera pd` and `tessera node`: the servers of a real deployment.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tessera_certs::TlsFiles;
use tessera_node::{Node, NodeConfig};
use tessera_pd::{PdConfig, PdServer};
use tessera_wire::NodeId;

/// Certificate files of a server.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// Cluster CA certificate (PEM).
    #[arg(long = "tls-ca")]
    pub tls_ca: PathBuf,
    /// This server's certificate (PEM).
    #[arg(long = "tls-cert")]
    pub tls_cert: PathBuf,
    /// This server's private key (PEM).
    #[arg(long = "tls-key")]
    pub tls_key: PathBuf,
}

impl TlsArgs {
    fn files(self) -> TlsFiles {
        TlsFiles { ca: self.tls_ca, cert: self.tls_cert, key: self.tls_key }
    }
}

/// Options of `tessera pd`.
#[derive(Debug, clap::Args)]
pub struct PdArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:7379")]
    pub listen: SocketAddr,
    /// Directory for PD metadata.
    #[arg(long = "dir", default_value = "./tessera-pd")]
    pub dir: PathBuf,
    /// Regions created at bootstrap.
    #[arg(long, default_value_t = 1)]
    pub initial_regions: u32,
    /// Placement policy.
    #[command(flatten)]
    pub placement: tessera_cli::placement::PlacementArgs,
    /// Do not listen for WebSocket (web clients with tokens) on the same TCP port.
    #[arg(long)]
    pub no_websocket: bool,
    /// Do not serve browsers over WebTransport (ALPN h3) on the QUIC port.
    #[arg(long)]
    pub no_webtransport: bool,
    /// Certificate (PEM) for web clients, e.g. a WebPKI one for the public name: served to
    /// browsers over WebTransport instead of the self-signed certificate they pin by hash,
    /// and to WebSocket clients, which then connect with wss://. Needs --web-key.
    #[arg(long, requires = "web_key")]
    pub web_cert: Option<PathBuf>,
    /// Private key (PEM) of --web-cert.
    #[arg(long, requires = "web_cert")]
    pub web_key: Option<PathBuf>,
    /// Certificate files.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Options of `tessera node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Node id (must match the node certificate).
    #[arg(long)]
    pub id: u64,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:7380")]
    pub listen: SocketAddr,
    /// Address advertised to PD, peers and clients (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Data directory.
    #[arg(long = "dir")]
    pub dir: PathBuf,
    /// PD endpoints (repeat or comma-separate).
    #[arg(long = "pd-endpoints", value_delimiter = ',', required = true)]
    pub pd_endpoints: Vec<String>,
    /// Build a region snapshot (and purge its log) after this many log entries, or after
    /// half the region's keys if that is more, so that a lagging follower of a large region
    /// catches up from the log rather than by a copy of the region.
    #[arg(long, default_value_t = tessera_node::RaftTiming::default().snapshot_every)]
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, for followers that lag a little.
    #[arg(long, default_value_t = tessera_node::RaftTiming::default().keep_after_snapshot)]
    pub keep_after_snapshot: u64,
    /// Size of the storage engine's page cache, in MiB.
    #[arg(long, default_value_t = (tessera_node::storage::engine::DEFAULT_CACHE_BYTES >> 20) as u64)]
    pub cache_mb: u64,
    /// Make the state machine's buffered writes durable in the storage engine at least
    /// this often, in milliseconds. Acknowledged writes are durable in the Raft log first;
    /// this bounds what a restart replays from the log and how long region sizes (and so
    /// size splits) lag behind writes. Longer writes fewer pages, which the log's syncs
    /// wait behind: 10000 wrote 40% fewer bytes per write under load.
    #[arg(long, value_name = "MS", default_value_t = tessera_node::storage::engine::LAZY_DURABLE_EVERY.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub durable_interval_ms: u64,
    /// Under load, the Raft log writer waits up to this many microseconds after a durable
    /// write arrives so that more writes share its fdatasync (0: never wait).
    #[arg(long, default_value_t = tessera_node::storage::wal::GroupCommit::default().linger.as_micros() as u64)]
    pub raft_log_linger_us: u64,
    /// ...only while its syncs find at least this many log entries already queued, on
    /// average over 100 ms (0: always), i.e. while writes arrive faster than one sync at a
    /// time drains them.
    #[arg(long, default_value_t = tessera_node::storage::wal::GroupCommit::default().min_queued_entries)]
    pub raft_log_linger_min_queued: u32,
    /// Replaced by --raft-log-linger-min-queued (kept to say so).
    #[arg(long, hide = true)]
    pub raft_log_linger_above: Option<u64>,
    /// Confirm every linearizable read with a round to the followers (ReadIndex) instead of
    /// serving it on the leader's lease. The lease assumes the nodes' clocks advance at
    /// nearly the same rate; this removes that assumption at the cost of a round per batch
    /// of reads.
    #[arg(long)]
    pub no_lease_reads: bool,
    /// Under light load (at most 2 requests in flight), after each client request or
    /// replication message with entries, keep a CPU awake for this many microseconds with
    /// a thread in the idle scheduling class, so that the next message does not wait for a
    /// halted (virtual) CPU to resume: a sequential put's latency fell by a fifth on a
    /// 2-core VM. The thread yields to any work, but shows as busy and counts against a
    /// container's CPU quota (0: off). Off, whatever this says, where the kernel polls before
    /// halting an idle CPU (the haltpoll cpuidle driver with guest_halt_poll_ns above 0).
    #[arg(long, value_name = "US", default_value_t = tessera_node::DEFAULT_IDLE_POLL.as_micros() as u64)]
    pub idle_poll_us: u64,
    /// Do not listen for WebSocket (web clients with tokens) on the same TCP port.
    #[arg(long)]
    pub no_websocket: bool,
    /// Do not serve browsers over WebTransport (ALPN h3) on the QUIC port.
    #[arg(long)]
    pub no_webtransport: bool,
    /// Certificate (PEM) for web clients, e.g. a WebPKI one for the public name: served to
    /// browsers over WebTransport instead of the self-signed certificate they pin by hash,
    /// and to WebSocket clients, which then connect with wss://. Needs --web-key.
    #[arg(long, requires = "web_key")]
    pub web_cert: Option<PathBuf>,
    /// Private key (PEM) of --web-cert.
    #[arg(long, requires = "web_cert")]
    pub web_key: Option<PathBuf>,
    /// Certificate files.
    #[command(flatten)]
    pub tls: TlsArgs,
}

async fn wait_for_stop() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Runs PD until stopped.
pub async fn run_pd(args: PdArgs) -> anyhow::Result<()> {
    let mut cfg = PdConfig::new(args.listen, args.dir, args.tls.files());
    cfg.initial_regions = args.initial_regions;
    cfg.scheduler = args.placement.scheduler(cfg.replicas);
    cfg.websocket = !args.no_websocket;
    cfg.webtransport = !args.no_webtransport;
    cfg.web_cert = args.web_cert.zip(args.web_key);
    let pd = PdServer::start(cfg).await.context("starting PD")?;
    println!("PD listening on {} ({})", pd.local_addr(), tessera_cli::worker_threads_note());
    wait_for_stop().await?;
    pd.shutdown().await;
    Ok(())
}

/// Runs a node until stopped.
pub async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    if args.raft_log_linger_above.is_some() {
        anyhow::bail!(
            "--raft-log-linger-above (an entry rate) was replaced by --raft-log-linger-min-queued \
             (entries a sync finds queued, default {}): see `tessera node --help`",
            tessera_node::storage::wal::GroupCommit::default().min_queued_entries
        );
    }
    let mut cfg = NodeConfig::new(NodeId(args.id), args.listen, args.dir, args.pd_endpoints, args.tls.files());
    cfg.advertise = args.advertise;
    cfg.raft.snapshot_every = args.snapshot_every;
    cfg.raft.keep_after_snapshot = args.keep_after_snapshot;
    cfg.cache_bytes = usize::try_from(args.cache_mb << 20).context("--cache-mb is too large")?;
    cfg.raft_log_group_commit = tessera_node::storage::wal::GroupCommit {
        linger: std::time::Duration::from_micros(args.raft_log_linger_us),
        min_queued_entries: args.raft_log_linger_min_queued,
    };
    cfg.durable_interval = std::time::Duration::from_millis(args.durable_interval_ms);
    cfg.lease_reads = !args.no_lease_reads;
    cfg.idle_poll = std::time::Duration::from_micros(args.idle_poll_us);
    cfg.websocket = !args.no_websocket;
    cfg.webtransport = !args.no_webtransport;
    cfg.web_cert = args.web_cert.zip(args.web_key);
    let node = Node::start(cfg).await.context("starting node")?;
    println!(
        "node {} listening on {} ({} regions recovered, {})",
        args.id,
        node.local_addr(),
        node.region_count(),
        tessera_cli::worker_threads_note()
    );
    wait_for_stop().await?;
    node.shutdown().await;
    Ok(())
}
