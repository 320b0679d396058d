//! Prometheus metrics of the pipeline workers (`/metrics`, text format).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageOutcome {
    stage: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Worker metrics: stage outcomes and durations, job outcomes, transport
/// reconnects, dead-lettered messages, in-flight steps. (The `pipeline-scan
/// worker` binary appends its metrics listener's `pipeline_scan_http_*` to
/// [`render`](Self::render)'s text.)
pub struct Metrics {
    registry: Mutex<Registry>,
    stage_outcomes: Family<StageOutcome, Counter>,
    stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    jobs: Family<OutcomeLabel, Counter>,
    reconnects: Counter,
    dead_lettered: Counter,
    in_flight: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with all metrics registered (prefix `pipeline_scan`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pipeline_scan");
        let stage_outcomes = Family::<StageOutcome, Counter>::default();
        let stage_seconds =
            Family::<StageLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                stage_histogram,
            );
        let jobs = Family::<OutcomeLabel, Counter>::default();
        let reconnects = Counter::default();
        let dead_lettered = Counter::default();
        let in_flight = Gauge::default();
        registry.register(
            "stage_runs",
            "Stage steps by outcome (completed, retried, failed, skipped, deferred)",
            stage_outcomes.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Stage run time",
            stage_seconds.clone(),
        );
        registry.register("jobs", "Jobs finished by outcome", jobs.clone());
        registry.register(
            "transport_reconnects",
            "Broker connections of the AMQP worker: each session's, and each one lapin recovered",
            reconnects.clone(),
        );
        registry.register(
            "dead_lettered",
            "Messages moved to the dead-letter queue",
            dead_lettered.clone(),
        );
        registry.register(
            "in_flight_steps",
            "Steps currently running",
            in_flight.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            stage_outcomes,
            stage_seconds,
            jobs,
            reconnects,
            dead_lettered,
            in_flight,
        }
    }

    /// Counts a stage outcome.
    pub fn stage_outcome(&self, stage: &str, outcome: &str) {
        self.stage_outcomes
            .get_or_create(&StageOutcome {
                stage: stage.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Observes a stage's run time.
    pub fn stage_duration(&self, stage: &str, elapsed: Duration) {
        self.stage_seconds
            .get_or_create(&StageLabel {
                stage: stage.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a finished job.
    pub fn job_outcome(&self, outcome: &str) {
        self.jobs
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a broker connection: a worker session's, or one lapin
    /// recovered.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Counts a dead-lettered message.
    pub fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    /// Adjusts the in-flight gauge.
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}
