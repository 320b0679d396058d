//! Codec cost per event: encode + decode for MessagePack vs JSON bodies
//! (native stream fields) vs eco2 flat fields (parse + routed JSON).
//!
//! Needs nothing running. `cargo bench --bench codec`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relay_core::codec::{native_fields, parse_native, Encoding};
use relay_core::eco2::{Eco2Entry, Eco2Routed};
use relay_core::{Event, Status, TraceContext};
use std::hint::black_box;

fn sample_event() -> Event {
    Event::new("scan", "fc052f15-449f-4ce4-aa96-99d400ed7865", 11, "vision", Status::Completed)
        .expect("valid event")
        .with_progress(25)
        .with_data(serde_json::json!({
            "classification": {"major_category": "recyclable", "middle_category": "paper", "minor_category": "cardboard"},
            "situation_tags": ["clean", "flattened"]
        }))
        .with_trace(TraceContext::new("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1).expect("valid trace"))
}

fn codec(c: &mut Criterion) {
    let e = sample_event();
    let mut g = c.benchmark_group("codec_roundtrip");
    g.throughput(Throughput::Elements(1));
    for enc in [Encoding::MsgPack, Encoding::Json] {
        g.bench_with_input(BenchmarkId::new("native", enc.as_str()), &enc, |b, enc| {
            b.iter(|| {
                let f = native_fields(black_box(&e), *enc).expect("encode");
                black_box(parse_native(&f).expect("decode"))
            })
        });
    }
    g.bench_function(BenchmarkId::new("eco2", "flat_fields+routed_json"), |b| {
        b.iter(|| {
            let f = Eco2Entry::from_event(black_box(&e)).to_fields();
            let entry = Eco2Entry::parse(&f).expect("parse");
            let json = entry.routed_json("1766899796476-0");
            black_box(Eco2Routed::parse(&bytes::Bytes::from(json)).expect("routed"))
        })
    });
    g.finish();

    for enc in [Encoding::MsgPack, Encoding::Json] {
        let f = native_fields(&e, enc).expect("encode");
        let size = relay_core::codec::fields_size(&f);
        println!("native {} entry: {size} bytes", enc.as_str());
    }
    let f = Eco2Entry::from_event(&e).to_fields();
    let size = relay_core::codec::fields_size(&f);
    println!("eco2 entry: {size} bytes");
}

criterion_group!(benches, codec);
criterion_main!(benches);
