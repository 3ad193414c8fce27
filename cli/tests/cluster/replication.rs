//! Pipelined replication: the follower side keeps one stream per leader, not one per write.

use crate::harness::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_keep_one_replication_stream_per_leader_across_many_writes() {
    let cluster = TestCluster::start(3, 1).await;
    let client = cluster.client().await;
    // Sequential writes: each one is a replication session of its own on the leader (the
    // payload completes before the next write arrives).
    let writes = 300;
    for i in 0..writes {
        client.put(format!("k{i:04}").as_bytes(), b"v").await.unwrap();
    }
    let streams: Vec<usize> =
        cluster.nodes.values().map(|n| n.as_ref().expect("running").replication_streams()).collect();
    let total: usize = streams.iter().sum();
    // Two followers, one stream each from the region's leader; a leader change or a failed
    // session may add a few. One stream per session would be hundreds.
    assert!(total >= 2, "both followers were replicated to over a stream: {streams:?}");
    assert!(total <= 8, "{writes} writes left {streams:?} follower streams (one per session?)");
    cluster.shutdown().await;
}

/// Idle polling (`NodeConfig::idle_poll`, on by default, off in the other cluster tests):
/// each client request reaches its node's poller, and each replication message with
/// entries the follower's. Where the kernel polls before halting an idle CPU, no node runs
/// a poller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_and_replicated_entries_reach_the_idle_pollers() {
    let cluster = TestCluster::start_with(3, 1, |cfg| cfg.idle_poll = tessera_node::DEFAULT_IDLE_POLL).await;
    if let Some(ns) = tessera_node::kernel_halt_poll_ns() {
        for (id, node) in &cluster.nodes {
            let polls = node.as_ref().expect("running").idle_poll_requests();
            assert_eq!(polls, None, "node {id} runs an idle poller beside the kernel's ({ns} ns)");
        }
        cluster.shutdown().await;
        return;
    }
    let client = cluster.client().await;
    let leader = cluster.leader_node_of(b"k").await;
    let requests = |cluster: &TestCluster| -> Vec<(u64, u64)> {
        let node = |n: &Option<tessera_node::Node>| n.as_ref().expect("running").idle_poll_requests();
        cluster.nodes.iter().map(|(id, n)| (*id, node(n).expect("idle polling is on"))).collect()
    };
    let before = requests(&cluster);
    let writes = 20;
    for i in 0..writes {
        client.put(format!("k{i:04}").as_bytes(), b"v").await.unwrap();
    }
    for ((id, b), (_, a)) in before.into_iter().zip(requests(&cluster)) {
        if id == leader {
            assert!(a - b >= writes, "the leader's poller saw {} requests for {writes} puts", a - b);
        } else {
            assert!(a > b, "follower {id}'s poller saw none of the replicated puts");
        }
    }
    cluster.shutdown().await;
}
