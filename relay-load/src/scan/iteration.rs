//! One iteration: submit a scan, follow (or poll) it to its terminal event, timestamping what arrives.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use relay_sse::client::{SseItem, SseReader};
use serde::{Deserialize, Serialize};

use super::*;

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

impl Iteration {
    /// An iteration of VU `vu` submitted at `t` with nothing measured: a
    /// timeout until something arrives (also how cut-off iterations count).
    pub fn timed_out(t: f64, vu: usize) -> Self {
        Iteration {
            t,
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
        }
    }
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

/// `base` followed by the path the submit answer gives in `field`, or by
/// `default()` when it gives none.
fn link(
    base: &str,
    answer: &serde_json::Value,
    field: &str,
    default: impl FnOnce() -> String,
) -> String {
    let path = answer
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .unwrap_or_else(default);
    format!("{base}{path}")
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
    let mut it = Iteration::timed_out(start.duration_since(t0).as_secs_f64(), vu);
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
            let url = link(&target.sse_url, &json, "stream_url", || {
                format!("/v1/jobs/{job}/events")
            });
            follow(client, &url, start, deadline, &mut it).await;
        }
        Mode::Poll => {
            let url = link(&target.api_url, &json, "result_url", || {
                format!("/api/v1/scan/{job}/result")
            });
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
