//! Which keys a region's requests touch, sampled, so that a hot region splits where its
//! load halves rather than where its size does (PD's `SplitByLoad` step).
//!
//! One request in [`EVERY`] offers its key to a reservoir of [`CAPACITY`] keys (Algorithm
//! R). The reservoir forgets old load: once it has considered [`WINDOW`] keys, later keys
//! replace samples as if only [`CAPACITY`] had been seen, so it follows the last few
//! thousand requests rather than the region's whole life. Randomness is a seeded xorshift:
//! nothing here needs to be unpredictable, only spread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Keys kept.
const CAPACITY: usize = 256;
/// One request in this many is sampled (the others cost one atomic increment).
const EVERY: u64 = 4;
/// Sampled keys considered before old samples start to fade.
const WINDOW: u64 = 4096;
/// Fewer samples than this inside the range say too little to pick a key.
const MIN_SAMPLES: usize = 16;
/// A split must leave at least one sample in this many on each side.
const MIN_SIDE: usize = 4;

/// A sample of the keys a region's requests touched recently.
#[derive(Debug)]
pub struct KeySampler {
    requests: AtomicU64,
    inner: Mutex<Reservoir>,
}

#[derive(Debug)]
struct Reservoir {
    keys: Vec<Vec<u8>>,
    considered: u64,
    rng: u64,
}

impl Default for KeySampler {
    fn default() -> Self {
        KeySampler {
            requests: AtomicU64::new(0),
            inner: Mutex::new(Reservoir { keys: Vec::new(), considered: 0, rng: 0x9e37_79b9_7f4a_7c15 }),
        }
    }
}

impl KeySampler {
    /// Offers the key of one request.
    pub fn record(&self, key: &[u8]) {
        if !self.requests.fetch_add(1, Ordering::Relaxed).is_multiple_of(EVERY) {
            return;
        }
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.considered += 1;
        if r.keys.len() < CAPACITY {
            r.keys.push(key.to_vec());
        } else {
            // xorshift64
            r.rng ^= r.rng << 13;
            r.rng ^= r.rng >> 7;
            r.rng ^= r.rng << 17;
            let slot = r.rng % r.considered;
            if let Some(k) = r.keys.get_mut(slot as usize) {
                k.clear();
                k.extend_from_slice(key);
            }
        }
        if r.considered >= WINDOW {
            r.considered = CAPACITY as u64;
        }
    }

    /// The sampled key that splits the recent requests inside `[start, end)` most evenly,
    /// if there are enough samples and some key both lies strictly after `start` and leaves
    /// at least a quarter of them ([`MIN_SIDE`]) on each side.
    ///
    /// Requests to one key cannot be split: when a key carries so many that no boundary
    /// leaves a quarter on both sides, there is no such key. Splitting anyway (or at the
    /// size midpoint) would leave the hot key's region as hot as before and add a region
    /// that costs every write round more, again at each heartbeat while the key stays hot.
    pub fn balancing_key(&self, start: &[u8], end: &[u8]) -> Option<Vec<u8>> {
        let r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut inside: Vec<&[u8]> =
            r.keys.iter().map(Vec::as_slice).filter(|k| *k >= start && (end.is_empty() || *k < end)).collect();
        if inside.len() < MIN_SAMPLES {
            return None;
        }
        inside.sort_unstable();
        let n = inside.len();
        let median = inside[n / 2];
        // A split at `inside[i]` leaves the `i` samples before it on the left. The median
        // key's run of samples starts at `first` and ends before `past`: the boundaries
        // nearest the middle are those two.
        let first = inside.partition_point(|k| *k < median);
        let past = inside.partition_point(|k| *k <= median);
        [first, past]
            .into_iter()
            .filter(|&i| i > 0 && i < n && inside[i] > start && i.min(n - i) * MIN_SIDE >= n)
            .min_by_key(|&i| i.abs_diff(n / 2))
            .map(|i| inside[i].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:06}").into_bytes()
    }

    #[test]
    fn the_balancing_key_halves_the_load_not_the_key_space() {
        let s = KeySampler::default();
        // 90% of requests go to k000000..k000099, 10% spread over k000100..k009999.
        for i in 0..40_000u32 {
            let k = if i % 10 == 0 { 100 + (i * 7919) % 9_900 } else { (i * 31) % 100 };
            s.record(&key(k));
        }
        let split = s.balancing_key(b"", b"").expect("enough samples");
        // The load's median lies in the hot hundred keys, far left of the key-space middle.
        assert!(split > key(0) && split < key(100), "{}", String::from_utf8_lossy(&split));
    }

    #[test]
    fn recent_load_wins_over_old_load() {
        let s = KeySampler::default();
        for i in 0..40_000u32 {
            s.record(&key(i % 100));
        }
        for i in 0..40_000u32 {
            s.record(&key(5_000 + i % 100));
        }
        let split = s.balancing_key(b"", b"").unwrap();
        assert!(split >= key(5_000), "the old hot spot faded: {}", String::from_utf8_lossy(&split));
    }

    #[test]
    fn too_few_samples_or_a_median_at_the_start_give_no_key() {
        let s = KeySampler::default();
        for i in 0..(MIN_SAMPLES as u32 * EVERY as u32 - EVERY as u32) {
            s.record(&key(i));
        }
        assert_eq!(s.balancing_key(b"", b""), None, "too few samples");
        let hot = KeySampler::default();
        for _ in 0..1_000 {
            hot.record(b"start");
        }
        assert_eq!(hot.balancing_key(b"start", b""), None, "the median is the range's first key");
        assert_eq!(hot.balancing_key(b"a", b"b"), None, "no sample inside the range");
        assert_eq!(hot.balancing_key(b"a", b""), None, "every request on one key: nothing to split");
    }

    /// Requests: `hot_pct` percent on `key(hot)`, the rest spread at random over
    /// `key(0..100)`.
    fn with_hot_key(hot: u32, hot_pct: u32) -> KeySampler {
        let s = KeySampler::default();
        let mut x: u64 = 1;
        for i in 0..40_000u32 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let k = if i % 100 < hot_pct { hot } else { ((x >> 33) % 100) as u32 };
            s.record(&key(k));
        }
        s
    }

    #[test]
    fn a_key_carrying_most_requests_gives_no_split() {
        // 70% on k000050: any boundary leaves about 15% on one side.
        assert_eq!(with_hot_key(50, 70).balancing_key(b"", b""), None);
    }

    #[test]
    fn a_hot_key_that_leaves_enough_on_both_sides_is_split_around() {
        // A third on k000050 and a third on each side of it: the split is at the hot key
        // or right after it.
        let split = with_hot_key(50, 34).balancing_key(b"", b"").expect("a split at the hot key");
        assert!(split >= key(50) && split <= key(53), "{}", String::from_utf8_lossy(&split));
        // 40% on k000010, about 6% before it: the hot key stays on the left (47% with the
        // keys before it) and the median falls a few keys after it, far left of the
        // key-space middle (k000050).
        let split = with_hot_key(10, 40).balancing_key(b"", b"").expect("a split after the hot key");
        assert!(split > key(10) && split < key(35), "{}", String::from_utf8_lossy(&split));
    }
}
