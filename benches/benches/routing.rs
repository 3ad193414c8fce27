//! Routing-cache lookups (`tessera::core::route::RegionCache`) with 1,000 and 100,000
//! cached regions: the per-request cost of finding a key's region and leader.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tessera::core::route::{CachedRegion, RegionCache};
use tessera::{NodeId, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId};

/// `n` regions splitting the space of 4-byte big-endian prefixes evenly, each with three
/// peers and a known leader.
fn cache(n: u32) -> RegionCache {
    let step = u32::MAX / n;
    let bound = |i: u32| if i == 0 || i >= n { Vec::new() } else { (i * step).to_be_bytes().to_vec() };
    let mut c = RegionCache::new();
    for i in 0..n {
        let peers: Vec<Peer> =
            (0..3u64).map(|p| Peer { id: PeerId(u64::from(i) * 3 + p + 1), node_id: NodeId(p + 1) }).collect();
        let region = CachedRegion {
            descriptor: RegionDescriptor {
                id: RegionId(u64::from(i) + 1),
                start_key: bound(i),
                end_key: bound(i + 1),
                epoch: RegionEpoch { conf_ver: 1, version: 1 },
                peers: peers.clone(),
            },
            leader: Some(peers[(i % 3) as usize]),
            peer_addrs: (1..=3).map(|p| format!("127.0.0.1:{}", 7000 + p)).collect(),
        };
        assert!(c.insert(region));
    }
    assert_eq!(c.len(), n as usize);
    c
}

/// Pseudo-random 17-byte keys (the harness's key length).
fn keys(n: usize) -> Vec<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut k = x.to_be_bytes().to_vec();
            k.extend_from_slice(b"user00042");
            k
        })
        .collect()
}

fn routing(c: &mut Criterion) {
    let keys = keys(4096);
    let mut group = c.benchmark_group("routing cache");
    for n in [1_000u32, 100_000] {
        let cache = cache(n);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("get + leader", n), &cache, |b, cache| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                let r = cache.get(std::hint::black_box(&keys[i])).expect("the cache covers the key space");
                r.leader_target().map(|(_, addr)| addr.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("regions_for_range (1/64 of the space)", n), &cache, |b, cache| {
            b.iter(|| cache.regions_for_range(std::hint::black_box(&[0x40]), std::hint::black_box(&[0x44])))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group!(name = benches; config = config(); targets = routing);
criterion_main!(benches);
