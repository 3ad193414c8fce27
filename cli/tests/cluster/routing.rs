//! Clients with stale routing caches are redirected by typed errors, invisibly to callers.

use futures::StreamExt;
use tessera::RegionEpoch;
use tessera_wire::{Limits, OperatorState};

use crate::harness::{no_merges, wait_operator, TestCluster};

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

/// A batch planned on a cache that predates a split goes to the old region whole, is
/// refused with `EpochNotMatch`, and is planned again by the regions the refusal names: the
/// SDK's own re-planning (`Client::per_region`), against a real split. The batches are as
/// large as the limits allow (`max_batch_keys` pairs of `max_batch_bytes` in all), half on
/// each side of the split, so each half is a part of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_planned_before_a_split_is_planned_again_by_the_sdk_and_applies_whole() {
    let cluster = TestCluster::start_placed(3, 1, no_merges).await;
    let limits = Limits::DEFAULT;
    let pair_len = limits.max_batch_bytes / limits.max_batch_keys;
    let value_len = 8;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..limits.max_batch_keys)
        .map(|i| {
            let side = if i % 2 == 0 { 'a' } else { 'x' };
            let mut key = format!("{side}{i:06}").into_bytes();
            key.resize(pair_len - value_len, b'.');
            (key, format!("v{i:07}").into_bytes())
        })
        .collect();
    assert_eq!(pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(), limits.max_batch_bytes);
    let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_slice()).collect();
    let (left, right) = (keys[0], keys[1]);

    // Two clients learn the single region, then another splits it at "m".
    let writer = cluster.client().await;
    let reader = cluster.client().await;
    assert_eq!(writer.get(left).await.unwrap(), None);
    assert_eq!(reader.get(right).await.unwrap(), None);
    let before = writer.debug_cached_epoch(left).expect("cached");
    let admin = cluster.client().await;
    let split = admin.split_region(b"m").await.unwrap();
    assert_eq!(wait_operator(&admin, split).await, OperatorState::Succeeded);
    for (client, key) in [(&writer, left), (&writer, right), (&reader, left), (&reader, right)] {
        assert_eq!(client.debug_cached_epoch(key), Some(before), "the cache predates the split");
    }

    // Planned as one part, refused whole, planned again as two.
    writer.batch_put(&pairs).await.unwrap();
    for key in [left, right] {
        let epoch = writer.debug_cached_epoch(key).expect("cached");
        assert_ne!(epoch, before, "the writer learned the split from the refusal");
    }
    let values = reader.batch_get(&keys).await.unwrap();
    for ((key, value), got) in pairs.iter().zip(&values) {
        assert_eq!(got.as_ref(), Some(value), "{}", String::from_utf8_lossy(&key[..7]));
    }
    for key in [left, right] {
        assert_ne!(reader.debug_cached_epoch(key), Some(before), "the reader planned again too");
    }

    // Each pair is stored once: a scan across both regions returns exactly the batch.
    let (_, regions) = admin.cluster_status().await.unwrap();
    assert_eq!(regions.len(), 2, "{regions:?}");
    let stored: Vec<_> = admin.scan(b"", b"", Default::default()).collect().await;
    let stored: Vec<(Vec<u8>, Vec<u8>)> = stored.into_iter().map(Result::unwrap).collect();
    let mut expected = pairs.clone();
    expected.sort();
    assert_eq!(stored.len(), expected.len());
    assert!(stored == expected, "the scan returns exactly the batch's pairs");
    cluster.shutdown().await;
}
