//! Job lifecycle control: the events of a job and its terminal outcome.

use std::sync::Arc;
use std::time::Duration;

use relay_core::event::DONE_STAGE;
use relay_core::{
    BackendError, Domain, Event, JobId, PublishError, Publisher, Status, TraceContext,
    ValidationError,
};
use serde_json::Value;

use super::envelope::Envelope;
use super::hooks::{JobHooks, JobInfo};
use super::seq::{SeqScheme, QUEUED_STAGE};
use super::stage::StageError;
use super::store::{JobStore, TerminalRecord};

/// Why a [`JobControl`] operation (an event, a terminal outcome) failed. The
/// cause is kept as the error's source. The engine defers the step (retries
/// it later without consuming an attempt) on any of these; the API answers
/// 503.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The event could not be built: the job id or the stage name is not a
    /// valid relay name.
    #[error("event: {0}")]
    Event(#[source] ValidationError),
    /// Publishing the event failed (after a few quick retries when the
    /// backend error was transient).
    #[error("event publish: {0}")]
    Publish(#[source] PublishError),
    /// The job store (terminal marker, stage records) failed.
    #[error("job store: {0}")]
    Store(#[source] BackendError),
    /// The job's success or failure hook failed (e.g. storing the result).
    #[error("job hook: {0}")]
    Hook(#[source] StageError),
}

impl ControlError {
    /// Whether trying again later may succeed: a transient backend error
    /// (connection, timeout, busy) or a retryable hook failure. Invalid
    /// names, oversized events and permanent backend refusals are not.
    pub fn is_transient(&self) -> bool {
        match self {
            ControlError::Event(_) => false,
            ControlError::Publish(PublishError::Backend(e)) | ControlError::Store(e) => {
                e.is_transient()
            }
            ControlError::Publish(_) => false,
            ControlError::Hook(e) => e.is_retryable(),
        }
    }
}

/// Publishes a job's lifecycle events and terminal outcome. Shared by the
/// engine and the HTTP API (which emits `queued`, and `failed` when the
/// enqueue fails).
#[derive(Clone)]
pub struct JobControl {
    publisher: Publisher,
    store: JobStore,
    hooks: Arc<dyn JobHooks>,
    scheme: SeqScheme,
}

impl std::fmt::Debug for JobControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobControl")
            .field("scheme", &self.scheme)
            .field("domain", self.domain())
            .finish_non_exhaustive()
    }
}

impl JobControl {
    /// Lifecycle control for a pipeline of `stages` stages.
    pub fn new(
        publisher: Publisher,
        store: JobStore,
        hooks: Arc<dyn JobHooks>,
        stages: usize,
    ) -> Self {
        Self {
            publisher,
            store,
            hooks,
            scheme: SeqScheme::new(stages),
        }
    }

    /// The seq scheme.
    pub fn scheme(&self) -> SeqScheme {
        self.scheme
    }

    /// The job store.
    pub fn store(&self) -> &JobStore {
        &self.store
    }

    /// The publisher.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The events' domain (the publisher's).
    fn domain(&self) -> &Domain {
        self.publisher.keys().domain()
    }

    /// Builds one event of the job and publishes it.
    #[allow(clippy::too_many_arguments)]
    async fn emit(
        &self,
        job: &JobId,
        seq: u64,
        stage: &str,
        status: Status,
        progress: u8,
        data: Value,
        trace: Option<&str>,
    ) -> Result<(), ControlError> {
        let mut e = Event::new(self.domain().as_str(), job.as_str(), seq, stage, status)
            .map_err(ControlError::Event)?
            .with_progress(progress)
            .with_data(data);
        if let Some(t) = trace.and_then(|t| TraceContext::parse_traceparent(t).ok()) {
            e = e.with_trace(t);
        }
        self.publish(e).await
    }

    /// Publishes with a few quick retries to ride over a connection blip.
    async fn publish(&self, event: Event) -> Result<(), ControlError> {
        const ATTEMPTS: u32 = 4;
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.publisher.publish(&event).await {
                Ok(_) => return Ok(()),
                Err(PublishError::Backend(e)) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::warn!(error = %e, "event publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(ControlError::Publish(e)),
            }
        }
    }

    /// Emits the `queued` event (seq 0, progress 0).
    pub async fn queued(&self, job: &JobId, data: Value) -> Result<(), ControlError> {
        self.queued_in_trace(job, data, None).await
    }

    /// [`queued`](Self::queued) in the trace of `trace` (a `traceparent`:
    /// the submit request's span, so the job's trace starts there).
    pub async fn queued_in_trace(
        &self,
        job: &JobId,
        data: Value,
        trace: Option<&str>,
    ) -> Result<(), ControlError> {
        let seq = self.scheme.queued();
        self.emit(job, seq, QUEUED_STAGE, Status::Started, 0, data, trace)
            .await
    }

    pub(super) async fn stage_event(
        &self,
        env: &Envelope,
        name: &str,
        status: Status,
        data: Value,
    ) -> Result<(), ControlError> {
        let i = env.stage + 1;
        let (seq, progress) = match status {
            Status::Started => (self.scheme.started(i), self.scheme.progress_started(i)),
            Status::Completed => (self.scheme.completed(i), self.scheme.progress_completed(i)),
            _ => (self.scheme.failed(i), self.scheme.progress_started(i)),
        };
        let seq = self.scheme.in_run(seq, env.run);
        let trace = env.traceparent.as_deref();
        self.emit(&env.job_id, seq, name, status, progress, data, trace)
            .await
    }

    /// Finishes a job successfully: claims the terminal outcome, runs the
    /// success hook (which stores the result) and emits `done`. Idempotent
    /// (a repeat re-emits the same event, deduplicated by seq). Returns false
    /// when the job had already failed (nothing emitted).
    pub async fn complete(
        &self,
        job: &JobInfo,
        output: &Value,
        trace: Option<&str>,
    ) -> Result<bool, ControlError> {
        let record = TerminalRecord {
            done: true,
            stage: None,
            error: None,
            run: job.run,
        };
        let Some(claimed) = self.claim(job, record).await? else {
            return Ok(false);
        };
        let data = self
            .hooks
            .on_success(job, output)
            .await
            .map_err(ControlError::Hook)?;
        self.terminal(job, &claimed, data, trace).await?;
        Ok(true)
    }

    /// Fails a job for good: claims the terminal outcome, runs the failure
    /// hook and emits the terminal `failed` event (stage `done`). Idempotent;
    /// a repeat re-emits the first failure's event. Returns false when the
    /// job had already completed (nothing emitted).
    pub async fn fail(
        &self,
        job: &JobInfo,
        stage: Option<&str>,
        error: &str,
        trace: Option<&str>,
    ) -> Result<bool, ControlError> {
        let record = TerminalRecord {
            done: false,
            stage: stage.map(str::to_owned),
            error: Some(error.to_owned()),
            run: job.run,
        };
        let Some(claimed) = self.claim(job, record).await? else {
            return Ok(false);
        };
        let error = claimed.error.as_deref().unwrap_or(error);
        let data = self
            .hooks
            .on_failure(job, claimed.stage.as_deref(), error)
            .await
            .map_err(ControlError::Hook)?;
        self.terminal(job, &claimed, data, trace).await?;
        Ok(true)
    }

    /// Claims the job's terminal outcome as `record`. The first claim wins:
    /// a repeat gets the first claim's record back. `None` when the job has
    /// already ended the other way (done for a failure, failed for a done).
    async fn claim(
        &self,
        job: &JobInfo,
        record: TerminalRecord,
    ) -> Result<Option<TerminalRecord>, ControlError> {
        let done = record.done;
        let claimed = self
            .store
            .claim_terminal(&job.job_id, record)
            .await
            .map_err(ControlError::Store)?;
        Ok((claimed.done == done).then_some(claimed))
    }

    /// Emits the terminal event of the `claimed` outcome: stage `done`,
    /// progress 100, `completed` or `failed` at the seq of the run that
    /// claimed it.
    async fn terminal(
        &self,
        job: &JobInfo,
        claimed: &TerminalRecord,
        data: Value,
        trace: Option<&str>,
    ) -> Result<(), ControlError> {
        let (base, status) = if claimed.done {
            (self.scheme.done(), Status::Completed)
        } else {
            (self.scheme.job_failed(), Status::Failed)
        };
        let seq = self.scheme.in_run(base, claimed.run);
        self.emit(&job.job_id, seq, DONE_STAGE, status, 100, data, trace)
            .await
    }
}
