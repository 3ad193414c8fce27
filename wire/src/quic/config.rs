//! Transport limits.

use std::time::Duration;

/// Transport limits, applied to both ends.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest frame accepted (default 4 MiB); checked before allocating.
    pub max_frame_len: u32,
    /// Concurrent bidirectional streams a peer may open (default 64).
    pub max_concurrent_bidi_streams: u32,
    /// Per-stream receive window in bytes (default 8 MiB).
    pub stream_receive_window: u32,
    /// Connection receive window in bytes (default 32 MiB).
    pub receive_window: u32,
    /// Connection send window in bytes (default 32 MiB).
    pub send_window: u64,
    /// Idle timeout (default 5 s): a connection that hears nothing from its peer for this
    /// long is closed, failing its requests. Keep-alives keep healthy connections open.
    pub idle_timeout: Duration,
    /// Keep-alive interval (default 400 ms); must be below `liveness_timeout`.
    pub keep_alive: Duration,
    /// A request waiting for its answer on a connection that received nothing at all (not
    /// even acknowledgements of keep-alives) for this long (default 1.2 s) declares the peer
    /// dead: the connection is closed and every request on it fails at once with
    /// `ConnectionLost`, instead of each waiting out its own timeout. A live but slow peer
    /// still acknowledges keep-alives, so its requests wait their full timeout.
    pub liveness_timeout: Duration,
    /// Seed of the stateless-reset key (default: random per process). A server should
    /// derive it from its identity, so that after a restart it resets the connections of
    /// its previous incarnation at once rather than letting them hang until idle timeout.
    pub reset_key_seed: Option<ResetKeySeed>,
    /// Long-lived request streams a client opens per connection (default 4). Frames below
    /// 64 KiB all go on the first; larger ones take turns on the others.
    pub streams_per_connection: usize,
    /// Most connections a server accepts at once (default 1024).
    pub max_connections: usize,
    /// Time allowed for connect + handshake (default 5 s).
    pub connect_timeout: Duration,
    /// Unidirectional streams a peer may open (default 0: the native protocol uses none).
    /// HTTP/3, under WebTransport, needs a few for its control streams:
    /// [`TransportConfig::WEB_UNI_STREAMS`].
    pub max_concurrent_uni_streams: u32,
}

impl TransportConfig {
    /// Unidirectional streams a server that accepts WebTransport sessions allows: HTTP/3's
    /// control stream and the two QPACK streams, with room to spare.
    pub const WEB_UNI_STREAMS: u32 = 8;
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_len: crate::frame::DEFAULT_MAX_FRAME_LEN,
            max_concurrent_bidi_streams: 64,
            stream_receive_window: 8 * 1024 * 1024,
            receive_window: 32 * 1024 * 1024,
            send_window: 32 * 1024 * 1024,
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_millis(400),
            liveness_timeout: Duration::from_millis(1200),
            reset_key_seed: None,
            streams_per_connection: 4,
            max_connections: 1024,
            connect_timeout: Duration::from_secs(5),
            max_concurrent_uni_streams: 0,
        }
    }
}

impl TransportConfig {
    /// Checks the settings are coherent.
    pub fn validate(&self) -> Result<(), String> {
        if self.keep_alive >= self.liveness_timeout || self.liveness_timeout > self.idle_timeout {
            return Err("timeouts must satisfy keep_alive < liveness_timeout <= idle_timeout".into());
        }
        if self.streams_per_connection == 0 || self.streams_per_connection as u32 > self.max_concurrent_bidi_streams {
            return Err("streams_per_connection must be in 1..=max_concurrent_bidi_streams".into());
        }
        if self.max_frame_len < 1024 {
            return Err("max_frame_len must be at least 1 KiB".into());
        }
        Ok(())
    }
}

/// Secret bytes from which an endpoint's stateless-reset key is derived. Not printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ResetKeySeed(pub [u8; 32]);

impl std::fmt::Debug for ResetKeySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKeySeed(..)")
    }
}

impl ResetKeySeed {
    /// A seed derived from `secret` (for example the bytes of the endpoint's private key)
    /// and a label, so the same identity always yields the same reset key.
    pub fn derive(secret: &[u8]) -> ResetKeySeed {
        let digest = ring::digest::digest(&ring::digest::SHA256, &[b"tessera stateless reset v1\0", secret].concat());
        let mut seed = [0u8; 32];
        seed.copy_from_slice(digest.as_ref());
        ResetKeySeed(seed)
    }
}

impl TransportConfig {
    /// The quinn endpoint configuration: the stateless-reset key and connection-id key from
    /// the seed, or random ones.
    pub(crate) fn quinn_endpoint(&self) -> quinn::EndpointConfig {
        match &self.reset_key_seed {
            Some(seed) => {
                let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    &seed.0,
                )));
                // An endpoint sends a stateless reset only for connection ids it recognises as
                // its own, so the id generator's key must survive the restart too.
                let digest =
                    ring::digest::digest(&ring::digest::SHA256, &[b"connection ids\0".as_slice(), &seed.0].concat());
                let mut cid_key = [0u8; 8];
                cid_key.copy_from_slice(&digest.as_ref()[..8]);
                let cid_key = u64::from_le_bytes(cid_key);
                config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
                config
            }
            None => quinn::EndpointConfig::default(),
        }
    }

    /// The quinn transport parameters for these limits. Unidirectional streams are unused
    /// and refused.
    pub(crate) fn quinn_transport(&self) -> Result<quinn::TransportConfig, super::TransportError> {
        use quinn::{IdleTimeout, VarInt};
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| super::TransportError::Endpoint("idle_timeout is too large".into()))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_concurrent_uni_streams))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(self.send_window)
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive));
        Ok(transport)
    }
}
