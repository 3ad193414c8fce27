//! A write retried with the same session and sequence number applies once.

use std::time::Duration;

use tessera_wire::quic::{ClientEndpoint, TransportConfig};
use tessera_wire::{
    KvOp, KvRequest, KvResponse, ReadConsistency, Request, RequestHeader, ResponseBody, Role, SessionId, SessionSeq,
    WriteCommand, WriteResult,
};

use crate::harness::TestCluster;

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
