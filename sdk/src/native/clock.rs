//! The native clock: tokio's monotonic time (pausable in tests) as core timestamps.

use std::time::Duration;

use tokio::time::Instant;

use crate::core::time::{Clock, Timestamp};

/// Milliseconds since the client was created, from `tokio::time::Instant`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    pub(crate) fn new() -> Self {
        TokioClock { origin: Instant::now() }
    }

    /// The deadline of a request of `timeout` starting now.
    pub(crate) fn deadline_after(&self, timeout: Duration) -> Timestamp {
        self.now().saturating_add(timeout)
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        Timestamp(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}
