//! YCSB-style workloads: which operations a closed-loop client issues, in what proportions.

use std::fmt;

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, clap::ValueEnum)]
pub enum Workload {
    /// Load: insert records `0..records` once each.
    L,
    /// 100% updates.
    W,
    /// 50% reads, 50% updates (YCSB A).
    A,
    /// 95% reads, 5% updates (YCSB B).
    B,
    /// 100% reads (YCSB C).
    C,
    /// 95% scans of 1-100 keys, 5% inserts (YCSB E).
    E,
    /// Sequential: put, get and scan-10 in turn, one operation in flight (latency).
    S,
}

impl Workload {
    /// The operation mix.
    pub fn mix(self) -> OpMix {
        let m = |read, update, insert, scan| OpMix { read, update, insert, scan };
        match self {
            Workload::L => m(0.0, 0.0, 1.0, 0.0),
            Workload::W => m(0.0, 1.0, 0.0, 0.0),
            Workload::A => m(0.5, 0.5, 0.0, 0.0),
            Workload::B => m(0.95, 0.05, 0.0, 0.0),
            Workload::C => m(1.0, 0.0, 0.0, 0.0),
            Workload::E => m(0.0, 0.0, 0.05, 0.95),
            Workload::S => m(1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0),
        }
    }

    /// Whether the workload issues writes.
    pub fn writes(self) -> bool {
        let mix = self.mix();
        mix.update + mix.insert > 0.0
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// An operation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Get of an existing record.
    Read,
    /// Put of an existing record.
    Update,
    /// Put of a new record.
    Insert,
    /// Range read.
    Scan,
}

impl OpKind {
    /// All kinds, in a fixed order (an index for per-kind arrays).
    pub const ALL: [OpKind; 4] = [OpKind::Read, OpKind::Update, OpKind::Insert, OpKind::Scan];

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Proportions of each operation kind; they sum to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpMix {
    /// Reads.
    pub read: f64,
    /// Updates.
    pub update: f64,
    /// Inserts.
    pub insert: f64,
    /// Scans.
    pub scan: f64,
}

impl OpMix {
    /// The kind for the uniform variate `u` in `[0, 1)`.
    pub fn choose(&self, u: f64) -> OpKind {
        let mut edge = self.read;
        if u < edge {
            return OpKind::Read;
        }
        edge += self.update;
        if u < edge {
            return OpKind::Update;
        }
        edge += self.insert;
        if u < edge {
            return OpKind::Insert;
        }
        if self.scan > 0.0 {
            OpKind::Scan
        } else {
            // Rounding left a sliver above the last kind with a share: give it to that kind.
            [OpKind::Insert, OpKind::Update, OpKind::Read]
                .into_iter()
                .find(|k| self.share(*k) > 0.0)
                .unwrap_or(OpKind::Read)
        }
    }

    /// The share of `kind`.
    pub fn share(&self, kind: OpKind) -> f64 {
        match kind {
            OpKind::Read => self.read,
            OpKind::Update => self.update,
            OpKind::Insert => self.insert,
            OpKind::Scan => self.scan,
        }
    }
}

/// The `n`-th operation of the sequential workload: put, get, scan, put, ...
pub fn sequential_op(n: u64) -> OpKind {
    [OpKind::Update, OpKind::Read, OpKind::Scan][(n % 3) as usize]
}

/// Rows a sequential-workload scan asks for.
pub const SEQUENTIAL_SCAN_LEN: usize = 10;
/// Longest scan of workload E (lengths are uniform in `1..=MAX_SCAN_LEN`).
pub const MAX_SCAN_LEN: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn observed(w: Workload, n: usize) -> [f64; 4] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut c = [0usize; 4];
        for _ in 0..n {
            c[w.mix().choose(rng.random()).index()] += 1;
        }
        c.map(|x| x as f64 / n as f64)
    }

    #[test]
    fn every_mix_sums_to_one() {
        for w in [Workload::L, Workload::W, Workload::A, Workload::B, Workload::C, Workload::E, Workload::S] {
            let m = w.mix();
            assert!((m.read + m.update + m.insert + m.scan - 1.0).abs() < 1e-9, "{w}");
        }
    }

    #[test]
    fn chosen_kinds_follow_the_mix() {
        for w in [Workload::W, Workload::A, Workload::B, Workload::C, Workload::E] {
            let got = observed(w, 100_000);
            for kind in OpKind::ALL {
                let want = w.mix().share(kind);
                assert!((got[kind.index()] - want).abs() < 0.01, "{w} {kind:?}: {} vs {want}", got[kind.index()]);
            }
        }
    }

    #[test]
    fn workload_b_is_95_5_and_e_is_scan_heavy() {
        let b = observed(Workload::B, 100_000);
        assert!(b[OpKind::Read.index()] > 0.94 && b[OpKind::Update.index()] > 0.04);
        assert_eq!(b[OpKind::Scan.index()], 0.0);
        let e = observed(Workload::E, 100_000);
        assert!(e[OpKind::Scan.index()] > 0.94 && e[OpKind::Insert.index()] > 0.04);
        assert_eq!(e[OpKind::Update.index()], 0.0);
    }

    #[test]
    fn the_top_of_the_unit_interval_maps_to_a_kind_with_a_share() {
        assert_eq!(Workload::W.mix().choose(0.999_999_999_9), OpKind::Update);
        assert_eq!(Workload::C.mix().choose(0.999_999_999_9), OpKind::Read);
        assert_eq!(Workload::A.mix().choose(0.0), OpKind::Read);
    }

    #[test]
    fn sequential_cycles_put_get_scan() {
        let ops: Vec<OpKind> = (0..6).map(sequential_op).collect();
        assert_eq!(ops, [OpKind::Update, OpKind::Read, OpKind::Scan, OpKind::Update, OpKind::Read, OpKind::Scan]);
        assert!(Workload::S.writes() && Workload::E.writes() && !Workload::C.writes());
    }
}
