//! Region initialisation survives a missing or crashed initializer.

use std::time::Duration;

use tessera_wire::NodeId;

use crate::harness::TestCluster;

/// Node 1 never initialises the regions it is the first choice for (as if it crashed
/// right after recording them): the other peers initialise them after their delay, and
/// every region gets a leader and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_whose_initializer_never_initialises_still_get_a_leader() {
    let cluster = TestCluster::start_with(3, 4, |cfg| {
        cfg.faults.skip_region_initialization = cfg.node_id == NodeId(1);
    })
    .await;
    let client = cluster.client().await;
    for first in [0x10u8, 0x50, 0x90, 0xd0] {
        client.put(&[first, b'k'], b"v").await.unwrap();
        assert_eq!(client.get(&[first, b'k']).await.unwrap(), Some(b"v".to_vec()));
    }
    cluster.shutdown().await;
}

/// No node initialises anything, so no region has a leader; once the nodes restart
/// without the fault, recovery drives the initialisation of every recorded region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_initialises_regions_recorded_but_never_initialised() {
    let mut cluster = TestCluster::start_unready(3, 2, |cfg| cfg.faults.skip_region_initialization = true).await;
    cluster
        .wait_for_nodes(Duration::from_secs(30), "every node to host both regions", |c| {
            c.nodes.values().flatten().all(|n| n.region_count() == 2)
        })
        .await;
    let leaders: usize = cluster.nodes.values().flatten().map(|n| n.leader_count()).sum();
    assert_eq!(leaders, 0, "no group was initialised");
    cluster.tweak = |_| {};
    for id in 1..=3 {
        cluster.restart_node(id).await;
    }
    cluster.wait_all_leaders(Duration::from_secs(30)).await;
    let client = cluster.client().await;
    client.put(b"\x10k", b"v").await.unwrap();
    client.put(b"\xf0k", b"v").await.unwrap();
    cluster.shutdown().await;
}
