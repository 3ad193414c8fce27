//! The Raft log engine (`tessera_node::storage::wal`): one durable group commit (one
//! `pwrite` + one `fdatasync`) carrying 1 or 8 entries of 128 bytes for each of 1, 8 and 64
//! regions, in a temporary directory on the current directory's filesystem (not tmpfs: the
//! sync is what is measured).
//!
//! ```text
//! cargo bench -p tessera-benches --bench log_engine
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tessera_node::storage::wal::{GroupCommit, LogEngine, Op, SEGMENT_BYTES};

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    // The sync path itself: no group-commit linger (at these rates it would add 1 ms).
    let log = LogEngine::open_with(dir.path(), SEGMENT_BYTES, GroupCommit::OFF).expect("open log engine");
    let mut group = c.benchmark_group("log_engine_append");
    group.sample_size(20);
    for regions in [1u64, 8, 64] {
        for per_region in [1u64, 8] {
            let mut next = vec![1u64; regions as usize + 1];
            group.throughput(Throughput::Elements(regions * per_region));
            let id = BenchmarkId::new(format!("{regions}_regions"), format!("{per_region}_entries_each"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let ops = (1..=regions)
                        .map(|r| {
                            let first = next[r as usize];
                            next[r as usize] += per_region;
                            Op::Entries { region: r, first, entries: (0..per_region).map(|_| vec![7u8; 128]).collect() }
                        })
                        .collect();
                    log.write_blocking(ops).expect("durable write");
                })
            });
        }
    }
    group.finish();
    log.close();
}

criterion_group!(benches, append);
criterion_main!(benches);
