//! A typed, transport-independent stage pipeline.
//!
//! - [`Stage`]: one typed step (`Input` → `Output`, serde, with a `NAME`);
//!   [`stage_fn`] makes one of an async function.
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
//! ## Where the records live
//!
//! The pipeline's own state (stage records and terminal markers in
//! [`JobStore`], the scan results and reward grants) lives in a
//! [`KvStore`](relay_core::backend::KvStore), which the relay's
//! [`Backend`](relay_core::Backend) does not include (the relay never uses
//! one). So the engine, the hooks and the API take it as a second handle,
//! `kv: Arc<dyn KvStore>`, next to the [`Publisher`](relay_core::Publisher)
//! (whose backend carries the events). Two handles rather than a combined
//! `Backend + KvStore` trait: each part asks only for the role it uses
//! (`JobStore` never appends events, the publisher never reads records), it
//! needs no trait of its own, and both built-in backends already are both —
//! an `Arc<MemoryBackend>` or `Arc<RedisBackend>` coerces to either handle,
//! and `relay_core::cli::connect_with_kv` opens one URL as the two. In
//! every deployment they are the same server.
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

mod chain;
mod control;
mod engine;
mod envelope;
mod hooks;
mod retry;
mod seq;
mod stage;
mod stage_fn;
mod store;

pub use chain::Pipeline;
pub use control::{ControlError, JobControl};
pub use engine::{Disposition, Engine, EngineConfig};
pub use envelope::Envelope;
pub use hooks::{JobHooks, JobInfo, PlainHooks};
pub use retry::RetryPolicy;
pub use seq::{SeqScheme, QUEUED_STAGE};
pub use stage::{Stage, StageContext, StageError};
pub use stage_fn::{stage_fn, FnStage};
pub use store::{JobStore, StepRecords, TerminalRecord};

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
