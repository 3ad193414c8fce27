//! Seedable randomness for the core: a trait and a small, fast generator.
//!
//! The core never reaches for a global or OS-seeded RNG. Callers pass a [`RandomSource`];
//! the native layer seeds a [`SplitMix64`] from the OS once, tests seed it with a constant.

use std::time::Duration;

/// Uniform random 64-bit words.
pub trait RandomSource {
    /// The next uniformly distributed word.
    fn next_u64(&mut self) -> u64;

    /// A uniform integer in `0..=n`.
    fn up_to(&mut self, n: u64) -> u64 {
        // Multiply-shift: maps a 64-bit word onto `0..=n` with bias below 2^-64 * n.
        ((u128::from(self.next_u64()) * (u128::from(n) + 1)) >> 64) as u64
    }

    /// A uniform duration in `[lo, hi]` (nanosecond resolution); `lo` if `hi < lo`.
    fn duration_between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = u64::try_from((hi - lo).as_nanos()).unwrap_or(u64::MAX);
        lo + Duration::from_nanos(self.up_to(span))
    }
}

impl<R: RandomSource + ?Sized> RandomSource for &mut R {
    fn next_u64(&mut self) -> u64 {
        (**self).next_u64()
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough for jitter.
/// Not cryptographic.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn up_to_stays_in_bounds() {
        let mut r = SplitMix64::new(7);
        for n in [0u64, 1, 2, 10, u64::MAX] {
            for _ in 0..1000 {
                assert!(r.up_to(n) <= n);
            }
        }
        assert_eq!(r.up_to(0), 0);
    }

    #[test]
    fn duration_between_is_inclusive_and_ordered() {
        let mut r = SplitMix64::new(1);
        let lo = Duration::from_millis(3);
        let hi = Duration::from_millis(9);
        for _ in 0..1000 {
            let d = r.duration_between(lo, hi);
            assert!(d >= lo && d <= hi);
        }
        assert_eq!(r.duration_between(hi, lo), hi);
    }
}
