//! Frame codec micro-benchmarks: encode and decode a typical put request.
//!
//! `frame::encode` allocates a fresh `Vec` per frame; `frame::encode_into` appends to a
//! reused buffer (what the QUIC path does). Decoding borrows its input, so "decode 64 frames
//! from one buffer" is the stream case: a receive buffer holding many frames, decoded front
//! to back.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tessera_wire::{
    frame, Frame, KvOp, KvRequest, ReadConsistency, RegionEpoch, RegionId, Request, RequestHeader, SessionId,
    SessionSeq, WriteCommand,
};

fn put_frame(value_len: usize) -> Frame {
    Frame::request(
        42,
        Request::Kv(KvRequest {
            header: RequestHeader {
                region_id: RegionId(3),
                epoch: RegionEpoch { conf_ver: 1, version: 1 },
                timeout_ms: 10_000,
                consistency: ReadConsistency::Linearizable,
            },
            op: KvOp::Write {
                session: Some(SessionSeq { session: SessionId(7), seq: 1_000, first_pending: 990 }),
                command: WriteCommand::Put { key: b"user:000000042".to_vec(), value: vec![7u8; value_len] },
            },
        }),
    )
}

fn codec(c: &mut Criterion) {
    for len in [100usize, 4096] {
        let f = put_frame(len);
        let bytes = frame::encode(&f).unwrap();
        c.bench_function(&format!("encode put {len}B"), |b| {
            b.iter(|| frame::encode(std::hint::black_box(&f)).unwrap())
        });
        let mut reused = Vec::with_capacity(bytes.len());
        c.bench_function(&format!("encode_into a reused buffer, put {len}B"), |b| {
            b.iter(|| {
                reused.clear();
                frame::encode_into(std::hint::black_box(&f), &mut reused).unwrap()
            })
        });
        c.bench_function(&format!("decode put {len}B"), |b| {
            b.iter(|| frame::decode(std::hint::black_box(&bytes), frame::DEFAULT_MAX_FRAME_LEN).unwrap())
        });
    }
    // A receive buffer with 64 frames back to back.
    let stream: Vec<u8> = (0..64).flat_map(|i| frame::encode(&put_frame(100 + i)).unwrap()).collect();
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Elements(64));
    group.bench_function("decode 64 frames from one buffer", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0;
            while let Some((f, used)) = frame::decode(&stream[at..], frame::DEFAULT_MAX_FRAME_LEN).unwrap() {
                std::hint::black_box(f);
                at += used;
                n += 1;
            }
            assert_eq!(n, 64);
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group!(name = benches; config = config(); targets = codec);
criterion_main!(benches);
