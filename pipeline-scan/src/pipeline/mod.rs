//! A typed, transport-independent stage pipeline.
//!
//! - [`Stage`]: one typed step (`Input` → `Output`, serde, with a `NAME`).
//! - [`Pipeline`]: `Pipeline::new(a).then(b).then(c)` — each `then` only
//!   compiles when the previous output type is the next input type.
//! - [`Engine`]: runs one step of one job (a message [`Envelope`]) and tells
//!   the transport what to do next ([`Disposition`]): forward to the next
//!   stage, retry later, dead-letter, or nothing (job finished). It emits the
//!   relay events, enforces the per-stage timeout, and makes redelivery
//!   idempotent (a completed stage is never run twice; exactly one terminal
//!   event per job).
//!
//! Transports ([`crate::transport`]) only move envelopes between stages.
//!
//! ## Dead-letter replay: runs
//!
//! A job whose stage exhausted its attempts ends with its terminal `failed`
//! event and its step is dead-lettered. Replaying it (`pipeline-scan dlq
//! replay`, [`InProcess::replay_dead_letters`](crate::transport::inprocess::InProcess::replay_dead_letters))
//! starts the job's next **run**: [`Envelope::run`] + 1, attempt 1, the
//! terminal marker cleared, from the failed stage (completed stages are not
//! redone). Every event of run `r` has seq `base + r × stride`
//! ([`SeqScheme::in_run`]; stride 100 for the scan pipeline), e.g. a scan
//! whose answer stage failed and was replayed once emits
//! `… 30 answer started, 32 answer failed, 59 failed`, then
//! `130 answer started, 131 answer completed, 140/141 reward, 151 done`.
//!
//! Consequences, all deliberate:
//! - the replay's events are appended after the failed run's in the job's
//!   history (nothing is rewritten; history stays an honest log), none is
//!   dropped as a duplicate of the failed run's;
//! - the router state (highest seq wins, G3) ends at the replay's terminal
//!   event (151 > 59), so `/v1/jobs/{job}/state`, the result API's 202 body,
//!   a gateway snapshot and the stored `scan:result:{job}` agree;
//! - an SSE client that saw `failed` and reconnects with its `Last-Event-ID`
//!   receives exactly the replay's events and its `done`;
//! - stage names, statuses, progress and SSE event names are those of run 0,
//!   so eco2 clients (which key on stage/status, not seq) work unchanged;
//!   run 0 is exactly the eco2 seq scheme;
//! - replaying the same dead letter twice (a crash between re-enqueue and
//!   ack) yields the same run, so its events deduplicate by (job, seq).
//!
//! ```compile_fail
//! # use pipeline_scan::pipeline::*;
//! # use async_trait::async_trait;
//! struct A; struct B;
//! #[async_trait] impl Stage for A { type Input = u32; type Output = String; const NAME: &'static str = "a";
//!   async fn run(&self, _: &StageContext, i: u32) -> Result<String, StageError> { Ok(i.to_string()) } }
//! #[async_trait] impl Stage for B { type Input = u64; type Output = u64; const NAME: &'static str = "b";
//!   async fn run(&self, _: &StageContext, i: u64) -> Result<u64, StageError> { Ok(i) } }
//! let _ = Pipeline::new(A).then(B); // String does not feed u64: compile error
//! ```

mod engine;
mod stage;

use std::marker::PhantomData;
use std::sync::Arc;

pub use engine::{
    Disposition, Engine, EngineConfig, Envelope, JobControl, JobHooks, JobInfo, JobStore,
    PlainHooks, RetryPolicy, TerminalRecord,
};
pub(crate) use stage::ErasedStage;
pub use stage::{Stage, StageContext, StageError};

/// The [`relay_core::PublisherConfig`] an [`Engine`]'s publisher should use:
/// repeats of a (job, seq) dropped already at append
/// ([`relay_core::DedupeAt::Append`]). A retried or redelivered step re-emits
/// its `started` event with the same seq by design, so here repeats are
/// routine, not rare; dropping them at append keeps the shard stream (and
/// anything else that reads it) free of them and lets the engine see that a
/// publish was a repeat. The marker's cost is irrelevant at pipeline rates.
/// Clients see each event once either way (the router drops repeats too).
pub fn publisher_config() -> relay_core::PublisherConfig {
    relay_core::PublisherConfig {
        dedupe: relay_core::DedupeAt::Append,
        ..relay_core::PublisherConfig::default()
    }
}

/// An ordered, type-checked chain of stages from `I` to `O`.
pub struct Pipeline<I, O> {
    pub(crate) stages: Vec<Arc<dyn ErasedStage>>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> std::fmt::Debug for Pipeline<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "stages",
                &self.stages.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<I, O> Pipeline<I, O>
where
    I: 'static,
    O: 'static,
{
    /// A pipeline of one stage.
    pub fn new<S>(stage: S) -> Self
    where
        S: Stage<Input = I, Output = O>,
    {
        Self {
            stages: vec![Arc::new(stage::Erased(stage))],
            _types: PhantomData,
        }
    }

    /// Appends a stage whose input is this pipeline's output.
    pub fn then<S>(mut self, stage: S) -> Pipeline<I, S::Output>
    where
        S: Stage<Input = O>,
    {
        self.stages.push(Arc::new(stage::Erased(stage)));
        Pipeline {
            stages: self.stages,
            _types: PhantomData,
        }
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// Always false: a pipeline has at least one stage.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Stage names, in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }
}

/// The event seq scheme of an `n`-stage pipeline (stage indices 1-based):
/// queued 0; stage `i` started `10i`, completed `10i+1`, failed `10i+2`;
/// job done `10(n+1)+1`; job failed `10(n+1)+9`. For the four scan stages this
/// is exactly the eco2 scheme (vision 10/11/12 … done 51, failed 59).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqScheme {
    stages: u64,
}

impl SeqScheme {
    /// The scheme for `stages` stages.
    pub fn new(stages: usize) -> Self {
        Self {
            stages: stages as u64,
        }
    }

    /// The `queued` event.
    pub fn queued(&self) -> u64 {
        0
    }

    /// Stage `i` (1-based) started.
    pub fn started(&self, i: usize) -> u64 {
        10 * i as u64
    }

    /// Stage `i` (1-based) completed.
    pub fn completed(&self, i: usize) -> u64 {
        10 * i as u64 + 1
    }

    /// Stage `i` (1-based) failed for good.
    pub fn failed(&self, i: usize) -> u64 {
        10 * i as u64 + 2
    }

    /// The job's `done` (completed) event.
    pub fn done(&self) -> u64 {
        10 * (self.stages + 1) + 1
    }

    /// The job's terminal failure (`done` stage, status failed).
    pub fn job_failed(&self) -> u64 {
        10 * (self.stages + 1) + 9
    }

    /// The seq distance between two runs of a job: the smallest power of ten
    /// above [`job_failed`](Self::job_failed) (100 for the scan pipeline).
    pub fn run_stride(&self) -> u64 {
        let mut stride = 10;
        while stride <= self.job_failed() {
            stride *= 10;
        }
        stride
    }

    /// `seq` as emitted in run `run` of a job (0: the original run; `r`: the
    /// `r`-th dead-letter replay): `seq + run × run_stride`.
    ///
    /// Why runs shift seqs: a replay happens after the job's terminal
    /// `failed` (seq 59 for scans) was published. Re-using the original seqs
    /// would make the publisher and the router drop the replay's events as
    /// duplicates of the failed run's (the restarted stage's `started`), and
    /// the replay's `done` (51) would rank below `failed` (59), so the router
    /// state — which keeps the highest seq (G3) — would keep saying `failed`
    /// after the job completed. Shifted, run `r`'s events are new (job, seq)
    /// pairs appended after the failed run's in the history, and its terminal
    /// event has the highest seq of the job, so the state, the `/state`
    /// route, the result API and a gateway snapshot all agree on the outcome.
    /// Run 0 is exactly the eco2 scheme; stage, status, progress and the SSE
    /// event names are unchanged in every run, so eco2 clients (which read
    /// those, not seq) work unchanged. A replay of the same dead letter twice
    /// (crash between re-enqueue and ack) uses the same run, so its events
    /// deduplicate.
    pub fn in_run(&self, seq: u64, run: u32) -> u64 {
        seq + u64::from(run) * self.run_stride()
    }

    /// Progress percentage when stage `i` (1-based) starts.
    pub fn progress_started(&self, i: usize) -> u8 {
        (100 * (i as u64 - 1).min(self.stages) / self.stages.max(1)) as u8
    }

    /// Progress percentage when stage `i` (1-based) completes.
    pub fn progress_completed(&self, i: usize) -> u8 {
        (100 * (i as u64).min(self.stages) / self.stages.max(1)) as u8
    }
}

/// The stage name of the event the API emits when a job is accepted.
pub const QUEUED_STAGE: &str = "queued";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_scheme_matches_eco2_for_four_stages() {
        let s = SeqScheme::new(4);
        for (i, name) in ["vision", "rule", "answer", "reward"].iter().enumerate() {
            let i = i + 1;
            assert_eq!(s.started(i), relay_core::eco2::seq_for(name, "started"));
            assert_eq!(s.completed(i), relay_core::eco2::seq_for(name, "completed"));
            assert_eq!(s.failed(i), relay_core::eco2::seq_for(name, "failed"));
        }
        assert_eq!(s.queued(), relay_core::eco2::seq_for("queued", "started"));
        assert_eq!(s.done(), relay_core::eco2::seq_for("done", "completed"));
        assert_eq!(s.job_failed(), relay_core::eco2::seq_for("done", "failed"));
        assert_eq!(s.run_stride(), 100);
        assert_eq!(s.in_run(s.done(), 0), 51);
        assert_eq!(s.in_run(s.done(), 1), 151);
        assert!(s.in_run(s.queued(), 1) > s.job_failed());
        assert_eq!(SeqScheme::new(9).run_stride(), 1000);
        assert_eq!(s.progress_started(1), 0);
        assert_eq!(s.progress_completed(1), 25);
        assert_eq!(s.progress_completed(4), 100);
    }
}
