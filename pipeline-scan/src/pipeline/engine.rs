//! The engine: runs one step of one job and decides what happens next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::backend::KvStore;
use relay_core::{Domain, Publisher, Status};
use serde_json::{json, Value};
use tracing::Instrument;

use super::chain::Pipeline;
use super::control::{ControlError, JobControl};
use super::envelope::Envelope;
use super::hooks::{JobHooks, JobInfo};
use super::retry::RetryPolicy;
use super::stage::{ErasedStage, StageContext, StageError};
use super::store::{JobStore, TerminalRecord};
use crate::metrics::Metrics;

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
    /// records in `kv` (usually the publisher's server: see "Where the
    /// records live" in the [module docs](super)).
    pub fn new<I: 'static, O: 'static>(
        pipeline: Pipeline<I, O>,
        publisher: Publisher,
        kv: Arc<dyn KvStore>,
        hooks: Arc<dyn JobHooks>,
        config: EngineConfig,
    ) -> Self {
        let store = JobStore::new(kv, config.domain.clone(), config.record_ttl);
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
    pub async fn process(&self, mut env: Envelope) -> Disposition {
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
            otel.name = tracing::field::Empty,
            job = %env.job_id,
            stage = stage.name(),
            attempt = env.attempt
        );
        // Exported, the span continues the job's trace (the envelope's
        // context is its parent), and the step's events and next envelope
        // carry the span's own context: one parent-linked trace per job.
        if relay_core::otel::exporting() {
            span.record(
                "otel.name",
                format!("pipeline.stage.{}", stage.name()).as_str(),
            );
            env.traceparent = relay_core::otel::continue_trace(&span, env.traceparent.take());
        }
        self.process_stage(stage, env, span.clone())
            .instrument(span)
            .await
    }

    /// An infrastructure failure (backend, event publish, hook) that is not
    /// the stage's fault: the step is retried later without consuming an
    /// attempt.
    fn defer(&self, env: Envelope, why: &dyn std::error::Error) -> Disposition {
        tracing::warn!(job = %env.job_id, stage = env.stage, error = %why, "infrastructure failure; step deferred");
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

        // Both records in one round trip: a step used to wait for two. (A
        // failed read of either defers the step, even when the terminal
        // marker alone would have sufficed: the redelivery re-emits it.)
        let records = match store.step_records(&env.job_id, env.stage).await {
            Ok(records) => records,
            Err(e) => return self.defer(env, &e),
        };

        // A job that already reached its terminal outcome needs nothing more
        // than (re-)emitting that outcome, in case a crash came between the
        // claim and the event. Event publishing is idempotent per seq.
        if let Some(rec) = records.terminal {
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

        // Redelivery of a completed stage: reuse its recorded output and
        // re-emit its `completed` event (covers a crash between the two).
        let output = match records.completed {
            Some((output, data)) => {
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
            None => {
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
                    backend: store.kv().clone(),
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
                            return self.defer(env, &e);
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
    ) -> Result<(), ControlError> {
        if rec.done {
            let last = self.stages.len().saturating_sub(1);
            let Some((output, _)) = self
                .control
                .store()
                .completed(&job.job_id, last)
                .await
                .map_err(ControlError::Store)?
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
