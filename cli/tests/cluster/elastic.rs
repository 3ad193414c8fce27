//! Elastic regions: splits under load, rebalancing onto new nodes, repair after a node is
//! down too long, and draining a node down to zero rows.
//!
//! PD's view is polled (it offers no change notifications); every wait is bounded and
//! panics with the cluster's shape when it runs out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tessera::ScanOptions;
use tessera_pd::PdConfig;
use tessera_wire::{NodeId, NodeInfo, RegionInfo};

use crate::harness::{no_merges, wait_operator, TestCluster};

/// Replicas (voters and learners) and leaders per node, in PD's view.
fn counts(regions: &[RegionInfo]) -> (BTreeMap<NodeId, u64>, BTreeMap<NodeId, u64>) {
    let (mut replicas, mut leaders) = (BTreeMap::new(), BTreeMap::new());
    for r in regions {
        for p in r.region.peers.iter().chain(&r.learners) {
            *replicas.entry(p.node_id).or_insert(0) += 1;
        }
        if let Some(l) = r.leader {
            *leaders.entry(l.node_id).or_insert(0) += 1;
        }
    }
    (replicas, leaders)
}

/// Every region has exactly 3 voters on distinct nodes among `live`, no learner, and a
/// leader.
fn settled_on(regions: &[RegionInfo], live: &[u64]) -> bool {
    !regions.is_empty()
        && regions.iter().all(|r| {
            let mut nodes: Vec<u64> = r.region.peers.iter().map(|p| p.node_id.0).collect();
            nodes.sort();
            nodes.dedup();
            r.region.peers.len() == 3
                && nodes.len() == 3
                && nodes.iter().all(|n| live.contains(n))
                && r.learners.is_empty()
                && r.leader.is_some_and(|l| live.contains(&l.node_id.0))
        })
}

fn spread(counts: &BTreeMap<NodeId, u64>, nodes: &[u64]) -> u64 {
    let per: Vec<u64> = nodes.iter().map(|n| counts.get(&NodeId(*n)).copied().unwrap_or(0)).collect();
    per.iter().max().unwrap() - per.iter().min().unwrap()
}

fn small_regions(pd: &mut PdConfig) {
    pd.scheduler.split_bytes = 96 * 1024;
    pd.scheduler.split_keys = 1_000_000;
    no_merges(pd);
}

fn load_key(i: usize) -> Vec<u8> {
    format!("load-{i:05}").into_bytes()
}

fn load_value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i:05}-").into_bytes();
    v.resize(100, b'.');
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_20000_keys_into_one_region_splits_it_and_every_key_stays_readable() {
    load_split_and_check(3).await;
}

/// The same load on four nodes: the balancer moves regions onto the fourth while they
/// split, so replicas created empty receive snapshots of split-off regions during the load,
/// and the bootstrap region (whose batches once spanned the whole key space) gains a
/// replica after it split: it must start from a snapshot, never replay those batches
/// against its narrower range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_20000_keys_while_split_regions_move_to_a_fourth_node_keeps_every_key_readable() {
    load_split_and_check(4).await;
}

async fn load_split_and_check(nodes: u64) {
    const KEYS: usize = 20_000;
    let cluster = TestCluster::start_placed(nodes, 1, small_regions).await;
    let client = cluster.client().await;
    // Keys in a shuffled order, so that every part of the key space grows and splits.
    let mut order: Vec<usize> = (0..KEYS).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let order = Arc::new(order);
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // A reader checks acknowledged keys throughout, through every split.
    let reader = {
        let (client, order, acknowledged, stop) =
            (cluster.client().await, order.clone(), acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(11);
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let n = acknowledged.load(Ordering::SeqCst);
                if n == 0 {
                    tokio::task::yield_now().await;
                    continue;
                }
                let i = order[rng.random_range(0..n)];
                let got = client.get(&load_key(i)).await.unwrap_or_else(|e| panic!("reading key {i}: {e}"));
                assert_eq!(got, Some(load_value(i)), "key {i} was acknowledged");
                reads += 1;
            }
            reads
        })
    };
    for chunk in order.chunks(100) {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = chunk.iter().map(|&i| (load_key(i), load_value(i))).collect();
        client.batch_put(&pairs).await.expect("batch put");
        acknowledged.fetch_add(chunk.len(), Ordering::SeqCst);
    }
    let (_, regions) = cluster
        .wait_for_pd(Duration::from_secs(60), "at least 16 regions, each with a leader", |_, regions| {
            regions.len() >= 16 && regions.iter().all(|r| r.leader.is_some())
        })
        .await;
    stop.store(true, Ordering::SeqCst);
    let reads = reader.await.unwrap();
    assert!(reads > 0, "the reader read while the regions split");
    // The regions tile the key space.
    assert!(regions[0].region.start_key.is_empty() && regions.last().unwrap().region.end_key.is_empty());
    for w in regions.windows(2) {
        assert_eq!(w[0].region.end_key, w[1].region.start_key, "regions are contiguous");
    }
    // Every key once, in order.
    let pairs: Vec<(Vec<u8>, Vec<u8>)> =
        client.scan(b"", b"", ScanOptions::default()).map(|p| p.expect("scan")).collect().await;
    assert_eq!(pairs.len(), KEYS, "every key once");
    for (i, (k, v)) in pairs.iter().enumerate() {
        assert_eq!((k, v), (&load_key(i), &load_value(i)), "pair {i} in key order");
    }
    cluster.shutdown().await;
}

/// Splits at the limits: a region of pairs with keys and values of the maximum size
/// (8 KiB, 1 MiB) splits between them until each pair is alone in a region larger than the
/// threshold, which has no key to split at and stays whole and serving. Every pair reads
/// back intact, and a scan (one pair per page at this size) sees each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_of_maximum_size_keys_and_values_split_down_to_one_pair_each() {
    use tessera_wire::Limits;
    const PAIRS: u8 = 6;
    let cluster = TestCluster::start_placed(3, 1, |pd| {
        small_regions(pd);
        pd.scheduler.split_bytes = 512 * 1024;
    })
    .await;
    let client = cluster.client().await;
    let key = |i: u8| {
        let mut k = vec![b'm', i];
        k.resize(Limits::DEFAULT.max_key_len, i);
        k
    };
    let value = |i: u8| vec![i; Limits::DEFAULT.max_value_len];
    for i in 0..PAIRS {
        client.put(&key(i), &value(i)).await.unwrap();
    }
    let (_, regions) = cluster
        .wait_for_pd(Duration::from_secs(90), "one region per pair, each with a leader", |_, regions| {
            regions.len() == PAIRS as usize && regions.iter().all(|r| r.leader.is_some())
        })
        .await;
    // Each pair is alone in its region: the first region starts at the empty key and
    // holds pair 0; every other starts exactly at its pair's key.
    for (i, r) in regions.iter().enumerate().skip(1) {
        assert_eq!(r.region.start_key, key(i as u8), "region {i} starts at its pair's key");
    }
    for i in 0..PAIRS {
        assert!(client.get(&key(i)).await.unwrap() == Some(value(i)), "pair {i} intact");
    }
    let pairs: Vec<(Vec<u8>, Vec<u8>)> =
        client.scan(b"", b"", ScanOptions::default()).map(|p| p.expect("scan")).collect().await;
    assert_eq!(pairs.len(), PAIRS as usize, "every pair once");
    for (i, (k, v)) in pairs.iter().enumerate() {
        assert!(*k == key(i as u8) && *v == value(i as u8), "pair {i} in key order");
    }
    // A region that cannot split still takes writes (PD keeps asking; the leader refuses).
    client.put(&key(3), b"small now").await.unwrap();
    assert_eq!(client.get(&key(3)).await.unwrap(), Some(b"small now".to_vec()));
    cluster.shutdown().await;
}

/// Key `i` of [`one_region_split_only_for_load`].
fn hot_test_key(i: usize) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

/// One region holding keys 0 to 999 ([`hot_test_key`]) with 100-byte values, which PD
/// splits past 30 requests a second and never for its size.
async fn one_region_split_only_for_load() -> (TestCluster, tessera::Client) {
    let cluster = TestCluster::start_placed(3, 1, |pd| {
        small_regions(pd);
        pd.scheduler.split_bytes = 1 << 30;
        pd.scheduler.hot_qps = 30;
        // The test's own readers keep the CI machine's CPUs busy: split whatever the CPU.
        pd.scheduler.split_max_host_busy_pct = 100;
    })
    .await;
    let client = cluster.client().await;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..1000).map(|i| (hot_test_key(i), vec![b'v'; 100])).collect();
    for chunk in pairs.chunks(250) {
        client.batch_put(chunk).await.unwrap();
    }
    (cluster, client)
}

/// A region that is small but hot splits where its load halves, not where its size does:
/// reads hammer the first 50 of 1,000 keys, so the first split falls among those 50 (the
/// size midpoint would be near key 500). The reads last the hot window (10 s) first: a
/// shorter burst is not load to split for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_region_splits_where_its_load_halves() {
    let (cluster, client) = one_region_split_only_for_load().await;
    let key = hot_test_key;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = r;
                while !stop.load(Ordering::SeqCst) {
                    client.get(&key(i % 50)).await.unwrap();
                    i += 7;
                }
            })
        })
        .collect();
    let (_, regions) = cluster
        .wait_for_pd(Duration::from_secs(60), "a split of the hot region", |_, regions| regions.len() >= 2)
        .await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    let first_split = &regions[0].region.end_key;
    assert!(
        first_split.as_slice() > key(0).as_slice() && first_split.as_slice() <= key(50).as_slice(),
        "the split key {} is among the hot keys",
        String::from_utf8_lossy(first_split)
    );
    cluster.shutdown().await;
}

/// A region hot on one key stays whole: no boundary splits its requests evenly, so a split
/// would leave the key's region as hot as before plus a region more. PD plans the load
/// split and resends it with every heartbeat; the leader refuses it each time. The test
/// checks the region stays whole until PD's operator has been refused for 2 s (20
/// heartbeats here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_hot_on_one_key_is_not_split_for_its_load() {
    let (cluster, client) = one_region_split_only_for_load().await;
    let key = hot_test_key;
    let epoch = cluster.routes().await[0].region.epoch;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, reads) = (client.clone(), stop.clone(), reads.clone());
            let hot = key(7);
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    client.get(&hot).await.unwrap();
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let op = loop {
        let ops = client.operators().await.unwrap();
        let refused_long = ops.iter().find(|o| {
            o.reason == "split-hot" && o.state == tessera_wire::OperatorState::Running && o.started_ms_ago >= 2_000
        });
        let routes = cluster.routes().await;
        assert_eq!(routes.len(), 1, "the region was split for a load on one key: {routes:?} ({ops:?})");
        if let Some(op) = refused_long {
            break op.clone();
        }
        assert!(std::time::Instant::now() < deadline, "PD never kept a load split of the hot region running: {ops:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    let routes = cluster.routes().await;
    assert_eq!(routes.len(), 1, "the region was split for a load on one key: {routes:?} (operator {op:?})");
    assert_eq!(routes[0].region.epoch, epoch, "its epoch is unchanged (operator {op:?})");
    assert!(reads.load(Ordering::Relaxed) > 300, "the key was hot: {} reads", reads.load(Ordering::Relaxed));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_nodes_receive_replicas_and_leaders_until_balanced() {
    let mut cluster = TestCluster::start_placed(3, 8, |pd| {
        pd.scheduler.region_tolerance = 2;
        pd.scheduler.leader_tolerance = 1;
    })
    .await;
    let client = cluster.client().await;
    for i in 0..64 {
        client.put(&crate::harness::spread_key(i, 64), b"v").await.unwrap();
    }
    for (id, nodes) in [(4, vec![1, 2, 3, 4]), (5, vec![1, 2, 3, 4, 5])] {
        cluster.add_node(id).await;
        let live = nodes.clone();
        cluster
            .wait_for_pd(Duration::from_secs(90), &format!("balance over {} nodes", nodes.len()), move |_, regions| {
                let (replicas, leaders) = counts(regions);
                settled_on(regions, &live) && spread(&replicas, &live) <= 2 && spread(&leaders, &live) <= 1
            })
            .await;
    }
    for i in 0..64 {
        assert_eq!(client.get(&crate::harness::spread_key(i, 64)).await.unwrap(), Some(b"v".to_vec()));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_longer_than_max_down_time_has_its_replicas_recreated_elsewhere() {
    let mut cluster = TestCluster::start_placed(4, 4, |pd| pd.scheduler.max_down_time_ms = 1_000).await;
    let client = cluster.client().await;
    for i in 0..40 {
        client.put(&crate::harness::spread_key(i, 40), format!("v{i}").as_bytes()).await.unwrap();
    }
    // Node 1 hosts a replica of every bootstrap region.
    cluster.stop_node(1).await;
    cluster
        .wait_for_pd(Duration::from_secs(90), "3 voters on live nodes for every region", |_, regions| {
            settled_on(regions, &[2, 3, 4])
        })
        .await;
    for i in 0..40 {
        assert_eq!(client.get(&crate::harness::spread_key(i, 40)).await.unwrap(), Some(format!("v{i}").into_bytes()));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_ends_with_no_replica_and_no_rows_and_no_write_is_lost() {
    let cluster = TestCluster::start_placed(4, 4, |_| {}).await;
    let client = cluster.client().await;
    let drained = 1u64;
    // Removing a node that still hosts replicas is refused.
    let refused = client.remove_node(NodeId(drained)).await;
    assert!(refused.is_err(), "a node with replicas cannot be removed: {refused:?}");
    // Writes go on while the node is drained.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (cluster.client().await, stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) || i < 200 {
                let key = crate::harness::spread_key(i % 400, 400);
                let value = format!("w{i}").into_bytes();
                client.put(&key, &value).await.unwrap_or_else(|e| panic!("write {i}: {e}"));
                acked.push((key, value));
                i += 1;
            }
            acked
        })
    };
    client.drain_node(NodeId(drained)).await.unwrap();
    cluster
        .wait_for_pd(Duration::from_secs(90), "no replica on the drained node", |nodes: &[NodeInfo], regions| {
            nodes.iter().any(|n| n.id.0 == drained && n.draining) && settled_on(regions, &[2, 3, 4])
        })
        .await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    // The node destroys its replicas once PD says so, and collects their rows. (A replica
    // leaves the node's map before the transaction that retires it commits: wait for both.)
    let node = cluster.nodes[&drained].as_ref().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = node.row_counts().unwrap();
        let retired = rows.sm_meta == 0 && rows.regions == 0;
        if node.region_count() == 0 && retired && rows.data == 0 && rows.dedup == 0 && rows.sessions == 0 {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "the drained node still holds {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((rows.sm_meta, rows.regions), (0, 0), "{rows:?}");
    assert!(rows.tombstones >= 1, "destroyed replicas leave tombstones: {rows:?}");
    // The last acknowledged value of every key is there.
    let mut last: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (k, v) in acked {
        last.insert(k, v);
    }
    for (k, v) in &last {
        assert_eq!(client.get(k).await.unwrap().as_ref(), Some(v), "no acknowledged write is lost");
    }
    client.remove_node(NodeId(drained)).await.expect("an empty node can be removed");
    let (nodes, _) = client.cluster_status().await.unwrap();
    assert!(nodes.iter().all(|n| n.id.0 != drained), "the removed node is forgotten");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_through_splits_a_merge_a_move_and_leader_transfers_is_linearizable_per_key() {
    let cluster = TestCluster::start_placed(4, 1, small_regions).await;
    let client = cluster.client().await;
    // Five keys spread over the range the loader fills, so that they end up in different
    // regions as it splits.
    let keys: Vec<Vec<u8>> = (0..5).map(|i| [load_key(i * 1_600 + 17), b"/lin".to_vec()].concat()).collect();
    let workload = crate::linearizable::Workload::start(&cluster, keys.clone(), 4, 300).await;
    // Meanwhile: a bulk load splits the region over and over...
    let loader = {
        let client = cluster.client().await;
        tokio::spawn(async move {
            for chunk in (0..8_000).collect::<Vec<usize>>().chunks(100) {
                let pairs: Vec<(Vec<u8>, Vec<u8>)> = chunk.iter().map(|&i| (load_key(i), load_value(i))).collect();
                client.batch_put(&pairs).await.expect("bulk load");
            }
        })
    };
    // ...an operator splits between two of the keys, then merges the two back (once the
    // regions can merge: the load splits them, and moves replicas onto node 4)...
    let split = client.split_region(&keys[2]).await.expect("manual split");
    assert_eq!(wait_operator(&client, split).await, tessera_wire::OperatorState::Succeeded);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let merge = loop {
        let attempt = match client.merge_region(&keys[2]).await {
            Ok(id) => Some((id, wait_operator(&client, id).await)),
            Err(_) => None,
        };
        match attempt {
            Some((id, tessera_wire::OperatorState::Succeeded)) => break id,
            other => {
                assert!(std::time::Instant::now() < deadline, "no merge succeeded; last attempt: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // ...and at halfway, draining a node that leads a region moves every replica off it,
    // handing its leaders over first. (Which node leads depends on timing: draining a
    // fixed node that happens to lead nothing would move no leader.)
    workload.halfway.notified().await;
    let drained = cluster.leader_node_of(&keys[0]).await;
    client.drain_node(NodeId(drained)).await.unwrap();
    loader.await.unwrap();
    workload.check(1_000).await;
    let live: Vec<u64> = (1..=4).filter(|&n| n != drained).collect();
    cluster.wait_for_pd(Duration::from_secs(90), "the drain to finish", |_, regions| settled_on(regions, &live)).await;
    // The load's first split by size may still be waiting for its region: the manual
    // operators and the drain's kept the first region busy for most of the load.
    let succeeded = |ops: &[tessera_wire::OperatorInfo], kind: &str| {
        ops.iter().filter(|o| o.kind.contains(kind) && o.state == tessera_wire::OperatorState::Succeeded).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let ops = loop {
        let ops = client.operators().await.unwrap();
        if succeeded(&ops, " split") >= 2 || std::time::Instant::now() >= deadline {
            break ops;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let succeeded = |kind: &str| succeeded(&ops, kind);
    assert!(ops.iter().any(|o| o.id == split && o.state == tessera_wire::OperatorState::Succeeded), "{ops:?}");
    assert!(ops.iter().any(|o| o.id == merge && o.state == tessera_wire::OperatorState::Succeeded), "{ops:?}");
    assert!(succeeded(" split") >= 2, "the load split regions: {ops:?}");
    assert!(succeeded("add-learner") >= 1 && succeeded("remove-peer") >= 1, "replicas moved: {ops:?}");
    assert!(succeeded("transfer-leader") >= 1, "leaders moved: {ops:?}");
    for i in (0..8_000).step_by(97) {
        assert_eq!(client.get(&load_key(i)).await.unwrap(), Some(load_value(i)), "loaded key {i}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_regions_serve_while_a_region_moves_and_its_source_node_stops() {
    let mut cluster = TestCluster::start_placed(4, 4, |pd| pd.scheduler.max_down_time_ms = 1_000).await;
    let client = cluster.client().await;
    let n = 40;
    for i in 0..n {
        client.put(&crate::harness::spread_key(i, n), format!("v{i}").as_bytes()).await.unwrap();
    }
    // Draining node 1 moves the regions it hosts; as soon as one move is under way (a
    // learner exists), node 1 stops.
    client.drain_node(NodeId(1)).await.unwrap();
    cluster
        .wait_for_pd(Duration::from_secs(30), "a move under way", |_, regions| {
            regions.iter().any(|r| !r.learners.is_empty())
        })
        .await;
    cluster.stop_node(1).await;
    // Every region keeps serving reads and writes: each still has a majority of voters.
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for i in 0..n {
            let key = crate::harness::spread_key(i, n);
            let value = format!("v{i}-{round}");
            let started = std::time::Instant::now();
            client.put(&key, value.as_bytes()).await.unwrap_or_else(|e| panic!("write {i}: {e}"));
            assert_eq!(client.get(&key).await.unwrap(), Some(value.into_bytes()));
            slowest = slowest.max(started.elapsed());
        }
    }
    // A regression bound (an election after the leader on node 1 stopped), not a goal.
    assert!(slowest < Duration::from_secs(5), "a write and read took {slowest:?}");
    // The moves finish on the other nodes, and the moved regions serve there.
    cluster
        .wait_for_pd(Duration::from_secs(90), "every region on nodes 2-4", |_, regions| settled_on(regions, &[2, 3, 4]))
        .await;
    for i in 0..n {
        let key = crate::harness::spread_key(i, n);
        assert_eq!(client.get(&key).await.unwrap(), Some(format!("v{i}-2").into_bytes()));
    }
    cluster.shutdown().await;
}

/// Waits until operator `id` finished, and returns how it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_joins_a_split_off_region_back_and_keeps_every_key() {
    // The halves of a split share their rows' data id: the merge moves no rows.
    merge_joins_two_regions(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_joins_two_bootstrapped_regions_and_keeps_every_key() {
    // Regions bootstrapped apart keep their rows under different data ids: the merge
    // copies the source's rows, and the originals are collected.
    merge_joins_two_regions(2).await;
}

/// Writes keys over two adjacent regions (one split at the middle key, or two bootstrapped
/// ones), merges the right one into the left while a client keeps writing, and checks the
/// merged region: one range over everything, every acknowledged value, writes on both
/// sides, and on every node exactly one region and one copy of each row.
async fn merge_joins_two_regions(initial_regions: u32) {
    let cluster = TestCluster::start_placed(3, initial_regions, no_merges).await;
    let client = cluster.client().await;
    let n = 200;
    let value = |i: usize, round: usize| format!("v{i}-{round}").into_bytes();
    for i in 0..n {
        client.put(&crate::harness::spread_key(i, n), &value(i, 0)).await.unwrap();
    }
    let mid = crate::harness::spread_key(n / 2, n);
    if initial_regions == 1 {
        let split = client.split_region(&mid).await.unwrap();
        assert_eq!(wait_operator(&client, split).await, tessera_wire::OperatorState::Succeeded);
    }
    for i in (0..n).step_by(2) {
        client.put(&crate::harness::spread_key(i, n), &value(i, 1)).await.unwrap();
    }
    let (_, before) = client.cluster_status().await.unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    // The left region cannot merge: it has no left neighbour.
    let e = client.merge_region(b"").await.unwrap_err();
    assert!(e.to_string().contains("no left neighbour"), "{e}");
    // Writes keep going on both sides while the right region merges into the left.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (cluster.client().await, stop.clone());
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) || i < 100 {
                let key = crate::harness::spread_key(i % n, n);
                let v = format!("w{i}").into_bytes();
                client.put(&key, &v).await.unwrap_or_else(|e| panic!("write {i}: {e}"));
                acked.insert(key, v);
                i += 1;
            }
            acked
        })
    };
    let merge = client.merge_region(&mid).await.expect("merge");
    assert_eq!(wait_operator(&client, merge).await, tessera_wire::OperatorState::Succeeded);
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    let (_, after) = client.cluster_status().await.unwrap();
    assert_eq!(after.len(), 1, "{after:?}");
    let merged = &after[0].region;
    assert!(merged.start_key.is_empty() && merged.end_key.is_empty(), "{merged:?}");
    let versions = before.iter().map(|r| r.region.epoch.version).max().unwrap();
    assert!(merged.epoch.version > versions, "the merged range has a newer version: {merged:?} {before:?}");
    for i in 0..n {
        let key = crate::harness::spread_key(i, n);
        let want = acked.get(&key).cloned().unwrap_or_else(|| value(i, if i % 2 == 0 { 1 } else { 0 }));
        assert_eq!(client.get(&key).await.unwrap(), Some(want), "key {i}");
    }
    // The merged region takes writes on both sides of the old boundary.
    for i in [0, n / 2, n - 1] {
        client.put(&crate::harness::spread_key(i, n), b"after").await.unwrap();
        assert_eq!(client.get(&crate::harness::spread_key(i, n)).await.unwrap(), Some(b"after".to_vec()));
    }
    // Every node destroys its replica of the merged-away region, and keeps one copy of
    // each row.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (id, node) in &cluster.nodes {
        let node = node.as_ref().unwrap();
        loop {
            let rows = node.row_counts().unwrap();
            if node.region_count() == 1 && rows.data == n as u64 && (rows.sm_meta, rows.regions) == (1, 1) {
                assert_eq!(rows.tombstones, 1, "the merged-away replica leaves a tombstone: {rows:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node {id}: {} regions, {rows:?}", node.region_count());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_merges_small_adjacent_regions_into_one() {
    let cluster = TestCluster::start_placed(3, 4, |pd| {
        pd.scheduler.merge_bytes = 1024 * 1024;
        pd.scheduler.merge_keys = 10_000;
        pd.scheduler.split_merge_interval_ms = 0;
    })
    .await;
    let client = cluster.client().await;
    let n = 80;
    for i in 0..n {
        client.put(&crate::harness::spread_key(i, n), format!("v{i}").as_bytes()).await.unwrap();
    }
    cluster
        .wait_for_pd(Duration::from_secs(60), "one region", |_, regions| {
            regions.len() == 1 && regions[0].leader.is_some()
        })
        .await;
    let ops = client.operators().await.unwrap();
    let merges = ops
        .iter()
        .filter(|o| {
            o.kind.contains("merge") && o.reason == "merge-small" && o.state == tessera_wire::OperatorState::Succeeded
        })
        .count();
    assert!(merges >= 3, "three merges joined four regions: {ops:?}");
    for i in 0..n {
        assert_eq!(
            client.get(&crate::harness::spread_key(i, n)).await.unwrap(),
            Some(format!("v{i}").into_bytes()),
            "key {i}"
        );
    }
    cluster.shutdown().await;
}
