//! Histories of a simulated linearizable store: accepted as recorded, rejected once a read is
//! corrupted.

use proptest::prelude::*;
use tessera_lincheck::{check, Outcome};

use crate::sim::{corrupt_one_read, simulate, to_history, Rng, SimConfig};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn simulated_store_histories_are_linearizable(
        seed in any::<u64>(),
        clients in 1usize..=8,
        keys in 1usize..=4,
        unknown_percent in 0u64..=10,
    ) {
        let cfg = SimConfig { clients, keys, ops: 300, unknown_percent };
        let report = check(&to_history(&simulate(seed, cfg)));
        prop_assert!(report.is_linearizable(), "seed {seed}: {report}");
    }

    #[test]
    fn corrupting_one_read_is_detected(
        seed in any::<u64>(),
        clients in 1usize..=8,
        keys in 1usize..=4,
        unknown_percent in 0u64..=10,
    ) {
        let cfg = SimConfig { clients, keys, ops: 300, unknown_percent };
        let mut recs = simulate(seed, cfg);
        let mut rng = Rng::new(seed ^ 0xc0ff_ee);
        let Some(corrupted) = corrupt_one_read(&mut rng, &mut recs) else {
            return Ok(());
        };
        let report = check(&to_history(&recs));
        let key = recs[corrupted].key.clone();
        prop_assert!(
            matches!(report.outcome(&key), Some(Outcome::NotLinearizable { .. })),
            "seed {seed}: corrupted read {corrupted} accepted: {report}"
        );
        prop_assert_eq!(report.violations().count(), 1, "seed {}: {}", seed, report);
    }
}
