//! Frame codec micro-benchmarks: encode and decode a typical put request.

use criterion::{criterion_group, criterion_main, Criterion};
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
        c.bench_function(&format!("decode put {len}B"), |b| {
            b.iter(|| frame::decode(std::hint::black_box(&bytes), frame::DEFAULT_MAX_FRAME_LEN).unwrap())
        });
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
