//! SSE gateway load: N concurrent SSE connections to ONE `relay-sse`
//! process, each receiving 1 event/s, through the real path
//! (`Publisher` → Redis stream → `relay-router` → Pub/Sub → `relay-sse` →
//! client). Reports the gateway's RSS per idle connection, publish →
//! client-read latency (HdrHistogram: p50/p90/p99/max), delivered vs
//! expected events, gaps, and the CPU of gateway, router and Redis.
//!
//! ```text
//! cargo bench --bench sse_connections -- --connections 15000 --jobs 15000 --secs 30
//! ```
//!
//! It builds the release `relay-router` and `relay-sse` first (`cargo
//! bench` builds only this package's targets; a no-op when up to date).
//!
//! Flags (after `--`): `--connections N` (15000), `--jobs J` (= N: one job
//! per connection, the realistic worst case for the router; fewer jobs means
//! N/J subscribers per job), `--secs S` (30, load phase), `--clients P`
//! (client processes, 4: the per-process fd limit is 20,000), `--warmup-secs
//! W` (1: events published in the first W seconds count in the "all
//! events" figures only, as with relay-load), `--gateway-arg
//! A` (repeatable, extra relay-sse flags).
//!
//! The client side runs in child processes (this binary re-executed with
//! `SSE_CONNS_CHILD=1`), each holding N/P connections, parsing the raw SSE
//! bytes with `relay_sse::client`. Every event carries its publish time in
//! microseconds; the client records `read time - publish time`.
//! No assertions: a measurement tool. Bounded: it stops by itself.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::Backend;
use relay_core::{Domain, Event, KeySpace, Profile, Publisher, PublisherConfig, Status};
use relay_load::stats::unix_us;
use relay_sse::client::{SseItem, SseParser};
use relay_testkit::procs::{free_port, wait_for_port, Proc};
use relay_testkit::redis::TestRedis;

const CHILD_ENV: &str = "SSE_CONNS_CHILD";

fn job_name(j: usize) -> String {
    format!("conn-job-{j:05}")
}

/// RSS of a process in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main();
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let connections: usize = flag("--connections")
        .and_then(|v| v.parse().ok())
        .unwrap_or(15_000);
    let jobs: usize = flag("--jobs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(connections)
        .clamp(1, connections);
    let secs: u64 = flag("--secs").and_then(|v| v.parse().ok()).unwrap_or(30);
    let warmup_secs: f64 = flag("--warmup-secs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let clients: usize = flag("--clients")
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
        .max(1);
    let gateway_extra: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--gateway-arg")
        .filter_map(|(i, _)| args.get(i + 1).cloned())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(parent(
        connections,
        jobs,
        secs,
        warmup_secs,
        clients,
        gateway_extra,
    ));
}

/// `cargo bench` builds this package's targets, not the other members'
/// binaries the bench spawns: build them (release, as measured) so that
/// `cargo bench` works from a fresh clone and never measures a stale
/// binary (a no-op when they are up to date). With `RELAY_BIN_DIR` set the
/// binaries are the caller's, and nothing is built.
fn build_release_bins() {
    if std::env::var_os("RELAY_BIN_DIR").is_some() {
        return;
    }
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--release",
        "-p",
        "relay-router",
        "-p",
        "relay-sse",
        "--bins",
    ]);
    // A `--features fred` bench spawns binaries that have the client too.
    if cfg!(feature = "fred") {
        cargo.args(["--features", "relay-router/fred,relay-sse/fred"]);
    }
    let status = cargo.status().expect("run cargo");
    assert!(
        status.success(),
        "cargo build of the binaries failed: {status}"
    );
}

async fn parent(
    connections: usize,
    jobs: usize,
    secs: u64,
    warmup_secs: f64,
    clients: usize,
    gateway_extra: Vec<String>,
) {
    println!("sse_connections: {connections} connections, {jobs} jobs ({} subscribers/job), {secs} s at 1 event/s per job, {clients} client processes",
        connections / jobs);
    build_release_bins();
    let redis = TestRedis::private();
    let url = redis.url().to_owned();
    let router_metrics = format!("127.0.0.1:{}", free_port());
    let router = Proc::spawn(
        "relay-router",
        &[
            "--redis-url",
            &url,
            "--consumer",
            "r1",
            "--metrics-addr",
            &router_metrics,
            "--block-ms",
            "100",
        ],
        &[],
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let max_conn = (connections + 1000).to_string();
    let mut gw_args: Vec<&str> = vec![
        "--listen",
        &listen,
        "--redis-url",
        &url,
        "--max-connections",
        &max_conn,
    ];
    gw_args.extend(gateway_extra.iter().map(String::as_str));
    let gateway = Proc::spawn("relay-sse", &gw_args, &[]);
    let gw_pid = gateway.pid().expect("gateway pid");
    let router_pid = router.pid().expect("router pid");
    let addr = listen.parse().expect("addr");
    wait_for_port(addr, Duration::from_secs(30));

    let backend: Arc<dyn Backend> = Arc::new(
        RedisBackend::connect(redis.url())
            .await
            .expect("connect to redis"),
    );
    let keys = KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4);
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    let event = |j: usize, seq: u64| {
        Event::new("scan", &job_name(j), seq, "work", Status::Progress)
            .expect("event")
            .with_data(serde_json::json!({ "sent_us": unix_us() }))
    };
    // Every job exists before the clients connect (seq 1, routed).
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Event> = chunk.iter().map(|&j| event(j, 1)).collect();
        publisher.publish_batch(&batch).await.expect("publish");
    }
    let last = relay_core::JobId::new(job_name(jobs - 1)).expect("job");
    let deadline = Instant::now() + Duration::from_secs(60);
    while backend
        .get_state(&keys.job(&last))
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "router did not route the first events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(gw_pid);

    // Client processes: connection i follows job i % jobs.
    let exe = std::env::current_exe().expect("current exe");
    let per = connections.div_ceil(clients);
    let mut children = Vec::new();
    for c in 0..clients {
        let from = c * per;
        let to = ((c + 1) * per).min(connections);
        if from >= to {
            break;
        }
        let child = Command::new(&exe)
            .env(CHILD_ENV, "1")
            .args([
                listen.clone(),
                from.to_string(),
                to.to_string(),
                jobs.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn client process");
        children.push(child);
    }
    let t_connect = Instant::now();
    let mut readers: Vec<BufReader<std::process::ChildStdout>> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("stdout")))
        .collect();
    let mut connected = 0usize;
    let mut failed = 0usize;
    for r in readers.iter_mut() {
        let line = tokio::task::block_in_place(|| {
            let mut l = String::new();
            let _ = r.read_line(&mut l);
            l
        });
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.first() == Some(&"ready") {
            connected += parts
                .get(1)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            failed += parts
                .get(2)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
        }
    }
    let connect_time = t_connect.elapsed();
    // Let allocations settle, then measure the idle footprint.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = rss_kib(gw_pid);
    let per_conn = (rss_idle.saturating_sub(rss_before)) as f64 * 1024.0 / connected.max(1) as f64;
    println!(
        "connected {connected} (failed {failed}) in {:.1} s; gateway RSS {} MiB → {} MiB idle: {:.0} B = {:.1} KiB per idle connection",
        connect_time.as_secs_f64(),
        rss_before / 1024,
        rss_idle / 1024,
        per_conn,
        per_conn / 1024.0
    );

    // Load: every job gets 1 event/s, spread evenly over each second.
    let ticks_per_sec = 100usize;
    let per_tick = jobs.div_ceil(ticks_per_sec);
    let child_pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let clients_cpu = || {
        child_pids
            .iter()
            .map(|p| relay_testkit::bench::pid_cpu(*p))
            .sum::<Duration>()
    };
    let clients_cpu0 = clients_cpu();
    let self_cpu0 = relay_testkit::bench::process_cpu();
    let gw_cpu0 = relay_testkit::bench::pid_cpu(gw_pid);
    let router_cpu0 = relay_testkit::bench::pid_cpu(router_pid);
    let redis_cpu0 = match redis.server() {
        Ok(s) => relay_testkit::bench::redis_cpu(s).await,
        Err(_) => Duration::ZERO,
    };
    // Events published in the first `warmup_secs` go to the "all" histogram
    // only (relay-load's `--warmup-secs` does the same).
    let warm_until = unix_us() + (warmup_secs * 1e6) as u64;
    for child in children.iter_mut() {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = writeln!(stdin, "warm {warm_until}");
            let _ = stdin.flush();
        }
    }
    let t0 = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(1000 / ticks_per_sec as u64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut published = 0u64;
    let inflight = Arc::new(tokio::sync::Semaphore::new(8));
    for s in 0..secs {
        let seq = s + 2;
        for t in 0..ticks_per_sec {
            interval.tick().await;
            let from = t * per_tick;
            let to = ((t + 1) * per_tick).min(jobs);
            if from >= to {
                continue;
            }
            let batch: Vec<Event> = (from..to).map(|j| event(j, seq)).collect();
            published += batch.len() as u64;
            // Pipelined: a few batches in flight, so the publisher keeps the
            // schedule instead of waiting one round trip per tick.
            let permit = inflight.clone().acquire_owned().await.expect("semaphore");
            let p = publisher.clone();
            tokio::spawn(async move {
                p.publish_batch(&batch).await.expect("publish");
                drop(permit);
            });
        }
    }
    let wall = t0.elapsed();
    // Give the tail time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gw_cpu = relay_testkit::bench::pid_cpu(gw_pid).saturating_sub(gw_cpu0);
    let router_cpu = relay_testkit::bench::pid_cpu(router_pid).saturating_sub(router_cpu0);
    let redis_cpu = match redis.server() {
        Ok(s) => relay_testkit::bench::redis_cpu(s)
            .await
            .saturating_sub(redis_cpu0),
        Err(_) => Duration::ZERO,
    };
    let rss_load = rss_kib(gw_pid);
    let clients_cpu_used = clients_cpu().saturating_sub(clients_cpu0);
    let self_cpu = relay_testkit::bench::process_cpu().saturating_sub(self_cpu0);

    // Collect the clients' histograms.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut steady = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut received, mut gaps, mut closed) = (0u64, 0u64, 0u64);
    let mut late = std::collections::BTreeMap::<u64, u64>::new();
    for (child, r) in children.iter_mut().zip(readers.iter_mut()) {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = writeln!(stdin, "stop");
            let _ = stdin.flush();
        }
        tokio::task::block_in_place(|| loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            let p: Vec<&str> = l.split_whitespace().collect();
            match p.first().copied() {
                Some(kind @ ("h" | "s")) => {
                    if let (Some(v), Some(c)) = (
                        p.get(1).and_then(|v| v.parse().ok()),
                        p.get(2).and_then(|v| v.parse().ok()),
                    ) {
                        let h = if kind == "h" { &mut hist } else { &mut steady };
                        let _ = h.record_n(v, c);
                    }
                }
                Some("late") => {
                    if let (Some(slot), Some(n)) = (
                        p.get(1).and_then(|v| v.parse::<u64>().ok()),
                        p.get(2).and_then(|v| v.parse::<u64>().ok()),
                    ) {
                        *late.entry(slot).or_default() += n;
                    }
                }
                Some("stats") => {
                    let n = |i: usize| p.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    received += n(1);
                    gaps += n(2);
                    closed += n(3);
                }
                Some("end") => break,
                _ => {}
            }
        });
        let _ = child.kill();
        let _ = child.wait();
    }
    let expected = published * (connections as u64) / (jobs as u64);
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "load: {published} events published in {:.1} s ({:.0}/s), {} deliveries expected, {received} received ({:.3}%), gaps {gaps}, streams closed early {closed}",
        wall.as_secs_f64(),
        published as f64 / wall.as_secs_f64(),
        expected,
        received as f64 * 100.0 / expected.max(1) as f64
    );
    for (what, h) in [
        ("all events", &hist),
        (&*format!("after the {warmup_secs} s warm-up"), &steady),
    ] {
        println!(
            "latency publish→client read, {what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.90)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            h.len()
        );
    }
    if let Some(first) = late.keys().next().copied() {
        let slots: Vec<String> = late
            .iter()
            .map(|(slot, n)| format!("{:.1}s:{n}", (slot - first) as f64 / 10.0))
            .collect();
        println!(
            "late deliveries (> 50 ms) by publish time, 100 ms slots from the first late one: {}",
            slots.join(" ")
        );
    }
    let pct = |d: Duration| d.as_secs_f64() * 100.0 / wall.as_secs_f64();
    println!(
        "cpu during load (% of one core): gateway {:.0}%, router {:.0}%, redis {:.0}%; gateway {:.1} µs CPU per delivered event; gateway RSS under load {} MiB",
        pct(gw_cpu),
        pct(router_cpu),
        pct(redis_cpu),
        gw_cpu.as_secs_f64() * 1e6 / received.max(1) as f64,
        rss_load / 1024
    );
    println!(
        "load generator on the same 2 cores: client processes {:.0}%, publisher {:.0}%",
        pct(clients_cpu_used),
        pct(self_cpu)
    );
    // Where the time goes: the router's own batch latency (apply + publish
    // + ack) and the gateway's producer-ts → socket-write histogram.
    let router_text = scrape(&format!("http://{router_metrics}/metrics")).await;
    let gw_text = scrape(&format!("http://{listen}/metrics")).await;
    for (what, text, name) in [
        (
            "router batch (apply+publish+ack)",
            &router_text,
            "relay_router_batch_seconds",
        ),
        (
            "gateway publish→write",
            &gw_text,
            "relay_sse_delivery_latency_seconds",
        ),
    ] {
        match hist_summary(text, name) {
            Some((count, mean, p50, p99)) => println!(
                "{what}: {count} samples, mean {:.2} ms, p50 ≤ {:.1} ms, p99 ≤ {:.1} ms (bucket bounds)",
                mean * 1e3,
                p50 * 1e3,
                p99 * 1e3
            ),
            None => println!("{what}: no {name} histogram"),
        }
    }
    drop(gateway);
    drop(router);
}

async fn scrape(url: &str) -> String {
    let http = reqwest::Client::new();
    match http.get(url).timeout(Duration::from_secs(5)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// (count, mean, p50 bound, p99 bound) of a Prometheus histogram `name`,
/// summed over its label sets.
fn hist_summary(text: &str, name: &str) -> Option<(u64, f64, f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if let Some(rest) = key.strip_prefix(&bucket) {
            let le = rest
                .split("le=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or("+Inf");
            let bound: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            buckets.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += value;
        } else if key.starts_with(&format!("{name}_sum")) {
            sum += value;
        } else if key.starts_with(&format!("{name}_count")) {
            count += value;
        }
    }
    if count == 0.0 {
        return None;
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let q = |q: f64| {
        sorted
            .iter()
            .find(|(_, c)| *c >= q * count)
            .map(|(b, _)| *b)
            .unwrap_or(f64::INFINITY)
    };
    Some((count as u64, sum / count, q(0.5), q(0.99)))
}

/// The unsigned integer right after `key` in `text`.
fn num_field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Client process: holds connections `from..to` (connection i follows job
/// i % jobs); prints `ready OK FAILED` once every connection has its first
/// event; on `stop` (or EOF) prints its histogram (`h value count`),
/// `stats received gaps closed` and `end`.
fn child_main() {
    let a: Vec<String> = std::env::args().collect();
    let addr = a.get(1).cloned().unwrap_or_default();
    let num = |i: usize| a.get(i).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let (from, to, jobs) = (num(2), num(3), num(4).max(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let hist = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        ));
        let steady = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        ));
        let warm_until = Arc::new(AtomicU64::new(u64::MAX));
        // Late deliveries (> 50 ms) by the 100 ms slot they were published
        // in: shows whether the tail is steady or comes in bursts.
        let late = Arc::new(Mutex::new(std::collections::BTreeMap::<u64, u64>::new()));
        let received = Arc::new(AtomicU64::new(0));
        let gaps = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        // Bounded connect concurrency (the listen backlog is finite).
        let sem = Arc::new(tokio::sync::Semaphore::new(200));
        for i in from..to {
            let url = format!("http://{addr}/v1/jobs/{}/events", job_name(i % jobs));
            let (http, hist, steady, warm_until) = (
                http.clone(),
                hist.clone(),
                steady.clone(),
                warm_until.clone(),
            );
            let (late, received, gaps, closed, ready, failed, sem) = (
                late.clone(),
                received.clone(),
                gaps.clone(),
                closed.clone(),
                ready.clone(),
                failed.clone(),
                sem.clone(),
            );
            tokio::spawn(async move {
                let permit = sem.acquire_owned().await.ok();
                let resp = match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => r,
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                let mut body = resp.bytes_stream();
                let mut parser = SseParser::new();
                let mut last_seq = 0u64;
                let mut first = true;
                let mut permit = permit;
                while let Some(Ok(chunk)) = body.next().await {
                    for item in parser.push(&chunk) {
                        let SseItem::Event(e) = item else { continue };
                        let now = unix_us();
                        // Cheap field extraction (the client must not be
                        // the bottleneck on a 2-core box).
                        let seq = num_field(&e.data, "\"seq\":").unwrap_or(0);
                        let sent = num_field(&e.data, "\"sent_us\":");
                        if first {
                            first = false;
                            permit.take();
                            ready.fetch_add(1, Ordering::Relaxed);
                        } else {
                            received.fetch_add(1, Ordering::Relaxed);
                            if let Some(sent) = sent {
                                let lat = now.saturating_sub(sent).max(1);
                                let _ = hist.lock().map(|mut h| h.record(lat));
                                if sent >= warm_until.load(Ordering::Relaxed) {
                                    let _ = steady.lock().map(|mut h| h.record(lat));
                                }
                                if lat > 50_000 {
                                    let _ = late
                                        .lock()
                                        .map(|mut l| *l.entry(sent / 100_000).or_default() += 1);
                                }
                            }
                        }
                        if last_seq != 0 && seq != last_seq + 1 {
                            gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        last_seq = seq;
                    }
                }
                closed.fetch_add(1, Ordering::Relaxed);
            });
        }
        let total = (to - from) as u64;
        let t = Instant::now();
        while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < total
            && t.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "ready {} {}",
            ready.load(Ordering::Relaxed),
            total - ready.load(Ordering::Relaxed)
        );
        let _ = std::io::stdout().flush();
        // `warm T` (then `stop`, or EOF), read without blocking the runtime.
        let warm = warm_until.clone();
        let _ = tokio::task::spawn_blocking(move || loop {
            let mut l = String::new();
            if std::io::stdin().read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            match l.trim().split_once(' ') {
                Some(("warm", t)) => {
                    if let Ok(t) = t.parse() {
                        warm.store(t, Ordering::Relaxed);
                    }
                }
                _ => break,
            }
        })
        .await;
        let out = std::io::stdout();
        let mut out = out.lock();
        for (tag, h) in [("h", &hist), ("s", &steady)] {
            if let Ok(h) = h.lock() {
                for v in h.iter_recorded() {
                    let _ = writeln!(
                        out,
                        "{tag} {} {}",
                        v.value_iterated_to(),
                        v.count_at_value()
                    );
                }
            }
        }
        if let Ok(l) = late.lock() {
            for (slot, n) in l.iter() {
                let _ = writeln!(out, "late {slot} {n}");
            }
        }
        let _ = writeln!(
            out,
            "stats {} {} {}",
            received.load(Ordering::Relaxed),
            gaps.load(Ordering::Relaxed),
            closed.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "end");
        let _ = out.flush();
    });
}
