//! Simulated work for demos and load tests, outside the engine.
//!
//! - [`LatencyDist`]: a `mean±jitter` ms distribution (`4500±1500`).
//! - [`simulate_latency`]: sleeps as **simulated model time**; simulators
//!   (e.g. the scan domain's `SimulatedVision`) call it instead of
//!   `tokio::time::sleep`.
//! - [`SimulatedLatency`]: a [`Stage`] decorator that sleeps a
//!   [`LatencyDist`] before the stage it wraps (a stand-in for model or
//!   database time) and reports all the simulated time of the run — its own
//!   and any [`simulate_latency`] inside the stage — as `model_ms` in the
//!   stage's `completed` event data, so a load test can tell simulated model
//!   work from relay overhead.
//!
//! The engine knows nothing of this: a simulated stage is just a stage
//! (its sleep counts against the stage timeout like any work), and `model_ms`
//! reaches the event through [`Stage::run_with_data`].

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use serde_json::{json, Value};

use crate::pipeline::{Stage, StageContext, StageError};

/// A latency distribution `mean±jitter` milliseconds (uniform).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyDist {
    /// Mean, ms.
    pub mean_ms: u64,
    /// Half-width of the uniform range, ms.
    pub jitter_ms: u64,
}

impl LatencyDist {
    /// No delay.
    pub const ZERO: LatencyDist = LatencyDist {
        mean_ms: 0,
        jitter_ms: 0,
    };

    /// Draws a latency.
    pub fn sample(&self) -> Duration {
        if self.jitter_ms == 0 {
            return Duration::from_millis(self.mean_ms);
        }
        let lo = self.mean_ms.saturating_sub(self.jitter_ms);
        let hi = self.mean_ms.saturating_add(self.jitter_ms);
        Duration::from_millis(rand::rng().random_range(lo..=hi))
    }
}

impl FromStr for LatencyDist {
    type Err = String;
    /// Parses `4500`, `4500±1500` or `4500+-1500`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (mean, jitter) = match s.split_once('±').or_else(|| s.split_once("+-")) {
            Some((m, j)) => (m.trim(), j.trim()),
            None => (s, "0"),
        };
        let parse = |x: &str| {
            x.parse::<u64>()
                .map_err(|_| format!("invalid latency {s:?}: expected MS or MS±JITTER"))
        };
        Ok(Self {
            mean_ms: parse(mean)?,
            jitter_ms: parse(jitter)?,
        })
    }
}

impl fmt::Display for LatencyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}±{}", self.mean_ms, self.jitter_ms)
    }
}

tokio::task_local! {
    static SIMULATED_MS: Arc<AtomicU64>;
}

/// Sleeps `d` as **simulated** model time. Inside a [`measure_simulated`]
/// scope (every [`SimulatedLatency`] stage run is one) the time is added to
/// the scope's total; elsewhere this is a plain sleep.
pub async fn simulate_latency(d: Duration) {
    tokio::time::sleep(d).await;
    let _ = SIMULATED_MS.try_with(|ms| ms.fetch_add(d.as_millis() as u64, Ordering::Relaxed));
}

/// Runs `f` and returns its output with the simulated time (ms) that
/// [`simulate_latency`] recorded while it ran.
pub async fn measure_simulated<F: Future>(f: F) -> (F::Output, u64) {
    let ms = Arc::new(AtomicU64::new(0));
    let out = SIMULATED_MS.scope(ms.clone(), f).await;
    (out, ms.load(Ordering::Relaxed))
}

/// A stage decorator: sleeps `latency` (simulated model time) before running
/// the wrapped stage, and adds the run's total simulated time as `model_ms`
/// to the `completed` event data (when it is a JSON object and the total is
/// not zero). Same input, output and name as the wrapped stage, so
/// `Pipeline::new(SimulatedLatency::new(a, l))` chains exactly like `a`.
///
/// With [`LatencyDist::ZERO`] it adds no sleep and only measures, which
/// reports the time of simulators called inside the stage.
#[derive(Clone, Debug)]
pub struct SimulatedLatency<S> {
    stage: S,
    latency: LatencyDist,
}

impl<S: Stage> SimulatedLatency<S> {
    /// `stage`, preceded by a `latency` sleep on every run.
    pub fn new(stage: S, latency: LatencyDist) -> Self {
        Self { stage, latency }
    }

    /// The wrapped stage.
    pub fn inner(&self) -> &S {
        &self.stage
    }

    /// The added latency.
    pub fn latency(&self) -> LatencyDist {
        self.latency
    }
}

#[async_trait]
impl<S: Stage> Stage for SimulatedLatency<S> {
    type Input = S::Input;
    type Output = S::Output;
    const NAME: &'static str = S::NAME;

    fn name(&self) -> &'static str {
        self.stage.name()
    }

    async fn run(&self, ctx: &StageContext, input: S::Input) -> Result<S::Output, StageError> {
        self.run_with_data(ctx, input)
            .await
            .map(|(output, _)| output)
    }

    fn event_data(output: &S::Output) -> Value {
        S::event_data(output)
    }

    async fn run_with_data(
        &self,
        ctx: &StageContext,
        input: S::Input,
    ) -> Result<(S::Output, Value), StageError> {
        let extra = (self.latency != LatencyDist::ZERO).then(|| self.latency.sample());
        let (result, model_ms) = measure_simulated(async {
            if let Some(d) = extra {
                simulate_latency(d).await;
            }
            self.stage.run_with_data(ctx, input).await
        })
        .await;
        result.map(|(output, mut data)| {
            if model_ms > 0 {
                if let Value::Object(map) = &mut data {
                    map.insert("model_ms".into(), json!(model_ms));
                }
            }
            (output, data)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_parses() {
        assert_eq!(
            "4500±1500".parse::<LatencyDist>(),
            Ok(LatencyDist {
                mean_ms: 4500,
                jitter_ms: 1500
            })
        );
        assert_eq!(
            "10+-5".parse::<LatencyDist>(),
            Ok(LatencyDist {
                mean_ms: 10,
                jitter_ms: 5
            })
        );
        assert_eq!("0".parse::<LatencyDist>(), Ok(LatencyDist::ZERO));
        assert!("abc".parse::<LatencyDist>().is_err());
        for _ in 0..100 {
            let d = LatencyDist {
                mean_ms: 100,
                jitter_ms: 50,
            }
            .sample();
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150));
        }
    }

    #[tokio::test]
    async fn measure_counts_only_simulated_sleeps_inside_its_scope() {
        simulate_latency(Duration::from_millis(1)).await; // outside: not counted anywhere
        let ((), ms) = measure_simulated(async {
            simulate_latency(Duration::from_millis(3)).await;
            tokio::time::sleep(Duration::from_millis(1)).await; // real work: not counted
            simulate_latency(Duration::from_millis(4)).await;
        })
        .await;
        assert_eq!(ms, 7);
    }
}
