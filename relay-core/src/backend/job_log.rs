//! The job log: per job, the gap-free offset sequence, the bounded history
//! and the state snapshot the router maintains.
//!
//! ## The apply step
//! [`JobLog::apply`] routes a batch of events. For each job it atomically
//! (one Lua call per job in Redis, all jobs of a batch in one pipelined round
//! trip):
//! 1. creates the job's history on first use, with the given candidate epoch;
//! 2. for every event whose `seq` was not seen before: assigns the next offset,
//!    appends `(offset, payload)` to the bounded history and remembers
//!    `seq → offset`; a seq seen before keeps its original offset and changes
//!    nothing (G3);
//! 3. writes the state once, to the highest-seq payload, only if that seq is
//!    above the stored one (state never regresses);
//! 4. refreshes the TTLs; and, with [`ApplyOptions::publish`], publishes a
//!    [`LiveEnvelope`](crate::codec::LiveEnvelope) for every event (new or
//!    not: a redelivered entry is re-published, gateways dedupe by offset)
//!    plus the raw payload to [`ApplyJob::extra_channel`] when set (eco2),
//!    after every write succeeded: nothing uncommitted is ever published.

use std::time::Duration;

use async_trait::async_trait;

use super::{BackendResult, StreamId};
use crate::codec::{Payload, Record};
use crate::event::{Epoch, Offset};
use crate::keys::JobKeys;

/// One event to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyEvent {
    /// Producer seq: the idempotency key within the job and the state order.
    pub seq: u64,
    /// The payload stored and published.
    pub payload: Payload,
}

/// Stream entries to acknowledge together with an apply
/// ([`Backend::apply_and_ack`]).
#[derive(Clone, Copy, Debug)]
pub struct AckRequest<'a> {
    /// The shard stream.
    pub stream: &'a str,
    /// The consumer group.
    pub group: &'a str,
    /// The entries.
    pub ids: &'a [StreamId],
}

/// The events of one job within a batch, applied atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyJob {
    /// The job's keys.
    pub keys: JobKeys,
    /// Epoch to use if the job has no history yet.
    pub epoch: Epoch,
    /// Events in stream order.
    pub events: Vec<ApplyEvent>,
    /// eco2: a shard channel that also receives each raw payload.
    pub extra_channel: Option<String>,
}

/// Bounds and behaviour of [`Backend::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOptions {
    /// TTL of the state key, reset on every update.
    pub state_ttl: Duration,
    /// TTL of history and meta, reset on every update.
    pub history_ttl: Duration,
    /// Maximum history length (oldest entries are trimmed).
    pub history_max: u64,
    /// Publish live envelopes inside the apply (same server for data and
    /// pub/sub). When false the caller publishes.
    pub publish: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            state_ttl: Duration::from_secs(3600),
            history_ttl: Duration::from_secs(3600),
            history_max: 1000,
            publish: true,
        }
    }
}

/// What happened to one applied event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its offset (the original one for a duplicate).
    pub offset: Offset,
    /// False when the (job, seq) had been applied before.
    pub new: bool,
}

/// The outcome for one [`ApplyJob`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyResult {
    /// The job history's epoch.
    pub epoch: Epoch,
    /// One per event, in order.
    pub applied: Vec<Applied>,
}

/// A job's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    /// History identity.
    pub epoch: Epoch,
    /// Highest offset assigned so far.
    pub top: Offset,
    /// Seq of the state event.
    pub seq: u64,
    /// The state event and its offset.
    pub record: Record,
}

/// A page of a job's history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// History identity (`None`: the job has no history, or it expired).
    pub epoch: Option<Epoch>,
    /// Highest offset assigned so far.
    pub top: Offset,
    /// Oldest offset still retained (`None`: empty history).
    pub first: Option<Offset>,
    /// Records with offset greater than the requested one, ascending.
    pub records: Vec<Record>,
}

/// Per-job offsets, history and state.
///
/// Contract (checked by the conformance suite):
/// - **Atomic per job**: everything [`JobLog::apply`] does for one job
///   happens together or not at all; different jobs of a batch may commit
///   independently (a failed call is retried whole, and re-applying is a
///   no-op).
/// - **Gap-free, idempotent offsets** (G3): offsets of a job start at 1 and
///   grow by one per new (job, seq); a repeated seq keeps its offset.
/// - **State never regresses**: it holds the highest seq applied.
/// - **Publish after commit** (G1, G2): a live message is published only
///   for an offset whose record is committed.
/// - **Consistent reads**: [`JobLog::read_history`] returns epoch, top,
///   first and records from one atomic read.
#[async_trait]
pub trait JobLog: Send + Sync {
    /// Applies a batch (see the module docs); one result per job, in order.
    async fn apply(
        &self,
        jobs: &[ApplyJob],
        opts: &ApplyOptions,
    ) -> BackendResult<Vec<ApplyResult>>;

    /// A job's current state, if it has one.
    async fn get_state(&self, keys: &JobKeys) -> BackendResult<Option<JobState>>;

    /// Up to `limit` history records with offset > `after`, read atomically
    /// with the epoch, top and first offset. An `after` past anything the
    /// job holds (up to `u64::MAX`) returns no records and the true top.
    async fn read_history(
        &self,
        keys: &JobKeys,
        after: Offset,
        limit: usize,
    ) -> BackendResult<HistoryPage>;
}
