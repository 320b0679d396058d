//! The gateway's resume merge (`relay_core::resume::Resume`): catch-up from
//! history merged with the live feed, by offset, without duplicates.
//!
//! Cases (N = 1,000 records per job):
//! - `catch_up`: a new client; one history page of N records.
//! - `live`: history empty at start, then N live envelopes in order.
//! - `overlap`: a history read in flight while N/2 live envelopes arrive,
//!   the page then returns the first 3N/4 (overlapping half the buffer),
//!   the rest drains from the buffer — the reconnect case.
//! - `live_dupes`: every live envelope delivered twice (redelivery).
//!
//! Ceiling in the same run: `btreemap_baseline` inserts and drains the same
//! N offsets through a plain `BTreeMap` (the buffer structure alone).
//!
//! Needs nothing running. `cargo bench --bench resume`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relay_core::backend::HistoryPage;
use relay_core::resume::{Action, Resume};
use relay_core::{Epoch, LiveEnvelope, Offset, Payload, Record};

const N: u64 = 1_000;
const EPOCH: Epoch = Epoch(42);

/// Live envelopes after an empty catch-up; returns how many were emitted.
fn run_live(envs: &[LiveEnvelope]) -> usize {
    let mut r = Resume::new(None);
    r.start();
    r.on_history(HistoryPage {
        epoch: Some(EPOCH),
        top: Offset(0),
        first: None,
        records: vec![],
    });
    envs.iter()
        .map(|e| emitted(&r.on_live(black_box(e.clone()))))
        .sum()
}

fn rec(o: u64, payload: &Bytes) -> Record {
    Record {
        offset: Offset(o),
        payload: Payload(payload.clone()),
    }
}

fn live(o: u64, payload: &Bytes) -> LiveEnvelope {
    LiveEnvelope {
        epoch: EPOCH,
        record: rec(o, payload),
    }
}

fn emitted(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Emit(_)))
        .count()
}

fn page(from: u64, to: u64, top: u64, payload: &Bytes) -> HistoryPage {
    HistoryPage {
        epoch: Some(EPOCH),
        top: Offset(top),
        first: Some(Offset(1)),
        records: (from..=to).map(|o| rec(o, payload)).collect(),
    }
}

fn resume(c: &mut Criterion) {
    let payload = Bytes::from_static(b"j{\"seq\":1,\"stage\":\"vision\",\"status\":\"progress\"}");
    let mut g = c.benchmark_group("resume_merge");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(N));

    g.bench_function(BenchmarkId::new("catch_up", N), |b| {
        let p = page(1, N, N, &payload);
        b.iter(|| {
            let mut r = Resume::new(None);
            r.start();
            let out = r.on_history(black_box(p.clone()));
            assert_eq!(emitted(&out), N as usize);
        })
    });

    g.bench_function(BenchmarkId::new("live", N), |b| {
        let envs: Vec<_> = (1..=N).map(|o| live(o, &payload)).collect();
        b.iter(|| assert_eq!(run_live(&envs), N as usize))
    });

    g.bench_function(BenchmarkId::new("overlap", N), |b| {
        let envs: Vec<_> = (N / 2 + 1..=N).map(|o| live(o, &payload)).collect();
        let p = page(1, N * 3 / 4, N * 3 / 4, &payload);
        b.iter(|| {
            let mut r = Resume::new(None);
            r.start();
            let mut n = 0;
            for e in &envs {
                n += emitted(&r.on_live(black_box(e.clone())));
            }
            let out = r.on_history(p.clone());
            n += emitted(&out);
            // A follow-up read may be requested; answer it with an empty tail.
            if out.iter().any(|a| matches!(a, Action::ReadHistory { .. })) {
                n += emitted(&r.on_history(HistoryPage {
                    epoch: Some(EPOCH),
                    top: Offset(N),
                    first: Some(Offset(1)),
                    records: vec![],
                }));
            }
            assert_eq!(n, N as usize);
        })
    });

    g.bench_function(BenchmarkId::new("live_dupes", N), |b| {
        let envs: Vec<_> = (1..=N)
            .flat_map(|o| [live(o, &payload), live(o, &payload)])
            .collect();
        b.iter(|| assert_eq!(run_live(&envs), N as usize))
    });

    g.bench_function(BenchmarkId::new("btreemap_baseline", N), |b| {
        b.iter(|| {
            let mut m: BTreeMap<(u64, u64), Payload> = BTreeMap::new();
            for o in 1..=N {
                m.insert((EPOCH.0, o), Payload(payload.clone()));
            }
            let mut n = 0;
            while let Some(e) = m.pop_first() {
                black_box(e);
                n += 1;
            }
            assert_eq!(n, N as usize);
        })
    });
    g.finish();
}

criterion_group!(benches, resume);
criterion_main!(benches);
