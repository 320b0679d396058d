//! The engine: runs one step of one job and decides what happens next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use relay_core::{
    Backend, BackendError, Domain, Event, JobId, PublishError, Publisher, Status, TraceContext,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

use super::{ErasedStage, Pipeline, SeqScheme, StageContext, StageError, QUEUED_STAGE};
use crate::metrics::Metrics;

/// The message a transport moves between stages: one step of one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The job.
    pub job_id: JobId,
    /// The submitting user.
    pub user_id: String,
    /// 0-based index of the stage to run.
    pub stage: usize,
    /// 1-based attempt of that stage.
    pub attempt: u32,
    /// The stage input (the previous stage's output), JSON.
    pub input: Value,
    /// W3C traceparent of the submitting request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The job's run: 0 for the original run, +1 for each dead-letter replay.
    /// Every event of run `r` has its seq shifted by `r ×`
    /// [`SeqScheme::run_stride`], so a replayed run's events are new events
    /// (not deduplicated against the failed run's) and its terminal event
    /// outranks the earlier `failed` in the router state (see
    /// [`SeqScheme::in_run`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Envelope {
    /// The first step of a new job.
    pub fn first(job_id: JobId, user_id: impl Into<String>, input: Value) -> Self {
        Self {
            job_id,
            user_id: user_id.into(),
            stage: 0,
            attempt: 1,
            input,
            traceparent: None,
            run: 0,
        }
    }

    /// This dead-lettered step prepared for a replay: the next run, attempt 1.
    pub fn into_replay(mut self) -> Self {
        self.run = self.run.saturating_add(1);
        self.attempt = 1;
        self
    }
}

/// Exponential backoff between attempts of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per stage (≥ 1), including the first.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub base_delay: Duration,
    /// Upper bound of a delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Delay after failed attempt `attempt` (1-based): `base * 2^(attempt-1)`, capped.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay)
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Event domain (`scan`).
    pub domain: Domain,
    /// Retry policy (shared by all stages).
    pub retry: RetryPolicy,
    /// Default per-stage timeout.
    pub stage_timeout: Duration,
    /// Per-stage timeout overrides by stage name.
    pub stage_timeouts: Vec<(String, Duration)>,
    /// How long stage completion records and terminal markers live.
    pub record_ttl: Duration,
}

impl EngineConfig {
    /// Defaults for a domain: 3 attempts, 500 ms base backoff, 60 s stage
    /// timeout, records kept 2 h.
    pub fn new(domain: Domain) -> Self {
        Self {
            domain,
            retry: RetryPolicy::default(),
            stage_timeout: Duration::from_secs(60),
            stage_timeouts: Vec::new(),
            record_ttl: Duration::from_secs(7200),
        }
    }

    fn timeout_for(&self, stage: &str) -> Duration {
        self.stage_timeouts
            .iter()
            .find(|(n, _)| n == stage)
            .map(|(_, d)| *d)
            .unwrap_or(self.stage_timeout)
    }
}

/// What the transport must do after [`Engine::process`].
#[derive(Clone, Debug, PartialEq)]
pub enum Disposition {
    /// Deliver this envelope to its stage (the next one), then acknowledge.
    Forward(Envelope),
    /// Deliver this envelope to the same stage after `delay`, then acknowledge.
    Retry {
        /// The envelope (attempt already advanced, or unchanged for an
        /// infrastructure failure that did not consume an attempt).
        envelope: Envelope,
        /// How long to wait.
        delay: Duration,
    },
    /// Move the envelope to the dead-letter queue, then acknowledge. The job's
    /// `failed` events have been emitted.
    DeadLetter {
        /// The envelope that failed (with its last attempt).
        envelope: Envelope,
        /// Why.
        reason: String,
    },
    /// Nothing more to do (job finished, or already finished): acknowledge.
    Finished,
}

/// The job identity hooks receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job.
    pub job_id: JobId,
    /// The submitting user.
    pub user_id: String,
    /// The run (0, or the number of dead-letter replays; see [`Envelope::run`]).
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

/// Per-job bookkeeping in the backend that makes redelivery idempotent:
/// stage completion records (with the stage output) and the terminal marker.
#[derive(Clone)]
pub struct JobStore {
    backend: Arc<dyn Backend>,
    domain: Domain,
    ttl: Duration,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// A job's terminal outcome as recorded in its marker (so a redelivered
/// step can re-emit exactly the same terminal event after a crash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalRecord {
    /// True for `done`, false for the terminal failure.
    pub done: bool,
    /// The failed stage (failures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The failure reason (failures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The run that reached this outcome (its terminal event's seq is shifted
    /// by it; see [`Envelope::run`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
}

/// A completed stage's record: its output and its `completed` event data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StageRecord {
    o: Value,
    d: Value,
}

impl JobStore {
    /// A store in `backend` for `domain`, records living `ttl`.
    pub fn new(backend: Arc<dyn Backend>, domain: Domain, ttl: Duration) -> Self {
        Self {
            backend,
            domain,
            ttl,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn stage_key(&self, job: &JobId, stage: usize) -> String {
        format!("pipeline:{}:{{{}}}:stage:{stage}", self.domain, job)
    }

    fn terminal_key(&self, job: &JobId) -> String {
        format!("pipeline:{}:{{{}}}:terminal", self.domain, job)
    }

    /// The recorded output and `completed` event data of a completed stage.
    pub async fn completed(
        &self,
        job: &JobId,
        stage: usize,
    ) -> Result<Option<(Value, Value)>, BackendError> {
        let Some(raw) = self.backend.get(&self.stage_key(job, stage)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<StageRecord>(&raw)
            .ok()
            .map(|r| (r.o, r.d)))
    }

    /// Records a stage's completion with its output and event data.
    pub async fn record_completed(
        &self,
        job: &JobId,
        stage: usize,
        output: &Value,
        data: &Value,
    ) -> Result<(), BackendError> {
        let rec = StageRecord {
            o: output.clone(),
            d: data.clone(),
        };
        let raw = serde_json::to_vec(&rec).unwrap_or_default();
        self.backend
            .set(
                &self.stage_key(job, stage),
                Bytes::from(raw),
                Some(self.ttl),
            )
            .await
    }

    /// Claims the job's terminal outcome atomically (`SET NX`). Returns the
    /// record in force: `record` itself when this call claimed it, or the
    /// earlier one.
    async fn claim_terminal(
        &self,
        job: &JobId,
        record: TerminalRecord,
    ) -> Result<TerminalRecord, BackendError> {
        let key = self.terminal_key(job);
        let raw = serde_json::to_vec(&record).unwrap_or_default();
        if self
            .backend
            .set_nx(&key, Bytes::from(raw), Some(self.ttl))
            .await?
        {
            return Ok(record);
        }
        Ok(self.terminal_record(job).await?.unwrap_or(record))
    }

    /// The job's terminal record, if it has one.
    pub async fn terminal_record(
        &self,
        job: &JobId,
    ) -> Result<Option<TerminalRecord>, BackendError> {
        let Some(raw) = self.backend.get(&self.terminal_key(job)).await? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&raw).unwrap_or(
            TerminalRecord {
                done: false,
                stage: None,
                error: Some("unreadable terminal record".into()),
                run: 0,
            },
        )))
    }

    /// The job's terminal outcome if it has one: `Some(true)` done, `Some(false)` failed.
    pub async fn terminal(&self, job: &JobId) -> Result<Option<bool>, BackendError> {
        Ok(self.terminal_record(job).await?.map(|r| r.done))
    }

    /// Clears the terminal marker so a replayed job can finish (dead-letter replay).
    pub async fn clear_terminal(&self, job: &JobId) -> Result<(), BackendError> {
        self.backend
            .delete(&[self.terminal_key(job)])
            .await
            .map(|_| ())
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
    domain: Domain,
}

impl std::fmt::Debug for JobControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobControl")
            .field("scheme", &self.scheme)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

fn backend_err(e: PublishError) -> String {
    e.to_string()
}

impl JobControl {
    /// Lifecycle control for a pipeline of `stages` stages.
    pub fn new(
        publisher: Publisher,
        store: JobStore,
        hooks: Arc<dyn JobHooks>,
        stages: usize,
    ) -> Self {
        let domain = publisher.keys().domain().clone();
        Self {
            publisher,
            store,
            hooks,
            scheme: SeqScheme::new(stages),
            domain,
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

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        job: &JobId,
        seq: u64,
        stage: &str,
        status: Status,
        progress: u8,
        data: Value,
        trace: Option<&str>,
    ) -> Result<Event, String> {
        let mut e = Event::new(self.domain.as_str(), job.as_str(), seq, stage, status)
            .map_err(|e| e.to_string())?
            .with_progress(progress)
            .with_data(data);
        if let Some(t) = trace.and_then(|t| TraceContext::parse_traceparent(t).ok()) {
            e = e.with_trace(t);
        }
        Ok(e)
    }

    /// Publishes with a few quick retries to ride over a connection blip.
    async fn publish(&self, event: Event) -> Result<(), String> {
        let mut delay = Duration::from_millis(50);
        for attempt in 0..4 {
            match self.publisher.publish(&event).await {
                Ok(_) => return Ok(()),
                Err(PublishError::Backend(e)) if e.is_transient() && attempt < 3 => {
                    tracing::warn!(error = %e, "event publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(backend_err(e)),
            }
        }
        Err("event publish failed".into())
    }

    /// Emits the `queued` event (seq 0, progress 0).
    pub async fn queued(&self, job: &JobId, data: Value) -> Result<(), String> {
        let e = self.event(
            job,
            self.scheme.queued(),
            QUEUED_STAGE,
            Status::Started,
            0,
            data,
            None,
        )?;
        self.publish(e).await
    }

    async fn stage_event(
        &self,
        env: &Envelope,
        name: &str,
        status: Status,
        data: Value,
    ) -> Result<(), String> {
        let i = env.stage + 1;
        let (seq, progress) = match status {
            Status::Started => (self.scheme.started(i), self.scheme.progress_started(i)),
            Status::Completed => (self.scheme.completed(i), self.scheme.progress_completed(i)),
            _ => (self.scheme.failed(i), self.scheme.progress_started(i)),
        };
        let seq = self.scheme.in_run(seq, env.run);
        let e = self.event(
            &env.job_id,
            seq,
            name,
            status,
            progress,
            data,
            env.traceparent.as_deref(),
        )?;
        self.publish(e).await
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
    ) -> Result<bool, String> {
        let claimed = self
            .store
            .claim_terminal(
                &job.job_id,
                TerminalRecord {
                    done: true,
                    stage: None,
                    error: None,
                    run: job.run,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        if !claimed.done {
            return Ok(false);
        }
        let data = self
            .hooks
            .on_success(job, output)
            .await
            .map_err(|e| e.to_string())?;
        let e = self.event(
            &job.job_id,
            self.scheme.in_run(self.scheme.done(), claimed.run),
            relay_core::event::DONE_STAGE,
            Status::Completed,
            100,
            data,
            trace,
        )?;
        self.publish(e).await?;
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
    ) -> Result<bool, String> {
        let claimed = self
            .store
            .claim_terminal(
                &job.job_id,
                TerminalRecord {
                    done: false,
                    stage: stage.map(str::to_owned),
                    error: Some(error.to_owned()),
                    run: job.run,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        if claimed.done {
            return Ok(false);
        }
        let error = claimed.error.as_deref().unwrap_or(error);
        let data = self
            .hooks
            .on_failure(job, claimed.stage.as_deref(), error)
            .await
            .map_err(|e| e.to_string())?;
        let e = self.event(
            &job.job_id,
            self.scheme.in_run(self.scheme.job_failed(), claimed.run),
            relay_core::event::DONE_STAGE,
            Status::Failed,
            100,
            data,
            trace,
        )?;
        self.publish(e).await?;
        Ok(true)
    }
}

/// Runs steps of a pipeline's jobs. Cheap to share (`Arc<Engine>`) between
/// workers and transports.
pub struct Engine {
    stages: Vec<Arc<dyn ErasedStage>>,
    control: JobControl,
    config: EngineConfig,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("stages", &self.stage_names())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine for `pipeline`, emitting through `publisher` and keeping its
    /// records in the publisher's backend.
    pub fn new<I: 'static, O: 'static>(
        pipeline: Pipeline<I, O>,
        publisher: Publisher,
        hooks: Arc<dyn JobHooks>,
        config: EngineConfig,
    ) -> Self {
        let store = JobStore::new(
            publisher.backend().clone(),
            config.domain.clone(),
            config.record_ttl,
        );
        let control = JobControl::new(publisher, store, hooks, pipeline.len());
        Self {
            stages: pipeline.stages,
            control,
            config,
            metrics: None,
        }
    }

    /// Records stage and job metrics into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Stage names in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// The lifecycle control (events, terminal outcome).
    pub fn control(&self) -> &JobControl {
        &self.control
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn count(&self, stage: &str, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.stage_outcome(stage, outcome);
        }
    }

    /// Runs one step. Never panics on bad input: an envelope for an unknown
    /// stage or with undecodable input fails the job and is dead-lettered.
    pub async fn process(&self, env: Envelope) -> Disposition {
        let Some(stage) = self.stages.get(env.stage).cloned() else {
            let reason = format!("unknown stage index {}", env.stage);
            let job = JobInfo {
                job_id: env.job_id.clone(),
                user_id: env.user_id.clone(),
                run: env.run,
            };
            if let Err(e) = self.control.fail(&job, None, &reason, None).await {
                return self.defer(env, &e);
            }
            return Disposition::DeadLetter {
                envelope: env,
                reason,
            };
        };
        let span = tracing::info_span!(
            "stage",
            job = %env.job_id,
            stage = stage.name(),
            attempt = env.attempt
        );
        self.process_stage(stage, env, span.clone())
            .instrument(span)
            .await
    }

    fn defer(&self, env: Envelope, why: &str) -> Disposition {
        tracing::warn!(job = %env.job_id, stage = env.stage, error = why, "infrastructure failure; step deferred");
        self.count(
            self.stages.get(env.stage).map(|s| s.name()).unwrap_or("?"),
            "deferred",
        );
        Disposition::Retry {
            envelope: env,
            delay: self.config.retry.base_delay,
        }
    }

    async fn process_stage(
        &self,
        stage: Arc<dyn ErasedStage>,
        env: Envelope,
        span: tracing::Span,
    ) -> Disposition {
        let name = stage.name();
        let store = self.control.store();
        let job = JobInfo {
            job_id: env.job_id.clone(),
            user_id: env.user_id.clone(),
            run: env.run,
        };

        // A job that already reached its terminal outcome needs nothing more
        // than (re-)emitting that outcome, in case a crash came between the
        // claim and the event. Event publishing is idempotent per seq.
        match store.terminal_record(&env.job_id).await {
            Ok(Some(rec)) => {
                tracing::info!(done = rec.done, "job already terminal; step skipped");
                self.count(name, "skipped");
                return match self
                    .reemit_terminal(&job, rec, env.traceparent.as_deref())
                    .await
                {
                    Ok(()) => Disposition::Finished,
                    Err(e) => self.defer(env, &e),
                };
            }
            Ok(None) => {}
            Err(e) => return self.defer(env, &e.to_string()),
        }

        // Redelivery of a completed stage: reuse its recorded output and
        // re-emit its `completed` event (covers a crash between the two).
        let output = match store.completed(&env.job_id, env.stage).await {
            Err(e) => return self.defer(env, &e.to_string()),
            Ok(Some((output, data))) => {
                tracing::info!("stage already completed; reusing its output");
                self.count(name, "skipped");
                if let Err(e) = self
                    .control
                    .stage_event(&env, name, Status::Completed, data)
                    .await
                {
                    return self.defer(env, &e);
                }
                output
            }
            Ok(None) => {
                if let Err(e) = self
                    .control
                    .stage_event(&env, name, Status::Started, Value::Null)
                    .await
                {
                    return self.defer(env, &e);
                }
                let timeout = self.config.timeout_for(name);
                let ctx = StageContext {
                    job_id: env.job_id.clone(),
                    user_id: env.user_id.clone(),
                    stage: name,
                    stage_index: env.stage,
                    attempt: env.attempt,
                    max_attempts: self.config.retry.max_attempts,
                    deadline: Instant::now() + timeout,
                    span,
                    publisher: self.control.publisher().clone(),
                    backend: store.backend().clone(),
                };
                let started = Instant::now();
                let result =
                    match tokio::time::timeout(timeout, stage.run_json(&ctx, env.input.clone()))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(StageError::retryable(format!(
                            "stage {name} timed out after {} ms",
                            timeout.as_millis()
                        ))),
                    };
                if let Some(m) = &self.metrics {
                    m.stage_duration(name, started.elapsed());
                }
                match result {
                    Ok((output, data)) => {
                        if let Err(e) = store
                            .record_completed(&env.job_id, env.stage, &output, &data)
                            .await
                        {
                            return self.defer(env, &e.to_string());
                        }
                        if let Err(e) = self
                            .control
                            .stage_event(&env, name, Status::Completed, data)
                            .await
                        {
                            return self.defer(env, &e);
                        }
                        self.count(name, "completed");
                        output
                    }
                    Err(err) => return self.on_error(env, name, &job, err).await,
                }
            }
        };

        if env.stage + 1 < self.stages.len() {
            return Disposition::Forward(Envelope {
                job_id: env.job_id,
                user_id: env.user_id,
                stage: env.stage + 1,
                attempt: 1,
                input: output,
                traceparent: env.traceparent,
                run: env.run,
            });
        }
        match self
            .control
            .complete(&job, &output, env.traceparent.as_deref())
            .await
        {
            Ok(done) => {
                if done {
                    if let Some(m) = &self.metrics {
                        m.job_outcome("completed");
                    }
                }
                Disposition::Finished
            }
            Err(e) => self.defer(env, &e),
        }
    }

    async fn reemit_terminal(
        &self,
        job: &JobInfo,
        rec: TerminalRecord,
        trace: Option<&str>,
    ) -> Result<(), String> {
        if rec.done {
            let last = self.stages.len().saturating_sub(1);
            let Some((output, _)) = self
                .control
                .store()
                .completed(&job.job_id, last)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(());
            };
            self.control.complete(job, &output, trace).await.map(|_| ())
        } else {
            let error = rec.error.clone().unwrap_or_default();
            self.control
                .fail(job, rec.stage.as_deref(), &error, trace)
                .await
                .map(|_| ())
        }
    }

    async fn on_error(
        &self,
        env: Envelope,
        name: &'static str,
        job: &JobInfo,
        err: StageError,
    ) -> Disposition {
        if err.is_retryable() && env.attempt < self.config.retry.max_attempts {
            let delay = self.config.retry.delay_after(env.attempt);
            tracing::warn!(error = %err, delay_ms = delay.as_millis() as u64, "stage failed; will retry");
            self.count(name, "retried");
            return Disposition::Retry {
                delay,
                envelope: Envelope {
                    attempt: env.attempt + 1,
                    ..env
                },
            };
        }
        tracing::error!(error = %err, "stage failed for good");
        let reason = format!(
            "stage {name} failed after {} attempt(s): {}",
            env.attempt,
            err.message()
        );
        let data = json!({ "error": err.message(), "attempt": env.attempt, "retryable": err.is_retryable() });
        if let Err(e) = self
            .control
            .stage_event(&env, name, Status::Failed, data)
            .await
        {
            return self.defer(env, &e);
        }
        match self
            .control
            .fail(job, Some(name), err.message(), env.traceparent.as_deref())
            .await
        {
            Ok(failed) => {
                self.count(name, "failed");
                if failed {
                    if let Some(m) = &self.metrics {
                        m.job_outcome("failed");
                    }
                }
                Disposition::DeadLetter {
                    envelope: env,
                    reason,
                }
            }
            Err(e) => self.defer(env, &e),
        }
    }
}
