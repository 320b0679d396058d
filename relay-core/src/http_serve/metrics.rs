//! A listener's counters (prometheus-client).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters of one listener. Cheap to clone (shared atomics).
#[derive(Clone, Debug, Default)]
pub struct ServeMetrics {
    pub(super) open: Gauge,
    pub(super) accepted: Counter,
    pub(super) limit_waits: Counter,
    pub(super) head_timeouts: Counter,
    pub(super) idle_timeouts: Counter,
    pub(super) body_timeouts: Counter,
    pub(super) accept_errors: Counter,
}

/// A point-in-time copy of [`ServeMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeCounts {
    /// Connections open now.
    pub open: i64,
    /// Connections accepted.
    pub accepted: u64,
    /// Times the accept loop paused at the connection cap.
    pub limit_waits: u64,
    /// Connections closed for a slow or half-sent request head.
    pub head_timeouts: u64,
    /// Connections closed for idleness.
    pub idle_timeouts: u64,
    /// Request body reads failed for a stalled body.
    pub body_timeouts: u64,
    /// Failed accepts (backed off).
    pub accept_errors: u64,
}

impl ServeMetrics {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current values.
    pub fn counts(&self) -> ServeCounts {
        ServeCounts {
            open: self.open.get(),
            accepted: self.accepted.get(),
            limit_waits: self.limit_waits.get(),
            head_timeouts: self.head_timeouts.get(),
            idle_timeouts: self.idle_timeouts.get(),
            body_timeouts: self.body_timeouts.get(),
            accept_errors: self.accept_errors.get(),
        }
    }

    fn described(&self) -> [(&'static str, &'static str, Metric<'_>); 7] {
        [
            (
                "http_connections_open",
                "Open HTTP connections",
                Metric::Gauge(&self.open),
            ),
            (
                "http_connections_accepted",
                "HTTP connections accepted",
                Metric::Counter(&self.accepted),
            ),
            (
                "http_connection_limit_waits",
                "Times accepting paused at --http-max-connections",
                Metric::Counter(&self.limit_waits),
            ),
            (
                "http_head_timeouts",
                "Connections closed: request head not complete within --http-head-timeout-secs",
                Metric::Counter(&self.head_timeouts),
            ),
            (
                "http_idle_timeouts",
                "Connections closed: idle for --http-idle-timeout-secs",
                Metric::Counter(&self.idle_timeouts),
            ),
            (
                "http_body_timeouts",
                "Request bodies stalled longer than --http-body-timeout-secs",
                Metric::Counter(&self.body_timeouts),
            ),
            (
                "http_accept_errors",
                "Failed accepts (backed off)",
                Metric::Counter(&self.accept_errors),
            ),
        ]
    }

    /// Registers the metrics (`http_*`) in a prometheus-client registry.
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, metric) in self.described() {
            match metric {
                Metric::Gauge(g) => registry.register(name, help, g.clone()),
                Metric::Counter(c) => registry.register(name, help, c.clone()),
            }
        }
    }

    /// The metrics alone as an OpenMetrics document (`{prefix}_http_*`).
    pub fn render(&self, prefix: &str) -> String {
        self.append_to("# EOF\n".to_owned(), prefix)
    }

    /// `exposition` (another registry's text, OpenMetrics or Prometheus) with
    /// these metrics (`{prefix}_http_*`) appended before its `# EOF`, for a
    /// `/metrics` route that serves two registries.
    pub fn append_to(&self, exposition: String, prefix: &str) -> String {
        let mut registry = Registry::with_prefix(prefix);
        self.register(&mut registry);
        let mut ours = String::new();
        if prometheus_client::encoding::text::encode(&mut ours, &registry).is_err() {
            return exposition;
        }
        let ours = ours.strip_suffix("# EOF\n").unwrap_or(&ours);
        match exposition.strip_suffix("# EOF\n") {
            Some(head) => format!("{head}{ours}# EOF\n"),
            None => format!("{exposition}{ours}"),
        }
    }
}

enum Metric<'a> {
    Gauge(&'a Gauge),
    Counter(&'a Counter),
}
