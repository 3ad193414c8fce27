//! Recovery from disk after restarting one node or the whole cluster.

use std::time::Duration;

use crate::harness::{spread_key, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_its_regions_and_serves_a_majority() {
    let mut cluster = TestCluster::start(3, 4).await;
    let client = cluster.client().await;
    let n = 100;
    for i in 0..n {
        client.put(&spread_key(i, n), format!("v{i}").as_bytes()).await.unwrap();
    }
    cluster.restart_node(2).await;
    assert_eq!(cluster.nodes[&2].as_ref().unwrap().region_count(), 4, "node 2 recovered all four regions");
    // With node 3 down, every majority includes the restarted node 2: reads and writes
    // succeed only if it recovered its log and state from disk.
    cluster.stop_node(3).await;
    let client = cluster.client().await;
    for i in 0..n {
        assert_eq!(client.get(&spread_key(i, n)).await.unwrap(), Some(format!("v{i}").into_bytes()));
    }
    client.put(&spread_key(7, n), b"after").await.unwrap();
    assert_eq!(client.get(&spread_key(7, n)).await.unwrap(), Some(b"after".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarts_with_its_data() {
    let mut cluster = TestCluster::start(3, 4).await;
    let client = cluster.client().await;
    let n = 100;
    for i in 0..n {
        client.put(&spread_key(i, n), format!("v{i}").as_bytes()).await.unwrap();
    }
    client.append(&spread_key(1, n), b"+").await.unwrap();
    drop(client);
    cluster.restart_all().await;
    cluster.wait_all_leaders(Duration::from_secs(30)).await;
    let client = cluster.client().await;
    for i in 0..n {
        let want = if i == 1 { "v1+".to_string() } else { format!("v{i}") };
        assert_eq!(client.get(&spread_key(i, n)).await.unwrap(), Some(want.into_bytes()));
    }
    assert_eq!(cluster.routes().await.len(), 4, "PD recovered its routing table");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_catches_up_from_a_streamed_snapshot_after_log_compaction() {
    // Snapshot every 50 entries and keep only 5 after it, so a replica that misses a few
    // hundred writes can only catch up by installing a snapshot.
    let mut cluster = TestCluster::start_with(3, 1, |cfg| {
        cfg.raft.snapshot_every = 50;
        cfg.raft.keep_after_snapshot = 5;
    })
    .await;
    let lagging = 3;
    cluster.stop_node(lagging).await;
    let client = cluster.client().await;
    let n = 400;
    // Values large enough that the snapshot spans several 1 MiB chunks.
    let value = |i: usize| format!("{i:08}").repeat(1024).into_bytes();
    for i in 0..n {
        client.put(&spread_key(i, n), &value(i)).await.unwrap();
    }
    cluster.restart_node(lagging).await;
    // Wait for the leader to stream its snapshot (the log entries it needs are purged).
    cluster
        .wait_for_nodes(Duration::from_secs(30), "the lagging node to install a snapshot", |c| {
            c.nodes[&lagging].as_ref().is_some_and(|n| n.snapshots_installed() > 0)
        })
        .await;
    // Stop another node: the remaining majority needs the lagging replica, which has the
    // entries only if the snapshot was streamed to it and installed.
    let other = if cluster.leader_node_of(&spread_key(0, n)).await == 1 { 2 } else { 1 };
    cluster.stop_node(other).await;
    let client = cluster.client().await;
    for i in (0..n).step_by(7) {
        assert_eq!(client.get(&spread_key(i, n)).await.unwrap(), Some(value(i)), "key {i}");
    }
    cluster.shutdown().await;
}
