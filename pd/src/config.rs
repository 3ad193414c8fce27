//! PD configuration and start-up errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tessera_certs::TlsFiles;

use crate::meta::MetaConfig;
use crate::store::StoreError;

/// Most regions [`PdConfig::initial_regions`] may ask for: bootstrap splits on the first key
/// byte, so there are at most 256 distinct ranges.
pub const MAX_INITIAL_REGIONS: u32 = 256;

/// Configuration of a [`PdServer`](crate::PdServer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdConfig {
    /// UDP address to listen on (port 0: chosen by the OS, see `PdServer::local_addr`).
    pub listen: SocketAddr,
    /// Directory holding `pd.redb`; created if missing.
    pub data_dir: PathBuf,
    /// The PD's certificate, key and cluster CA.
    pub tls: TlsFiles,
    /// Regions created at bootstrap, split evenly by first key byte (default 1, at most 256).
    pub initial_regions: u32,
    /// Replicas per region; bootstrap waits for this many registered nodes (default 3).
    pub replicas: usize,
    /// A node silent for longer than this is reported down (default 30 s).
    pub node_down_after: Duration,
    /// Placement policy: split and merge thresholds, balance tolerances, how long a down
    /// node's replicas wait before they are re-created elsewhere.
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// Also listen for WebSocket (web clients with scoped tokens: Node.js, edge runtimes)
    /// on TCP, at the QUIC endpoint's IP and port number (default false here; the
    /// `tessera` binary turns it on). Web clients derive `ws://HOST:PORT` from the QUIC
    /// address PD publishes, so the port numbers must match.
    pub websocket: bool,
    /// Also serve browsers over WebTransport (ALPN `h3`) on the QUIC endpoint, with a
    /// short-lived self-signed certificate ([`crate::PdServer::web_cert_hash`]) (default
    /// false here; the `tessera` binary turns it on).
    pub webtransport: bool,
    /// An operator's certificate and key (PEM) for web clients: served to browsers over
    /// WebTransport instead of the self-signed, pinned one, and to WebSocket clients, which
    /// then connect with `wss://` (e.g. a WebPKI certificate for PD's public name).
    pub web_cert: Option<(PathBuf, PathBuf)>,
}

impl PdConfig {
    /// A configuration with default policy.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>, tls: TlsFiles) -> PdConfig {
        let defaults = MetaConfig::default();
        PdConfig {
            listen,
            data_dir: data_dir.into(),
            tls,
            initial_regions: defaults.initial_regions,
            replicas: defaults.replicas,
            node_down_after: defaults.node_down_after,
            scheduler: crate::scheduler::SchedulerConfig::default(),
            websocket: false,
            webtransport: false,
            web_cert: None,
        }
    }

    /// Checks the settings are coherent.
    pub fn validate(&self) -> Result<(), PdError> {
        let fail = |reason: &str| Err(PdError::Config { reason: reason.to_owned() });
        if self.data_dir.as_os_str().is_empty() {
            return fail("data_dir must not be empty");
        }
        if self.initial_regions == 0 || self.initial_regions > MAX_INITIAL_REGIONS {
            return fail("initial_regions must be in 1..=256");
        }
        if self.replicas == 0 {
            return fail("replicas must be at least 1");
        }
        if self.node_down_after.is_zero() {
            return fail("node_down_after must be positive");
        }
        if let Err(e) = self.scheduler.validate() {
            return fail(&format!("scheduler: {e}"));
        }
        if self.scheduler.replicas != self.replicas {
            return fail("scheduler.replicas must equal replicas");
        }
        Ok(())
    }

    pub(crate) fn meta_config(&self) -> MetaConfig {
        MetaConfig {
            initial_regions: self.initial_regions,
            replicas: self.replicas,
            node_down_after: self.node_down_after,
        }
    }
}

/// Why a [`PdServer`](crate::PdServer) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PdError {
    /// The configuration is invalid.
    #[error("invalid PD configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The data directory could not be created.
    #[error("create data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database could not be opened or loaded.
    #[error("PD storage at {}: {source}", path.display())]
    Storage {
        /// The database file.
        path: PathBuf,
        /// The storage failure.
        #[source]
        source: StoreError,
    },
    /// The TLS configuration could not be built from the certificate files.
    #[error("PD TLS configuration: {0}")]
    Tls(#[source] tessera_certs::CertError),
    /// The listen address could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The transport failure.
        #[source]
        source: tessera_wire::quic::TransportError,
    },
    /// A start-up task panicked or was cancelled.
    #[error("PD start-up task failed: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PdConfig {
        PdConfig::new("127.0.0.1:0".parse().unwrap(), "/tmp/pd", TlsFiles::pd(std::path::Path::new("/tmp/certs")))
    }

    #[test]
    fn defaults_are_valid() {
        let c = cfg();
        assert_eq!((c.initial_regions, c.replicas, c.node_down_after), (1, 3, Duration::from_secs(30)));
        c.validate().unwrap();
    }

    #[test]
    fn validate_rejects_incoherent_settings() {
        for bad in [
            PdConfig { initial_regions: 0, ..cfg() },
            PdConfig { initial_regions: 257, ..cfg() },
            PdConfig { replicas: 0, ..cfg() },
            PdConfig { node_down_after: Duration::ZERO, ..cfg() },
            PdConfig { data_dir: PathBuf::new(), ..cfg() },
        ] {
            assert!(matches!(bad.validate(), Err(PdError::Config { .. })), "{bad:?}");
        }
    }
}
