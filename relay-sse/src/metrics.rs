//! Prometheus metrics of the gateway.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Why a connection ended (the `reason` label of `relay_sse_connections_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The terminal event (or a terminal snapshot) was delivered.
    Done,
    /// The client went away.
    ClientGone,
    /// The client did not read fast enough; it was disconnected to resume later.
    SlowClient,
    /// `--max-stream-secs` elapsed; the client reconnects and resumes.
    MaxDuration,
    /// The backend kept failing; the client reconnects and resumes.
    BackendError,
    /// The gateway is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::ClientGone => "client_gone",
            CloseReason::SlowClient => "slow_client",
            CloseReason::MaxDuration => "max_duration",
            CloseReason::BackendError => "backend_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// What became of one request to the publish route (the `outcome` label
/// of `relay_sse_publishes_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PublishOutcome {
    /// Appended (`201`).
    Published,
    /// A repeat of an appended (job, seq): nothing appended (`200`).
    Duplicate,
    /// No publisher key is configured (`403 PUBLISH_DISABLED`).
    Disabled,
    /// No key presented (`401`).
    Unauthorized,
    /// A wrong key (`403`).
    Forbidden,
    /// A bad job id, an unreadable or non-JSON body, or an invalid event (`400`/`422`).
    Invalid,
    /// The body or the encoded entry is over `--max-publish-bytes` (`413`).
    TooLarge,
    /// The backend refuses writes or is unreachable (`503`, retry).
    Unavailable,
    /// Any other failure (`500`).
    Failed,
}

impl PublishOutcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishOutcome::Published => "published",
            PublishOutcome::Duplicate => "duplicate",
            PublishOutcome::Disabled => "disabled",
            PublishOutcome::Unauthorized => "unauthorized",
            PublishOutcome::Forbidden => "forbidden",
            PublishOutcome::Invalid => "invalid",
            PublishOutcome::TooLarge => "too_large",
            PublishOutcome::Unavailable => "unavailable",
            PublishOutcome::Failed => "failed",
        }
    }
}

/// All gateway metrics. Cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open SSE connections (waiting for a job or streaming): for autoscaling.
    pub active: Gauge,
    /// SSE streams started (200 sent).
    pub opened: Counter,
    /// SSE streams ended, by reason.
    pub closed: Family<Labels, Counter>,
    /// Requests refused before streaming, by reason.
    pub rejected: Family<Labels, Counter>,
    /// Events written to clients (snapshots included).
    pub delivered: Counter,
    /// Resumes with a Last-Event-ID, by kind (`exact` or `snapshot`).
    pub resumes: Family<Labels, Counter>,
    /// Clients disconnected because their buffer overflowed.
    pub slow_disconnects: Counter,
    /// Subscriber connection re-establishments.
    pub subscriber_reconnects: Counter,
    /// 1 while the subscriber connection is up.
    pub subscriber_up: Gauge,
    /// History reads issued by resumes.
    pub history_reads: Counter,
    /// Live messages that could not be decoded.
    pub bad_messages: Counter,
    /// Seconds from the event's `ts` (producer publish) to the client write.
    pub latency: Histogram,
    /// Open connections that are not SSE streams (reading a request head,
    /// or served by the plain HTTP path): bounded by `--max-unrouted`.
    pub unrouted: Gauge,
    /// Failed `accept()` calls (e.g. out of file descriptors); the front
    /// backs off and logs at most one warning per interval.
    pub accept_errors: Counter,
    /// Bytes held for clients: framed and not yet written, plus history
    /// records read and not yet framed (bounded per connection by about
    /// two `--catchup-chunk-bytes`).
    pub buffered_bytes: Gauge,
    /// Times framing stopped at `--catchup-chunk-bytes` to write the chunk
    /// before reading or framing more.
    pub chunk_cuts: Counter,
    /// Chunks a client did not take within `--write-timeout-secs` (the
    /// client is then closed as `slow_client`).
    pub write_timeouts: Counter,
    /// Live messages that found a catching-up client's merge buffer full
    /// (`--client-buffer`, at least 1024): dropped there and read from
    /// history instead.
    pub merge_buffer_full: Counter,
    /// Requests to the publish route, by outcome.
    pub publishes: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `relay_sse_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relay_sse");
        let m = Metrics {
            active: Gauge::default(),
            opened: Counter::default(),
            closed: Family::default(),
            rejected: Family::default(),
            delivered: Counter::default(),
            resumes: Family::default(),
            slow_disconnects: Counter::default(),
            subscriber_reconnects: Counter::default(),
            subscriber_up: Gauge::default(),
            history_reads: Counter::default(),
            bad_messages: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            unrouted: Gauge::default(),
            accept_errors: Counter::default(),
            buffered_bytes: Gauge::default(),
            chunk_cuts: Counter::default(),
            write_timeouts: Counter::default(),
            merge_buffer_full: Counter::default(),
            publishes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "active_connections",
            "Open SSE connections",
            m.active.clone(),
        );
        registry.register(
            "connections_opened",
            "SSE streams started",
            m.opened.clone(),
        );
        registry.register(
            "connections_closed",
            "SSE streams ended, by reason",
            m.closed.clone(),
        );
        registry.register(
            "rejected",
            "Requests refused before streaming, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "events_delivered",
            "Events written to clients",
            m.delivered.clone(),
        );
        registry.register(
            "resumes",
            "Resumes with Last-Event-ID, by kind",
            m.resumes.clone(),
        );
        registry.register(
            "slow_client_disconnects",
            "Clients disconnected on buffer overflow",
            m.slow_disconnects.clone(),
        );
        registry.register(
            "subscriber_reconnects",
            "Subscriber connection re-establishments",
            m.subscriber_reconnects.clone(),
        );
        registry.register(
            "subscriber_up",
            "1 while the subscriber connection is up",
            m.subscriber_up.clone(),
        );
        registry.register(
            "history_reads",
            "History reads issued by resumes",
            m.history_reads.clone(),
        );
        registry.register(
            "bad_messages",
            "Undecodable live messages or records",
            m.bad_messages.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Event ts (producer publish) to client write",
            m.latency.clone(),
        );
        registry.register(
            "unrouted_connections",
            "Open connections that are not SSE streams (bounded by --max-unrouted)",
            m.unrouted.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accept() calls (the front backs off)",
            m.accept_errors.clone(),
        );
        registry.register(
            "buffered_bytes",
            "Bytes held for clients: framed and unwritten, or read and unframed",
            m.buffered_bytes.clone(),
        );
        registry.register(
            "chunk_cuts",
            "Framing stopped at --catchup-chunk-bytes to write first",
            m.chunk_cuts.clone(),
        );
        registry.register(
            "write_timeouts",
            "Chunks not taken within --write-timeout-secs (slow client)",
            m.write_timeouts.clone(),
        );
        registry.register(
            "merge_buffer_full",
            "Live messages not buffered during a catch-up (read from history)",
            m.merge_buffer_full.clone(),
        );
        registry.register(
            "publishes",
            "Requests to the publish route (POST /v1/jobs/{job_id}/events), by outcome",
            m.publishes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a closed stream.
    pub fn close(&self, reason: CloseReason) {
        self.closed
            .get_or_create(&vec![("reason", reason.as_str())])
            .inc();
    }

    /// Counts a refused request.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts a resume (`snapshot == false`: exact).
    pub fn resume(&self, snapshot: bool) {
        let kind = if snapshot { "snapshot" } else { "exact" };
        self.resumes.get_or_create(&vec![("kind", kind)]).inc();
    }

    /// Counts one request to the publish route.
    pub fn publish(&self, outcome: PublishOutcome) {
        self.publishes
            .get_or_create(&vec![("outcome", outcome.as_str())])
            .inc();
    }

    /// The publish count for an outcome (for tests).
    pub fn publish_count(&self, outcome: PublishOutcome) -> u64 {
        self.publishes
            .get_or_create(&vec![("outcome", outcome.as_str())])
            .get()
    }

    /// The closed-stream count for a reason (for tests and the load tool).
    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closed
            .get_or_create(&vec![("reason", reason.as_str())])
            .get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
