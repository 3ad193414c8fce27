//! Key choice: uniform, or YCSB's scrambled Zipfian.
//!
//! [`Zipfian`] is the generator of Gray et al., "Quickly generating billion-record synthetic
//! databases" (SIGMOD 1994), as YCSB implements it: item 0 is the most popular, item `i`
//! has probability proportional to `1 / (i + 1)^theta`. [`ScrambledZipfian`] hashes the
//! rank so that the popular items are scattered over the key space instead of being the
//! lowest record numbers (and so, for Tessera, all in one region).
//!
//! The samplers take the uniform variate as an argument, so they are pure functions.

use rand::Rng;

use crate::keys::fnv1a64;

/// YCSB's default skew.
pub const YCSB_THETA: f64 = 0.99;

/// `sum_{i=1..=n} 1 / i^theta`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Zipfian ranks over `0..items`.
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `items` (at least 2) items with skew `theta` in (0, 1).
    pub fn new(items: u64, theta: f64) -> Zipfian {
        assert!(items >= 2, "a Zipfian needs at least two items");
        assert!(theta > 0.0 && theta < 1.0, "theta must be in (0, 1)");
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2, theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian { items, theta, alpha: 1.0 / (1.0 - theta), zetan, eta }
    }

    /// The rank for the uniform variate `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }

    /// Probability of rank 0 (the most popular item).
    pub fn top_probability(&self) -> f64 {
        1.0 / self.zetan
    }
}

/// Zipfian ranks scattered over `0..items` by a hash.
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    zipf: Zipfian,
}

impl ScrambledZipfian {
    /// Over `items` items with skew `theta`.
    pub fn new(items: u64, theta: f64) -> ScrambledZipfian {
        ScrambledZipfian { zipf: Zipfian::new(items, theta) }
    }

    /// The item for the uniform variate `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> u64 {
        fnv1a64(self.zipf.sample(u)) % self.zipf.items
    }
}

/// How records are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every record equally likely.
    Uniform,
    /// Scrambled Zipfian, theta 0.99 (YCSB's default).
    Zipfian,
}

/// Picks record numbers in `0..records`.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Uniform.
    Uniform {
        /// Number of records.
        records: u64,
    },
    /// Scrambled Zipfian.
    Zipfian(ScrambledZipfian),
}

impl KeyChooser {
    /// A chooser over `records` records (at least 1).
    pub fn new(distribution: Distribution, records: u64) -> KeyChooser {
        match distribution {
            Distribution::Zipfian if records >= 2 => KeyChooser::Zipfian(ScrambledZipfian::new(records, YCSB_THETA)),
            _ => KeyChooser::Uniform { records: records.max(1) },
        }
    }

    /// The next record number.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform { records } => rng.random_range(0..*records),
            KeyChooser::Zipfian(z) => z.sample(rng.random()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn counts(samples: impl Iterator<Item = u64>, items: usize) -> Vec<usize> {
        let mut c = vec![0usize; items];
        for s in samples {
            c[s as usize] += 1;
        }
        c
    }

    #[test]
    fn zipfian_stays_in_range_at_the_extremes() {
        let z = Zipfian::new(1000, YCSB_THETA);
        assert_eq!(z.sample(0.0), 0);
        assert!(z.sample(0.999_999_999) < 1000);
        let s = ScrambledZipfian::new(1000, YCSB_THETA);
        assert!((0..10_000).map(|i| s.sample(i as f64 / 10_000.0)).all(|x| x < 1000));
    }

    #[test]
    fn zipfian_rank_zero_has_its_theoretical_share() {
        let z = Zipfian::new(10_000, YCSB_THETA);
        let n = 200_000;
        let samples = (0..n).map(|i| z.sample((i as f64 + 0.5) / n as f64));
        let c = counts(samples, 10_000);
        let share = c[0] as f64 / n as f64;
        assert!((share - z.top_probability()).abs() < 0.005, "share {share}, expected {}", z.top_probability());
        // Ranks are ordered by popularity.
        assert!(c[0] > c[1] && c[1] > c[10] && c[10] > c[1000]);
    }

    #[test]
    fn scrambled_zipfian_is_skewed_but_not_towards_low_numbers() {
        let items = 10_000;
        let z = ScrambledZipfian::new(items, YCSB_THETA);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 200_000;
        let mut c = counts((0..n).map(|_| z.sample(rng.random())), items as usize);
        // The hottest 1% of items draw far more than 1% of the accesses.
        let lowest_hundred: usize = c[..100].iter().sum();
        c.sort_unstable_by(|a, b| b.cmp(a));
        let hottest_hundred: usize = c[..100].iter().sum();
        assert!(hottest_hundred as f64 / n as f64 > 0.3, "top 1% share {}", hottest_hundred as f64 / n as f64);
        // Scrambled: records 0..100 are not where the heat is.
        assert!(lowest_hundred < hottest_hundred / 3, "{lowest_hundred} vs {hottest_hundred}");
    }

    #[test]
    fn uniform_chooser_is_flat() {
        let k = KeyChooser::new(Distribution::Uniform, 10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let c = counts((0..100_000).map(|_| k.next(&mut rng)), 10);
        assert!(c.iter().all(|&x| (9_000..11_000).contains(&x)), "{c:?}");
    }
}
