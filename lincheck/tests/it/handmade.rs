//! Small hand-written histories with a known verdict.

use tessera_lincheck::{check, check_with, CheckConfig, ClientId, History, Op, Outcome, Output};

const A: ClientId = ClientId(1);
const B: ClientId = ClientId(2);
const C: ClientId = ClientId(3);

fn put(h: &mut History, c: ClientId, v: &str, t0: u64, t1: u64) {
    h.record(c, "k", Op::put(v), Output::Put, t0, t1).unwrap();
}

fn get(h: &mut History, c: ClientId, seen: Option<&str>, t0: u64, t1: u64) {
    let out = Output::Get(seen.map(|s| s.as_bytes().to_vec()));
    h.record(c, "k", Op::Get, out, t0, t1).unwrap();
}

fn cas(h: &mut History, c: ClientId, from: Option<&str>, to: &str, ok: bool, t0: u64, t1: u64) {
    let op = Op::Cas { expected: from.map(|s| s.as_bytes().to_vec()), new: Some(to.into()) };
    h.record(c, "k", op, Output::Cas { succeeded: ok }, t0, t1).unwrap();
}

fn explanation(h: &History) -> String {
    let report = check(h);
    match report.outcome(b"k") {
        Some(Outcome::NotLinearizable { key, explanation }) => {
            assert_eq!(key, b"k");
            explanation.clone()
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn stale_read_after_completed_write_is_rejected() {
    let mut h = History::new();
    put(&mut h, A, "old", 0, 10);
    put(&mut h, A, "new", 20, 30);
    get(&mut h, B, Some("old"), 40, 50);
    let why = explanation(&h);
    assert!(why.contains("get -> \"old\""), "{why}");
}

#[test]
fn reads_seeing_concurrent_writes_in_opposite_orders_are_rejected() {
    let mut h = History::new();
    // Both writes overlap everything, but once B sees x then y, C cannot see y then x.
    put(&mut h, A, "x", 0, 100);
    put(&mut h, C, "y", 0, 100);
    get(&mut h, B, Some("x"), 10, 20);
    get(&mut h, B, Some("y"), 30, 40);
    get(&mut h, ClientId(4), Some("y"), 10, 20);
    get(&mut h, ClientId(4), Some("x"), 30, 40);
    explanation(&h);
}

#[test]
fn cas_succeeding_twice_from_the_same_expected_value_is_rejected() {
    let mut h = History::new();
    put(&mut h, A, "v0", 0, 10);
    cas(&mut h, B, Some("v0"), "v1", true, 20, 40);
    cas(&mut h, C, Some("v0"), "v2", true, 20, 40);
    explanation(&h);
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    let mut h = History::new();
    put(&mut h, A, "a", 0, 10);
    get(&mut h, B, Some("ghost"), 5, 15);
    explanation(&h);
}

#[test]
fn read_of_a_value_written_only_after_the_read_completed_is_rejected() {
    let mut h = History::new();
    get(&mut h, B, Some("future"), 0, 10);
    put(&mut h, A, "future", 11, 20);
    explanation(&h);
}

#[test]
fn read_of_absent_key_after_completed_put_is_rejected() {
    let mut h = History::new();
    put(&mut h, A, "a", 0, 10);
    get(&mut h, B, None, 11, 12);
    explanation(&h);
}

#[test]
fn delete_reporting_absent_key_after_put_is_rejected() {
    let mut h = History::new();
    put(&mut h, A, "a", 0, 10);
    h.record(B, "k", Op::Delete, Output::Delete { existed: Some(false) }, 11, 12).unwrap();
    explanation(&h);
}

#[test]
fn append_reporting_wrong_length_is_rejected() {
    let mut h = History::new();
    put(&mut h, A, "ab", 0, 10);
    let out = Output::Append { new_len: Some(2) };
    h.record(B, "k", Op::append("c"), out, 11, 12).unwrap();
    explanation(&h);
}

#[test]
fn concurrent_writes_with_reads_seeing_either_value_are_linearizable() {
    let mut h = History::new();
    put(&mut h, A, "x", 0, 100);
    put(&mut h, B, "y", 5, 90);
    // Concurrent reads may see absent, x or y, in an order some interleaving explains.
    get(&mut h, C, None, 1, 3);
    get(&mut h, C, Some("y"), 10, 20);
    get(&mut h, ClientId(4), Some("x"), 15, 25);
    get(&mut h, C, Some("x"), 30, 40);
    assert!(check(&h).is_linearizable(), "{}", check(&h));
}

#[test]
fn read_may_observe_a_write_that_completes_later() {
    let mut h = History::new();
    put(&mut h, A, "early", 0, 100);
    get(&mut h, B, Some("early"), 10, 20);
    get(&mut h, B, Some("early"), 30, 40);
    assert!(check(&h).is_linearizable());
}

#[test]
fn unknown_write_observed_later_is_linearizable() {
    let mut h = History::new();
    put(&mut h, A, "a", 0, 10);
    let lost = h.invoke(A, "k", Op::put("b"), 20);
    h.unknown(lost).unwrap();
    get(&mut h, B, Some("a"), 30, 40);
    get(&mut h, B, Some("b"), 1000, 1010);
    get(&mut h, C, Some("b"), 2000, 2010);
    assert!(check(&h).is_linearizable(), "{}", check(&h));
}

#[test]
fn unknown_write_never_observed_is_linearizable() {
    let mut h = History::new();
    put(&mut h, A, "a", 0, 10);
    let lost = h.invoke(A, "k", Op::put("b"), 20);
    h.unknown(lost).unwrap();
    for t in (30..300).step_by(20) {
        get(&mut h, B, Some("a"), t, t + 5);
    }
    assert!(check(&h).is_linearizable());
}

#[test]
fn unknown_write_cannot_take_effect_before_its_invocation() {
    let mut h = History::new();
    get(&mut h, B, Some("b"), 0, 10);
    let lost = h.invoke(A, "k", Op::put("b"), 20);
    h.unknown(lost).unwrap();
    explanation(&h);
}

#[test]
fn unknown_write_takes_effect_at_most_once() {
    let mut h = History::new();
    let lost = h.invoke(A, "k", Op::put("b"), 0);
    h.unknown(lost).unwrap();
    get(&mut h, B, Some("b"), 10, 20);
    put(&mut h, C, "c", 30, 40);
    get(&mut h, B, Some("b"), 50, 60);
    explanation(&h);
}

#[test]
fn pending_operation_is_treated_as_unknown() {
    let mut h = History::new();
    h.invoke(A, "k", Op::put("b"), 0);
    get(&mut h, B, Some("b"), 10, 20);
    assert!(check(&h).is_linearizable());
}

#[test]
fn unknown_cas_may_have_succeeded_or_not() {
    let mut h = History::new();
    put(&mut h, A, "v0", 0, 10);
    let op = Op::Cas { expected: Some("v0".into()), new: Some("v1".into()) };
    let id = h.invoke(B, "k", op, 20);
    h.unknown(id).unwrap();
    get(&mut h, C, Some("v0"), 30, 40);
    get(&mut h, C, Some("v1"), 50, 60);
    assert!(check(&h).is_linearizable());
}

#[test]
fn unknown_read_is_ignored() {
    let mut h = History::new();
    let id = h.invoke(A, "k", Op::Get, 0);
    h.unknown(id).unwrap();
    assert!(check(&h).is_linearizable());
    assert_eq!(check(&h).outcome(b"k"), Some(&Outcome::Linearizable));
}

#[test]
fn cas_append_and_delete_sequence_is_linearizable() {
    let mut h = History::new();
    cas(&mut h, A, None, "a", true, 0, 10);
    cas(&mut h, B, None, "z", false, 11, 12);
    let out = Output::Append { new_len: Some(3) };
    h.record(A, "k", Op::append("bc"), out, 13, 14).unwrap();
    get(&mut h, B, Some("abc"), 15, 16);
    h.record(C, "k", Op::Delete, Output::Delete { existed: Some(true) }, 17, 18).unwrap();
    h.record(C, "k", Op::Delete, Output::Delete { existed: Some(false) }, 19, 20).unwrap();
    get(&mut h, A, None, 21, 22);
    assert!(check(&h).is_linearizable(), "{}", check(&h));
}

#[test]
fn keys_are_checked_independently() {
    let mut h = History::new();
    h.record(A, "x", Op::put("1"), Output::Put, 0, 10).unwrap();
    h.record(B, "y", Op::Get, Output::value("1"), 20, 30).unwrap();
    h.record(B, "x", Op::Get, Output::value("1"), 20, 30).unwrap();
    let report = check(&h);
    assert_eq!(report.outcome(b"x"), Some(&Outcome::Linearizable));
    assert!(matches!(
        report.outcome(b"y"),
        Some(Outcome::NotLinearizable { key, .. }) if key == b"y"
    ));
    assert_eq!(report.violations().count(), 1);
    assert!(report.to_string().contains("1 of 2 keys linearizable"), "{report}");
}

#[test]
fn exhausted_search_budget_reports_timeout() {
    let mut h = History::new();
    for c in 0..10u64 {
        h.record(ClientId(c), "k", Op::put(vec![b'0' + c as u8]), Output::Put, 0, 100).unwrap();
    }
    get(&mut h, B, Some("never"), 50, 60);
    let report = check_with(&h, &CheckConfig { max_states_per_key: 100 });
    assert_eq!(report.outcome(b"k"), Some(&Outcome::Timeout));
    assert!(!report.is_linearizable());
    assert_eq!(report.timed_out().collect::<Vec<_>>(), vec![b"k".as_slice()]);
}

#[test]
fn equal_timestamps_count_as_concurrent() {
    let mut h = History::new();
    put(&mut h, A, "a", 0, 10);
    // Invoked at the instant the put completed: may be ordered before it.
    get(&mut h, B, None, 10, 20);
    assert!(check(&h).is_linearizable());
}
