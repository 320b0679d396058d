//! The [`Stage`] trait, its error type, the per-run [`StageContext`] and the
//! type-erased form the engine runs.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use relay_core::backend::KvStore;
use relay_core::{JobId, Publisher};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Why a stage run failed, and whether running it again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// A transient failure (timeout, rate limit, 5xx, connection): the stage
    /// is retried with backoff until the attempts are exhausted.
    #[error("retryable: {0}")]
    Retryable(String),
    /// A permanent failure (invalid input, malformed model output after
    /// retries, …): the job fails without further attempts.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl StageError {
    /// A retryable error.
    pub fn retryable(msg: impl Into<String>) -> Self {
        StageError::Retryable(msg.into())
    }

    /// A fatal error.
    pub fn fatal(msg: impl Into<String>) -> Self {
        StageError::Fatal(msg.into())
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StageError::Retryable(_))
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        match self {
            StageError::Retryable(m) | StageError::Fatal(m) => m,
        }
    }
}

/// Everything a stage run knows about its job and environment.
#[derive(Clone)]
pub struct StageContext {
    /// The job.
    pub job_id: JobId,
    /// The user who submitted the job.
    pub user_id: String,
    /// This stage's name.
    pub stage: &'static str,
    /// 0-based position of the stage in the pipeline.
    pub stage_index: usize,
    /// 1-based attempt number of this run.
    pub attempt: u32,
    /// Attempts allowed before the job fails.
    pub max_attempts: u32,
    /// When this run is cut off (the engine enforces it with a timeout).
    pub deadline: Instant,
    /// The tracing span of this run (`stage` span with job, stage, attempt).
    pub span: tracing::Span,
    /// The relay publisher the pipeline emits its events through.
    pub publisher: Publisher,
    /// The shared key-value store (for stage-owned state such as rewards):
    /// the one the engine keeps its records in.
    pub backend: Arc<dyn KvStore>,
}

impl std::fmt::Debug for StageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext")
            .field("job_id", &self.job_id)
            .field("user_id", &self.user_id)
            .field("stage", &self.stage)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl StageContext {
    /// Whether this is the last allowed attempt.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// One typed step of a pipeline.
///
/// Input and output are serde types so a stage can run in another process
/// (the AMQP transport carries them as JSON). `run` must be safe to repeat:
/// a redelivered message may run a stage again if the previous run crashed
/// before its completion was recorded.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// What the stage consumes (the previous stage's output).
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What the stage produces (the next stage's input).
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Stage name: the relay event stage and the queue suffix. Must be a
    /// valid relay stage name (`[A-Za-z0-9._:-]{1,64}`).
    const NAME: &'static str;

    /// Runs the stage.
    async fn run(&self, ctx: &StageContext, input: Self::Input)
        -> Result<Self::Output, StageError>;

    /// The `data` of this stage's `completed` event. Defaults to the output.
    fn event_data(output: &Self::Output) -> Value {
        serde_json::to_value(output).unwrap_or(Value::Null)
    }

    /// Runs the stage and returns its output with the `data` of its
    /// `completed` event: what the engine calls. The default runs
    /// [`run`](Self::run) and derives the data with
    /// [`event_data`](Self::event_data); a decorator overrides it to add facts
    /// about the run that are not part of the output (e.g.
    /// [`SimulatedLatency`](crate::sim::SimulatedLatency) adds `model_ms`).
    async fn run_with_data(
        &self,
        ctx: &StageContext,
        input: Self::Input,
    ) -> Result<(Self::Output, Value), StageError> {
        let output = self.run(ctx, input).await?;
        let data = Self::event_data(&output);
        Ok((output, data))
    }
}

/// A stage with its types erased to JSON, as the engine runs it.
#[async_trait]
pub(super) trait ErasedStage: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs the stage on JSON input; returns (output, completed-event data).
    async fn run_json(
        &self,
        ctx: &StageContext,
        input: Value,
    ) -> Result<(Value, Value), StageError>;
}

pub(super) struct Erased<S>(pub S);

#[async_trait]
impl<S: Stage> ErasedStage for Erased<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    async fn run_json(
        &self,
        ctx: &StageContext,
        input: Value,
    ) -> Result<(Value, Value), StageError> {
        let input: S::Input = serde_json::from_value(input)
            .map_err(|e| StageError::fatal(format!("invalid input for stage {}: {e}", S::NAME)))?;
        let (output, data) = self.0.run_with_data(ctx, input).await?;
        let value = serde_json::to_value(&output).map_err(|e| {
            StageError::fatal(format!("stage {} output not serializable: {e}", S::NAME))
        })?;
        Ok((value, data))
    }
}
