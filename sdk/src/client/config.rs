//! Client configuration.

use std::net::SocketAddr;
use std::time::Duration;

#[cfg(feature = "native")]
use tessera_certs::TlsFiles;
#[cfg(feature = "native")]
use tessera_wire::quic::TransportConfig;
use tessera_wire::Limits;

use crate::{Backoff, Error};

/// Configuration of a [`crate::Client`]. Start from [`ClientConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// PD addresses (`host:port`); any one that answers will do.
    pub pd_endpoints: Vec<String>,
    /// Client certificate, key and cluster CA. Required by [`crate::Client::connect`]: the
    /// cluster only accepts mutually authenticated QUIC.
    #[cfg(feature = "native")]
    pub tls: Option<TlsFiles>,
    /// Deadline of each operation, retries included (default 10 s).
    pub request_timeout: Duration,
    /// Longest wait for one attempt's answer (default 3 s), so a dead node does not eat the
    /// whole deadline; a write is resent with the same sequence number afterwards.
    pub attempt_timeout: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// QUIC transport limits.
    #[cfg(feature = "native")]
    pub transport: TransportConfig,
    /// Size limits checked before sending (the servers enforce their own).
    pub limits: Limits,
    /// Local UDP address to bind (default: an ephemeral port on the unspecified address of
    /// the first PD endpoint's family).
    pub bind: Option<SocketAddr>,
    /// Seed of the jitter RNG (default: drawn from the OS). Set it to reproduce a run.
    pub rng_seed: Option<u64>,
    /// A session idle this long (default 10 min) is replaced by a fresh one before the next
    /// write. Keep it well below the nodes' `session_ttl` (default 30 min), after which the
    /// cluster refuses the idle session's writes with `SessionExpired`.
    pub session_renew_after: Duration,
}

impl ClientConfig {
    /// Defaults for everything but the PD endpoints and TLS files.
    #[cfg(feature = "native")]
    pub fn new(pd_endpoints: Vec<String>, tls: Option<TlsFiles>) -> Self {
        ClientConfig { tls, ..Self::with_endpoints(pd_endpoints) }
    }

    /// Defaults for everything but the PD endpoints (and, natively, no TLS files): what a
    /// client over an injected transport ([`crate::Client::with_platform`]) starts from.
    pub fn with_endpoints(pd_endpoints: Vec<String>) -> Self {
        ClientConfig {
            pd_endpoints,
            #[cfg(feature = "native")]
            tls: None,
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            backoff: Backoff::default(),
            #[cfg(feature = "native")]
            transport: TransportConfig {
                // Clients fail over to another replica rather than wait on a dead node.
                connect_timeout: Duration::from_millis(1500),
                ..TransportConfig::default()
            },
            limits: Limits::DEFAULT,
            bind: None,
            rng_seed: None,
            session_renew_after: Duration::from_secs(10 * 60),
        }
    }

    /// Checks the configuration is usable.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: &str| Err(Error::Config { reason: reason.to_string() });
        if self.pd_endpoints.is_empty() {
            return bad("at least one PD endpoint is required");
        }
        if let Some(e) = self
            .pd_endpoints
            .iter()
            .find(|e| e.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
        {
            return Err(Error::Config { reason: format!("PD endpoint {e:?} is not host:port") });
        }
        if self.request_timeout.is_zero() || self.attempt_timeout.is_zero() {
            return bad("request_timeout and attempt_timeout must be positive");
        }
        if self.session_renew_after <= self.request_timeout {
            return bad("session_renew_after must be longer than request_timeout");
        }
        self.backoff.validate().map_err(|reason| Error::Config { reason })?;
        #[cfg(feature = "native")]
        self.transport.validate().map_err(|reason| Error::Config { reason: format!("transport: {reason}") })?;
        Ok(())
    }

    /// The address to bind the client endpoint to.
    #[cfg(feature = "native")]
    pub(crate) fn bind_addr(&self) -> SocketAddr {
        self.bind.unwrap_or_else(|| {
            let v6 = self.pd_endpoints.first().is_some_and(|e| e.starts_with('['));
            if v6 {
                SocketAddr::from(([0u16; 8], 0))
            } else {
                SocketAddr::from(([0u8; 4], 0))
            }
        })
    }
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg() -> ClientConfig {
        ClientConfig::new(vec!["127.0.0.1:2379".into()], Some(TlsFiles::client(Path::new("/tmp"), "dev")))
    }

    #[test]
    fn default_config_is_valid() {
        cfg().validate().unwrap();
        assert_eq!(cfg().request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn config_without_endpoints_is_rejected() {
        let mut c = cfg();
        c.pd_endpoints = vec!["no-port".into()];
        assert!(matches!(c.validate(), Err(Error::Config { .. })));
        let mut c = cfg();
        c.pd_endpoints.clear();
        assert!(matches!(c.validate(), Err(Error::Config { .. })));
    }

    #[test]
    fn bind_address_follows_pd_address_family() {
        assert!(cfg().bind_addr().is_ipv4());
        let mut c = cfg();
        c.pd_endpoints = vec!["[::1]:2379".into()];
        assert!(c.bind_addr().is_ipv6());
    }
}
