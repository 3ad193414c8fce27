//! Losing a region leader under concurrent writes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::{Client, ClientConfig, ReadConsistency};
use tokio::sync::{watch, Notify};

use crate::harness::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_after_the_leader_node_stops_and_none_acknowledged_is_lost() {
    let mut cluster = TestCluster::start(3, 4).await;
    // All keys in one region, so stopping its leader matters to every writer.
    let prefix = 0x50u8;
    let victim = cluster.leader_node_of(&[prefix, b'x']).await;

    let acked_before = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for w in 0..8 {
        let client = cluster.client().await;
        let acked_before = acked_before.clone();
        let progress = progress.clone();
        let mut stopped = stopped_rx.clone();
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut unknown = 0;
            let mut after_stop = 0;
            let mut j = 0;
            // Write until 40 writes have been acknowledged after the leader stopped.
            while after_stop < 40 {
                assert!(j < 5_000, "worker {w} made no progress after the leader stopped");
                let key = [&[prefix][..], format!("w{w}-{j:05}").as_bytes()].concat();
                let value = format!("value-{w}-{j}").into_bytes();
                let was_stopped = *stopped.borrow_and_update();
                match client.put(&key, &value).await {
                    Ok(()) => {
                        acked.push((key, value));
                        if was_stopped {
                            after_stop += 1;
                        } else {
                            acked_before.fetch_add(1, Ordering::SeqCst);
                            progress.notify_one();
                        }
                    }
                    Err(tessera::Error::Undetermined { .. }) => unknown += 1,
                    Err(e) => panic!("worker {w}: write failed: {e}"),
                }
                j += 1;
            }
            (acked, unknown)
        }));
    }
    // Stop the leader once the writers are well under way.
    while acked_before.load(Ordering::SeqCst) < 80 {
        progress.notified().await;
    }
    cluster.stop_node(victim).await;
    stopped_tx.send(true).unwrap();

    let mut all_acked = Vec::new();
    for w in workers {
        let (acked, _unknown) = w.await.expect("worker panicked");
        all_acked.extend(acked);
    }
    let reader = cluster.client().await;
    for (k, v) in &all_acked {
        assert_eq!(reader.get(k).await.unwrap().as_ref(), Some(v), "acknowledged write lost");
    }
    // PD learns the new leader (leader_node_of fails unless one is reported on a running node).
    cluster.leader_node_of(&[prefix, b'x']).await;
    cluster.shutdown().await;
}

/// Linearizable reads are served on the leader's lease. A leader whose followers are gone
/// keeps that lease for at most the election timeout (no follower votes for another leader
/// before it runs out); after it, the leader must not answer a linearizable read from its
/// own state, since a new leader could have been elected and taken writes meanwhile. It
/// still answers a stale read, which shows the node itself is serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_its_followers_stops_serving_linearizable_reads_once_its_lease_runs_out() {
    let mut cluster = TestCluster::start(3, 1).await;
    let client = cluster.client().await;
    client.put(b"lease-key", b"v1").await.unwrap();
    assert_eq!(client.get(b"lease-key").await.unwrap().as_deref(), Some(&b"v1"[..]));
    let leader = cluster.leader_node_of(b"lease-key").await;
    for id in (1..=3).filter(|&id| id != leader) {
        cluster.stop_node(id).await;
    }
    // What is tested is the lease's length in time: wait past it (the harness's
    // election_max_ms is 1,000 ms) before asking.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut cfg = ClientConfig::new(vec![cluster.pd_addr.to_string()], Some(cluster.client_tls()));
    cfg.request_timeout = Duration::from_secs(3);
    let impatient = Client::connect(cfg).await.unwrap();
    let started = Instant::now();
    let read = impatient.get(b"lease-key").await;
    assert!(read.is_err(), "a leader past its lease answered a linearizable read alone: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "the request deadline bounds the refusal");
    // (With the patient client: a stale read may try a stopped replica first.)
    assert_eq!(
        client.get_with(b"lease-key", ReadConsistency::Stale).await.unwrap().as_deref(),
        Some(&b"v1"[..]),
        "the leader's node serves stale reads"
    );

    for id in (1..=3).filter(|&id| id != leader) {
        cluster.restart_node(id).await;
    }
    assert_eq!(client.get(b"lease-key").await.unwrap().as_deref(), Some(&b"v1"[..]));
    cluster.shutdown().await;
}

/// A leader that has heard from no quorum of its region for twice the longest election
/// timeout refuses writes before proposing them (`RegionUnavailable`): the client gets a
/// definite `Unavailable` that says why, not `Undetermined` after waiting for a quorum, and
/// the refused write does not apply once the followers are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_hears_from_no_quorum_refuses_writes_and_they_never_apply() {
    let mut cluster = TestCluster::start(3, 1).await;
    let client = cluster.client().await;
    client.put(b"quorum-before", b"v1").await.unwrap();
    let leader = cluster.leader_node_of(b"quorum-before").await;
    for id in (1..=3).filter(|&id| id != leader) {
        cluster.stop_node(id).await;
    }
    let impatient = client.with_timeout(Duration::from_secs(3));
    // Linearizable reads are refused the same way, and are safe to repeat until they are.
    let refused = async {
        loop {
            if let Err(tessera::Error::Unavailable { reason }) = impatient.get(b"quorum-before").await {
                if reason.contains("no quorum") {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), refused).await.expect("the leader refuses within 30 s");
    match impatient.put(b"quorum-refused", b"v2").await {
        Err(tessera::Error::Unavailable { reason }) => {
            assert!(reason.contains("no quorum of its replicas has answered the leader"), "{reason}")
        }
        other => panic!("a write to a leader without a quorum ended {other:?}"),
    }

    for id in (1..=3).filter(|&id| id != leader) {
        cluster.restart_node(id).await;
    }
    client.put(b"quorum-after", b"v3").await.expect("writes are accepted again");
    assert_eq!(client.get(b"quorum-refused").await.unwrap(), None, "a refused write applied");
    assert_eq!(client.get(b"quorum-before").await.unwrap().as_deref(), Some(&b"v1"[..]));
    cluster.shutdown().await;
}
