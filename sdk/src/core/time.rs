//! Time as the core sees it: a value passed in, never read from a clock.
//!
//! The core's functions take `now: Timestamp` as a parameter. Only the native layer reads a
//! real clock (through [`Clock`]); tests and simulations drive time by hand with
//! [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A point in time: milliseconds since an epoch chosen by whoever owns the [`Clock`].
///
/// Only differences between timestamps of the same clock are meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds since the clock's epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_millis_ceil(d)))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Whole milliseconds in `d`, rounded up so that a non-zero duration never becomes zero.
pub fn duration_millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// A source of [`Timestamp`]s. Implemented by the native layer on a monotonic clock.
pub trait Clock {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// A clock that moves only when told to; for tests and deterministic simulation.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock { now_ms: AtomicU64::new(start.0) }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now_ms.fetch_add(duration_millis_ceil(d), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new(Timestamp(5));
        assert_eq!(c.now(), Timestamp(5));
        c.advance(Duration::from_micros(1));
        assert_eq!(c.now(), Timestamp(6), "sub-millisecond advances round up");
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        assert_eq!(Timestamp(u64::MAX - 1).saturating_add(Duration::from_secs(1)), Timestamp(u64::MAX));
        assert_eq!(Timestamp(3).saturating_duration_since(Timestamp(10)), Duration::ZERO);
        assert_eq!(Timestamp(10).saturating_duration_since(Timestamp(3)), Duration::from_millis(7));
    }
}
