//! Listener limits and their command-line flags.

use std::time::Duration;

/// Limits of one listener (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Longest time a request head may take, from its first byte to its
    /// last (slow or half-sent heads).
    pub head_timeout: Duration,
    /// Longest time a connection may stay open with no request in flight and
    /// nothing received (new and keep-alive connections).
    pub idle_timeout: Duration,
    /// Longest pause between request body chunks while the handler reads it.
    pub body_timeout: Duration,
    /// Most open connections; at the cap new ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds in (0, 86400] (fractions allowed)"
        )),
    }
}

/// The listener flags (`--http-*`, env `RELAY_HTTP_*`) of the binaries that
/// serve HTTP through [`serve`]; `#[command(flatten)]` them.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct HttpServeArgs {
    /// Longest time a request head may take from its first byte to its last,
    /// seconds (fractions allowed); slower connections are closed.
    #[arg(long, env = "RELAY_HTTP_HEAD_TIMEOUT_SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub http_head_timeout_secs: f64,
    /// Longest time a connection may stay open with no request in flight,
    /// seconds (fractions allowed); new and keep-alive connections alike.
    #[arg(long, env = "RELAY_HTTP_IDLE_TIMEOUT_SECS", default_value_t = 60.0, value_parser = positive_secs)]
    pub http_idle_timeout_secs: f64,
    /// Longest pause between request body chunks, seconds (fractions
    /// allowed); the request then fails (the scan API answers 408).
    #[arg(long, env = "RELAY_HTTP_BODY_TIMEOUT_SECS", default_value_t = 30.0, value_parser = positive_secs)]
    pub http_body_timeout_secs: f64,
    /// Most open HTTP connections on this listener; further ones wait in the
    /// listen backlog. Keep it below the descriptor limit (`ulimit -n`).
    #[arg(long, env = "RELAY_HTTP_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub http_max_connections: u64,
}

impl Default for HttpServeArgs {
    fn default() -> Self {
        let c = ServeConfig::default();
        Self {
            http_head_timeout_secs: c.head_timeout.as_secs_f64(),
            http_idle_timeout_secs: c.idle_timeout.as_secs_f64(),
            http_body_timeout_secs: c.body_timeout.as_secs_f64(),
            http_max_connections: c.max_connections as u64,
        }
    }
}

impl HttpServeArgs {
    /// The listener limits.
    pub fn config(&self) -> ServeConfig {
        // The parser bounds the values; clamp anyway for hand-built args.
        let secs = |v: f64| Duration::from_secs_f64(v.clamp(0.001, 86_400.0));
        ServeConfig {
            head_timeout: secs(self.http_head_timeout_secs),
            idle_timeout: secs(self.http_idle_timeout_secs),
            body_timeout: secs(self.http_body_timeout_secs),
            max_connections: usize::try_from(self.http_max_connections.max(1))
                .unwrap_or(usize::MAX),
        }
    }
}
