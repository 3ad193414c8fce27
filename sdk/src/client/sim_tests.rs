//! Every failure classification, end to end through the public [`super::Client`] methods
//! and the real retry loop, on simulated time ([`super::sim`]).
//!
//! The cluster is one region (or two, split at `m`) with replicas on nodes 1-3, led by node
//! 1. Scripts list the answers to the KV calls in order; PD answers from its table.

use std::time::Duration;

use tessera_wire::TransportError;
use tessera_wire::{
    Error as W, FrameError, KvOp, KvResponse, LeaderHint, PdRequest, RegionId, Request, SessionSeq, WriteCommand,
    WriteResult,
};

use super::sim::{addr, peer, region, route, SentKv, Sim, Step, SESSION, START};
use crate::{Error, SessionId};

const R1: RegionId = RegionId(1);

/// One region over the whole key space.
async fn one_region() -> Sim {
    Sim::start(vec![route(region(1, b"", b"", 1), 1)]).await
}

/// One region, retried only until the deadline (no attempt budget).
async fn one_region_until_deadline() -> Sim {
    Sim::with_config(vec![route(region(1, b"", b"", 1), 1)], |cfg| cfg.backoff.max_attempts = 0).await
}

/// Two regions, split at `m`.
async fn two_regions() -> Sim {
    Sim::start(vec![route(region(1, b"", b"m", 2), 1), route(region(2, b"m", b"", 2), 1)]).await
}

fn seq_of(kv: &SentKv) -> SessionSeq {
    kv.session().expect("a write carries its session")
}

fn command_of(kv: &SentKv) -> &WriteCommand {
    match &kv.request.op {
        KvOp::Write { command, .. } => command,
        other => panic!("not a write: {other:?}"),
    }
}

/// All the attempts are of one write: the same session, sequence number and command (the
/// acknowledgement, `first_pending`, may move between attempts).
fn assert_same_write(kv: &[SentKv]) {
    let first = &kv[0];
    for k in kv {
        assert_eq!(seq_of(k).session, SESSION);
        assert_eq!(seq_of(k).seq, seq_of(first).seq, "a resent write keeps its sequence number");
        assert_eq!(command_of(k), command_of(first), "a resent write is the same write");
    }
}

fn region_unavailable() -> W {
    W::RegionUnavailable { region_id: R1, reason: "electing".into() }
}

#[tokio::test]
async fn not_leader_with_hint_sends_next_attempt_to_hinted_address() {
    let sim = one_region().await;
    // Node 3 rather than node 2: round robin after one failure would also pick node 2.
    let hint = LeaderHint { peer: peer(1, 3), addr: "n3-moved:7000".into() };
    sim.net.script([Step::server(W::NotLeader { region_id: R1, leader: Some(hint) }), Step::done()]);

    sim.client.put(b"k", b"v").await.unwrap();

    let kv = sim.net.kv_sent();
    let addrs: Vec<&str> = kv.iter().map(|k| k.addr.as_str()).collect();
    assert_eq!(addrs, [addr(1).as_str(), "n3-moved:7000"]);
    assert_eq!(kv[1].at, kv[0].at, "a leader hint is followed at once, without backoff");
    assert_same_write(&kv);
    assert_eq!(sim.client.debug_cached_leader(b"k"), Some(peer(1, 3)));
}

#[tokio::test]
async fn epoch_not_match_replaces_cache_and_retries_without_pd() {
    let sim = one_region().await;
    let (left, right) = (region(1, b"", b"m", 2), region(2, b"m", b"", 2));
    sim.net.script([Step::server(W::EpochNotMatch { current: vec![left, right.clone()] }), Step::done()]);

    sim.client.put(b"x", b"v").await.unwrap();

    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 2);
    assert_eq!(kv[1].request.header.region_id, right.id, "the retry goes to the region now holding the key");
    assert_eq!(kv[1].request.header.epoch, right.epoch);
    assert_eq!(kv[1].addr, addr(1), "the leader stays on the node that led the parent");
    assert_eq!(kv[1].at, kv[0].at, "the error carried the fix: no backoff");
    assert_same_write(&kv);
    let lookups = sim.net.pd_sent().iter().filter(|r| !matches!(r, PdRequest::AllocSession)).count();
    assert_eq!(lookups, 1, "only the first request asked PD");
    assert_eq!(sim.client.debug_cached_epoch(b"x"), Some(right.epoch));
}

#[tokio::test]
async fn server_busy_delays_next_attempt_by_at_least_retry_after() {
    let sim = one_region().await;
    // Longer than the backoff cap (250 ms), so only the hint can explain the wait.
    let hint = Duration::from_millis(700);
    sim.net.script([
        Step::server(W::ServerBusy { retry_after_ms: 700 }),
        Step::answer(KvResponse::Value(Some(b"v".to_vec()))),
    ]);

    assert_eq!(sim.client.get(b"k").await.unwrap(), Some(b"v".to_vec()));

    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 2);
    assert!(kv[1].at.saturating_duration_since(kv[0].at) >= hint, "{:?} -> {:?}", kv[0].at, kv[1].at);
}

#[tokio::test]
async fn region_unavailable_backs_off_and_retries() {
    let sim = one_region().await;
    sim.net.script([
        Step::server(region_unavailable()),
        Step::answer(KvResponse::Write(WriteResult::Appended { new_len: 3 })),
    ]);

    assert_eq!(sim.client.append(b"k", b"abc").await.unwrap(), 3);

    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 2);
    let waited = kv[1].at.saturating_duration_since(kv[0].at);
    assert!(waited >= sim.cfg.backoff.base, "backed off {waited:?}");
    assert!(waited <= sim.cfg.backoff.max, "backed off {waited:?}");
    assert_same_write(&kv);
}

/// A write whose every attempt fails with `never_sent` ends, at the deadline, as a definite
/// failure.
async fn write_never_sent_fails_definitely_at_deadline(never_sent: Step) -> Result<(), Error> {
    let sim = one_region_until_deadline().await;
    let deadline = sim.deadline_from_now();
    sim.net.otherwise(never_sent);

    let result = sim.client.batch_put(&[(b"a", b"1"), (b"b", b"2")]).await;

    let kv = sim.net.kv_sent();
    assert!(kv.len() > 1, "retried until the deadline, not given up at once");
    assert_same_write(&kv);
    // The loop stops once the next backoff would end past the deadline, not earlier.
    let gave_up = sim.now();
    assert!(gave_up.saturating_add(sim.cfg.backoff.max) >= deadline, "gave up at {gave_up:?}, deadline {deadline:?}");
    result
}

#[tokio::test]
async fn not_sent_write_fails_definitely_at_deadline() {
    let err = write_never_sent_fails_definitely_at_deadline(Step::fail(TransportError::NotSent("closed".into())))
        .await
        .unwrap_err();
    assert_eq!(err, Error::DeadlineExceeded);
    assert!(!err.is_undetermined());
}

#[tokio::test]
async fn connect_failure_write_fails_definitely_at_deadline() {
    let refused = TransportError::Connect { addr: addr(1), reason: "no connection within 1.5s".into() };
    let err = write_never_sent_fails_definitely_at_deadline(Step::fail(refused).taking(Duration::from_millis(1500)))
        .await
        .unwrap_err();
    assert_eq!(err, Error::DeadlineExceeded);
    assert!(!err.is_undetermined());
}

#[tokio::test]
async fn encode_failure_on_write_fails_at_once_as_invalid_argument() {
    let sim = one_region().await;
    let start = sim.now();
    sim.net.script([Step::fail(TransportError::Encode(FrameError::TooLarge { len: 1 << 30, max: 1 << 24 }))]);

    let err = sim.client.put(b"k", b"v").await.unwrap_err();

    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert_eq!(sim.net.kv_sent().len(), 1, "an unsendable request is not retried");
    assert_eq!(sim.now(), start);
}

#[tokio::test]
async fn timeout_on_write_until_deadline_is_undetermined_with_same_seq() {
    let sim = one_region_until_deadline().await;
    let deadline = sim.deadline_from_now();
    sim.net.otherwise(Step::time_out());

    let err = sim.client.put(b"k", b"v").await.unwrap_err();

    assert!(matches!(err, Error::Undetermined { .. }), "{err:?}");
    let kv = sim.net.kv_sent();
    assert!(kv.len() > 1, "resent after a timeout");
    assert_same_write(&kv);
    assert!(kv.iter().skip(1).all(|k| k.at > kv[0].at));
    assert!(sim.now() >= deadline);
}

#[tokio::test]
async fn a_per_call_timeout_replaces_the_configured_deadline() {
    let sim = one_region_until_deadline().await;
    sim.net.otherwise(Step::time_out());
    let started = sim.now();
    let short = Duration::from_millis(1500);
    assert!(short < sim.cfg.request_timeout);

    let err = sim.client.with_timeout(short).get(b"k").await.unwrap_err();

    assert!(matches!(err, Error::DeadlineExceeded | Error::Unavailable { .. }), "{err:?}");
    let spent = sim.now().saturating_duration_since(started);
    assert!(spent >= short && spent < sim.cfg.request_timeout, "gave up after {spent:?}");
    // The handle shares the client: the same session for its writes.
    assert_eq!(sim.client.with_timeout(short).session_id(), sim.client.session_id());
}

#[tokio::test]
async fn connection_lost_on_write_then_deadline_is_undetermined_with_same_seq() {
    let sim = one_region_until_deadline().await;
    sim.net.script([Step::fail(TransportError::ConnectionLost("reset".into()))]);
    // Every later attempt is definitely not sent; the first may have been applied.
    sim.net.otherwise(Step::fail(TransportError::NotSent("closed".into())));

    let err = sim.client.append(b"k", b"v").await.unwrap_err();

    assert!(matches!(err, Error::Undetermined { .. }), "{err:?}");
    let kv = sim.net.kv_sent();
    assert!(kv.len() > 1);
    assert_same_write(&kv);
}

#[tokio::test]
async fn write_undetermined_then_success_succeeds_with_same_seq() {
    let sim = one_region().await;
    sim.net.script([Step::server(W::WriteUndetermined { region_id: R1 }), Step::done()]);

    sim.client.batch_put(&[(b"a", b"1"), (b"b", b"2")]).await.unwrap();

    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 2);
    assert_same_write(&kv);
}

/// The first attempt fails definitely (the region is electing); the second is in flight
/// when the deadline passes, and then times out.
fn deadline_expires_during_second_attempt(sim: &Sim) {
    sim.net.script([
        Step::server(region_unavailable()),
        Step::fail(TransportError::Timeout).taking(sim.cfg.request_timeout + Duration::from_millis(1)),
    ]);
}

#[tokio::test]
async fn deadline_expiring_mid_attempt_fails_read_with_deadline_exceeded() {
    let sim = one_region().await;
    let deadline = sim.deadline_from_now();
    deadline_expires_during_second_attempt(&sim);

    let err = sim.client.get(b"k").await.unwrap_err();

    assert_eq!(err, Error::DeadlineExceeded);
    assert_eq!(sim.net.kv_sent().len(), 2, "no attempt after the deadline");
    assert!(sim.now() > deadline);
    assert_eq!(sim.net.unused_steps(), 0);
}

#[tokio::test]
async fn deadline_expiring_mid_attempt_leaves_write_undetermined() {
    let sim = one_region().await;
    let deadline = sim.deadline_from_now();
    deadline_expires_during_second_attempt(&sim);

    let err = sim.client.put(b"k", b"v").await.unwrap_err();

    assert!(matches!(err, Error::Undetermined { .. }), "{err:?}");
    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 2, "no attempt after the deadline");
    assert_same_write(&kv);
    assert!(sim.now() > deadline);
}

#[tokio::test]
async fn value_too_large_after_possible_delivery_surfaces_as_value_too_large() {
    let sim = one_region().await;
    // The first attempt may have reached the server; the second proves the request itself
    // is rejected, so no attempt of it can have been applied.
    sim.net.script([Step::time_out(), Step::server(W::ValueTooLarge { len: 100, max: 10 })]);

    let err = sim.client.append(b"k", &[0; 100]).await.unwrap_err();

    assert_eq!(err, Error::ValueTooLarge { len: 100, max: 10 });
    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 2);
    assert_same_write(&kv);
}

#[tokio::test]
async fn session_expired_surfaces_as_server_error_without_retry() {
    let sim = one_region().await;
    sim.net.script([Step::server(W::SessionExpired { session: SESSION })]);

    let err = sim.client.put(b"k", b"v").await.unwrap_err();

    assert_eq!(err, Error::Server(W::SessionExpired { session: SESSION }));
    assert!(!err.is_undetermined());
    assert_eq!(sim.net.kv_sent().len(), 1);
}

#[tokio::test]
async fn after_session_expired_the_next_write_uses_a_fresh_session() {
    let sim = one_region().await;
    sim.net.script([Step::server(W::SessionExpired { session: SESSION }), Step::done()]);
    sim.client.put(b"k", b"v").await.unwrap_err();
    sim.client.put(b"k", b"v").await.unwrap();
    let sent = writes(&sim.net.kv_sent());
    assert_eq!(sent[0].session, SESSION);
    assert_eq!((sent[1].session, sent[1].seq), (SessionId(SESSION.0 + 1), 1), "a new session, from seq 1");
    assert_eq!(sim.client.session_id(), SessionId(SESSION.0 + 1));
}

#[tokio::test]
async fn an_idle_session_is_renewed_before_the_next_write_and_a_busy_one_is_not() {
    let sim = one_region().await;
    sim.net.otherwise(Step::done());
    sim.client.put(b"k", b"1").await.unwrap();
    // Just under the renewal age: same session.
    sim.clock.advance(sim.cfg.session_renew_after - Duration::from_secs(1));
    sim.client.put(b"k", b"2").await.unwrap();
    // Idle for the renewal age since that write: a new session.
    sim.clock.advance(sim.cfg.session_renew_after);
    sim.client.put(b"k", b"3").await.unwrap();
    let sent = writes(&sim.net.kv_sent());
    let ids: Vec<(u64, u64)> = sent.iter().map(|s| (s.session.0, s.seq)).collect();
    assert_eq!(ids, vec![(SESSION.0, 1), (SESSION.0, 2), (SESSION.0 + 1, 1)]);
    let allocations = sim.net.pd_sent().iter().filter(|r| matches!(r, PdRequest::AllocSession)).count();
    assert_eq!(allocations, 2);
}

fn writes(kv: &[SentKv]) -> Vec<SessionSeq> {
    kv.iter().filter_map(SentKv::session).collect()
}

#[tokio::test]
async fn every_write_carries_first_pending_at_most_its_seq() {
    let sim = two_regions().await;
    sim.net.script([
        // put: retried once.
        Step::server(region_unavailable()),
        Step::done(),
        // batch_put over both regions: two writes pending at once, the second retried.
        Step::done(),
        Step::server(W::RegionUnavailable { region_id: RegionId(2), reason: "electing".into() }),
        Step::done(),
        // append.
        Step::answer(KvResponse::Write(WriteResult::Appended { new_len: 1 })),
    ]);

    sim.client.put(b"a", b"1").await.unwrap();
    sim.client.batch_put(&[(b"b", b"2"), (b"y", b"3")]).await.unwrap();
    sim.client.append(b"z", b"4").await.unwrap();

    let sent = writes(&sim.net.kv_sent());
    assert_eq!(sent.len(), 6);
    for s in &sent {
        assert!(s.first_pending <= s.seq, "{s:?}");
    }
    let pairs: Vec<(u64, u64)> = sent.iter().map(|s| (s.seq, s.first_pending)).collect();
    // The batch's parts stay pending until the batch call returns, so its second part
    // acknowledges nothing past the first; the append after it acknowledges them all.
    assert_eq!(pairs, [(1, 1), (1, 1), (2, 2), (3, 2), (3, 2), (4, 4)]);
}

#[tokio::test]
async fn first_pending_moves_past_a_returned_write() {
    let sim = one_region().await;
    sim.net.script([
        Step::done(),
        // The second write ends undetermined: given up, it is never resent either.
        Step::time_out().taking(sim.cfg.request_timeout),
        Step::done(),
    ]);

    sim.client.put(b"a", b"1").await.unwrap();
    assert!(sim.client.put(b"b", b"2").await.unwrap_err().is_undetermined());
    sim.client.put(b"c", b"3").await.unwrap();

    let sent = writes(&sim.net.kv_sent());
    let pairs: Vec<(u64, u64)> = sent.iter().map(|s| (s.seq, s.first_pending)).collect();
    assert_eq!(pairs, [(1, 1), (2, 2), (3, 3)]);
    for w in sent.windows(2) {
        assert!(w[1].first_pending > w[0].seq, "{:?} then {:?}", w[0], w[1]);
    }
}

#[tokio::test]
async fn simulated_client_connects_with_one_session_request_and_no_time() {
    let sim = one_region().await;
    assert_eq!(sim.now(), START);
    assert_eq!(sim.net.pd_sent(), [PdRequest::AllocSession]);
    assert!(sim.net.kv_sent().is_empty());
    assert_eq!(sim.client.session_id(), SESSION);
}

#[tokio::test]
async fn attempt_timeout_is_the_smaller_of_config_and_time_left() {
    let sim = one_region().await;
    let deadline = sim.deadline_from_now();
    // The first attempt takes 8 of the 10 s, leaving less than one attempt timeout (3 s).
    sim.net.script([
        Step::server(region_unavailable()).taking(Duration::from_secs(8)),
        Step::answer(KvResponse::Value(None)),
    ]);

    assert_eq!(sim.client.get(b"k").await.unwrap(), None);

    let sent: Vec<_> = sim.net.sent().into_iter().filter(|s| matches!(s.request, Request::Kv(_))).collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].timeout, sim.cfg.attempt_timeout);
    let left = deadline.saturating_duration_since(sent[1].at);
    assert!(left < sim.cfg.attempt_timeout);
    assert_eq!(sent[1].timeout, left, "the last attempt may use only the time left");
    let kv = sim.net.kv_sent();
    assert_eq!(Duration::from_millis(kv[0].request.header.timeout_ms.into()), sim.cfg.request_timeout);
    assert_eq!(Duration::from_millis(kv[1].request.header.timeout_ms.into()), left, "the server is told the time left");
}

#[tokio::test]
async fn the_resent_append_hook_sends_one_write_twice_with_one_sequence_number() {
    let sim = one_region().await;
    sim.net.script([
        Step::answer(KvResponse::Write(WriteResult::Appended { new_len: 1 })),
        Step::answer(KvResponse::Write(WriteResult::Appended { new_len: 1 })),
    ]);

    assert_eq!(sim.client.debug_append_resent(b"k", b"x").await.unwrap(), (1, 1));

    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 2);
    assert_same_write(&kv);
    assert!(seq_of(&kv[1]).first_pending <= seq_of(&kv[1]).seq, "the write is still pending on the resend");
}

/// The keys of a batch write as sent.
fn batch_keys(kv: &SentKv) -> Vec<Vec<u8>> {
    match command_of(kv) {
        WriteCommand::BatchPut { pairs } => pairs.iter().map(|(k, _)| k.clone()).collect(),
        other => panic!("not a batch put: {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_refused_whole_sends_its_parts_under_sequence_numbers_of_their_own() {
    // The cache holds one region; the cluster has split it. The refused batch was applied
    // nowhere, so its parts need not share its number. Sharing it, two parts could meet in
    // one region after a merge, and the second would be answered as a replay of the first.
    let sim = one_region().await;
    let (left, right) = (region(1, b"", b"m", 2), region(2, b"m", b"", 2));
    sim.net.script([Step::server(W::EpochNotMatch { current: vec![left, right] }), Step::done(), Step::done()]);

    sim.client.batch_put(&[(b"a", b"1"), (b"x", b"2")]).await.unwrap();

    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 3);
    assert_eq!(batch_keys(&kv[0]), [b"a".to_vec(), b"x".to_vec()]);
    let mut parts: Vec<(Vec<Vec<u8>>, u64)> = kv[1..].iter().map(|k| (batch_keys(k), seq_of(k).seq)).collect();
    parts.sort();
    assert_eq!(parts[0].0, [b"a".to_vec()]);
    assert_eq!(parts[1].0, [b"x".to_vec()]);
    let (whole, a, x) = (seq_of(&kv[0]).seq, parts[0].1, parts[1].1);
    assert!(whole != a && whole != x && a != x, "sequence numbers: batch {whole}, parts {a} and {x}");
}

#[tokio::test]
async fn a_batch_that_may_have_applied_keeps_its_sequence_number_in_every_part() {
    // The first attempt's fate is unknown: it may have applied whole before the split, and
    // each half then finds its record in the region now holding it (a split copies the
    // parent's session rows), so both parts must ask under the batch's number.
    let sim = one_region().await;
    let (left, right) = (region(1, b"", b"m", 2), region(2, b"m", b"", 2));
    sim.net.script([
        Step::time_out(),
        Step::server(W::EpochNotMatch { current: vec![left, right] }),
        Step::done(),
        Step::done(),
    ]);

    sim.client.batch_put(&[(b"a", b"1"), (b"x", b"2")]).await.unwrap();

    let kv = sim.net.kv_sent();
    assert_eq!(kv.len(), 4);
    let whole = seq_of(&kv[0]).seq;
    assert!(kv.iter().all(|k| seq_of(k).seq == whole), "{:?}", kv.iter().map(seq_of).collect::<Vec<_>>());
    let mut keys: Vec<Vec<Vec<u8>>> = kv[2..].iter().map(batch_keys).collect();
    keys.sort();
    assert_eq!(keys, [vec![b"a".to_vec()], vec![b"x".to_vec()]]);
}
