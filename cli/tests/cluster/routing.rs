//! Clients with stale routing caches are redirected by typed errors, invisibly to callers.

use tessera::RegionEpoch;

use crate::harness::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_follower_as_leader_is_corrected_by_not_leader() {
    let cluster = TestCluster::start(3, 4).await;
    let key = b"\x90stale-leader".to_vec();
    cluster.client().await.put(&key, b"v1").await.unwrap();
    let route = cluster.route_with_leader(&key).await;
    let leader = route.leader.expect("leader");
    let follower = *route.region.peers.iter().find(|p| p.id != leader.id).unwrap();

    let client = cluster.client().await;
    client.debug_cache_route(route.region.clone(), Some(follower), route.peer_addrs.clone());
    assert_eq!(client.debug_cached_leader(&key), Some(follower), "the cache starts out wrong");
    assert_eq!(client.get(&key).await.unwrap(), Some(b"v1".to_vec()));
    assert_eq!(client.debug_cached_leader(&key), Some(leader), "NotLeader's hint fixed the cache");
    client.debug_cache_route(route.region.clone(), Some(follower), route.peer_addrs.clone());
    client.put(&key, b"v2").await.unwrap();
    assert_eq!(client.get(&key).await.unwrap(), Some(b"v2".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_old_epoch_is_replaced_from_epoch_not_match() {
    let cluster = TestCluster::start(3, 4).await;
    let key = b"\xc0stale-epoch".to_vec();
    cluster.client().await.put(&key, b"v1").await.unwrap();
    let route = cluster.route_with_leader(&key).await;
    let current = route.region.epoch;
    let mut stale = route.region.clone();
    stale.epoch = RegionEpoch { conf_ver: current.conf_ver, version: current.version - 1 };

    let client = cluster.client().await;
    client.debug_cache_route(stale.clone(), route.leader, route.peer_addrs.clone());
    assert_eq!(client.debug_cached_epoch(&key), Some(stale.epoch));
    assert_eq!(client.get(&key).await.unwrap(), Some(b"v1".to_vec()));
    assert_eq!(client.debug_cached_epoch(&key), Some(current), "EpochNotMatch replaced the cached region");
    client.debug_cache_route(stale, route.leader, route.peer_addrs.clone());
    client.put(&key, b"v2").await.unwrap();
    assert_eq!(client.get(&key).await.unwrap(), Some(b"v2".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_majority_down_only_stale_reads_are_served() {
    let mut cluster = TestCluster::start(3, 1).await;
    let key = b"\x42stale".to_vec();
    cluster.client().await.put(&key, b"v").await.unwrap();
    // Wait until the survivor itself has applied the write (a stale read sent straight to
    // it returns the value), then stop the other two.
    let survivor = 3;
    let route = cluster.route_with_leader(&key).await;
    let tls = tessera_certs::client_tls_config(&cluster.client_tls()).unwrap();
    let endpoint = tessera_wire::quic::ClientEndpoint::new(
        "127.0.0.1:0".parse().unwrap(),
        tls,
        tessera_wire::Role::Client,
        tessera_wire::quic::TransportConfig::default(),
    )
    .unwrap();
    let conn = endpoint.connect(&cluster.node_addrs[&survivor].to_string()).await.unwrap();
    let stale_get = tessera_wire::Request::Kv(tessera_wire::KvRequest {
        header: tessera_wire::RequestHeader {
            region_id: route.region.id,
            epoch: route.region.epoch,
            timeout_ms: 1_000,
            consistency: tessera::ReadConsistency::Stale,
        },
        op: tessera_wire::KvOp::Get { key: key.clone() },
    });
    let applied = Ok(tessera_wire::ResponseBody::Kv(tessera_wire::KvResponse::Value(Some(b"v".to_vec()))));
    // Re-check on each of the survivor's state changes (its applied index moves).
    let mut changes = cluster.nodes[&survivor].as_ref().unwrap().subscribe();
    let wait = async {
        while conn.call(stale_get.clone(), std::time::Duration::from_secs(2)).await.unwrap() != applied {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("node {survivor} never applied the write"));
    for id in [1, 2] {
        cluster.stop_node(id).await;
    }
    let mut cfg = tessera::ClientConfig::new(vec![cluster.pd_addr.to_string()], Some(cluster.client_tls()));
    cfg.request_timeout = std::time::Duration::from_secs(3);
    let client = tessera::Client::connect(cfg).await.unwrap();
    let linearizable = client.get(&key).await;
    assert!(linearizable.is_err(), "a linearizable read needs a quorum: {linearizable:?}");
    // The stale read may first try the dead replicas (each costs an attempt timeout), so
    // it gets the default deadline.
    let stale = cluster.client().await.get_with(&key, tessera::ReadConsistency::Stale).await.unwrap();
    assert_eq!(stale, Some(b"v".to_vec()), "node {survivor} serves its applied state");
    cluster.shutdown().await;
}
