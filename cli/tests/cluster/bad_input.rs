//! Bad input reaches typed errors; the servers keep serving.

use std::time::Duration;

use tessera_wire::quic::{ClientEndpoint, TransportConfig, TransportError};
use tessera_wire::{
    Error, KvOp, KvRequest, NodeId, RaftRequest, RaftRpcKind, ReadConsistency, RegionEpoch, RegionId, Request,
    RequestHeader, Role,
};

use crate::harness::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors_and_the_cluster_keeps_serving() {
    let cluster = TestCluster::start(3, 1).await;
    let node_addr = cluster.node_addrs[&1].to_string();
    let tls = tessera_certs::client_tls_config(&cluster.client_tls()).unwrap();

    // A client certificate claiming to be node 1 is refused at the handshake.
    let as_node = ClientEndpoint::new(
        "127.0.0.1:0".parse().unwrap(),
        tls.clone(),
        Role::Node(NodeId(1)),
        TransportConfig::default(),
    )
    .unwrap();
    match as_node.connect(&node_addr).await {
        Err(TransportError::Refused(Error::PermissionDenied { .. } | Error::Unauthenticated { .. })) => {}
        other => panic!("client certificate acting as a node was not refused: {other:?}"),
    }

    let client_ep =
        ClientEndpoint::new("127.0.0.1:0".parse().unwrap(), tls, Role::Client, TransportConfig::default()).unwrap();
    let conn = client_ep.connect(&node_addr).await.unwrap();
    // A client may not send Raft messages.
    let raft = Request::Raft(RaftRequest {
        region_id: RegionId(1),
        to_peer: tessera_wire::PeerId(1),
        kind: RaftRpcKind::Vote,
        payload: vec![1, 2, 3],
    });
    assert!(matches!(conn.call(raft, Duration::from_secs(5)).await.unwrap(), Err(Error::PermissionDenied { .. })));
    // An unknown region.
    let unknown = Request::Kv(KvRequest {
        header: RequestHeader {
            region_id: RegionId(9_999),
            epoch: RegionEpoch::default(),
            timeout_ms: 0,
            consistency: ReadConsistency::Linearizable,
        },
        op: KvOp::Get { key: b"k".to_vec() },
    });
    assert_eq!(
        conn.call(unknown, Duration::from_secs(5)).await.unwrap(),
        Err(Error::RegionNotFound { region_id: RegionId(9_999) })
    );

    // Through the SDK: oversized keys and values are refused with typed errors.
    let client = cluster.client().await;
    let big_key = vec![b'k'; 64 * 1024];
    let err = client.put(&big_key, b"v").await.unwrap_err();
    assert!(matches!(err, tessera::Error::KeyTooLarge { .. }), "{err:?}");
    let big_value = vec![0u8; 2 * 1024 * 1024];
    let err = client.put(b"k", &big_value).await.unwrap_err();
    assert!(matches!(err, tessera::Error::ValueTooLarge { .. }), "{err:?}");

    // And the cluster still serves good requests.
    client.put(b"k", b"v").await.unwrap();
    assert_eq!(client.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    cluster.shutdown().await;
}
