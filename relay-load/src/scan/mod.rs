//! The `scan` scenario: k6-style ramping virtual users. Each iteration
//! submits a scan (`POST /api/v1/scan`), follows its SSE stream to the
//! terminal event timestamping every event as it arrives (or polls the
//! result endpoint with `--mode poll`), then thinks 1–3 s.

use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

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
    /// Image URL template: the letter n in braces (see the default) is
    /// replaced by a random number per submission.
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

mod figures;
mod iteration;
mod vus;

pub use figures::{aggregate, summary_rows, ScanFigures};
pub use iteration::{expected_seqs, iteration, Iteration, Outcome, Target};
pub use vus::{run_vus, Live};

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
