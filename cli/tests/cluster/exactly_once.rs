//! A write retried with the same session and sequence number applies once, also when
//! the parts of a batch reach a region before and after a split is merged back.

use std::time::Duration;

use tessera_wire::quic::{ClientEndpoint, TransportConfig};
use tessera_wire::{
    KvOp, KvRequest, KvResponse, Limits, OperatorState, ReadConsistency, Request, RequestHeader, ResponseBody,
    RetryAction, Role, SessionId, SessionSeq, WriteCommand, WriteResult,
};

use crate::harness::{no_merges, wait_operator, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_with_the_same_session_sequence_applies_once() {
    let cluster = TestCluster::start(3, 4).await;
    let key = b"\x30once".to_vec();
    let route = cluster.route_with_leader(&key).await;
    let leader = route.leader.expect("leader");
    let idx = route.region.peers.iter().position(|p| p.id == leader.id).unwrap();
    let addr = route.peer_addrs[idx].clone();

    let tls = tessera_certs::client_tls_config(&cluster.client_tls()).unwrap();
    let endpoint =
        ClientEndpoint::new("127.0.0.1:0".parse().unwrap(), tls, Role::Client, TransportConfig::default()).unwrap();
    let conn = endpoint.connect(&addr).await.unwrap();
    let append = |seq: u64| {
        Request::Kv(KvRequest {
            header: RequestHeader {
                region_id: route.region.id,
                epoch: route.region.epoch,
                timeout_ms: 5_000,
                consistency: ReadConsistency::Linearizable,
            },
            op: KvOp::Write {
                session: Some(SessionSeq { session: SessionId(0xfeed), seq, first_pending: 1 }),
                command: WriteCommand::Append { key: key.clone(), value: b"x".to_vec() },
            },
        })
    };
    let first = conn.call(append(1), Duration::from_secs(10)).await.unwrap();
    let retry = conn.call(append(1), Duration::from_secs(10)).await.unwrap();
    let expected = Ok(ResponseBody::Kv(KvResponse::Write(WriteResult::Appended { new_len: 1 })));
    assert_eq!(first, expected);
    assert_eq!(retry, expected, "the retry returns the original result");
    let next = conn.call(append(2), Duration::from_secs(10)).await.unwrap();
    assert_eq!(next, Ok(ResponseBody::Kv(KvResponse::Write(WriteResult::Appended { new_len: 2 }))));
    // The retry of seq 1 after seq 2 still does not apply again.
    let late = conn.call(append(1), Duration::from_secs(10)).await.unwrap();
    assert_eq!(late, expected);
    assert_eq!(cluster.client().await.get(&key).await.unwrap(), Some(b"xx".to_vec()));
    cluster.shutdown().await;
}

/// Sends `command` under (`session`, `seq`) to the leader of the region holding its first
/// key, as PD reports it, until the region answers: a redirect (the routes PD reports lag a
/// split or a merge by a heartbeat) is sent again, with the same seq, as the SDK would.
async fn write_in_session(cluster: &TestCluster, session: SessionId, seq: u64, command: WriteCommand) -> WriteResult {
    let tls = tessera_certs::client_tls_config(&cluster.client_tls()).unwrap();
    let endpoint =
        ClientEndpoint::new("127.0.0.1:0".parse().unwrap(), tls, Role::Client, TransportConfig::default()).unwrap();
    let first_key = command.keys()[0].to_vec();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let route = cluster.route_with_leader(&first_key).await;
        let leader = route.leader.expect("leader");
        let idx = route.region.peers.iter().position(|p| p.id == leader.id).unwrap();
        let request = Request::Kv(KvRequest {
            header: RequestHeader {
                region_id: route.region.id,
                epoch: route.region.epoch,
                timeout_ms: 10_000,
                consistency: ReadConsistency::Linearizable,
            },
            op: KvOp::Write { session: Some(SessionSeq { session, seq, first_pending: 1 }), command: command.clone() },
        });
        let conn = endpoint.connect(&route.peer_addrs[idx]).await.unwrap();
        match conn.call(request, Duration::from_secs(15)).await.unwrap() {
            Ok(ResponseBody::Kv(KvResponse::Write(result))) => return result,
            Ok(other) => panic!("seq {seq}: unexpected answer {other:?}"),
            Err(e) if e.retry_action() != RetryAction::Surface && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("seq {seq}: {e}"),
        }
    }
}

/// The SDK writes a `batch_put` spanning regions as one part per region, all under the
/// batch's seq, and when a part's fate is unknown and its region has split it plans the
/// keys again, keeping the seq. Here the parts are sent by hand across a split and a merge
/// back, with the largest part the limits allow: a part applied before the merge must not
/// make the region answer the batch's other part, arriving after it, without writing it
/// (docs/storage.md, "Batches across regions"); and a retry of an applied part must still
/// not apply again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_of_a_batch_split_by_a_split_and_sent_after_a_merge_back_each_apply_once() {
    let cluster = TestCluster::start_placed(3, 1, no_merges).await;
    let client = cluster.client().await;
    let split = client.split_region(b"m").await.unwrap();
    assert_eq!(wait_operator(&client, split).await, OperatorState::Succeeded);
    let session = SessionId(0xba7c);
    let batch = |pairs: Vec<(Vec<u8>, Vec<u8>)>| WriteCommand::BatchPut { pairs };
    let small = |keys: &[&str], value: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        keys.iter().map(|k| (k.as_bytes().to_vec(), value.as_bytes().to_vec())).collect()
    };

    // Seq 1's left part is a batch at both limits at once (`max_batch_keys` pairs of
    // exactly `max_batch_bytes`), so the row that remembers its keys is as large as a row
    // can be. It applies in the left region: the merge's target.
    let limits = Limits::DEFAULT;
    let pair_len = limits.max_batch_bytes / limits.max_batch_keys;
    let value_len = 8;
    let big: Vec<(Vec<u8>, Vec<u8>)> = (0..limits.max_batch_keys)
        .map(|i| {
            let mut key = format!("a{i:06}").into_bytes();
            key.resize(pair_len - value_len, b'.');
            (key, b"seq1-big".to_vec())
        })
        .collect();
    assert_eq!(big.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(), limits.max_batch_bytes);
    assert_eq!(write_in_session(&cluster, session, 1, batch(big.clone())).await, WriteResult::Done);
    // Seq 2's right part applies in the right region: the merge's source.
    assert_eq!(write_in_session(&cluster, session, 2, batch(small(&["n2", "o2"], "seq2"))).await, WriteResult::Done);
    // Seq 3 has a part applied on each side: the merge must remember both.
    assert_eq!(write_in_session(&cluster, session, 3, batch(small(&["d3"], "seq3"))).await, WriteResult::Done);
    assert_eq!(write_in_session(&cluster, session, 3, batch(small(&["p3"], "seq3"))).await, WriteResult::Done);

    let merge = client.merge_region(b"m").await.unwrap();
    assert_eq!(wait_operator(&client, merge).await, OperatorState::Succeeded);
    let (_, regions) = client.cluster_status().await.unwrap();
    assert_eq!(regions.len(), 1, "{regions:?}");

    // The other parts arrive after the merge, under the same seqs: each must be written.
    assert_eq!(write_in_session(&cluster, session, 1, batch(small(&["n1", "o1"], "seq1"))).await, WriteResult::Done);
    assert_eq!(write_in_session(&cluster, session, 2, batch(small(&["b2", "c2"], "seq2"))).await, WriteResult::Done);
    for (key, value) in [("n1", "seq1"), ("o1", "seq1"), ("b2", "seq2"), ("c2", "seq2"), ("n2", "seq2")] {
        assert_eq!(client.get(key.as_bytes()).await.unwrap(), Some(value.as_bytes().to_vec()), "{key}");
    }

    // Retries of applied parts (the whole big part, a part sent after the merge, and one
    // naming the keys seq 3 applied on both sides) are answered without writing: keys
    // written since keep their newer values.
    let (first_big, last_big) = (&big[0].0, &big[big.len() - 1].0);
    client.put(first_big, b"newer").await.unwrap();
    for key in [b"n1".as_slice(), b"d3", b"p3"] {
        client.put(key, b"newer").await.unwrap();
    }
    assert_eq!(write_in_session(&cluster, session, 1, batch(big.clone())).await, WriteResult::Done);
    assert_eq!(write_in_session(&cluster, session, 1, batch(small(&["n1", "o1"], "seq1"))).await, WriteResult::Done);
    assert_eq!(write_in_session(&cluster, session, 3, batch(small(&["d3", "p3"], "seq3"))).await, WriteResult::Done);
    assert_eq!(client.get(first_big).await.unwrap(), Some(b"newer".to_vec()));
    assert_eq!(client.get(last_big).await.unwrap(), Some(b"seq1-big".to_vec()));
    for key in [b"n1".as_slice(), b"d3", b"p3"] {
        assert_eq!(client.get(key).await.unwrap(), Some(b"newer".to_vec()), "{}", String::from_utf8_lossy(key));
    }
    cluster.shutdown().await;
}
