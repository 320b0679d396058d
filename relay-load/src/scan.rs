//! The `scan` scenario: k6-style ramping virtual users. Each iteration
//! submits a scan (`POST /api/v1/scan`), follows its SSE stream to the
//! terminal event timestamping every event as it arrives (or polls the
//! result endpoint with `--mode poll`), then thinks 1–3 s.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rand::Rng;
use relay_sse::client::{SseItem, SseReader};
use serde::{Deserialize, Serialize};

use crate::stats::{round3, Lat, LatSummary, Timeline};

/// One k6 stage: ramp linearly to `target` VUs over `duration`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    /// Ramp duration.
    pub duration: Duration,
    /// VUs at the end of the stage.
    pub target: usize,
}

/// A list of stages, `30s:50,90s:50,30s:0`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stages(pub Vec<Stage>);

/// Parses `500ms`, `30s`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    Duration::try_from_secs_f64(v * mul).map_err(|_| format!("invalid duration {s:?}"))
}

impl FromStr for Stages {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (d, t) = part
                .split_once(':')
                .ok_or_else(|| format!("stage {part:?}: expected DURATION:TARGET"))?;
            out.push(Stage {
                duration: parse_duration(d)?,
                target: t
                    .trim()
                    .parse()
                    .map_err(|_| format!("stage {part:?}: invalid target"))?,
            });
        }
        if out.is_empty() {
            return Err("no stages".into());
        }
        Ok(Stages(out))
    }
}

impl Stages {
    /// Total duration.
    pub fn total(&self) -> Duration {
        self.0.iter().map(|s| s.duration).sum()
    }

    /// Largest target.
    pub fn max_vus(&self) -> usize {
        self.0.iter().map(|s| s.target).max().unwrap_or(0)
    }

    /// Target VUs at `t` (linear ramps from 0, like k6's ramping-vus).
    pub fn target_at(&self, t: Duration) -> usize {
        let mut from = 0usize;
        let mut start = Duration::ZERO;
        for s in &self.0 {
            let end = start + s.duration;
            if t < end {
                let f = (t - start).as_secs_f64() / s.duration.as_secs_f64().max(1e-9);
                return (from as f64 + (s.target as f64 - from as f64) * f).round() as usize;
            }
            from = s.target;
            start = end;
        }
        from
    }
}

/// Follow the SSE stream, or poll the result endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Stream events (`GET stream_url`, text/event-stream).
    Sse,
    /// Poll `GET result_url` until 200.
    Poll,
}

/// `scan` flags.
#[derive(Clone, Debug, Args)]
pub struct ScanArgs {
    /// k6 stages: `DURATION:TARGET,...` (linear ramps starting at 0 VUs).
    #[arg(long, env = "RELAY_LOAD_STAGES", default_value = "30s:50,90s:50,30s:0")]
    pub stages: Stages,
    /// Follow the SSE stream or poll the result endpoint.
    #[arg(long, env = "RELAY_LOAD_MODE", value_enum, default_value = "sse")]
    pub mode: Mode,
    /// Think time between iterations, `MIN-MAX` milliseconds.
    #[arg(long, env = "RELAY_LOAD_THINK_MS", default_value = "1000-3000")]
    pub think_ms: String,
    /// Iteration timeout (submit to terminal event), seconds.
    #[arg(
        long,
        env = "RELAY_LOAD_ITERATION_TIMEOUT_SECS",
        default_value_t = 120.0
    )]
    pub iteration_timeout_secs: f64,
    /// After the last stage, how long in-flight iterations may still finish.
    #[arg(long, env = "RELAY_LOAD_GRACEFUL_STOP_SECS", default_value_t = 60.0)]
    pub graceful_stop_secs: f64,
    /// Poll interval in `--mode poll`, ms.
    #[arg(long, env = "RELAY_LOAD_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// Image URL template (`{n}` is replaced by a random number).
    #[arg(
        long,
        env = "RELAY_LOAD_IMAGE_URL",
        default_value = "https://images.example.com/load/{n}.jpg"
    )]
    pub image_url: String,
    /// `--spawn`: RabbitMQ URL for the workers.
    #[arg(
        long,
        env = "RELAY_LOAD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// `--spawn`: worker processes.
    #[arg(long, env = "RELAY_LOAD_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// `--spawn`: vision simulator latency, `MS±JITTER` (the Python system: ~4.5 s).
    #[arg(long, env = "RELAY_LOAD_SIM_LATENCY_MS", default_value = "4500±1500")]
    pub sim_latency_ms: String,
    /// `--spawn`: extra simulated latency per stage (the Python system:
    /// answer ~6.7 s, rule and reward ~50 ms).
    #[arg(
        long,
        env = "RELAY_LOAD_SIM_STAGE_LATENCY_MS",
        default_value = "rule=50±20,answer=6700±2000,reward=50±20"
    )]
    pub sim_stage_latency_ms: String,
    /// `--spawn`: worker prefetch (= concurrency) per stage.
    #[arg(
        long,
        env = "RELAY_LOAD_STAGE_PREFETCH",
        default_value = "vision=2000,rule=500,answer=2000,reward=500"
    )]
    pub stage_prefetch: String,
}

/// How an iteration ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `done` received, every event present.
    Completed,
    /// Terminal `failed`, or an HTTP error.
    Failed(String),
    /// Terminal `done` but events missing.
    Partial,
    /// No terminal event within the iteration timeout (or at graceful stop).
    Timeout,
}

/// One iteration's measurements.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Iteration {
    /// Seconds since the run started, at submit.
    pub t: f64,
    /// VU id.
    pub vu: usize,
    /// The job (when submitted).
    pub job_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Submit latency, µs.
    pub submit_us: u64,
    /// Submit start → first event, µs.
    pub first_event_us: Option<u64>,
    /// Submit start → terminal event (or 200 result), µs.
    pub e2e_us: Option<u64>,
    /// Σ simulated model time of the job's stages, ms (from `model_ms`).
    pub model_ms: Option<u64>,
    /// Per stage: completed.ts − started.ts, ms.
    pub stage_ms: BTreeMap<String, u64>,
    /// `done`.ts − `queued`.ts, ms (the pipeline's span by producer clocks).
    #[serde(default)]
    pub span_ms: Option<u64>,
    /// Events received (unique).
    pub events: u32,
    /// Events received more than once.
    pub duplicates: u32,
    /// Expected events never received.
    pub missing: u32,
    /// Stream reconnects.
    pub reconnects: u32,
    /// Per event: arrival wall clock − event `ts`, µs (delivery latency).
    #[serde(skip)]
    pub delivery_us: Vec<u64>,
}

#[derive(Deserialize)]
struct WireEvent {
    seq: u64,
    stage: String,
    status: String,
    #[serde(default)]
    data: serde_json::Value,
    ts: u64,
}

/// The seqs a successful scan job emits: queued, started/completed of the
/// four stages, done.
pub fn expected_seqs() -> Vec<u64> {
    let s = pipeline_scan::pipeline::SeqScheme::new(pipeline_scan::scan::STAGES);
    let mut v = vec![s.queued()];
    for i in 1..=pipeline_scan::scan::STAGES {
        v.push(s.started(i));
        v.push(s.completed(i));
    }
    v.push(s.done());
    v
}

/// Where an iteration sends its requests.
#[derive(Clone, Debug)]
pub struct Target {
    /// Scan API base URL.
    pub api_url: String,
    /// Gateway base URL.
    pub sse_url: String,
}

/// Runs one iteration (submit + follow), bounded by `timeout`.
#[allow(clippy::too_many_arguments)]
pub async fn iteration(
    client: &reqwest::Client,
    target: &Target,
    vu: usize,
    mode: Mode,
    image_url: &str,
    poll: Duration,
    timeout: Duration,
    t0: Instant,
) -> Iteration {
    let start = Instant::now();
    let mut it = Iteration {
        t: start.duration_since(t0).as_secs_f64(),
        vu,
        job_id: None,
        outcome: Outcome::Timeout,
        submit_us: 0,
        first_event_us: None,
        e2e_us: None,
        model_ms: None,
        stage_ms: BTreeMap::new(),
        span_ms: None,
        events: 0,
        duplicates: 0,
        missing: 0,
        reconnects: 0,
        delivery_us: Vec::new(),
    };
    let n: u64 = rand::rng().random();
    let body = serde_json::json!({ "image_url": image_url.replace("{n}", &n.to_string()) });
    let submit = client
        .post(format!("{}/api/v1/scan", target.api_url))
        .header("X-User-ID", format!("load-vu-{vu}"))
        .json(&body)
        .send();
    let resp = match tokio::time::timeout(timeout, submit).await {
        Err(_) => return it,
        Ok(Err(e)) => {
            it.outcome = Outcome::Failed(format!("submit: {e}"));
            return it;
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let json: serde_json::Value = resp.json().await.unwrap_or_default();
    it.submit_us = start.elapsed().as_micros() as u64;
    if !status.is_success() {
        it.outcome = Outcome::Failed(format!("submit: HTTP {status}"));
        return it;
    }
    let job = json
        .get("job_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    it.job_id = Some(job.clone());
    let deadline = start + timeout;
    match mode {
        Mode::Sse => {
            let stream_url = json
                .get("stream_url")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("/v1/jobs/{job}/events"));
            let url = format!("{}{}", target.sse_url, stream_url);
            follow(client, &url, start, deadline, &mut it).await;
        }
        Mode::Poll => {
            let result_url = json
                .get("result_url")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("/api/v1/scan/{job}/result"));
            let url = format!("{}{}", target.api_url, result_url);
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                match client.get(&url).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        it.e2e_us = Some(start.elapsed().as_micros() as u64);
                        it.outcome =
                            if body.get("status").and_then(|s| s.as_str()) == Some("completed") {
                                Outcome::Completed
                            } else {
                                Outcome::Failed("job failed".into())
                            };
                        break;
                    }
                    Ok(r)
                        if r.status().is_success()
                            || r.status() == reqwest::StatusCode::NOT_FOUND => {}
                    Ok(r) => {
                        it.outcome = Outcome::Failed(format!("result: HTTP {}", r.status()));
                        break;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(poll).await;
            }
        }
    }
    it
}

/// Follows an SSE stream until the terminal event (reconnecting with
/// `Last-Event-ID` like an EventSource when the stream ends early).
async fn follow(
    client: &reqwest::Client,
    url: &str,
    start: Instant,
    deadline: Instant,
    it: &mut Iteration,
) {
    let expected = expected_seqs();
    let mut seen: BTreeMap<u64, ()> = BTreeMap::new();
    let mut started_ts: BTreeMap<String, u64> = BTreeMap::new();
    let mut model_ms = 0u64;
    let mut queued_ts: Option<u64> = None;
    let mut last_id: Option<String> = None;
    let mut terminal: Option<bool> = None;
    let mut attempts = 0u32;
    'outer: while terminal.is_none() && Instant::now() < deadline && attempts < 10 {
        if attempts > 0 {
            it.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        attempts += 1;
        let mut req = client.get(url).header("Accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id.as_str());
        }
        let resp = match tokio::time::timeout_at(deadline.into(), req.send()).await {
            Err(_) => break,
            Ok(Err(_)) => continue,
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            if resp.status().is_client_error() {
                it.outcome = Outcome::Failed(format!("stream: HTTP {}", resp.status()));
                return;
            }
            continue;
        }
        let mut reader = SseReader::new(resp.bytes_stream());
        loop {
            let item = match tokio::time::timeout_at(deadline.into(), reader.next_item()).await {
                Err(_) => break 'outer,
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(i))) => i,
            };
            let SseItem::Event(ev) = item else { continue };
            let arrival = Instant::now();
            let wall_us = crate::stats::unix_us();
            if let Some(id) = &ev.id {
                last_id = Some(id.clone());
            }
            let Ok(w) = serde_json::from_str::<WireEvent>(&ev.data) else {
                continue;
            };
            if it.first_event_us.is_none() {
                it.first_event_us = Some(arrival.duration_since(start).as_micros() as u64);
            }
            if seen.insert(w.seq, ()).is_some() {
                it.duplicates += 1;
                continue;
            }
            it.events += 1;
            it.delivery_us.push(wall_us.saturating_sub(w.ts * 1000));
            if w.stage == pipeline_scan::pipeline::QUEUED_STAGE {
                queued_ts = Some(w.ts);
            }
            match w.status.as_str() {
                "started" => {
                    started_ts.insert(w.stage.clone(), w.ts);
                }
                "completed" | "failed" => {
                    if let Some(s) = started_ts.get(&w.stage) {
                        it.stage_ms.insert(w.stage.clone(), w.ts.saturating_sub(*s));
                    }
                    if let Some(m) = w.data.get("model_ms").and_then(|v| v.as_u64()) {
                        model_ms += m;
                    }
                }
                _ => {}
            }
            let is_terminal = w.stage == relay_core::event::DONE_STAGE
                && (w.status == "completed" || w.status == "failed");
            if is_terminal || ev.event == "failed" {
                it.e2e_us = Some(arrival.duration_since(start).as_micros() as u64);
                it.span_ms = queued_ts.map(|q| w.ts.saturating_sub(q));
                terminal = Some(w.status == "completed");
                break 'outer;
            }
        }
    }
    it.model_ms = (model_ms > 0).then_some(model_ms);
    match terminal {
        Some(true) => {
            it.missing = expected.iter().filter(|s| !seen.contains_key(s)).count() as u32;
            it.outcome = if it.missing == 0 {
                Outcome::Completed
            } else {
                Outcome::Partial
            };
        }
        Some(false) => it.outcome = Outcome::Failed("job failed".into()),
        None => {
            if !matches!(it.outcome, Outcome::Failed(_)) {
                it.outcome = Outcome::Timeout;
            }
        }
    }
}

/// Live counters for the progress bar.
#[derive(Debug, Default)]
pub struct Live {
    /// Active VUs.
    pub vus: AtomicUsize,
    /// Iterations finished.
    pub done: AtomicU64,
    /// Iterations completed successfully.
    pub ok: AtomicU64,
    /// Iterations in flight.
    pub inflight: AtomicU64,
}

/// Parses `MIN-MAX` ms.
fn think_range(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a = a.trim().parse().unwrap_or(1000);
    let b = b.trim().parse().unwrap_or(a).max(a);
    (a, b)
}

/// Runs the ramping-VU scenario; returns every iteration and the VU
/// timeline (active VUs per second).
pub async fn run_vus(
    args: &ScanArgs,
    target: Target,
    live: Arc<Live>,
) -> (Vec<Iteration>, Vec<(f64, usize)>, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .expect("http client");
    let t0 = Instant::now();
    let results = Arc::new(Mutex::new(Vec::new()));
    let stopping = Arc::new(AtomicBool::new(false));
    let target_vus = Arc::new(AtomicUsize::new(0));
    let (think_lo, think_hi) = think_range(&args.think_ms);
    let timeout = Duration::from_secs_f64(args.iteration_timeout_secs.max(0.1));
    let mut handles = Vec::new();
    let mut levels = Vec::new();
    let total = args.stages.total();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let el = t0.elapsed();
        if el >= total {
            break;
        }
        let want = args.stages.target_at(el);
        target_vus.store(want, Ordering::Relaxed);
        live.vus.store(want, Ordering::Relaxed);
        levels.push((el.as_secs_f64(), want));
        while handles.len() < want {
            let vu = handles.len();
            let (client, target, results, stopping, target_vus, live) = (
                client.clone(),
                target.clone(),
                results.clone(),
                stopping.clone(),
                target_vus.clone(),
                live.clone(),
            );
            let (mode, image, poll) = (
                args.mode,
                args.image_url.clone(),
                Duration::from_millis(args.poll_ms.max(10)),
            );
            handles.push(tokio::spawn(async move {
                loop {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    if vu >= target_vus.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    live.inflight.fetch_add(1, Ordering::Relaxed);
                    let it = iteration(&client, &target, vu, mode, &image, poll, timeout, t0).await;
                    live.inflight.fetch_sub(1, Ordering::Relaxed);
                    live.done.fetch_add(1, Ordering::Relaxed);
                    if it.outcome == Outcome::Completed {
                        live.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(it);
                    let think = rand::rng().random_range(think_lo..=think_hi);
                    tokio::time::sleep(Duration::from_millis(think)).await;
                }
            }));
        }
    }
    let run_time = t0.elapsed();
    stopping.store(true, Ordering::Relaxed);
    target_vus.store(0, Ordering::Relaxed);
    live.vus.store(0, Ordering::Relaxed);
    // Graceful stop: in-flight iterations may finish, then are cut off.
    let grace = Instant::now() + Duration::from_secs_f64(args.graceful_stop_secs.max(0.0));
    for h in &handles {
        while !h.is_finished() && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cut = handles.iter().filter(|h| !h.is_finished()).count();
    for h in &handles {
        h.abort();
    }
    let mut out = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    for _ in 0..cut {
        out.push(Iteration {
            t: run_time.as_secs_f64(),
            vu: usize::MAX,
            job_id: None,
            outcome: Outcome::Timeout,
            submit_us: 0,
            first_event_us: None,
            e2e_us: None,
            model_ms: None,
            stage_ms: BTreeMap::new(),
            span_ms: None,
            events: 0,
            duplicates: 0,
            missing: 0,
            reconnects: 0,
            delivery_us: Vec::new(),
        });
    }
    let mut per_sec: Vec<(f64, usize)> = Vec::new();
    for (t, v) in levels {
        match per_sec.last_mut() {
            Some(last) if last.0.floor() == t.floor() => last.1 = last.1.max(v),
            _ => per_sec.push((t.floor(), v)),
        }
    }
    (out, per_sec, run_time)
}

/// Aggregated scan figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScanFigures {
    /// Peak VUs.
    pub max_vus: usize,
    /// Stage profile.
    pub stages: String,
    /// Mode.
    pub mode: String,
    /// Duration of the stages, s.
    pub duration_s: f64,
    /// Iterations (submit attempts, incl. cut-off ones).
    pub iterations: u64,
    /// Completed iterations.
    pub completed: u64,
    /// Completed / iterations, %.
    pub completion_pct: f64,
    /// Failed iterations.
    pub failed: u64,
    /// Terminal `done` with missing events.
    pub partial: u64,
    /// No terminal event in time.
    pub timeout: u64,
    /// Accepted submissions per minute.
    pub req_per_min: f64,
    /// Submit latency.
    pub submit: LatSummary,
    /// Submit → first event.
    pub first_event: LatSummary,
    /// Submit → terminal event.
    pub e2e: LatSummary,
    /// Σ simulated model time per job.
    pub model: LatSummary,
    /// E2E − model time.
    pub overhead: LatSummary,
    /// Overhead part 1: outside the pipeline span — submit until the
    /// `queued` event's ts, plus `done` ts until the client read it
    /// (E2E − span; producer clocks are ms).
    pub overhead_edge: LatSummary,
    /// Overhead part 2: hops between stages (span − Σ stage durations):
    /// broker transfer, worker pickup, event publishing.
    pub overhead_hops: LatSummary,
    /// Overhead part 3: inside stages beyond the model time
    /// (Σ stage durations − model time): records, reward store.
    pub overhead_in_stage: LatSummary,
    /// Per-event delivery latency (arrival − event ts; ms clock resolution).
    pub delivery: LatSummary,
    /// Per-stage duration (completed.ts − started.ts).
    pub stage_ms: BTreeMap<String, LatSummary>,
    /// Duplicate events, total.
    pub duplicates: u64,
    /// Missing events, total.
    pub missing: u64,
    /// Stream reconnects, total.
    pub reconnects: u64,
    /// Failure reasons.
    pub failures: BTreeMap<String, u64>,
}

/// Aggregates iterations; also returns the E2E histogram and timeline.
pub fn aggregate(
    args: &ScanArgs,
    its: &[Iteration],
    levels: &[(f64, usize)],
    run_time: Duration,
) -> (ScanFigures, Lat, Timeline) {
    let mut f = ScanFigures {
        max_vus: args.stages.max_vus(),
        stages: args
            .stages
            .0
            .iter()
            .map(|s| format!("{}s:{}", s.duration.as_secs_f64(), s.target))
            .collect::<Vec<_>>()
            .join(","),
        mode: format!("{:?}", args.mode).to_lowercase(),
        duration_s: round3(run_time.as_secs_f64()),
        ..Default::default()
    };
    let (mut submit, mut first, mut e2e, mut model, mut overhead, mut delivery) = (
        Lat::new(),
        Lat::new(),
        Lat::new(),
        Lat::new(),
        Lat::new(),
        Lat::new(),
    );
    let mut stages: BTreeMap<String, Lat> = BTreeMap::new();
    let (mut edge, mut hops, mut in_stage) = (Lat::new(), Lat::new(), Lat::new());
    let mut tl = Timeline::new(1.0);
    for (t, v) in levels {
        tl.level(*t, *v as f64);
    }
    let mut accepted = 0u64;
    for it in its {
        f.iterations += 1;
        if it.job_id.is_some() {
            accepted += 1;
            submit.record_us(it.submit_us);
        }
        match &it.outcome {
            Outcome::Completed => f.completed += 1,
            Outcome::Failed(r) => {
                f.failed += 1;
                *f.failures.entry(r.clone()).or_default() += 1;
            }
            Outcome::Partial => f.partial += 1,
            Outcome::Timeout => f.timeout += 1,
        }
        f.duplicates += u64::from(it.duplicates);
        f.missing += u64::from(it.missing);
        f.reconnects += u64::from(it.reconnects);
        if let Some(us) = it.first_event_us {
            first.record_us(us);
        }
        for d in &it.delivery_us {
            delivery.record_us(*d);
        }
        if it.outcome == Outcome::Completed {
            if let Some(us) = it.e2e_us {
                e2e.record_us(us);
                tl.record(it.t + us as f64 / 1e6, us);
                if let Some(m) = it.model_ms {
                    model.record_us(m * 1000);
                    overhead.record_us(us.saturating_sub(m * 1000));
                }
            }
            for (s, ms) in &it.stage_ms {
                stages.entry(s.clone()).or_default().record_us(ms * 1000);
            }
            let staged: u64 = it.stage_ms.values().sum();
            if let (Some(span), Some(us)) = (it.span_ms, it.e2e_us) {
                edge.record_us(us.saturating_sub(span * 1000));
                hops.record_us(span.saturating_sub(staged) * 1000);
            }
            if let Some(m) = it.model_ms {
                in_stage.record_us(staged.saturating_sub(m) * 1000);
            }
        }
    }
    f.completion_pct = if f.iterations == 0 {
        0.0
    } else {
        round3(100.0 * f.completed as f64 / f.iterations as f64)
    };
    f.req_per_min = round3(accepted as f64 / run_time.as_secs_f64().max(1e-9) * 60.0);
    f.submit = submit.summary();
    f.first_event = first.summary();
    f.e2e = e2e.summary();
    f.model = model.summary();
    f.overhead = overhead.summary();
    f.overhead_edge = edge.summary();
    f.overhead_hops = hops.summary();
    f.overhead_in_stage = in_stage.summary();
    f.delivery = delivery.summary();
    f.stage_ms = stages
        .iter()
        .map(|(k, v)| (k.clone(), v.summary()))
        .collect();
    (f, e2e, tl)
}

/// The summary table rows.
pub fn summary_rows(f: &ScanFigures) -> Vec<(String, String)> {
    let ms = |x: f64| format!("{x:.1} ms");
    let mut rows = vec![
        ("VUs (peak)".to_owned(), f.max_vus.to_string()),
        ("stages".into(), f.stages.clone()),
        ("mode".into(), f.mode.clone()),
        ("iterations".into(), f.iterations.to_string()),
        (
            "completion".into(),
            format!(
                "{:.2} % ({} of {})",
                f.completion_pct, f.completed, f.iterations
            ),
        ),
        (
            "failed / partial / timeout".into(),
            format!("{} / {} / {}", f.failed, f.partial, f.timeout),
        ),
        ("req/min".into(), format!("{:.1}", f.req_per_min)),
        (
            "submit p50 / p95".into(),
            format!("{} / {}", ms(f.submit.p50_ms), ms(f.submit.p95_ms)),
        ),
        (
            "time to first event p50 / p95".into(),
            format!(
                "{} / {}",
                ms(f.first_event.p50_ms),
                ms(f.first_event.p95_ms)
            ),
        ),
        (
            "E2E p50 / p95 / p99".into(),
            format!(
                "{} / {} / {}",
                ms(f.e2e.p50_ms),
                ms(f.e2e.p95_ms),
                ms(f.e2e.p99_ms)
            ),
        ),
        (
            "model time p50 / p95".into(),
            format!("{} / {}", ms(f.model.p50_ms), ms(f.model.p95_ms)),
        ),
        (
            "overhead (E2E − model) p50 / p95 / p99".into(),
            format!(
                "{} / {} / {}",
                ms(f.overhead.p50_ms),
                ms(f.overhead.p95_ms),
                ms(f.overhead.p99_ms)
            ),
        ),
        (
            "  of it: submit + final delivery p50 / p95".into(),
            format!(
                "{} / {}",
                ms(f.overhead_edge.p50_ms),
                ms(f.overhead_edge.p95_ms)
            ),
        ),
        (
            "  of it: hops between stages p50 / p95".into(),
            format!(
                "{} / {}",
                ms(f.overhead_hops.p50_ms),
                ms(f.overhead_hops.p95_ms)
            ),
        ),
        (
            "  of it: in-stage beyond model p50 / p95".into(),
            format!(
                "{} / {}",
                ms(f.overhead_in_stage.p50_ms),
                ms(f.overhead_in_stage.p95_ms)
            ),
        ),
        (
            "event delivery p50 / p99 (ms clock)".into(),
            format!("{} / {}", ms(f.delivery.p50_ms), ms(f.delivery.p99_ms)),
        ),
    ];
    for (s, l) in &f.stage_ms {
        rows.push((
            format!("stage {s} p50 / p95"),
            format!("{} / {}", ms(l.p50_ms), ms(l.p95_ms)),
        ));
    }
    rows.push(("duplicate events".into(), f.duplicates.to_string()));
    rows.push(("missing events".into(), f.missing.to_string()));
    rows.push(("stream reconnects".into(), f.reconnects.to_string()));
    for (r, n) in &f.failures {
        rows.push((format!("failure: {r}"), n.to_string()));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_ramp() {
        let s: Stages = "30s:50,90s:50,30s:0".parse().unwrap();
        assert_eq!(s.total(), Duration::from_secs(150));
        assert_eq!(s.target_at(Duration::from_secs(15)), 25);
        assert_eq!(s.target_at(Duration::from_secs(60)), 50);
        assert_eq!(s.target_at(Duration::from_secs(135)), 25);
        assert_eq!(s.target_at(Duration::from_secs(200)), 0);
        assert!("x".parse::<Stages>().is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn expected_seqs_cover_the_pipeline() {
        let s = expected_seqs();
        assert_eq!(s.len(), 10);
        let mut u = s.clone();
        u.dedup();
        assert_eq!(u.len(), 10);
    }
}
