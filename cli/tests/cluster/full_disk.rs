//! A node whose disk fills up: a real full filesystem, not an injected error. Each node's
//! data directory is a filesystem of its own, of 512 MiB: a tmpfs, or, for the tests
//! named `..._on_ext4`, an ext4 image mounted through a loop device, whose allocation
//! (delayed allocation, `fallocate`, the journal) is a real disk's. A test fills a disk
//! by leaving it only a few MiB free (a ballast file takes the rest) and frees it by
//! deleting the ballast.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tessera_wire::quic::{ClientEndpoint, TransportConfig};
use tessera_wire::{Error, KvOp, KvRequest, KvResponse, ReadConsistency, Request, RequestHeader, ResponseBody, Role};

use tessera_pd::PdConfig;

use crate::harness::TestCluster;

/// Size of each node's filesystem.
const DISK_MIB: u64 = 512;

/// The filesystem a node's data directory is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fs {
    Tmpfs,
    /// ext4 on a loop device backed by a sparse image file beside the directory.
    Ext4,
}

/// A filesystem mounted on a node's data directory, unmounted (lazily: a node may still
/// hold files open after a failed test) when dropped; a loop device goes with it.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a filesystem of [`DISK_MIB`] on the empty directory `dir`. `None` if this
    /// process may not (not root, or no loop device for ext4); any other failure panics.
    fn mount(dir: &Path, fs: Fs) -> Option<SmallDisk> {
        let mut mount = Command::new("mount");
        match fs {
            Fs::Tmpfs => mount.args(["-t", "tmpfs", "-o", &format!("size={DISK_MIB}m"), "tmpfs"]),
            Fs::Ext4 => {
                let image = dir.with_extension("ext4");
                std::fs::File::create(&image).and_then(|f| f.set_len(DISK_MIB << 20)).expect("create the image");
                // No blocks reserved for root (the tests run as root): full means full.
                let mkfs = Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image).output();
                match mkfs {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => panic!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr)),
                    Err(e) => {
                        eprintln!("no mkfs.ext4 ({e})");
                        return None;
                    }
                }
                mount.args(["-t", "ext4", "-o", "loop"]).arg(image)
            }
        };
        let mount = mount.arg(dir).output().expect("run mount");
        if mount.status.success() {
            return Some(SmallDisk { dir: dir.to_path_buf() });
        }
        let euid = Command::new("id").arg("-u").output().expect("run id").stdout;
        let stderr = String::from_utf8_lossy(&mount.stderr);
        let no_loop = fs == Fs::Ext4 && !Path::new("/dev/loop-control").exists();
        assert!(String::from_utf8_lossy(&euid).trim() != "0" || no_loop, "mounting a {fs:?} failed as root: {stderr}");
        None
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join("ballast")
    }

    /// Leaves `mib` MiB free (a disk about to fill): a ballast file takes the rest.
    fn leave_free(&self, mib: u64) {
        let df = Command::new("df").args(["-k", "--output=avail"]).arg(&self.dir).output().expect("run df");
        let avail: u64 = String::from_utf8_lossy(&df.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
        let kib = avail.checked_sub(mib * 1024).expect("more than that free");
        let status = Command::new("fallocate")
            .args(["-l", &format!("{kib}KiB")])
            .arg(self.ballast())
            .status()
            .expect("run fallocate");
        assert!(status.success(), "allocate a ballast of {kib} KiB");
    }

    /// The operator frees space: the ballast goes.
    fn free(&self) {
        std::fs::remove_file(self.ballast()).expect("remove the ballast");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Three nodes, each on a filesystem of its own, one region. `None` if mounting needs
/// root or a loop device.
async fn cluster_on_small_disks(fs: Fs) -> Option<(TestCluster, Vec<SmallDisk>)> {
    nodes_on_small_disks(3, fs, |_| {}).await
}

/// `nodes` nodes, each on a filesystem of its own, one region, PD configured by
/// `pd_tweak`.
async fn nodes_on_small_disks(
    nodes: u64,
    fs: Fs,
    pd_tweak: fn(&mut PdConfig),
) -> Option<(TestCluster, Vec<SmallDisk>)> {
    let disks = RefCell::new(Vec::new());
    let refused = RefCell::new(false);
    let cluster = TestCluster::start_on(nodes, 1, pd_tweak, |_, dir| match SmallDisk::mount(dir, fs) {
        Some(disk) => disks.borrow_mut().push(disk),
        None => *refused.borrow_mut() = true,
    })
    .await;
    if refused.into_inner() {
        eprintln!("skipped: mounting a {fs:?} needs root (and, for ext4, a loop device)");
        return None;
    }
    Some((cluster, disks.into_inner()))
}

/// Half a MiB: the node's Raft log and database each take a copy of a write.
fn value(i: usize) -> Vec<u8> {
    vec![(i % 251) as u8; 512 * 1024]
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

/// An answer, without the values (half a MiB each).
fn brief(body: &ResponseBody) -> String {
    match body {
        ResponseBody::Kv(KvResponse::Value(v)) => format!("a value of {:?} bytes", v.as_ref().map(Vec::len)),
        _ => "another answer".to_string(),
    }
}

/// Leaves node `full` 16 MiB of free space and writes until its storage fail-stops, then
/// 5 writes more; every write must be acknowledged (the other two nodes are a majority).
/// Returns how many were written.
async fn fill(cluster: &TestCluster, disks: &[SmallDisk], full: u64, client: &tessera::Client) -> usize {
    disks[full as usize - 1].leave_free(16);
    let node = cluster.nodes[&full].as_ref().unwrap();
    let mut written = 0;
    while node.storage_failure().is_none() {
        assert!(written < 200, "{written} writes of 512 KiB did not fill 16 MiB");
        client.put(&key(written), &value(written)).await.expect("a write is acknowledged by a majority");
        written += 1;
    }
    let failure = node.storage_failure().unwrap();
    assert!(failure.contains("No space left on device"), "{failure}");
    for i in written..written + 5 {
        client.put(&key(i), &value(i)).await.expect("writes go on without the full node");
    }
    written + 5
}

/// The operator frees space on node `id`'s disk and restarts it.
async fn free_and_restart(cluster: &mut TestCluster, disks: &[SmallDisk], id: u64) {
    disks[id as usize - 1].free();
    cluster.restart_node(id).await;
}

/// Stale reads from one node alone, over one connection.
struct StaleReader {
    conn: tessera_wire::quic::Connection,
    region: tessera_wire::RegionDescriptor,
}

impl StaleReader {
    async fn connect(cluster: &TestCluster, id: u64) -> StaleReader {
        let tls = tessera_certs::client_tls_config(&cluster.client_tls()).unwrap();
        let endpoint =
            ClientEndpoint::new("127.0.0.1:0".parse().unwrap(), tls, Role::Client, TransportConfig::default()).unwrap();
        let conn = endpoint.connect(&cluster.node_addrs[&id].to_string()).await.unwrap();
        let region = cluster.routes().await.into_iter().next().unwrap().region;
        StaleReader { conn, region }
    }

    /// `key(i)` as the node's replica holds it.
    async fn get(&self, i: usize) -> Result<ResponseBody, Error> {
        let request = Request::Kv(KvRequest {
            header: RequestHeader {
                region_id: self.region.id,
                epoch: self.region.epoch,
                timeout_ms: 0,
                consistency: ReadConsistency::Stale,
            },
            op: KvOp::Get { key: key(i) },
        });
        self.conn.call(request, Duration::from_secs(5)).await.unwrap()
    }
}

/// The full node refuses even a stale read; once space is freed and it restarts, its own
/// replica ends with every one of the `written` writes.
async fn refuse_then_catch_up(cluster: &mut TestCluster, disks: &[SmallDisk], full: u64, written: usize) {
    match StaleReader::connect(cluster, full).await.get(0).await {
        Err(Error::StorageUnavailable { reason }) => assert!(reason.contains("No space left"), "{reason}"),
        Ok(body) => panic!("a node with a full disk answered with {}", brief(&body)),
        Err(e) => panic!("a node with a full disk answered {e:?}"),
    }
    free_and_restart(cluster, disks, full).await;
    let node = cluster.nodes[&full].as_ref().unwrap();
    assert_eq!(node.storage_failure(), None);
    let mut changes = node.subscribe();
    let reader = StaleReader::connect(cluster, full).await;
    let last = written - 1;
    let caught_up = async {
        loop {
            changes.borrow_and_update();
            match reader.get(last).await {
                Ok(ResponseBody::Kv(KvResponse::Value(Some(v)))) => {
                    assert!(v == value(last), "the last write has another value on node {full}");
                    break;
                }
                Ok(_) | Err(Error::RegionNotFound { .. } | Error::NotLeader { .. }) => {}
                Err(e) => panic!("node {full} answered {e:?} after its restart"),
            }
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), caught_up).await.expect("caught up within 30 s");
    for i in 0..written {
        match reader.get(i).await {
            Ok(ResponseBody::Kv(KvResponse::Value(v))) => {
                assert!(v == Some(value(i)), "write {i} on node {full}: {:?} bytes", v.map(|v| v.len()))
            }
            Ok(body) => panic!("write {i} on node {full}: {}", brief(&body)),
            Err(e) => panic!("write {i} on node {full}: {e:?}"),
        }
    }
}

/// One node's disk fills while a client writes, the region's leader if `leader`, else a
/// follower: the client sees no error (a leader's region elects another, and the SDK
/// moves to it), no acknowledged write is lost, the node refuses even a stale read, and
/// once space is freed and it restarts it catches up with every acknowledged write.
async fn one_disk_fills(leader: bool, fs: Fs) {
    let Some((mut cluster, disks)) = cluster_on_small_disks(fs).await else { return };
    let leads = |id: &u64| cluster.nodes[id].as_ref().unwrap().leader_count() == usize::from(leader);
    let full = (1..=3).find(leads).unwrap();
    let client = cluster.client().await;
    let written = fill(&cluster, &disks, full, &client).await;
    for i in 0..written {
        assert!(client.get(&key(i)).await.unwrap() == Some(value(i)), "write {i} was acknowledged");
    }
    refuse_then_catch_up(&mut cluster, &disks, full, written).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_stops_serving_and_catches_up_once_space_is_freed() {
    one_disk_fills(false, Fs::Tmpfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_stops_serving_and_catches_up_once_space_is_freed_on_ext4() {
    one_disk_fills(false, Fs::Ext4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_hands_over_and_its_clients_see_no_error() {
    one_disk_fills(true, Fs::Tmpfs).await;
}

/// A follower's disk fills in a cluster of four nodes: the full node tells PD why, which
/// shows it down with the reason and, once it has been down `max_down_time`, recreates its
/// replica on the fourth node; the region is back to three replicas that can write, and no
/// acknowledged write is lost. Once space is freed and it restarts, the node is up again,
/// the reason gone, and it drops the replica that moved away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_has_its_replicas_recreated_on_the_other_nodes() {
    let Some((mut cluster, disks)) =
        nodes_on_small_disks(4, Fs::Tmpfs, |pd| pd.scheduler.max_down_time_ms = 1_000).await
    else {
        return;
    };
    let region = cluster.routes().await.into_iter().next().unwrap();
    let leader = region.leader.expect("a leader").node_id.0;
    let full = region.region.peers.iter().map(|p| p.node_id.0).find(|id| *id != leader).unwrap();
    let spare = (1..=4).find(|id| region.region.peer_on(tessera_wire::NodeId(*id)).is_none()).unwrap();
    let client = cluster.client().await;
    let written = fill(&cluster, &disks, full, &client).await;
    let full_node = |nodes: &[tessera_wire::NodeInfo]| nodes.iter().find(|n| n.id.0 == full).cloned().unwrap();
    let (nodes, _) = cluster
        .wait_for_pd(Duration::from_secs(30), "PD to learn why the full node stopped", |nodes, _| {
            full_node(nodes).storage_failure.is_some()
        })
        .await;
    let reported = full_node(&nodes);
    assert_eq!(reported.state, tessera_wire::NodeState::Down);
    assert!(reported.storage_failure.as_deref().is_some_and(|r| r.contains("No space left on device")), "{reported:?}");
    let live: Vec<u64> = (1..=4).filter(|id| *id != full).collect();
    cluster
        .wait_for_pd(Duration::from_secs(60), "the full node's replica recreated on the others", |_, regions| {
            regions.iter().all(|r| {
                let mut on: Vec<u64> = r.region.peers.iter().map(|p| p.node_id.0).collect();
                on.sort();
                r.learners.is_empty() && on == live && r.leader.is_some()
            })
        })
        .await;
    assert!(cluster.nodes[&spare].as_ref().unwrap().region_count() == 1, "node {spare} hosts the new replica");
    for i in 0..written {
        assert!(client.get(&key(i)).await.unwrap() == Some(value(i)), "write {i} was acknowledged");
    }
    client.put(b"after", b"three replicas again").await.unwrap();

    free_and_restart(&mut cluster, &disks, full).await;
    cluster
        .wait_for_nodes(Duration::from_secs(60), "the restarted node to drop its old replica", |c| {
            c.nodes[&full].as_ref().unwrap().region_count() == 0
        })
        .await;
    // It registered again before it heard what to drop, which cleared the reason.
    let (nodes, _) = cluster.client().await.cluster_status().await.expect("cluster status");
    let restarted = full_node(&nodes);
    assert_eq!((restarted.state, restarted.storage_failure), (tessera_wire::NodeState::Up, None));
    drop(cluster);
}

/// Both followers' disks fill while the leader's has space: once the leader has heard
/// from them that their storage failed, it refuses writes before proposing them, so a
/// write fails `Unavailable` naming the full disks (not `Undetermined` after waiting for a
/// quorum), and what it refused never applies once the followers come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_both_followers_disks_fill_the_leader_refuses_writes_and_names_them() {
    let Some((mut cluster, disks)) = cluster_on_small_disks(Fs::Tmpfs).await else { return };
    let leader = (1..=3).find(|id| cluster.nodes[id].as_ref().unwrap().leader_count() == 1).unwrap();
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        disks[*id as usize - 1].leave_free(16);
    }
    let client = cluster.client().await.with_timeout(Duration::from_secs(3));
    let failed = |cluster: &TestCluster| {
        followers.iter().all(|id| cluster.nodes[id].as_ref().unwrap().storage_failure().is_some())
    };
    // Until both followers fail-stopped, writes are acknowledged; the one in flight when
    // the second does may end undetermined (it waited for a quorum).
    let mut acknowledged = Vec::new();
    while !failed(&cluster) {
        let next = acknowledged.len();
        assert!(next < 200, "{next} writes of 512 KiB did not fill two disks of 16 MiB free");
        match client.put(&key(next), &value(next)).await {
            Ok(()) => acknowledged.push(true),
            Err(tessera::Error::Undetermined { .. }) => acknowledged.push(false),
            Err(e) => panic!("write {next} failed with {e:?} before both followers fail-stopped"),
        }
    }
    // The leader learns of a follower's failure from its answer to the next message: a
    // follower whose apply failed after its log append answered that append with success,
    // so a write may still be proposed, and end undetermined, before the leader has heard.
    // Then it refuses: not applied, and the reason names the followers' full disks.
    let failed_at = acknowledged.len();
    let refused = loop {
        let next = acknowledged.len();
        assert!(next < failed_at + 5, "5 writes after the followers fail-stopped, none refused");
        match client.put(&key(next), &value(next)).await {
            Err(tessera::Error::Unavailable { reason }) => {
                assert!(reason.contains("cannot write") && reason.contains("No space left on device"), "{reason}");
                for id in &followers {
                    assert!(reason.contains(&format!("node {id}:")), "{reason}");
                }
                break next;
            }
            Err(tessera::Error::Undetermined { .. }) => acknowledged.push(false),
            other => panic!("a write to a leader whose followers' disks are full ended {other:?}"),
        }
    };
    assert!(cluster.nodes[&leader].as_ref().unwrap().storage_failure().is_none());

    for id in &followers {
        free_and_restart(&mut cluster, &disks, *id).await;
    }
    let client = cluster.client().await;
    client.put(b"after", b"space was freed").await.expect("writes are accepted again");
    assert_eq!(client.get(&key(refused)).await.unwrap(), None, "a refused write applied");
    for (i, acknowledged) in acknowledged.into_iter().enumerate() {
        let v = client.get(&key(i)).await.unwrap();
        match acknowledged {
            true => assert!(v == Some(value(i)), "acknowledged write {i} was lost"),
            false => assert!(v.is_none() || v == Some(value(i)), "undetermined write {i} is torn"),
        }
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_disk_fills_writes_fail_with_a_typed_error_and_no_acknowledged_write_is_lost() {
    every_disk_fills(Fs::Tmpfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_disk_fills_writes_fail_with_a_typed_error_and_no_acknowledged_write_is_lost_on_ext4() {
    every_disk_fills(Fs::Ext4).await;
}

/// Every node's disk fills: writes fail with a typed error that says why (never a panic,
/// never `Ok` for a write that is not durable on a majority), and once space is freed and
/// the nodes restart, every acknowledged write is there and writes are accepted again.
async fn every_disk_fills(fs: Fs) {
    let Some((mut cluster, disks)) = cluster_on_small_disks(fs).await else { return };
    for disk in &disks {
        disk.leave_free(16);
    }
    let client = cluster.client().await.with_timeout(Duration::from_secs(5));
    let mut acknowledged = 0;
    let failure = loop {
        assert!(acknowledged < 200, "{acknowledged} writes of 512 KiB did not fill three disks of 16 MiB free");
        match client.put(&key(acknowledged), &value(acknowledged)).await {
            Ok(()) => acknowledged += 1,
            Err(e) => break e,
        }
    };
    // The write refused may have reached a majority's logs before their disks filled:
    // `Undetermined` then, or the failure itself. Its reason depends on which disk filled
    // last: a leader with space left waits for a quorum until the deadline ("request timed
    // out"), or refuses once its followers told it their storage failed (`Unavailable`);
    // one that failed answers `StorageUnavailable`, which the SDK then reports.
    match &failure {
        tessera::Error::Undetermined { .. }
        | tessera::Error::Unavailable { .. }
        | tessera::Error::Server(Error::StorageUnavailable { .. }) => {}
        other => panic!("a write on full disks failed with {other:?}"),
    }
    let failures: Vec<String> =
        (1..=3).filter_map(|id| cluster.nodes[&id].as_ref().unwrap().storage_failure()).collect();
    assert!(failures.len() >= 2, "writes failed with {failure:?}, yet only {failures:?} fail-stopped");
    assert!(failures.iter().all(|f| f.contains("No space left on device")), "{failures:?}");

    for id in 1..=3 {
        free_and_restart(&mut cluster, &disks, id).await;
    }
    cluster.wait_all_leaders(Duration::from_secs(30)).await;
    let client = cluster.client().await;
    for i in 0..acknowledged {
        assert!(client.get(&key(i)).await.unwrap() == Some(value(i)), "acknowledged write {i} was lost");
    }
    // The undetermined write is either whole or absent.
    let maybe = client.get(&key(acknowledged)).await.unwrap();
    assert!(maybe.is_none() || maybe == Some(value(acknowledged)), "write {acknowledged} is torn");
    client.put(b"after", b"space was freed").await.expect("writes are accepted again");
    drop(cluster);
}
