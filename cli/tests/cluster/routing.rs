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
