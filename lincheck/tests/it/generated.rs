//! Histories of a simulated linearizable store: accepted as recorded, rejected once a read is
//! corrupted.
//!
//! Deterministic seeded loops rather than proptest: a failure names its seed, and reruns are
//! identical. Unknown outcomes are kept to the rates a fault-injection test produces (at most
//! 8% of writes); at much higher rates on one hot key the search may legitimately time out.

use tessera_lincheck::{check, Outcome};

use crate::sim::{corrupt_one_read, simulate, to_history, Rng, SimConfig};

const SEEDS: u64 = 200;

fn config(seed: u64) -> SimConfig {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9));
    SimConfig {
        clients: 1 + rng.below(8) as usize,
        keys: 1 + rng.below(4) as usize,
        ops: 300,
        unknown_percent: rng.below(9),
    }
}

#[test]
fn simulated_store_histories_are_linearizable() {
    for seed in 0..SEEDS {
        let cfg = config(seed);
        let report = check(&to_history(&simulate(seed, cfg)));
        assert!(report.is_linearizable(), "seed {seed} {cfg:?}: {report}");
    }
}

#[test]
fn corrupting_one_read_is_detected() {
    for seed in 0..SEEDS {
        let cfg = config(seed);
        let mut recs = simulate(seed, cfg);
        let mut rng = Rng::new(seed ^ 0x00c0_ffee);
        let corrupted = corrupt_one_read(&mut rng, &mut recs).expect("300 ops include a read");
        let report = check(&to_history(&recs));
        let key = recs[corrupted].key.clone();
        assert!(
            matches!(report.outcome(&key), Some(Outcome::NotLinearizable { .. })),
            "seed {seed} {cfg:?}: corrupted read {corrupted} accepted: {report}"
        );
        assert_eq!(report.violations().count(), 1, "seed {seed}: {report}");
    }
}
