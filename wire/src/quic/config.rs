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
    /// Idle timeout (default 30 s); keep-alives keep healthy connections open.
    pub idle_timeout: Duration,
    /// Keep-alive interval (default 5 s); must be below `idle_timeout`.
    pub keep_alive: Duration,
    /// Long-lived request streams a client opens per connection (default 4).
    pub streams_per_connection: usize,
    /// Most connections a server accepts at once (default 1024).
    pub max_connections: usize,
    /// Time allowed for connect + handshake (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_len: crate::frame::DEFAULT_MAX_FRAME_LEN,
            max_concurrent_bidi_streams: 64,
            stream_receive_window: 8 * 1024 * 1024,
            receive_window: 32 * 1024 * 1024,
            send_window: 32 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            streams_per_connection: 4,
            max_connections: 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl TransportConfig {
    /// Checks the settings are coherent.
    pub fn validate(&self) -> Result<(), String> {
        if self.keep_alive >= self.idle_timeout {
            return Err("keep_alive must be shorter than idle_timeout".into());
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

impl TransportConfig {
    /// The quinn transport parameters for these limits. Unidirectional streams are unused
    /// and refused.
    pub(crate) fn quinn_transport(&self) -> Result<quinn::TransportConfig, super::TransportError> {
        use quinn::{IdleTimeout, VarInt};
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| super::TransportError::Endpoint("idle_timeout is too large".into()))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(self.send_window)
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive));
        Ok(transport)
    }
}
