//! Fault bookkeeping shared by every fault source: the counters the report
//! reads, the time-stamped fault log, and the jittered schedule helpers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use super::args::ChaosArgs;
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
async fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
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

/// What every fault task shares: the flags, the fault phase's bounds, the
/// stop flag, the counters and the log.
#[derive(Clone, Debug)]
pub(super) struct FaultPhase {
    /// The run's flags (each task reads its own schedule).
    pub(super) args: ChaosArgs,
    /// Start of the fault phase.
    pub(super) start: Instant,
    /// End of the fault phase: no fault is injected after it.
    pub(super) end: Instant,
    /// Set on Ctrl-C.
    pub(super) stop: Arc<AtomicBool>,
    /// What was injected.
    pub(super) counts: Arc<FaultCounts>,
    /// The fault log.
    pub(super) log: Arc<FaultLog>,
}

impl FaultPhase {
    /// Sleeps until `at` (at the latest the phase's end); false when the
    /// phase is over or the run stopped: the task should end.
    pub(super) async fn wait_until(&self, at: Instant) -> bool {
        sleep_until(at.min(self.end), &self.stop).await && Instant::now() < self.end
    }

    /// Sleeps `mean_secs` ± 50 %, as [`FaultPhase::wait_until`].
    pub(super) async fn wait_jittered(&self, rng: &mut StdRng, mean_secs: f64) -> bool {
        self.wait_until(Instant::now() + jitter(rng, mean_secs))
            .await
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
