//! Router throughput against a real Redis: events/s relayed (applied +
//! published + acked) by one in-process router, for batch sizes 1, 16, 64
//! and 256, next to the `redis-benchmark` pipelined EVALSHA ceiling measured
//! in the same run on the same server.
//!
//! Needs `redis-server` and `redis-benchmark` on PATH (the harness starts a
//! private server). `cargo bench --bench router`
//!
//! Workload: 2,000 jobs × 12 events, interleaved seq-major (as many
//! concurrent jobs produce them), prefilled before the timed window. The
//! timed window runs from router start until every entry is acked.
//! Also printed: Redis CPU and router-process CPU per event over the window.
//!
//! Built with `--features fred` (`cargo bench --bench router --features
//! fred`), each batch size is measured on `FredBackend` too, right after
//! `RedisBackend` on the same server, and the summary puts the two clients
//! side by side; without the feature only `RedisBackend` runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

// The allocator the `relay-router` binary runs with (its default
// `mimalloc` feature): the bench measures the engine as deployed. Before
// 2026-12-06 it ran on glibc malloc, which cost about a quarter of the
// router's CPU here (BENCHMARKS.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
#[cfg(feature = "fred")]
use relay_core::backend::fred::FredBackend;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::Backend;
use relay_core::{
    Domain, Event, KeySpace, Profile, Publisher, PublisherConfig, Router, RouterConfig, Status,
};
use relay_testkit::bench::{evalsha_ceiling, process_cpu, redis_cpu};
use relay_testkit::redis::RedisServer;

const JOBS: usize = 2_000;
const EVENTS_PER_JOB: u64 = 12;
const TOTAL: u64 = JOBS as u64 * EVENTS_PER_JOB;

async fn prefill(backend: Arc<dyn Backend>, keys: &KeySpace) {
    let publisher = Publisher::new(backend, keys.clone(), PublisherConfig::default());
    for seq in 1..=EVENTS_PER_JOB {
        let events: Vec<Event> = (0..JOBS)
            .map(|j| {
                Event::new(
                    keys.domain().as_str(),
                    &format!("bench-job-{j}"),
                    seq,
                    "work",
                    Status::Progress,
                )
                .expect("valid event")
                .with_progress((seq * 8) as u8)
                .with_data(
                    serde_json::json!({"step": seq, "note": "benchmark payload of modest size"}),
                )
            })
            .collect();
        for chunk in events.chunks(1000) {
            publisher.publish_batch(chunk).await.expect("prefill");
        }
    }
}

struct Run {
    elapsed: Duration,
    redis_cpu: Duration,
    router_cpu: Duration,
}

async fn route_all(
    server: &RedisServer,
    client: &str,
    backend: Arc<dyn Backend>,
    batch: usize,
    round: usize,
) -> Run {
    // The client in the domain too: no run can see another's keys even if
    // a FLUSHALL failed.
    let keys = KeySpace::new(
        Profile::Native,
        Domain::new(format!("{}b{batch}r{round}", &client[..1])).expect("domain"),
        4,
    );
    prefill(backend.clone(), &keys).await;
    let mut config = RouterConfig::new(keys);
    config.batch = batch;
    config.block = Duration::from_millis(100);
    config.consumer = "bench".into();
    let _ = server.reset_stats().await;
    let redis_before = redis_cpu(server).await;
    let cpu_before = process_cpu();
    let start = Instant::now();
    let handle = Router::new(backend, config).spawn();
    while handle.metrics().acked.get() < TOTAL {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = start.elapsed();
    let router_cpu = process_cpu().saturating_sub(cpu_before);
    let redis_used = redis_cpu(server).await.saturating_sub(redis_before);
    let mut stats: Vec<(String, u64, u64)> = server
        .info_commandstats()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.calls, v.usec))
        .collect();
    stats.sort_by_key(|s| std::cmp::Reverse(s.2));
    if round % 10 == 1 {
        let top: Vec<String> = stats
            .iter()
            .take(8)
            .map(|(k, calls, usec)| format!("{k}={:.2}us/ev({calls})", *usec as f64 / TOTAL as f64))
            .collect();
        println!(
            "{client} batch {batch}: redis commandstats per event: {}",
            top.join(" ")
        );
    }
    handle.shutdown().await;
    let _ = server.flushall().await;
    Run {
        elapsed,
        redis_cpu: redis_used,
        router_cpu,
    }
}

fn router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    // (name, backend, criterion id prefix): redis-rs keeps the ids it always
    // had, so saved criterion baselines still compare.
    #[cfg_attr(not(feature = "fred"), allow(unused_mut))]
    let mut clients: Vec<(&str, Arc<dyn Backend>, &str)> = vec![(
        "redis-rs",
        Arc::new(
            rt.block_on(RedisBackend::connect(&server.url()))
                .expect("connect redis-rs"),
        ),
        "batch",
    )];
    #[cfg(feature = "fred")]
    clients.push((
        "fred",
        Arc::new(
            rt.block_on(FredBackend::connect(&server.url()))
                .expect("connect fred"),
        ),
        "fred/batch",
    ));

    let ceiling = rt.block_on(evalsha_ceiling(&server, 300_000, 64));
    let _ = rt.block_on(server.flushall());
    match ceiling {
        Some(c) => println!(
            "ceiling: redis-benchmark pipelined EVALSHA (apply script, -P 64): {c:.0} calls/s"
        ),
        None => println!("ceiling: redis-benchmark unavailable"),
    }

    let mut g = c.benchmark_group("router_throughput");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(TOTAL));
    let mut summary = Vec::new();
    // Clients alternate within each batch size, so a load change on the
    // box during the run lands on both rather than on one client's rows.
    for batch in [1usize, 16, 64, 256] {
        for (client, backend, id) in &clients {
            let mut round = 0;
            let mut runs = Vec::new();
            g.bench_with_input(BenchmarkId::new(*id, batch), &batch, |b, &batch| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        round += 1;
                        let run =
                            rt.block_on(route_all(&server, client, backend.clone(), batch, round));
                        total += run.elapsed;
                        runs.push(run);
                    }
                    total
                })
            });
            let n = runs.len().max(1) as f64;
            let secs: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum::<f64>() / n;
            let redis_us =
                runs.iter().map(|r| r.redis_cpu.as_secs_f64()).sum::<f64>() / n / TOTAL as f64
                    * 1e6;
            let router_us =
                runs.iter().map(|r| r.router_cpu.as_secs_f64()).sum::<f64>() / n / TOTAL as f64
                    * 1e6;
            let rate = TOTAL as f64 / secs;
            summary.push((*client, batch, rate, redis_us, router_us));
        }
    }
    g.finish();

    println!("\nrouter summary (mean over all timed runs; {TOTAL} events = {JOBS} jobs x {EVENTS_PER_JOB}):");
    println!(
        "{:>8} {:>6} {:>12} {:>16} {:>17} {:>10}",
        "client", "batch", "events/s", "redis CPU us/ev", "router CPU us/ev", "/ceiling"
    );
    for (client, batch, rate, redis_us, router_us) in &summary {
        let ratio = ceiling
            .map(|c| format!("{:.2}", rate / c))
            .unwrap_or_else(|| "-".into());
        println!(
            "{client:>8} {batch:>6} {rate:>12.0} {redis_us:>16.2} {router_us:>17.2} {ratio:>10}"
        );
    }
    let json = serde_json::json!({
        "ceiling_evalsha_per_s": ceiling,
        "events": TOTAL,
        "rows": summary.iter().map(|(client, b, r, ru, rc)| serde_json::json!({
            "client": client, "batch": b, "events_per_s": r,
            "redis_cpu_us_per_event": ru, "router_cpu_us_per_event": rc,
            "ratio_to_ceiling": ceiling.map(|c| r / c),
        })).collect::<Vec<_>>(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("router-summary.json"), json.to_string());
}

criterion_group!(benches, router);
criterion_main!(benches);
