//! Fault bookkeeping shared by every fault source: the counters the report
//! reads, the time-stamped fault log, and the jittered schedule helpers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use super::fleet::Kind;

/// Fault counters.
#[derive(Debug, Default)]
pub(super) struct FaultCounts {
    pub(super) kills: Mutex<BTreeMap<Kind, u64>>,
    pub(super) redis_restarts: AtomicU64,
    pub(super) kill_normal: AtomicU64,
    pub(super) kill_pubsub: AtomicU64,
    pub(super) clients_killed: AtomicU64,
    pub(super) refusals_oom: AtomicU64,
    pub(super) refusals_noreplicas: AtomicU64,
    pub(super) pauses: AtomicU64,
    pub(super) redis_fault_errors: AtomicU64,
    pub(super) amqp_rounds: AtomicU64,
    pub(super) amqp_closed: AtomicU64,
    pub(super) amqp_errors: AtomicU64,
}

/// The time-stamped fault log (also written to `faults.log`).
#[derive(Debug)]
pub(super) struct FaultLog {
    pub(super) t0: Instant,
    pub(super) lines: Mutex<Vec<String>>,
    pub(super) verbose: bool,
}

impl FaultLog {
    /// Seconds since the run started.
    pub(super) fn t(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Appends a time-stamped line (and prints it unless quiet).
    pub(super) fn note(&self, what: impl Into<String>) {
        let line = format!("t={:7.2}s {} {}", self.t(), utc_now(), what.into());
        if self.verbose {
            eprintln!("chaos: {line}");
        }
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }
}

/// `HH:MM:SS.mmmZ` of now, to match the processes' log lines.
fn utc_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// A delay of `mean_secs` ± 50 %, uniformly.
pub(super) fn jitter(rng: &mut StdRng, mean_secs: f64) -> Duration {
    let mean = mean_secs.max(0.05);
    Duration::from_secs_f64(rng.random_range(mean * 0.5..=mean * 1.5))
}

/// Sleeps until `until`, in short steps so `stop` is honoured; false when
/// stopped early.
pub(super) async fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(200))).await;
    }
}

/// Writes `lines` to `path` (a failure is only reported).
pub(super) fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("chaos: cannot write {}: {e}", path.display());
    }
}
