//! The router's metrics (prometheus-client), updated by the engine and
//! registered by the binary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The router's metrics, as prometheus-client metrics (the one metrics
/// library of every relay binary): the engine updates them, the binary
/// registers them ([`RouterMetrics::register`]) and serves `/metrics`.
/// Handles are cheap clones of shared counters.
#[derive(Debug)]
pub struct RouterMetrics {
    /// Events applied for the first time.
    pub applied: Counter,
    /// Entries whose (job, seq) had been applied before.
    pub duplicates: Counter,
    /// Live messages published.
    pub published: Counter,
    /// Entries acked.
    pub acked: Counter,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: Counter,
    /// Dead-lettered entries stored cut to the field size limit.
    pub dlq_truncated: Counter,
    /// Entry applies that failed for the entry's own reason (left pending,
    /// retried until `max_deliveries`).
    pub apply_failed: Counter,
    /// Pending entries whose data had been trimmed before routing.
    pub lost_trimmed: Counter,
    /// Entries claimed from idle consumers.
    pub claimed: Counter,
    /// Batches processed.
    pub batches: Counter,
    /// Backend errors (each retried).
    pub errors: Counter,
    /// Entries per routed batch.
    pub batch_size: Histogram,
    /// Apply + publish + ack latency per batch, seconds.
    pub batch_seconds: Histogram,
    /// Shards this router owns now.
    pub shards_owned: Gauge,
    /// 1 while the last call to the data server succeeded.
    connected_gauge: Gauge,
    /// Whether the last call to the data server succeeded.
    pub connected: AtomicBool,
    /// Whether the last publish to a separate Pub/Sub server (`--pubsub-url`)
    /// failed. Kept apart from [`RouterMetrics::connected`]: reads of other
    /// shards succeeding say nothing about the Pub/Sub server.
    pub pubsub_failing: AtomicBool,
}

/// Bucket bounds of [`RouterMetrics::batch_size`].
pub const BATCH_SIZE_BOUNDS: [f64; 5] = [1.0, 16.0, 64.0, 256.0, 1024.0];
/// Bucket bounds (seconds) of [`RouterMetrics::batch_seconds`].
pub const BATCH_LATENCY_BOUNDS: [f64; 5] = [0.001, 0.005, 0.025, 0.1, 0.5];

impl Default for RouterMetrics {
    fn default() -> Self {
        Self {
            applied: Counter::default(),
            duplicates: Counter::default(),
            published: Counter::default(),
            acked: Counter::default(),
            dead_lettered: Counter::default(),
            dlq_truncated: Counter::default(),
            apply_failed: Counter::default(),
            lost_trimmed: Counter::default(),
            claimed: Counter::default(),
            batches: Counter::default(),
            errors: Counter::default(),
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS),
            batch_seconds: Histogram::new(BATCH_LATENCY_BOUNDS),
            shards_owned: Gauge::default(),
            connected_gauge: Gauge::default(),
            connected: AtomicBool::new(false),
            pubsub_failing: AtomicBool::new(false),
        }
    }
}

impl RouterMetrics {
    /// Registers every metric in `registry` (the binary gives it the
    /// `relay_router` prefix and a `domain` label per router).
    pub fn register(&self, registry: &mut Registry) {
        let counters: [(&str, &str, &Counter); 11] = [
            ("events_applied", "Events applied for the first time", &self.applied),
            ("duplicates", "Entries whose (job, seq) was already applied", &self.duplicates),
            ("published", "Live messages published", &self.published),
            ("acked", "Stream entries acknowledged", &self.acked),
            ("dead_lettered", "Entries moved to the dead-letter stream", &self.dead_lettered),
            (
                "dlq_truncated",
                "Dead-lettered entries stored cut to --dlq-max-field-bytes",
                &self.dlq_truncated,
            ),
            (
                "apply_failed",
                "Entry applies that failed for the entry's own reason (left pending, dead-lettered after --max-deliveries)",
                &self.apply_failed,
            ),
            (
                "trimmed",
                "Pending entries trimmed from the stream before routing",
                &self.lost_trimmed,
            ),
            ("claimed", "Entries claimed from idle consumers", &self.claimed),
            ("batches", "Batches processed", &self.batches),
            ("backend_errors", "Backend errors (each retried)", &self.errors),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "connected",
            "1 while the router's last call to the data server succeeded",
            self.connected_gauge.clone(),
        );
        registry.register(
            "shards_owned",
            "Shards this router owns (holds the lease of) now",
            self.shards_owned.clone(),
        );
        registry.register(
            "batch_size",
            "Entries per routed batch",
            self.batch_size.clone(),
        );
        registry.register(
            "batch_seconds",
            "Apply + publish + ack latency per batch",
            self.batch_seconds.clone(),
        );
    }

    pub(super) fn observe_batch(&self, size: usize, took: Duration) {
        self.batches.inc();
        self.batch_size.observe(size as f64);
        self.batch_seconds.observe(took.as_secs_f64());
    }

    pub(super) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.connected_gauge.set(i64::from(up));
    }

    /// Ready to route: the data server answers and live messages go out.
    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed) && !self.pubsub_failing.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition keeps the metric names the router always had
    /// (dashboards and alerts depend on them), now from prometheus-client.
    #[test]
    fn metrics_keep_their_names() {
        let m = RouterMetrics::default();
        m.applied.inc_by(3);
        m.set_connected(true);
        m.observe_batch(3, Duration::from_millis(2));
        let mut registry = Registry::with_prefix("relay_router");
        m.register(registry.sub_registry_with_label(("domain".into(), "scan".into())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "relay_router_events_applied_total{domain=\"scan\"} 3",
            "relay_router_connected{domain=\"scan\"} 1",
            "relay_router_batches_total{domain=\"scan\"} 1",
            "relay_router_batch_size_count{domain=\"scan\"} 1",
            "relay_router_batch_seconds_bucket{domain=\"scan\",le=\"0.005\"} 1",
            "relay_router_dead_lettered_total{domain=\"scan\"} 0",
            "relay_router_backend_errors_total{domain=\"scan\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
