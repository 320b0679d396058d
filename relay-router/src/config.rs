//! `relay-router` configuration: every flag also reads `RELAY_<FLAG>`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use relay_core::backend::{ApplyOptions, DeadLetterLimits};
use relay_core::cli::{ConnectionArgs, LogFormat, RuntimeArgs};
use relay_core::http_serve::HttpServeArgs;
use relay_core::router::default_consumer_name;
use relay_core::{KeySpace, RouterConfig};

/// Routes job-progress events from Redis shard streams into per-job state,
/// gap-free history and live Pub/Sub.
#[derive(Clone, Debug, Parser)]
#[command(name = "relay-router", version)]
pub struct RouterArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Consumer group (default: `relay-router`, or `eventrouter` for eco2).
    #[arg(long, env = "RELAY_GROUP")]
    pub group: Option<String>,
    /// This router's consumer name (default: $POD_NAME or $HOSTNAME, plus the pid).
    #[arg(long, env = "RELAY_CONSUMER")]
    pub consumer: Option<String>,
    /// Entries read and applied per round trip.
    #[arg(long, env = "RELAY_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch: u64,
    /// How long a read waits for new entries (ms).
    #[arg(long, env = "RELAY_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,
    /// After a read that came back short of `--batch`, wait this long (ms)
    /// before the next read of that shard, so events arriving meanwhile are
    /// applied together. 0 (the default) reads again at once: the lowest
    /// latency. Raising it lowers the CPU per event at moderate rates (fewer
    /// reads and script calls) and adds up to about this much publish →
    /// client latency; at saturation reads come back full and never wait.
    /// Whole milliseconds: the runtime's timer has 1 ms resolution. See
    /// BENCHMARKS.md ("Batching at moderate rates") for the measured
    /// trade-off.
    #[arg(long, env = "RELAY_LINGER_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    pub linger_ms: u64,
    /// Entries pending longer than this (ms) on any consumer are claimed.
    #[arg(long, env = "RELAY_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,
    /// Lifetime of a shard lease and of this router's membership heartbeat
    /// (ms): each shard has one owner in the group; a router that stops
    /// renewing (killed, cut off) loses its shards to the others after
    /// this long.
    #[arg(long, env = "RELAY_SHARD_LEASE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub shard_lease_ms: u64,
    /// Deliveries after which an entry goes to the dead-letter stream.
    #[arg(long, env = "RELAY_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
    /// State TTL, seconds (reset on every update).
    #[arg(long, env = "RELAY_STATE_TTL", default_value_t = 3600)]
    pub state_ttl: u64,
    /// History TTL, seconds (reset on every update).
    #[arg(long, env = "RELAY_HISTORY_TTL", default_value_t = 3600)]
    pub history_ttl: u64,
    /// Maximum history entries kept per job.
    #[arg(long, env = "RELAY_HISTORY_MAX", default_value_t = 1000)]
    pub history_max: u64,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "RELAY_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Limits of the metrics server's listener (`--http-*`).
    #[command(flatten)]
    pub http: HttpServeArgs,
    /// Entries larger than this many bytes are dead-lettered.
    #[arg(long, env = "RELAY_MAX_ENTRY_BYTES", default_value_t = 1024 * 1024)]
    pub max_entry_bytes: usize,
    /// Length of each dead-letter stream (one per shard in the native
    /// profile): the oldest dead letters are trimmed first.
    #[arg(long, env = "RELAY_DLQ_MAXLEN", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub dlq_maxlen: u64,
    /// Original field values longer than this many bytes are stored cut in
    /// the dead-letter stream, with their size and SHA-256 (`t.<field>`);
    /// such entries cannot be replayed.
    #[arg(long, env = "RELAY_DLQ_MAX_FIELD_BYTES", default_value_t = 64 * 1024)]
    pub dlq_max_field_bytes: usize,
    /// Log format.
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The runtime's threads (`--worker-threads`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Give up connecting at start after this many seconds.
    #[arg(long, env = "RELAY_CONNECT_TIMEOUT_SECS", default_value_t = 300)]
    pub connect_timeout_secs: u64,
    /// eco2: do not publish routed JSON to `sse:events:{shard}` (only needed
    /// while Python gateways still run).
    #[arg(long, env = "RELAY_NO_ECO2_SHARD_CHANNEL")]
    pub no_eco2_shard_channel: bool,
}

impl RouterArgs {
    /// The engine configuration for one domain.
    pub fn router_config(&self, keys: KeySpace) -> RouterConfig {
        let mut c = RouterConfig::new(keys);
        if let Some(g) = &self.group {
            c.group = g.clone();
        }
        c.consumer = self.consumer.clone().unwrap_or_else(default_consumer_name);
        c.batch = self.batch as usize;
        c.block = Duration::from_millis(self.block_ms);
        c.linger = Duration::from_millis(self.linger_ms);
        c.claim_idle = Duration::from_millis(self.claim_idle_ms);
        c.janitor_interval = Duration::from_millis((self.claim_idle_ms / 2).clamp(100, 5000));
        c.max_deliveries = self.max_deliveries;
        c.lease = Duration::from_millis(self.shard_lease_ms);
        c.apply = ApplyOptions {
            state_ttl: Duration::from_secs(self.state_ttl),
            history_ttl: Duration::from_secs(self.history_ttl),
            history_max: self.history_max.max(1),
            publish: true,
        };
        c.eco2_shard_channel = !self.no_eco2_shard_channel;
        c.max_entry_bytes = self.max_entry_bytes;
        c.dead_letter = DeadLetterLimits {
            maxlen: self.dlq_maxlen,
            max_field_bytes: self.dlq_max_field_bytes,
        };
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        RouterArgs::command().debug_assert();
    }

    #[test]
    fn every_flag_reads_a_relay_env_var() {
        let missing = relay_core::cli::flags_without_env(&RouterArgs::command(), "RELAY_");
        assert!(missing.is_empty(), "flags without RELAY_* env: {missing:?}");
    }

    #[test]
    fn flags_map_to_config() {
        let a = RouterArgs::parse_from([
            "relay-router",
            "--profile",
            "eco2",
            "--batch",
            "64",
            "--claim-idle-ms",
            "2000",
            "--history-max",
            "50",
            "--consumer",
            "r1",
            "--linger-ms",
            "2",
            "--worker-threads",
            "1",
        ]);
        assert_eq!(a.runtime.worker_threads, Some(1));
        let c = a.router_config(a.conn.key_space());
        assert_eq!(c.linger, Duration::from_millis(2));
        assert_eq!(c.group, "eventrouter");
        assert_eq!(c.batch, 64);
        assert_eq!(c.consumer, "r1");
        assert_eq!(c.claim_idle, Duration::from_secs(2));
        assert_eq!(c.apply.history_max, 50);
        assert!(RouterArgs::try_parse_from(["relay-router", "--batch", "0"]).is_err());
        assert!(RouterArgs::try_parse_from(["relay-router", "--profile", "x"]).is_err());
    }
}
