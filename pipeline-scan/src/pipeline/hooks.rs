//! Domain hooks at the end of a job, and the job identity they receive.

use async_trait::async_trait;
use relay_core::JobId;
use serde_json::{json, Value};

use super::stage::StageError;

/// The job identity hooks receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job.
    pub job_id: JobId,
    /// The submitting user.
    pub user_id: String,
    /// The run (0, or the number of dead-letter replays; see [`Envelope::run`](super::Envelope::run)).
    pub run: u32,
}

/// Domain hooks at the end of a job.
#[async_trait]
pub trait JobHooks: Send + Sync + 'static {
    /// Called after the last stage, before the `done` event: persist the
    /// job's result here (it is visible before `done` is emitted) and return
    /// the `done` event's data. Must be idempotent.
    async fn on_success(&self, job: &JobInfo, output: &Value) -> Result<Value, StageError>;

    /// Called when the job fails for good, before the terminal `failed`
    /// event; returns its data. Must be idempotent.
    async fn on_failure(
        &self,
        job: &JobInfo,
        stage: Option<&str>,
        error: &str,
    ) -> Result<Value, StageError>;
}

/// Hooks that store nothing: `done` carries the last output, `failed` the error.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainHooks;

#[async_trait]
impl JobHooks for PlainHooks {
    async fn on_success(&self, _job: &JobInfo, output: &Value) -> Result<Value, StageError> {
        Ok(output.clone())
    }

    async fn on_failure(
        &self,
        _job: &JobInfo,
        stage: Option<&str>,
        error: &str,
    ) -> Result<Value, StageError> {
        Ok(json!({ "stage": stage, "error": error }))
    }
}
