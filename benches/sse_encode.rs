//! SSE frame encoding cost (relay-sse's `sse` module): one event frame with
//! `id:` and `event:` for a small progress event, a typical stage result and
//! a large multi-line payload (every line break becomes another `data:`
//! line), plus heartbeat comments. Throughput in bytes so the figure reads
//! against memcpy-class speed.
//!
//! Ceiling in the same run: `copy_only` appends the same payload bytes to a
//! buffer without any escaping — the floor any encoder pays.
//!
//! Needs nothing running. `cargo bench --bench sse_encode`

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relay_sse::sse;

fn payloads() -> Vec<(&'static str, Vec<u8>)> {
    let small = br#"{"domain":"scan","job_id":"fc052f15-449f-4ce4-aa96-99d400ed7865","seq":11,"stage":"vision","status":"started","progress":10,"ts":1763700000000}"#.to_vec();
    let result = serde_json::to_vec(&serde_json::json!({
        "domain": "scan", "job_id": "fc052f15-449f-4ce4-aa96-99d400ed7865", "seq": 12,
        "stage": "vision", "status": "completed", "progress": 25, "ts": 1763700000000u64,
        "data": {"classification": {"major_category": "recyclable", "middle_category": "paper",
                 "minor_category": "cardboard box"}, "situation_tags": ["clean", "flattened"], "model_ms": 4500}
    }))
    .expect("json");
    let mut large = Vec::new();
    for i in 0..64 {
        large.extend_from_slice(
            format!("line {i}: disposal step text with some detail about rinsing and flattening\n")
                .as_bytes(),
        );
    }
    vec![
        ("small_progress", small),
        ("stage_result", result),
        ("multiline_4k", large),
    ]
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_encode");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, data) in payloads() {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("put_event", name), &data, |b, data| {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            b.iter(|| {
                buf.clear();
                sse::put_event(
                    &mut buf,
                    Some(black_box("8391:12")),
                    Some(black_box("vision")),
                    black_box(data),
                );
                black_box(buf.len())
            })
        });
        g.bench_with_input(BenchmarkId::new("copy_only", name), &data, |b, data| {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(data));
                black_box(buf.len())
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("comment_heartbeat", |b| {
        let mut buf = BytesMut::with_capacity(64);
        b.iter(|| {
            buf.clear();
            sse::put_comment(&mut buf, black_box("ping"));
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
