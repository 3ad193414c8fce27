//! The Raft log engine (`tessera_node::storage::wal`), in a temporary directory on the
//! current directory's filesystem (not tmpfs: the sync is what is measured):
//! - `log_engine_append`: one durable group commit (one `pwrite` + one `fdatasync`)
//!   carrying 1 or 8 entries of 128 bytes for each of 1, 8 and 64 regions;
//! - `log_engine_compaction`: 8 regions appending 8 entries of 1 KiB each per durable
//!   commit and purging as they go, alone (`all_purged`: whole segments are deleted) and
//!   beside a region whose 8 MiB of log is never purged (`one_unpurged_region`: once more
//!   than `COMPACT_ABOVE_SEGMENTS` segments are kept, each rotation first copies the live
//!   entries of the oldest segment forward). The difference is what compaction costs the
//!   writes; the number of entries copied is printed.
//!
//! ```text
//! cargo bench -p tessera-benches --bench log_engine
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::atomic::Ordering;

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

/// Segments of 4 MiB: a rotation every 64 commits of the busy regions.
const SMALL_SEGMENT: u64 = 4 * 1024 * 1024;
/// Busy regions, each appending `BUSY_ENTRIES` entries of 1 KiB per commit and keeping only
/// its last `KEEP` entries.
const BUSY_REGIONS: u64 = 8;
const BUSY_ENTRIES: u64 = 8;
const KEEP: u64 = 256;
/// The unpurged region's log: 8192 entries of 1 KiB, written before the measurement.
const IDLE_REGION: u64 = 1000;
const IDLE_ENTRIES: u64 = 8192;

fn compaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_engine_compaction");
    group.sample_size(20);
    group.throughput(Throughput::Elements(BUSY_REGIONS * BUSY_ENTRIES));
    for unpurged in [false, true] {
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        let log = LogEngine::open_with(dir.path(), SMALL_SEGMENT, GroupCommit::OFF).expect("open log engine");
        if unpurged {
            for chunk in 0..IDLE_ENTRIES / 512 {
                let entries = (0..512).map(|_| vec![3u8; 1024]).collect();
                log.write_blocking(vec![Op::Entries { region: IDLE_REGION, first: 1 + chunk * 512, entries }])
                    .expect("durable write");
            }
        }
        let mut next = vec![1u64; BUSY_REGIONS as usize + 1];
        let name = if unpurged { "one_unpurged_region" } else { "all_purged" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut ops = Vec::with_capacity(2 * BUSY_REGIONS as usize);
                for r in 1..=BUSY_REGIONS {
                    let first = next[r as usize];
                    next[r as usize] += BUSY_ENTRIES;
                    ops.push(Op::Entries {
                        region: r,
                        first,
                        entries: (0..BUSY_ENTRIES).map(|_| vec![7u8; 1024]).collect(),
                    });
                    let last = first + BUSY_ENTRIES - 1;
                    if last > KEEP {
                        ops.push(Op::Purge { region: r, upto: last - KEEP, log_id: vec![0; 16] });
                    }
                }
                log.write_blocking(ops).expect("durable write");
            })
        });
        let stats = log.stats();
        eprintln!(
            "{name}: {} entries copied forward by compaction, {} segments deleted, {} kept at the end",
            stats.relocated.load(Ordering::Relaxed),
            stats.segments_deleted.load(Ordering::Relaxed),
            log.segment_count()
        );
        log.close();
    }
    group.finish();
}

criterion_group!(benches, append, compaction);
criterion_main!(benches);
