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

/// The error a [`StageError`] was caused by (shared, so the stage error
/// stays `Clone`).
pub type StageErrorSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a stage run failed, and whether running it again can help.
///
/// The message is what the job's events and logs report; the error that
/// caused the failure, when there is one, is kept as the source (see
/// [`StageError::retryable_from`]). Two stage errors are equal when their
/// kind and message are.
#[derive(Debug, Clone)]
pub enum StageError {
    /// A transient failure (timeout, rate limit, 5xx, connection): the stage
    /// is retried with backoff until the attempts are exhausted.
    Retryable {
        /// What failed (the cause's text included).
        message: String,
        /// The error that caused it, if any.
        source: Option<StageErrorSource>,
    },
    /// A permanent failure (invalid input, malformed model output after
    /// retries, …): the job fails without further attempts.
    Fatal {
        /// What failed (the cause's text included).
        message: String,
        /// The error that caused it, if any.
        source: Option<StageErrorSource>,
    },
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_retryable() {
            "retryable"
        } else {
            "fatal"
        };
        write!(f, "{kind}: {}", self.message())
    }
}

/// Written out rather than derived: thiserror would hand out the `Arc`
/// itself as the source, which no caller can downcast to the error inside.
impl std::error::Error for StageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let (StageError::Retryable { source, .. } | StageError::Fatal { source, .. }) = self;
        source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for StageError {
    fn eq(&self, other: &Self) -> bool {
        self.is_retryable() == other.is_retryable() && self.message() == other.message()
    }
}

impl Eq for StageError {}

impl StageError {
    /// A retryable error.
    pub fn retryable(msg: impl Into<String>) -> Self {
        StageError::Retryable {
            message: msg.into(),
            source: None,
        }
    }

    /// A fatal error.
    pub fn fatal(msg: impl Into<String>) -> Self {
        StageError::Fatal {
            message: msg.into(),
            source: None,
        }
    }

    /// A retryable error caused by `source`: the message is
    /// `"{context}: {source}"` and `source` stays the error's source.
    pub fn retryable_from(
        context: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::caused_by(true, format!("{context}: {source}"), Arc::new(source))
    }

    /// A fatal error caused by `source`: the message is
    /// `"{context}: {source}"` and `source` stays the error's source.
    pub fn fatal_from(
        context: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::caused_by(false, format!("{context}: {source}"), Arc::new(source))
    }

    /// An error of the given kind with `message`, caused by `source`.
    pub(crate) fn caused_by(retryable: bool, message: String, source: StageErrorSource) -> Self {
        let source = Some(source);
        if retryable {
            StageError::Retryable { message, source }
        } else {
            StageError::Fatal { message, source }
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StageError::Retryable { .. })
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        match self {
            StageError::Retryable { message, .. } | StageError::Fatal { message, .. } => message,
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

    /// The name the engine runs this stage under: [`NAME`](Self::NAME),
    /// unless the stage is named when it is built (a
    /// [`stage_fn`](super::stage_fn) stage, a decorator of one).
    fn name(&self) -> &'static str {
        Self::NAME
    }

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
        self.0.name()
    }

    async fn run_json(
        &self,
        ctx: &StageContext,
        input: Value,
    ) -> Result<(Value, Value), StageError> {
        let name = self.0.name();
        let input: S::Input = serde_json::from_value(input)
            .map_err(|e| StageError::fatal_from(&format!("invalid input for stage {name}"), e))?;
        let (output, data) = self.0.run_with_data(ctx, input).await?;
        let value = serde_json::to_value(&output).map_err(|e| {
            StageError::fatal_from(&format!("stage {name} output not serializable"), e)
        })?;
        Ok((value, data))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn a_stage_error_from_another_error_keeps_it_as_its_source() {
        let parse = serde_json::from_str::<u32>("x").unwrap_err();
        let text = parse.to_string();
        let err = StageError::fatal_from("reward output", parse);
        assert!(!err.is_retryable());
        assert_eq!(err.message(), format!("reward output: {text}"));
        assert_eq!(err.to_string(), format!("fatal: reward output: {text}"));
        let source = err.source().expect("source kept");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
        // Equality is by kind and message; a clone shares the source.
        assert_eq!(
            err.clone(),
            StageError::fatal(format!("reward output: {text}"))
        );
        assert_ne!(err, StageError::retryable(err.message()));
        assert!(err.clone().source().is_some());
        let io = std::io::Error::other("down");
        let retry = StageError::retryable_from("result store", io);
        assert!(retry.is_retryable());
        assert_eq!(retry.message(), "result store: down");
        assert!(retry.source().is_some());
        assert!(StageError::retryable("plain").source().is_none());
    }
}
