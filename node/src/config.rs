//! Node configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tessera_certs::TlsFiles;
use tessera_wire::{Limits, NodeId};

/// Configuration of a storage node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id; must match its certificate.
    pub node_id: NodeId,
    /// UDP address to listen on (QUIC).
    pub listen: SocketAddr,
    /// Address advertised to PD, peers and clients (default: the bound address).
    pub advertise: Option<String>,
    /// Data directory (holds `node.redb`).
    pub data_dir: PathBuf,
    /// PD addresses.
    pub pd_endpoints: Vec<String>,
    /// Certificate files.
    pub tls: TlsFiles,
    /// Raft timing.
    pub raft: RaftTiming,
    /// Interval of store and region heartbeats to PD.
    pub heartbeat_interval: Duration,
    /// Default time a request may take when the client sets none.
    pub default_request_timeout: Duration,
    /// Request size limits.
    pub limits: Limits,
    /// Capacity reported to PD, in bytes.
    pub capacity_bytes: u64,
    /// Load limits: beyond them requests are refused with `ServerBusy`.
    pub admission: Admission,
    /// Size of the storage engine's page cache, in bytes (default 256 MiB).
    pub cache_bytes: usize,
    /// The storage engine makes the state machine's lazy commits durable at least this
    /// often (default 2 s, [`crate::storage::engine::LAZY_DURABLE_EVERY`], whose comment has
    /// the measurements). Acknowledged writes do not depend on it (they are durable in the
    /// Raft log first); it bounds what a restart replays from the log, the dirty data one
    /// durable commit writes out, and how long regions' approximate sizes (PD's size splits)
    /// lag behind their writes. Longer writes fewer pages, whose disk time the Raft log's
    /// syncs wait behind, but size splits come later and restarts replay more. Must not be
    /// zero.
    pub durable_interval: Duration,
    /// The Raft log's group commit under load (default: wait up to 1 ms for more jobs
    /// before a sync while syncs find 3 or more entries already queued; see
    /// [`crate::storage::wal::GroupCommit`]).
    pub raft_log_group_commit: crate::storage::wal::GroupCommit,
    /// A client session that writes nothing to a region for this long expires there: its
    /// remembered results are dropped and its later writes refused with `SessionExpired`
    /// (the SDK renews an idle session well before). Default 30 min.
    pub session_ttl: Duration,
    /// Serve linearizable reads on the leader's lease (default true): a leader whose last
    /// quorum acknowledgement is younger than its lease (`election_max_ms`, during which no
    /// follower votes for another leader) reads locally, with no round to the followers;
    /// otherwise, and with this off, every read confirms leadership with a ReadIndex round.
    /// The lease assumes the nodes' clocks advance at nearly the same rate (not that they
    /// agree on the time), as TiKV's lease reads do.
    pub lease_reads: bool,
    /// Also listen for WebSocket (web clients with scoped tokens: Node.js, edge runtimes)
    /// on TCP, at the QUIC endpoint's IP and port number (default false here; the
    /// `tessera` binary turns it on). Web clients derive `ws://HOST:PORT` from the QUIC
    /// address PD publishes, so the port numbers must match.
    pub websocket: bool,
    /// Also serve browsers over WebTransport (ALPN `h3`) on the QUIC endpoint, with a
    /// short-lived self-signed certificate whose hash PD publishes (default false here;
    /// the `tessera` binary turns it on).
    pub webtransport: bool,
    /// An operator's certificate and key (PEM) for web clients: served to browsers over
    /// WebTransport instead of the self-signed, pinned one, and to WebSocket clients, which
    /// then connect with `wss://` (e.g. a WebPKI certificate for the node's public name).
    pub web_cert: Option<(PathBuf, PathBuf)>,
    /// Idle polling (default 1 ms): under light load (at most 2 requests in flight), after
    /// each client request and each replication message with entries, a thread in the idle
    /// scheduling class keeps a CPU awake for this long, so that the next message's
    /// wake-up does not wait for a halted (virtual) CPU to resume. The thread yields to any
    /// work, but shows as busy and counts against a cgroup's CPU quota; zero turns it off.
    /// It is off too where the kernel polls before halting an idle CPU (a virtual
    /// machine's `haltpoll` cpuidle driver with `guest_halt_poll_ns` above zero), which
    /// does its job better. docs/life-of-a-write.md, "Idle polling", has the measurements.
    pub idle_poll: Duration,
    /// Fault injection, for tests only.
    #[doc(hidden)]
    pub faults: Faults,
}

/// Fault points, for tests: each makes the node misbehave in one specific way.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Never campaign at once for a bootstrapped region this node is the first choice
    /// for (as if it crashed right after recording the region, every time): the region
    /// gets its leader from an election timeout instead.
    pub skip_region_campaign: bool,
}

/// When the node refuses work rather than queue it.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Batch gets and scans run at once on the blocking pool; more wait. (A single-key
    /// get, one B-tree lookup, runs on its request's task.)
    pub max_concurrent_reads: usize,
    /// Writes are refused with `ServerBusy` while the group-commit queue holds more jobs.
    pub max_write_queue: usize,
    /// Writes to a region are refused with `ServerBusy` while its state machine lags its
    /// log by more entries.
    pub max_apply_lag: u64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission { max_concurrent_reads: 32, max_write_queue: 20_000, max_apply_lag: 10_000 }
    }
}

/// Raft timing parameters.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// Leader heartbeat interval (ms).
    pub heartbeat_ms: u64,
    /// Minimum election timeout (ms).
    pub election_min_ms: u64,
    /// Maximum election timeout (ms).
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log up to it) after this many log entries since the
    /// last one, or after half the region's keys if that is more, so that a follower of a
    /// large region that lags catches up from the log rather than by a snapshot, which
    /// copies every row (see `snapshot_policy`).
    pub snapshot_every: u64,
    /// Entries kept in the log after a snapshot, for lagging followers.
    pub keep_after_snapshot: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        // A follower campaigns once the leader's lease (openraft uses `election_max_ms`) and
        // then its election timeout have passed without a heartbeat: 1.2 to 1.6 s after a
        // leader dies, which bounds how long its regions go without writes.
        RaftTiming {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 800,
            snapshot_every: 10_000,
            keep_after_snapshot: 2_000,
        }
    }
}

/// Default of [`NodeConfig::idle_poll`].
pub const DEFAULT_IDLE_POLL: Duration = Duration::from_millis(1);

impl NodeConfig {
    /// A configuration with defaults for everything but identity, addresses and files.
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        data_dir: PathBuf,
        pd_endpoints: Vec<String>,
        tls: TlsFiles,
    ) -> Self {
        NodeConfig {
            node_id,
            listen,
            advertise: None,
            data_dir,
            pd_endpoints,
            tls,
            raft: RaftTiming::default(),
            heartbeat_interval: Duration::from_millis(500),
            default_request_timeout: Duration::from_secs(10),
            lease_reads: true,
            websocket: false,
            webtransport: false,
            web_cert: None,
            limits: Limits::DEFAULT,
            capacity_bytes: 100 * 1024 * 1024 * 1024,
            admission: Admission::default(),
            session_ttl: Duration::from_secs(30 * 60),
            cache_bytes: crate::storage::engine::DEFAULT_CACHE_BYTES,
            durable_interval: crate::storage::engine::LAZY_DURABLE_EVERY,
            raft_log_group_commit: Default::default(),
            idle_poll: DEFAULT_IDLE_POLL,
            faults: Faults::default(),
        }
    }

    /// Checks the configuration is usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id.0 == 0 {
            return Err("node id must be at least 1".into());
        }
        if self.pd_endpoints.is_empty() {
            return Err("at least one PD endpoint is required".into());
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_min_ms <= r.heartbeat_ms * 2 || r.election_max_ms <= r.election_min_ms {
            return Err("raft timing must satisfy 0 < 2*heartbeat < election_min < election_max".into());
        }
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat interval must be positive".into());
        }
        if self.durable_interval.is_zero() {
            return Err("durable interval must be positive".into());
        }
        if self.session_ttl < Duration::from_secs(60) {
            return Err("session_ttl must be at least a minute, far above any request deadline".into());
        }
        self.limits.validate(tessera_wire::frame::DEFAULT_MAX_FRAME_LEN).map_err(|e| format!("limits: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        let tls = TlsFiles { ca: "ca.pem".into(), cert: "node.pem".into(), key: "node-key.pem".into() };
        NodeConfig::new(NodeId(1), "127.0.0.1:0".parse().unwrap(), "data".into(), vec!["127.0.0.1:1".into()], tls)
    }

    #[test]
    fn a_zero_durable_interval_is_refused() {
        let mut cfg = config();
        assert_eq!(cfg.durable_interval, crate::storage::engine::LAZY_DURABLE_EVERY);
        assert!(cfg.validate().is_ok());
        cfg.durable_interval = Duration::ZERO;
        assert_eq!(cfg.validate().unwrap_err(), "durable interval must be positive");
    }
}
