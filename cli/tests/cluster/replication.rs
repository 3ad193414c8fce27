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
