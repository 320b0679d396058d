//! Command-line and environment configuration of the `relay-sse` binary.

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::cli::ConnectionArgs;

/// Which storage backend the gateway reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Redis (with the client `--redis-client` names): production.
    Redis,
    /// In-process memory backend (demo only: nothing else can publish to it).
    Memory,
}

pub use relay_core::cli::LogFormat;

/// `relay-sse` flags; every flag can also be set from its `RELAY_*` variable.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "relay-sse",
    version,
    about = "relay SSE gateway: gap-free, resumable job-progress streams"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Storage backend.
    #[arg(long, env = "RELAY_BACKEND", value_enum, default_value = "redis")]
    pub backend: BackendKind,
    /// Connection flags shared by relay's binaries: `--redis-url`,
    /// `--redis-client`, `--pubsub-url`, `--profile`, `--domain` (the first one is the domain
    /// of the native routes and `/api/v1/stream`), `--shards`.
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Seconds between comment heartbeats (fractions allowed).
    #[arg(long, env = "RELAY_HEARTBEAT_SECS", default_value_t = 15.0)]
    pub heartbeat_secs: f64,
    /// Most concurrent SSE connections; beyond it a request gets a 200 event
    /// stream with only a `retry:` hint, then the end (an EventSource
    /// retries it; it would give up on a 503).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// How long to wait for a job with no event yet before answering 404.
    #[arg(long, env = "RELAY_PENDING_JOB_SECS", default_value_t = 10.0)]
    pub pending_job_secs: f64,
    /// Per-client live inbox, in messages; a client that lets it overflow
    /// while a write to it is blocked is disconnected (it resumes).
    #[arg(long, env = "RELAY_CLIENT_BUFFER", default_value_t = 256)]
    pub client_buffer: usize,
    /// Longest single stream; the client then reconnects and resumes.
    #[arg(long, env = "RELAY_MAX_STREAM_SECS", default_value_t = 600.0)]
    pub max_stream_secs: f64,
    /// HMAC secret for stream tokens; without it the gateway is open.
    #[arg(long, env = "RELAY_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// Allowed CORS origin (repeatable; `*` for any).
    #[arg(
        long = "allow-origin",
        env = "RELAY_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origin: Vec<String>,
    /// Serve `/metrics` on this address too (besides the main listener).
    #[arg(long, env = "RELAY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Limits of the metrics server's listener (`--http-*`).
    #[command(flatten)]
    pub http: relay_core::http_serve::HttpServeArgs,
    /// Serve a small demo page at `/`.
    #[arg(long, env = "RELAY_DEMO_PAGE")]
    pub demo_page: bool,
    /// Log format.
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The runtime's threads (`--worker-threads`).
    #[command(flatten)]
    pub runtime: relay_core::cli::RuntimeArgs,
    /// `retry:` hint sent to clients, in milliseconds.
    #[arg(long, env = "RELAY_RETRY_MS", default_value_t = 2000)]
    pub retry_ms: u64,
    /// Subscriber liveness probe interval, in seconds.
    #[arg(long, env = "RELAY_PROBE_SECS", default_value_t = 5.0)]
    pub probe_secs: f64,
    /// History records read per round trip during catch-up.
    #[arg(long, env = "RELAY_HISTORY_PAGE", default_value_t = 256)]
    pub history_page: usize,
    /// Longest time a client may take to send a whole request head, in
    /// seconds (slow heads are closed: `rejected{reason="head_timeout"}`).
    #[arg(long, env = "RELAY_HEAD_TIMEOUT_SECS", default_value_t = 10.0)]
    pub head_timeout_secs: f64,
    /// Largest request head, in bytes (larger: 431,
    /// `rejected{reason="head_too_large"}`).
    #[arg(long, env = "RELAY_MAX_HEAD_BYTES", default_value_t = 16 * 1024)]
    pub max_head_bytes: usize,
    /// Most open connections that are not SSE streams (reading a request
    /// head, or plain HTTP requests); beyond it new connections are closed
    /// at once (`rejected{reason="unrouted_limit"}`).
    #[arg(long, env = "RELAY_MAX_UNROUTED", default_value_t = 1024)]
    pub max_unrouted: usize,
    /// Longest wait, in seconds, for a client to take one chunk of its
    /// stream (catch-up or live); a slower client is disconnected and
    /// resumes (`connections_closed{reason="slow_client"}`).
    #[arg(long, env = "RELAY_WRITE_TIMEOUT_SECS", default_value_t = 30.0)]
    pub write_timeout_secs: f64,
    /// Bytes framed per chunk before it is written; catch-up is streamed
    /// in chunks of about this size (`relay_sse_chunk_cuts_total`).
    #[arg(long, env = "RELAY_CATCHUP_CHUNK_BYTES", default_value_t = 64 * 1024)]
    pub catchup_chunk_bytes: usize,
    /// Largest declared request body of the `GET` routes, in bytes; they
    /// read none (larger: 413, `rejected{reason="body_too_large"}`).
    #[arg(long, env = "RELAY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// A key that may publish events through `POST /v1/jobs/{job_id}/events`
    /// (`Authorization: Bearer <key>`); repeatable, or comma-separated in
    /// the variable (rotate by adding the new key, then removing the old).
    /// Without any, publishing is disabled (`403 PUBLISH_DISABLED`).
    /// Prefer the variable: flags show in the process list.
    #[arg(
        long = "publisher-key",
        env = "RELAY_PUBLISHER_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub publisher_keys: Vec<String>,
    /// Largest publish request body, and largest stream entry a publish
    /// may append, in bytes (larger: 413). Keep it at or below the
    /// router's `--max-entry-bytes`, or the router dead-letters what the
    /// gateway accepted.
    #[arg(long, env = "RELAY_MAX_PUBLISH_BYTES", default_value_t = 1024 * 1024)]
    pub max_publish_bytes: usize,
}

/// Seconds (possibly fractional, possibly nonsense) to a duration, at least 1 ms.
pub(crate) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s)
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Config;

    #[test]
    fn every_flag_reads_a_relay_env_var() {
        Config::command().debug_assert();
        let missing = relay_core::cli::flags_without_env(&Config::command(), "RELAY_");
        assert!(missing.is_empty(), "flags without RELAY_* env: {missing:?}");
    }
}
