//! Publish → SSE client latency at fixed rates, through a private
//! redis-server, an in-process router (`relay_core::Router`) and an
//! in-process gateway (`relay_sse::Gateway`, served by axum on loopback),
//! read by a streaming HTTP client with `relay_sse::client`.
//!
//! `iter_custom`: each criterion iteration is one event; its time is the
//! event's publish → client-read latency (the publisher stamps `data.t_us`).
//! Events are paced at 1,000 and 5,000 events/s on one job, one at a time
//! (`Publisher::publish`, no batching).
//!
//! Ceiling in the same run: `echo_ceiling/*` runs the same paced events and
//! the same client against `relay_load::echo`, a raw loopback TCP/HTTP
//! server that frames the events as SSE and writes them straight to the
//! socket (no Redis, no router). p50/p99/p999 of both are printed.
//!
//! Needs `redis-server` on PATH (the harness starts a private one).
//! `cargo bench --bench e2e_latency`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hdrhistogram::Histogram;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::Backend;
use relay_core::{
    Domain, Event, KeySpace, Profile, Publisher, PublisherConfig, Router, RouterConfig, Status,
};
use relay_load::stats::unix_us;
use relay_sse::client::{SseItem, SseReader};
use relay_sse::{Gateway, GatewayOptions};
use relay_testkit::redis::RedisServer;

const RATES: [u64; 2] = [1_000, 5_000];

enum Sink {
    Relay(Publisher),
    Echo(relay_load::echo::Echo),
}

impl Sink {
    async fn send(&self, e: &Event) {
        match self {
            Sink::Relay(p) => {
                p.publish(e).await.expect("publish");
            }
            Sink::Echo(x) => x.publish(std::slice::from_ref(e)),
        }
    }
}

/// Publishes one warm-up event, then `n` paced events, then `done`; returns
/// the sum of the `n` latencies.
async fn measure(
    sink: &Sink,
    client: &reqwest::Client,
    url_for: &dyn Fn(&str) -> String,
    n: u64,
    rate: u64,
    hist: &Mutex<Histogram<u64>>,
) -> Duration {
    static JOB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let job = format!(
        "e2e-{}-{}",
        std::process::id(),
        JOB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let resp = client
        .get(url_for(&job))
        .header("Accept", "text/event-stream")
        .send();
    let reader = tokio::spawn(async move {
        let resp = resp.await.expect("stream");
        let mut r = SseReader::new(resp.bytes_stream());
        let mut warm = Some(warm_tx);
        let mut lat = Vec::with_capacity(n as usize);
        while let Some(Ok(item)) = r.next_item().await {
            let SseItem::Event(ev) = item else { continue };
            let now = unix_us();
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
            if v["stage"] == "done" {
                break;
            }
            if v["seq"] == 1 {
                if let Some(w) = warm.take() {
                    let _ = w.send(());
                }
                continue;
            }
            lat.push(now.saturating_sub(v["data"]["t_us"].as_u64().unwrap_or(now)));
        }
        lat
    });
    let ev = |seq: u64, stage: &str, status: Status| {
        Event::new("scan", &job, seq, stage, status)
            .expect("event")
            .with_data(
                serde_json::json!({ "t_us": unix_us(), "pad": "benchmark payload of modest size" }),
            )
    };
    // Warm-up event (the stream opens before the job exists; the first
    // event arrives through catch-up).
    // (Re-sent until seen: the echo server has no history; relay dedupes
    // the repeats by (job, seq).)
    let mut warm_rx = warm_rx;
    for _ in 0..500 {
        sink.send(&ev(1, "warm", Status::Progress)).await;
        if tokio::time::timeout(Duration::from_millis(20), &mut warm_rx)
            .await
            .is_ok()
        {
            break;
        }
    }
    let start = tokio::time::Instant::now();
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at).await;
        sink.send(&ev(i + 2, "load", Status::Progress)).await;
    }
    sink.send(&ev(n + 2, "done", Status::Completed)).await;
    let lat = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("drain")
        .expect("reader");
    assert_eq!(lat.len() as u64, n, "every event delivered");
    let mut h = hist.lock().expect("hist");
    let mut sum = 0u64;
    for us in lat {
        let _ = h.record(us.max(1));
        sum += us;
    }
    Duration::from_micros(sum)
}

fn e2e(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    let keys = KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4);
    let (publisher, sse_base, _router) = rt.block_on(async {
        let data: Arc<dyn Backend> =
            Arc::new(RedisBackend::connect(&server.url()).await.expect("redis"));
        let pubb: Arc<dyn Backend> =
            Arc::new(RedisBackend::connect(&server.url()).await.expect("redis"));
        let mut config = RouterConfig::new(keys.clone());
        config.consumer = "bench".into();
        let router = Router::new(data.clone(), config).spawn();
        let gw = Gateway::new(data.clone(), GatewayOptions::default()).expect("gateway");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, gw.router()).await });
        (
            Publisher::new(pubb, keys.clone(), PublisherConfig::default()),
            format!("http://{addr}"),
            router,
        )
    });
    let echo = rt.block_on(relay_load::echo::Echo::start()).expect("echo");
    let echo_base = echo.url();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let relay_sink = Sink::Relay(publisher);
    let echo_sink = Sink::Echo(echo);
    let relay_url = move |job: &str| format!("{sse_base}/v1/jobs/{job}/events");
    let echo_url = move |job: &str| format!("{echo_base}/e/{job}");

    let mut g = c.benchmark_group("e2e_latency");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut summary = Vec::new();
    for rate in RATES {
        for (name, sink, url) in [
            ("relay", &relay_sink, &relay_url as &dyn Fn(&str) -> String),
            (
                "echo_ceiling",
                &echo_sink,
                &echo_url as &dyn Fn(&str) -> String,
            ),
        ] {
            let hist =
                Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist"));
            g.bench_function(BenchmarkId::new(name, format!("{rate}_per_s")), |b| {
                b.iter_custom(|iters| rt.block_on(measure(sink, &client, url, iters, rate, &hist)))
            });
            let h = hist.lock().expect("hist");
            summary.push(format!(
                "{name:>12} @ {rate:>5}/s: n={} p50={:.3} ms p99={:.3} ms p999={:.3} ms max={:.3} ms",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.value_at_quantile(0.999) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            ));
        }
    }
    g.finish();
    println!("\npublish → SSE client latency (all iterations incl. warm-up):");
    for s in summary {
        println!("  {s}");
    }
}

criterion_group!(benches, e2e);
criterion_main!(benches);
