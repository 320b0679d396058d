//! Aggregated figures of a scan run and the summary table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::{round3, Lat, LatSummary, Timeline};

use super::*;

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
    let p50_95 = |l: &LatSummary| format!("{} / {}", ms(l.p50_ms), ms(l.p95_ms));
    let p50_95_99 =
        |l: &LatSummary| format!("{} / {} / {}", ms(l.p50_ms), ms(l.p95_ms), ms(l.p99_ms));
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
        ("submit p50 / p95".into(), p50_95(&f.submit)),
        (
            "time to first event p50 / p95".into(),
            p50_95(&f.first_event),
        ),
        ("E2E p50 / p95 / p99".into(), p50_95_99(&f.e2e)),
        ("model time p50 / p95".into(), p50_95(&f.model)),
        (
            "overhead (E2E − model) p50 / p95 / p99".into(),
            p50_95_99(&f.overhead),
        ),
        (
            "  of it: submit + final delivery p50 / p95".into(),
            p50_95(&f.overhead_edge),
        ),
        (
            "  of it: hops between stages p50 / p95".into(),
            p50_95(&f.overhead_hops),
        ),
        (
            "  of it: in-stage beyond model p50 / p95".into(),
            p50_95(&f.overhead_in_stage),
        ),
        (
            "event delivery p50 / p99 (ms clock)".into(),
            format!("{} / {}", ms(f.delivery.p50_ms), ms(f.delivery.p99_ms)),
        ),
    ];
    for (s, l) in &f.stage_ms {
        rows.push((format!("stage {s} p50 / p95"), p50_95(l)));
    }
    rows.push(("duplicate events".into(), f.duplicates.to_string()));
    rows.push(("missing events".into(), f.missing.to_string()));
    rows.push(("stream reconnects".into(), f.reconnects.to_string()));
    for (r, n) in &f.failures {
        rows.push((format!("failure: {r}"), n.to_string()));
    }
    rows
}
