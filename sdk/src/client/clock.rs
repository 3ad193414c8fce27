//! Time for the native layer, injected: the retry loop reads the clock and sleeps only
//! through [`Timer`].
//!
//! Natively the client uses `TokioClock` (tokio's monotonic time); the wasm SDK its own. Simulation tests use the core's
//! [`ManualClock`], on which a sleep moves the clock forward by its duration and completes
//! at once, so a test runs on simulated time with no real timer.

use std::fmt::Debug;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::core::time::{Clock, ManualClock, Timestamp};

/// A clock the retry loop can also sleep on.
pub trait Timer: Clock + Send + Sync + Debug {
    /// Completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;

    /// A timer raced against another future (the wait for a PD lookup shared with other
    /// requests): on a real clock the same as [`Timer::sleep`]. A simulated clock never
    /// fires it, since its sleeps complete at once and would end every race before the
    /// other side could answer.
    fn race_timer(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.sleep(d)
    }

    /// The deadline of a request of `timeout` starting now.
    fn deadline_after(&self, timeout: Duration) -> Timestamp {
        self.now().saturating_add(timeout)
    }
}

/// Milliseconds since the client was created, from `tokio::time::Instant`.
#[cfg(feature = "native")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    origin: tokio::time::Instant,
}

#[cfg(feature = "native")]
impl TokioClock {
    pub(crate) fn new() -> Self {
        TokioClock { origin: tokio::time::Instant::now() }
    }
}

#[cfg(feature = "native")]
impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        Timestamp(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(feature = "native")]
impl Timer for TokioClock {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(d).boxed()
    }
}

/// Simulated time for a single logical actor: a sleep is the clock jumping forward by its
/// duration. Concurrent sleepers (the parts of a batch) each move the clock, so simulated
/// time runs at least as fast as real time would; deadlines are never reached late.
impl Timer for ManualClock {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.advance(d);
        futures::future::ready(()).boxed()
    }

    fn race_timer(&self, _: Duration) -> BoxFuture<'static, ()> {
        futures::future::pending().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_sleep_advances_the_clock_and_completes_at_once() {
        let clock = ManualClock::new(Timestamp(100));
        let slept = clock.sleep(Duration::from_millis(250)).now_or_never();
        assert_eq!(slept, Some(()), "a simulated sleep needs no timer");
        assert_eq!(clock.now(), Timestamp(350));
        assert_eq!(Timer::deadline_after(&clock, Duration::from_secs(1)), Timestamp(1350));
    }
}
