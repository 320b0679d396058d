//! The scan domain: Vision → Rule → Answer → Reward.
//!
//! [`pipeline`] builds the typed pipeline from the models and the rule set;
//! [`ScanHooks`] stores the done result at `scan:result:{job}` (TTL 3600 s)
//! before the `done` event and a failure result before the terminal `failed`.
//!
//! Every scan stage runs inside a [`SimulatedLatency`] decorator: it adds the
//! configured simulated latency of the stage ([`ScanModels::stage_latency`],
//! `--sim-stage-latency-ms`; none by default) and reports the simulated
//! model time of the run (the simulators' sleeps included) as `model_ms` in
//! the stage's `completed` event data.

pub mod answer;
pub mod openai;
pub mod reward;
pub mod rules;
mod stage;
pub mod types;
pub mod vision;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use relay_core::backend::KvStore;
use relay_core::{Domain, JobId, Publisher};
use serde_json::Value;

use crate::pipeline::{Engine, EngineConfig, JobHooks, JobInfo, Pipeline, Stage, StageError};
use crate::sim::SimulatedLatency;
pub use answer::{AnswerModel, AnswerStage, OpenAiAnswer, SimulatedAnswer, TemplateAnswer};
pub use reward::RewardStage;
pub use rules::{RuleSet, RuleStage};
pub use stage::ScanStage;
pub use types::{ScanOutcome, ScanRequest};
pub use vision::{LatencyDist, OpenAiVision, SimulatedVision, Taxonomy, VisionModel, VisionStage};

/// The event domain of scans.
pub const DOMAIN: &str = "scan";
/// The scan stages' names, in pipeline order (each stage's `NAME`).
pub const STAGE_NAMES: [&str; 4] = [
    <VisionStage as crate::pipeline::Stage>::NAME,
    <RuleStage as crate::pipeline::Stage>::NAME,
    <answer::AnswerStage as crate::pipeline::Stage>::NAME,
    <reward::RewardStage as crate::pipeline::Stage>::NAME,
];
/// Number of scan stages.
pub const STAGES: usize = STAGE_NAMES.len();
/// How long results live.
pub const RESULT_TTL: Duration = Duration::from_secs(3600);

/// The result key of a job (`scan:result:{job}`).
pub fn result_key(job: &JobId) -> String {
    format!("{DOMAIN}:result:{job}")
}

/// The models and data the scan stages use.
#[derive(Clone)]
pub struct ScanModels {
    /// The classifier.
    pub vision: Arc<dyn VisionModel>,
    /// The rules.
    pub rules: Arc<RuleSet>,
    /// The answer writer.
    pub answer: Arc<dyn AnswerModel>,
    /// Simulated extra latency per stage name (load tests: a stand-in for
    /// model or database time), added by the stage's [`SimulatedLatency`]
    /// decorator and counted in its `model_ms`. Empty: none.
    pub stage_latency: Vec<(String, LatencyDist)>,
}

impl std::fmt::Debug for ScanModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanModels")
            .field("rules", &self.rules.len())
            .field("stage_latency", &self.stage_latency)
            .finish_non_exhaustive()
    }
}

impl ScanModels {
    /// The simulator stack on the default dataset: [`SimulatedVision`] with
    /// `latency`, the default rules and [`TemplateAnswer`].
    pub fn simulated(latency: LatencyDist) -> Self {
        Self {
            vision: Arc::new(SimulatedVision::new(
                Arc::new(Taxonomy::default_dataset()),
                latency,
            )),
            rules: Arc::new(RuleSet::default_dataset()),
            answer: Arc::new(TemplateAnswer),
            stage_latency: Vec::new(),
        }
    }

    /// The simulated extra latency of stage `name` ([`LatencyDist::ZERO`]
    /// when none is configured).
    pub fn latency_of(&self, name: &str) -> LatencyDist {
        self.stage_latency
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| *l)
            .unwrap_or(LatencyDist::ZERO)
    }

    fn decorated<S: Stage>(&self, stage: S) -> SimulatedLatency<S> {
        let latency = self.latency_of(stage.name());
        SimulatedLatency::new(stage, latency)
    }
}

/// The typed scan pipeline, each stage in its [`SimulatedLatency`]
/// decorator (see the module docs).
pub fn pipeline(models: &ScanModels) -> Pipeline<ScanRequest, ScanOutcome> {
    Pipeline::new(models.decorated(VisionStage::new(models.vision.clone())))
        .then(models.decorated(RuleStage::new(models.rules.clone())))
        .then(models.decorated(AnswerStage::new(models.answer.clone())))
        .then(models.decorated(RewardStage))
}

/// Stores the job result before the terminal event (see the module docs).
#[derive(Clone)]
pub struct ScanHooks {
    kv: Arc<dyn KvStore>,
}

impl std::fmt::Debug for ScanHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanHooks").finish_non_exhaustive()
    }
}

impl ScanHooks {
    /// Hooks storing results in `kv`.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self { kv }
    }

    async fn store(&self, job: &JobId, result: &Value) -> Result<(), StageError> {
        let raw = serde_json::to_vec(result).map_err(|e| StageError::fatal(e.to_string()))?;
        self.kv
            .set(&result_key(job), Bytes::from(raw), Some(RESULT_TTL))
            .await
            .map_err(|e| StageError::retryable(format!("result store: {e}")))
    }
}

#[async_trait]
impl JobHooks for ScanHooks {
    async fn on_success(&self, job: &JobInfo, output: &Value) -> Result<Value, StageError> {
        let outcome: ScanOutcome = serde_json::from_value(output.clone())
            .map_err(|e| StageError::fatal_from("reward output", e))?;
        let result = types::done_result(job.job_id.as_str(), &outcome);
        self.store(&job.job_id, &result).await?;
        Ok(result)
    }

    async fn on_failure(
        &self,
        job: &JobInfo,
        stage: Option<&str>,
        error: &str,
    ) -> Result<Value, StageError> {
        let result = types::failed_result(job.job_id.as_str(), stage, error);
        self.store(&job.job_id, &result).await?;
        Ok(result)
    }
}

/// The scan engine: the pipeline of `models`, emitting through `publisher`
/// (domain `scan`), records and results in `kv`.
pub fn engine(
    models: &ScanModels,
    publisher: Publisher,
    kv: Arc<dyn KvStore>,
    config: EngineConfig,
) -> Engine {
    let hooks = Arc::new(ScanHooks::new(kv.clone()));
    Engine::new(pipeline(models), publisher, kv, hooks, config)
}

/// Engine defaults for the scan domain.
pub fn engine_config() -> EngineConfig {
    // DOMAIN is a valid name; `Domain::new` cannot fail on it.
    EngineConfig::new(Domain::new(DOMAIN).unwrap_or_else(|_| unreachable!("valid domain")))
}
