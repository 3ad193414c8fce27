//! A bootstrapped region gets a leader whatever its first-choice campaigner does.

use std::time::Duration;

use tessera_wire::NodeId;

use crate::harness::TestCluster;

/// Node 1 never campaigns for the regions it is the first choice for (as if it crashed
/// right after recording them): every replica seeded the region's state, so the others
/// elect a leader after an election timeout, and every region serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_whose_initializer_never_initialises_still_get_a_leader() {
    let cluster = TestCluster::start_with(3, 4, |cfg| {
        cfg.faults.skip_region_campaign = cfg.node_id == NodeId(1);
    })
    .await;
    let client = cluster.client().await;
    for first in [0x10u8, 0x50, 0x90, 0xd0] {
        client.put(&[first, b'k'], b"v").await.unwrap();
        assert_eq!(client.get(&[first, b'k']).await.unwrap(), Some(b"v".to_vec()));
    }
    cluster.shutdown().await;
}

/// No node campaigns at once, and every node restarts right after hosting the regions:
/// each replica's seeded state is durable with its record, so after the restart every
/// region still gets a leader (by election timeout) and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_recorded_before_a_restart_of_every_node_get_a_leader_after_it() {
    let mut cluster = TestCluster::start_unready(3, 2, |cfg| cfg.faults.skip_region_campaign = true).await;
    cluster
        .wait_for_nodes(Duration::from_secs(30), "every node to host both regions", |c| {
            c.nodes.values().flatten().all(|n| n.region_count() == 2)
        })
        .await;
    for id in 1..=3 {
        cluster.restart_node(id).await;
    }
    cluster.wait_all_leaders(Duration::from_secs(30)).await;
    let client = cluster.client().await;
    client.put(b"\x10k", b"v").await.unwrap();
    client.put(b"\xf0k", b"v").await.unwrap();
    assert_eq!(client.get(b"\x10k").await.unwrap(), Some(b"v".to_vec()));
    cluster.shutdown().await;
}
