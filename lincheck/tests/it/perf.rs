//! A history of the size integration tests produce must check quickly (timed by hand in
//! release; the test only requires that it completes and is accepted).

use tessera_lincheck::check;

use crate::sim::{simulate, to_history, SimConfig};

#[test]
fn two_thousand_ops_over_ten_keys_with_eight_clients_are_linearizable() {
    for seed in 0..3 {
        let cfg = SimConfig { clients: 8, keys: 10, ops: 2_000, unknown_percent: 3 };
        let report = check(&to_history(&simulate(seed, cfg)));
        assert!(report.is_linearizable(), "seed {seed}: {report}");
        assert_eq!(report.outcomes().count(), 10);
    }
}

#[test]
fn two_thousand_ops_on_one_hot_key_are_linearizable() {
    let cfg = SimConfig { clients: 8, keys: 1, ops: 2_000, unknown_percent: 1 };
    let report = check(&to_history(&simulate(7, cfg)));
    assert!(report.is_linearizable(), "{report}");
}
