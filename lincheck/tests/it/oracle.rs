//! Cross-checks the search against brute force on many tiny random histories.
//!
//! The brute force tries every subset of unknown operations and every order of the chosen
//! operations that respects real time, with its own implementation of the register model.

use proptest::prelude::*;
use tessera_lincheck::{check, ClientId, Op, Outcome, Output};

use crate::sim::{to_history, Rec, Rng};

type Value = Option<Vec<u8>>;

/// The register model, written independently of the crate's. `None`: inconsistent.
fn model_step(v: &Value, op: &Op, out: Option<&Output>) -> Option<Value> {
    let ok = |cond: bool, next: Value| cond.then_some(next);
    match (op, out) {
        (Op::Get, Some(Output::Get(seen))) => ok(seen == v, v.clone()),
        (Op::Put(x), _) => Some(Some(x.clone())),
        (Op::Delete, Some(Output::Delete { existed: Some(e) })) => ok(*e == v.is_some(), None),
        (Op::Delete, _) => Some(None),
        (Op::Append(b), out) => {
            let mut next = v.clone().unwrap_or_default();
            next.extend_from_slice(b);
            let len_ok = match out {
                Some(Output::Append { new_len: Some(n) }) => *n == next.len() as u64,
                _ => true,
            };
            ok(len_ok, Some(next))
        }
        (Op::Cas { expected, new }, Some(Output::Cas { succeeded })) => {
            if expected == v {
                ok(*succeeded, new.clone())
            } else {
                ok(!*succeeded, v.clone())
            }
        }
        // Unknown CAS: swaps if it matches, else does nothing.
        (Op::Cas { expected, new }, None) => Some(if expected == v { new.clone() } else { v.clone() }),
        (op, out) => panic!("unexpected pair {op:?} {out:?}"),
    }
}

fn end_time(r: &Rec) -> u64 {
    r.end.as_ref().map_or(u64::MAX, |(_, t)| *t)
}

fn brute_force(recs: &[Rec]) -> bool {
    let ops: Vec<&Rec> = recs.iter().filter(|r| r.end.is_some() || r.op != Op::Get).collect();
    let unknown: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].end.is_none()).collect();
    (0u32..1 << unknown.len()).any(|mask| {
        let chosen: Vec<&Rec> = (0..ops.len())
            .filter(|&i| match unknown.iter().position(|&u| u == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .map(|i| ops[i])
            .collect();
        let mut placed = vec![false; chosen.len()];
        orders(&chosen, &mut placed, &None)
    })
}

fn orders(ops: &[&Rec], placed: &mut [bool], v: &Value) -> bool {
    if placed.iter().all(|&p| p) {
        return true;
    }
    for i in 0..ops.len() {
        if placed[i] {
            continue;
        }
        let blocked = (0..ops.len()).any(|j| !placed[j] && j != i && end_time(ops[j]) < ops[i].invoke);
        if blocked {
            continue;
        }
        if let Some(next) = model_step(v, &ops[i].op, ops[i].end.as_ref().map(|(o, _)| o)) {
            placed[i] = true;
            let found = orders(ops, placed, &next);
            placed[i] = false;
            if found {
                return true;
            }
        }
    }
    false
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(3) {
        0 => None,
        1 => Some(b"a".to_vec()),
        _ => Some(b"b".to_vec()),
    }
}

fn random_history(rng: &mut Rng) -> Vec<Rec> {
    let n = 1 + rng.below(7) as usize;
    (0..n)
        .map(|c| {
            let (op, out) = match rng.below(6) {
                0 | 1 => (Op::Get, Output::Get(random_value(rng))),
                2 => (Op::put(if rng.chance(50) { "a" } else { "b" }), Output::Put),
                3 => {
                    let existed = [None, Some(false), Some(true)][rng.below(3) as usize];
                    (Op::Delete, Output::Delete { existed })
                }
                4 => {
                    let new_len = [None, Some(1), Some(2)][rng.below(3) as usize];
                    (Op::append("a"), Output::Append { new_len })
                }
                _ => {
                    let op = Op::Cas { expected: random_value(rng), new: random_value(rng) };
                    (op, Output::Cas { succeeded: rng.chance(50) })
                }
            };
            let invoke = rng.below(12);
            let end = (!rng.chance(20)).then(|| (out, invoke + rng.below(6)));
            Rec { client: ClientId(c as u64), key: b"k".to_vec(), op, invoke, end }
        })
        .collect()
}

#[test]
fn search_agrees_with_brute_force_on_tiny_histories() {
    let (mut accepted, mut rejected) = (0, 0);
    for seed in 0..20_000 {
        let recs = random_history(&mut Rng::new(seed));
        let expected = brute_force(&recs);
        let report = check(&to_history(&recs));
        assert_eq!(report.is_linearizable(), expected, "seed {seed}: {recs:#?}\n{report}");
        if !expected {
            assert!(matches!(report.outcome(b"k"), Some(Outcome::NotLinearizable { .. })));
        }
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    // Both verdicts must be well represented, or the comparison proves little.
    assert!(accepted > 2_000 && rejected > 2_000, "accepted {accepted}, rejected {rejected}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The same comparison over seeds the fixed loop does not cover.
    #[test]
    fn search_agrees_with_brute_force_on_random_seeds(seed in any::<u64>()) {
        let recs = random_history(&mut Rng::new(seed));
        let report = check(&to_history(&recs));
        prop_assert_eq!(report.is_linearizable(), brute_force(&recs), "{:#?}\n{}", recs, report);
    }
}
