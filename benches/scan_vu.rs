//! k6-equivalent scan iterations, in-process: the scan API, the pipeline
//! (in-process transport), the router and the SSE gateway all run in this
//! process on one `MemoryBackend`, served over loopback HTTP like a
//! deployment (API and gateway on their own ports). N virtual users
//! (50, 250, 500) loop continuously: submit a scan, follow its SSE stream to
//! `done` (`relay_load::scan::iteration`, the load tool's own client), think
//! 100–300 ms.
//!
//! `iter_custom`: each criterion iteration is one scan job's E2E time
//! (submit → terminal event) taken from the stream of iterations the N VUs
//! complete, so the figure is the per-job E2E under N concurrent VUs.
//!
//! Short simulated model latency: vision 40±10 ms, answer 60±20 ms, rule and
//! reward 5 ms (total ≈ 110 ms). The ceiling it is compared against is that
//! model time itself: printed per level are E2E and overhead (E2E − the
//! job's `model_ms`) p50/p95, with completion and duplicate/missing counts.
//!
//! Needs nothing running. `cargo bench --bench scan_vu`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use hdrhistogram::Histogram;
use pipeline_scan::api::{ApiConfig, ScanApi};
use pipeline_scan::scan::{self, LatencyDist, ScanModels};
use pipeline_scan::transport::inprocess::InProcessConfig;
use relay_core::backend::memory::MemoryBackend;
use relay_core::{Domain, KeySpace, Profile, Publisher, Router, RouterConfig};
use relay_load::scan::{iteration, Iteration, Mode, Outcome, Target};
use relay_sse::{Gateway, GatewayOptions};
use tokio::sync::mpsc;

const LEVELS: [usize; 3] = [50, 250, 500];

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn deployment() -> Target {
    // One in-process server: relay backend and the pipeline's records.
    let backend = Arc::new(MemoryBackend::new());
    let keys = KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4);
    let publisher = Publisher::new(
        backend.clone(),
        keys.clone(),
        pipeline_scan::pipeline::publisher_config(),
    );
    let mut models = ScanModels::simulated(LatencyDist {
        mean_ms: 40,
        jitter_ms: 10,
    });
    models.stage_latency = vec![
        (
            "rule".into(),
            LatencyDist {
                mean_ms: 5,
                jitter_ms: 0,
            },
        ),
        (
            "answer".into(),
            LatencyDist {
                mean_ms: 60,
                jitter_ms: 20,
            },
        ),
        (
            "reward".into(),
            LatencyDist {
                mean_ms: 5,
                jitter_ms: 0,
            },
        ),
    ];
    let (_engine, transport) = pipeline_scan::app::start_in_process(
        publisher.clone(),
        backend.clone(),
        &models,
        scan::engine_config(),
        InProcessConfig {
            capacity: 4096,
            concurrency: 1024,
            stage_concurrency: Vec::new(),
        },
    );
    let api = ScanApi::new(
        publisher,
        backend.clone(),
        Arc::new(transport),
        ApiConfig::default(),
    )
    .router();
    let mut rc = RouterConfig::new(keys);
    rc.consumer = "bench".into();
    std::mem::forget(Router::new(backend.clone(), rc).spawn());
    let gw = Gateway::new(
        backend,
        GatewayOptions {
            max_connections: 20_000,
            ..Default::default()
        },
    )
    .expect("gateway");
    Target {
        api_url: serve(api).await,
        sse_url: serve(gw.router()).await,
    }
}

/// N VUs looping until `stop`; every finished iteration goes to `tx`.
fn start_vus(
    target: &Target,
    n: usize,
    stop: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Iteration>,
) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let t0 = Instant::now();
    for vu in 0..n {
        let (client, target, stop, tx) = (client.clone(), target.clone(), stop.clone(), tx.clone());
        tokio::spawn(async move {
            // Spread the VUs' starts over 1 s (a ramp), as k6 would.
            tokio::time::sleep(Duration::from_millis((vu as u64 * 1000) / n as u64)).await;
            while !stop.load(Ordering::Relaxed) {
                let it = iteration(
                    &client,
                    &target,
                    vu,
                    Mode::Sse,
                    "https://images.example.com/b/{n}.jpg",
                    Duration::from_millis(200),
                    Duration::from_secs(60),
                    t0,
                )
                .await;
                if tx.send(it).is_err() {
                    break;
                }
                let think = 100 + (vu as u64 * 37) % 200;
                tokio::time::sleep(Duration::from_millis(think)).await;
            }
        });
    }
}

fn scan_vu(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let target = rt.block_on(deployment());
    let mut g = c.benchmark_group("scan_vu");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    let mut lines = Vec::new();
    for n in LEVELS {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        rt.block_on(async { start_vus(&target, n, stop.clone(), tx) });
        let rx = std::sync::Mutex::new(rx);
        let mut e2e = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("hist");
        let mut overhead = e2e.clone();
        let (mut total, mut ok, mut dups, mut missing) = (0u64, 0u64, 0u64, 0u64);
        let started = Instant::now();
        g.bench_function(
            BenchmarkId::new("e2e_per_iteration", format!("{n}_vus")),
            |b| {
                b.iter_custom(|iters| {
                    let mut rx = rx.lock().expect("rx");
                    rt.block_on(async {
                        let mut sum = Duration::ZERO;
                        let mut got = 0;
                        while got < iters {
                            let it = rx.recv().await.expect("vus running");
                            total += 1;
                            dups += u64::from(it.duplicates);
                            missing += u64::from(it.missing);
                            if it.outcome != Outcome::Completed {
                                continue;
                            }
                            ok += 1;
                            let us = it.e2e_us.unwrap_or(0);
                            let _ = e2e.record(us.max(1));
                            if let Some(m) = it.model_ms {
                                let _ = overhead.record(us.saturating_sub(m * 1000).max(1));
                            }
                            sum += Duration::from_micros(us);
                            got += 1;
                        }
                        sum
                    })
                })
            },
        );
        stop.store(true, Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        lines.push(format!(
            "{n:>4} VUs: {total} iterations ({:.0}/min), completed {:.2} %, E2E p50 {:.1} ms p95 {:.1} ms, \
             overhead (E2E − model) p50 {:.1} ms p95 {:.1} ms, duplicates {dups}, missing {missing}",
            total as f64 / secs * 60.0,
            100.0 * ok as f64 / total.max(1) as f64,
            e2e.value_at_quantile(0.5) as f64 / 1000.0,
            e2e.value_at_quantile(0.95) as f64 / 1000.0,
            overhead.value_at_quantile(0.5) as f64 / 1000.0,
            overhead.value_at_quantile(0.95) as f64 / 1000.0,
        ));
        // Let the stopped VUs finish their last iterations before the next level.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(1500)).await });
    }
    g.finish();
    println!(
        "\nscan_vu (model time ≈ 110 ms per job: vision 40±10, rule 5, answer 60±20, reward 5):"
    );
    for l in lines {
        println!("  {l}");
    }
}

criterion_group!(benches, scan_vu);
criterion_main!(benches);
