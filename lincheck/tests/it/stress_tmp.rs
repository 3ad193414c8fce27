use tessera_lincheck::{check_with, CheckConfig, Outcome};
use crate::sim::*;
#[test]
fn stress_tmp() {
    let mut worst = (std::time::Duration::ZERO, 0u64);
    let mut timeouts = 0;
    for seed in 0..3000u64 {
        let mut rng = Rng::new(seed * 7 + 1);
        let cfg = SimConfig { clients: 1 + rng.below(8) as usize, keys: 1 + rng.below(3) as usize, ops: 400, unknown_percent: rng.below(25) };
        let mut recs = simulate(seed, cfg);
        let t = std::time::Instant::now();
        let rep = check_with(&to_history(&recs), &CheckConfig { max_states_per_key: 2_000_000 });
        if rep.timed_out().count() > 0 { timeouts += 1; eprintln!("timeout lin seed {seed} {cfg:?}"); continue; }
        assert!(rep.is_linearizable(), "seed {seed} {cfg:?} {rep}");
        let r = corrupt_one_read(&mut rng, &mut recs).unwrap();
        let rep = check_with(&to_history(&recs), &CheckConfig { max_states_per_key: 2_000_000 });
        let el = t.elapsed();
        if el > worst.0 { worst = (el, seed); }
        match rep.outcome(&recs[r].key) { Some(Outcome::NotLinearizable{..}) => {}, Some(Outcome::Timeout) => { timeouts += 1; eprintln!("timeout bad seed {seed} {cfg:?}"); } o => panic!("seed {seed} {o:?}") }
    }
    eprintln!("worst {worst:?} timeouts {timeouts}");
}
