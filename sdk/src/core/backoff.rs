//! Retry delays: exponential backoff with jitter, as a plain value.
//!
//! `attempt` counts failures so far: the delay before the first retry is computed with
//! `attempt = 1`. The un-jittered ceiling for attempt `n` is `min(max, base * 2^(n-1))`.
//!
//! Invariants (checked by property tests below): without a server hint a delay lies in
//! `[0, max]`; with a hint `h` it lies in `[h, max(max, h)]`, that is, the server's hint is a
//! floor that wins over our own cap. An oversized hint is bounded by the request deadline in
//! the retry decision, not here.

use std::time::Duration;

use super::rng::RandomSource;

/// How a delay is randomized around the exponential ceiling `c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, c]`: fewest collisions, occasionally retries almost at once.
    Full,
    /// `c/2` plus uniform `[0, c/2]`: never shorter than half the ceiling.
    Equal,
    /// Uniform in `[base, min(max, 3 * c_prev)]` where `c_prev` is the previous ceiling
    /// (the "decorrelated jitter" of the AWS architecture blog, without hidden state).
    #[default]
    Decorrelated,
}

/// Backoff policy. A value: copy it, tweak it, pass it around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest delay we choose ourselves.
    pub max: Duration,
    /// Most attempts (first try included) before giving up even with time left; 0 means
    /// unlimited, so only the deadline bounds the retries.
    pub max_attempts: u32,
    /// Randomization.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// 10 ms base, 250 ms cap, 64 attempts, decorrelated jitter. The cap is short so that a
    /// client notices a new leader soon after an election (retries during one are cheap
    /// `NotLeader` answers); a server's `ServerBusy` hint can ask for longer.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(250),
            max_attempts: 64,
            jitter: Jitter::Decorrelated,
        }
    }
}

impl Backoff {
    /// Checks the policy is usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.base.is_zero() {
            return Err("backoff base must be positive".into());
        }
        if self.max < self.base {
            return Err("backoff max must be at least base".into());
        }
        Ok(())
    }

    /// True when `attempts` tries have used up the attempt budget.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_attempts != 0 && attempts >= self.max_attempts
    }

    /// The un-jittered ceiling for failure number `attempt` (1-based; 0 is treated as 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.max(1) - 1;
        let factor = 1u32.checked_shl(shift.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// The delay before retrying after failure number `attempt`.
    pub fn next_delay(&self, attempt: u32, rng: &mut impl RandomSource) -> Duration {
        let ceiling = self.ceiling(attempt);
        let delay = match self.jitter {
            Jitter::Full => rng.duration_between(Duration::ZERO, ceiling),
            Jitter::Equal => {
                let half = ceiling / 2;
                half + rng.duration_between(Duration::ZERO, ceiling - half)
            }
            Jitter::Decorrelated => {
                let prev = if attempt <= 1 { self.base } else { self.ceiling(attempt - 1) };
                let hi = prev.checked_mul(3).unwrap_or(self.max).min(self.max);
                rng.duration_between(self.base.min(self.max), hi)
            }
        };
        delay.min(self.max)
    }

    /// [`Backoff::next_delay`], but never shorter than the server's `hint`
    /// (e.g. [`tessera_wire::Error::ServerBusy`]'s `retry_after_ms`).
    pub fn next_delay_with_hint(&self, attempt: u32, hint: Option<Duration>, rng: &mut impl RandomSource) -> Duration {
        let delay = self.next_delay(attempt, rng);
        match hint {
            Some(h) => delay.max(h),
            None => delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rng::SplitMix64;
    use proptest::prelude::*;

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::Decorrelated)]
    }

    fn policy() -> impl Strategy<Value = Backoff> {
        (1u64..5_000, 0u64..120_000, jitter()).prop_map(|(base, extra, jitter)| Backoff {
            base: Duration::from_millis(base),
            max: Duration::from_millis(base + extra),
            max_attempts: 0,
            jitter,
        })
    }

    proptest! {
        #[test]
        fn delay_is_within_zero_and_max(b in policy(), attempt in 0u32..200, seed in any::<u64>()) {
            let mut rng = SplitMix64::new(seed);
            let d = b.next_delay(attempt, &mut rng);
            prop_assert!(d <= b.max);
        }

        #[test]
        fn delay_respects_server_hint(b in policy(), attempt in 0u32..200, seed in any::<u64>(), hint_ms in 0u64..300_000) {
            let mut rng = SplitMix64::new(seed);
            let hint = Duration::from_millis(hint_ms);
            let d = b.next_delay_with_hint(attempt, Some(hint), &mut rng);
            prop_assert!(d >= hint);
            prop_assert!(d <= b.max.max(hint));
        }

        #[test]
        fn equal_jitter_never_below_half_ceiling(b in policy(), attempt in 1u32..50, seed in any::<u64>()) {
            let b = Backoff { jitter: Jitter::Equal, ..b };
            let mut rng = SplitMix64::new(seed);
            prop_assert!(b.next_delay(attempt, &mut rng) >= b.ceiling(attempt) / 2);
        }
    }

    #[test]
    fn ceiling_doubles_until_max() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
            max_attempts: 0,
            jitter: Jitter::Full,
        };
        let c: Vec<u128> = (1..=6).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(c, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(b.ceiling(10_000), b.max);
    }

    #[test]
    fn jitter_is_reproducible_from_the_seed() {
        let b = Backoff::default();
        let run = |seed| {
            let mut rng = SplitMix64::new(seed);
            (1..20).map(|a| b.next_delay(a, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn attempt_budget_zero_is_unlimited() {
        let b = Backoff { max_attempts: 0, ..Backoff::default() };
        assert!(!b.exhausted(u32::MAX));
        let b = Backoff { max_attempts: 3, ..Backoff::default() };
        assert!(!b.exhausted(2));
        assert!(b.exhausted(3));
    }
}
