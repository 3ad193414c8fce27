//! A concurrent history with a leader failure, checked linearizable per key.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tessera_lincheck::{check, ClientId, History, Op, Output};
use tokio::sync::Notify;

use crate::harness::TestCluster;

/// One finished operation: (client, key, op, invoke ns, outcome: Some((output, complete ns)) or None = unknown).
type Event = (u64, Vec<u8>, Op, u64, Option<(Output, u64)>);

const CLIENTS: u64 = 4;
const OPS_PER_CLIENT: usize = 520;
const KEYS: usize = 5;

/// A linearizability workload: `clients` clients each run `ops` random operations
/// (get, put, append, compare-and-swap, delete) on `keys`. `at_halfway` is notified once
/// half of all operations finished. Returns the history, checked by the caller.
pub(crate) struct Workload {
    tasks: Vec<tokio::task::JoinHandle<Vec<Event>>>,
    /// Notified once half of all operations finished.
    pub halfway: Arc<Notify>,
}

impl Workload {
    pub(crate) async fn start(cluster: &TestCluster, keys: Vec<Vec<u8>>, clients: u64, ops: usize) -> Workload {
        let base = Instant::now();
        let done = Arc::new(AtomicUsize::new(0));
        let halfway = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = cluster.client().await;
            let keys = keys.clone();
            let done = done.clone();
            let halfway = halfway.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e55e7a + c);
                let mut events: Vec<Event> = Vec::new();
                let mut seen: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
                for i in 0..ops {
                    let k = rng.random_range(0..keys.len());
                    let key = keys[k].clone();
                    let roll = rng.random_range(0..100);
                    let value = format!("c{c}-{i}").into_bytes();
                    let t0 = base.elapsed().as_nanos() as u64;
                    let (op, result) = if roll < 45 {
                        (Op::Get, client.get(&key).await.map(Output::Get))
                    } else if roll < 75 {
                        (Op::Put(value.clone()), client.put(&key, &value).await.map(|_| Output::Put))
                    } else if roll < 85 {
                        let r = client.append(&key, b"+").await.map(|n| Output::Append { new_len: Some(n) });
                        (Op::Append(b"+".to_vec()), r)
                    } else if roll < 95 {
                        let expected = seen[k].clone();
                        let r = client
                            .compare_and_swap(&key, expected.as_deref(), Some(&value))
                            .await
                            .map(|o| Output::Cas { succeeded: o.succeeded });
                        (Op::Cas { expected, new: Some(value.clone()) }, r)
                    } else {
                        (Op::Delete, client.delete(&key).await.map(|e| Output::Delete { existed: Some(e) }))
                    };
                    let t1 = base.elapsed().as_nanos() as u64;
                    match result {
                        Ok(out) => {
                            if let Output::Get(v) = &out {
                                seen[k] = v.clone();
                            }
                            events.push((c, key, op, t0, Some((out, t1))));
                        }
                        Err(tessera::Error::Undetermined { .. }) => events.push((c, key, op, t0, None)),
                        // Any other error is definite: a write was not applied, a read saw
                        // nothing. Such operations are left out of the history.
                        Err(e) => panic!("client {c}: {} failed: {e}", op.name()),
                    }
                    if done.fetch_add(1, Ordering::SeqCst) + 1 == (clients as usize * ops) / 2 {
                        halfway.notify_one();
                    }
                }
                events
            }));
        }
        Workload { tasks, halfway }
    }

    /// Waits for every client and checks the history: linearizable per key, with at least
    /// `min_ops` operations.
    pub(crate) async fn check(self, min_ops: usize) {
        let mut history = History::new();
        let mut total = 0;
        for t in self.tasks {
            for (c, key, op, t0, outcome) in t.await.expect("client task") {
                total += 1;
                let id = history.invoke(ClientId(c), key, op, t0);
                match outcome {
                    Some((out, t1)) => history.complete(id, out, t1).unwrap(),
                    None => history.unknown(id).unwrap(),
                }
            }
        }
        assert!(total >= min_ops, "history has {total} operations");
        let report = check(&history);
        assert!(report.is_linearizable(), "history is not linearizable:\n{report}");
        assert_eq!(report.timed_out().count(), 0, "checker gave up on some keys");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_with_a_leader_failure_is_linearizable_per_key() {
    history_with_a_leader_failure(|_| {}).await;
}

/// The same with every linearizable read confirmed by a ReadIndex round (`--no-lease-reads`)
/// instead of the leader's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_with_a_leader_failure_and_read_index_reads_is_linearizable_per_key() {
    history_with_a_leader_failure(|cfg| cfg.lease_reads = false).await;
}

async fn history_with_a_leader_failure(tweak: fn(&mut tessera_node::NodeConfig)) {
    let mut cluster = TestCluster::start_with(3, 4, tweak).await;
    let prefix = 0x50u8;
    let keys: Vec<Vec<u8>> = (0..KEYS).map(|i| vec![prefix, b'k', b'0' + i as u8]).collect();
    let victim = cluster.leader_node_of(&keys[0]).await;
    let workload = Workload::start(&cluster, keys, CLIENTS, OPS_PER_CLIENT).await;
    workload.halfway.notified().await;
    cluster.stop_node(victim).await;
    workload.check(2_000).await;
    cluster.shutdown().await;
}
