//! State-machine apply: `RegionStateMachine::apply` (openraft's `RaftStateMachine`) of
//! batches of committed puts, on a redb engine in a temporary directory.
//!
//! Applies are committed without an fsync of their own (`Engine::write_lazy`: they are
//! re-derived from the durable Raft log after a crash), so this measures the apply path:
//! the exactly-once session check, the data write and the group commit, not the disk's
//! sync latency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use tessera_node::raft::types::{Entry, LogCommand, LogOp, SessionRef, TypeConfig};
use tessera_node::storage::{Engine, RegionShared, RegionStateMachine};
use tessera_wire::{NodeId, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId};

fn state_machine(dir: &std::path::Path) -> (Engine, RegionStateMachine) {
    let engine = Engine::open(&dir.join("node.redb")).expect("open engine");
    let desc = RegionDescriptor {
        id: RegionId(1),
        start_key: vec![],
        end_key: vec![],
        epoch: RegionEpoch { conf_ver: 1, version: 1 },
        peers: vec![Peer { id: PeerId(1), node_id: NodeId(1) }],
    };
    let sm = RegionStateMachine::open(&engine, RegionShared::new(desc, 0)).expect("open state machine");
    (engine, sm)
}

/// Puts of 100-byte values at log indexes `first..first + n`, each with the next sequence
/// number of one client session (as every SDK write has), at keys among `keys`.
fn batch(first: u64, n: u64, now_ms: u64, keys: u64) -> Vec<Entry> {
    (first..first + n)
        .map(|index| {
            let key = format!("user{:012}", index.wrapping_mul(2_654_435_761) % keys).into_bytes();
            let command = LogCommand::WriteV2 {
                session: Some(SessionRef { id: 1, seq: index, first_pending: index }),
                op: LogOp::Put(key, vec![b'v'; 100]),
                at_ms: now_ms,
                session_ttl_ms: 30 * 60 * 1000,
            };
            Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), command)
        })
        .collect()
}

/// One batch write of `keys` puts (100-byte values) at log index `index`, with the next
/// sequence number of one client session: its exactly-once row names the keys.
fn batch_put(index: u64, keys: u64, now_ms: u64) -> Vec<Entry> {
    let pairs = (0..keys)
        .map(|i| {
            let n = (index * keys + i).wrapping_mul(2_654_435_761) % 1_000_000;
            (format!("user{n:012}").into_bytes(), vec![b'v'; 100])
        })
        .collect();
    let command = LogCommand::WriteV2 {
        session: Some(SessionRef { id: 1, seq: index, first_pending: index }),
        op: LogOp::BatchPut(pairs),
        at_ms: now_ms,
        session_ttl_ms: 30 * 60 * 1000,
    };
    vec![Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), command)]
}

/// Applies `entries` as one batch, as openraft hands them over.
fn apply_all(rt: &tokio::runtime::Runtime, sm: &mut RegionStateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    rt.block_on(sm.apply(stream)).unwrap();
}

fn apply(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut group = c.benchmark_group("state machine apply");
    for n in [1u64, 64] {
        let dir = tempfile::tempdir().unwrap();
        let (_engine, mut sm) = state_machine(dir.path());
        let mut next = 1u64;
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("puts per apply", n), &n, |b, &n| {
            b.iter(|| {
                apply_all(&rt, &mut sm, batch(next, n, now_ms, 1_000_000));
                next += n;
            })
        });
    }
    // Updates, as the goal table's put rows make them: 64 per apply over 100,000 records
    // loaded first (and written out to the table by a durable commit).
    {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut sm) = state_machine(dir.path());
        let mut next = 1u64;
        while next <= 100_000 / 256 {
            apply_all(&rt, &mut sm, batch_put(next, 256, now_ms));
            next += 1;
        }
        rt.block_on(engine.write(Box::new(|_| Ok(())))).unwrap();
        group.throughput(Throughput::Elements(64));
        group.bench_function("puts per apply/64 updates of 100k records", |b| {
            b.iter(|| {
                apply_all(&rt, &mut sm, batch(next, 64, now_ms, 100_000));
                next += 64;
            })
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut sm) = state_machine(dir.path());
    let mut next = 1u64;
    group.throughput(Throughput::Elements(256));
    group.bench_function("batch put of 256 keys", |b| {
        b.iter(|| {
            apply_all(&rt, &mut sm, batch_put(next, 256, now_ms));
            next += 1;
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group!(name = benches; config = config(); targets = apply);
criterion_main!(benches);
