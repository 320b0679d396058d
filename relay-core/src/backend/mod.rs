//! The storage backend: the Redis operations relay needs, behind one trait.
//!
//! Implementations:
//! - [`MemoryBackend`](memory::MemoryBackend): in-process, full semantics
//!   (consumer groups, pending lists, delivery counts, TTLs, bounded history,
//!   pub/sub). The embedded default, not a mock.
//! - [`RedisBackend`](redis::RedisBackend) (feature `redis`, default): redis-rs.
//!
//! Every implementation passes the same conformance suite
//! (`tests/conformance.rs` in this crate).
//!
//! ## The apply step
//! [`Backend::apply`] routes a batch of events. For each job it atomically
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
//!    plus the raw payload to [`ApplyJob::extra_channel`] when set (eco2).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::codec::{Fields, Payload, Record};
use crate::error::BackendError;
use crate::event::{Epoch, Offset};
use crate::keys::JobKeys;

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

/// Result alias for backend calls.
pub type BackendResult<T> = Result<T, BackendError>;

/// A stream entry id (`<ms>-<seq>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// The smallest id (`0-0`).
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
    /// Builds an id.
    pub fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padding-aware, so ids line up in tables.
        f.pad(&format!("{}-{}", self.ms, self.seq))
    }
}

impl FromStr for StreamId {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BackendError::Protocol(format!("invalid stream id {s:?}"));
        let (ms, seq) = match s.split_once('-') {
            Some((a, b)) => (a, b),
            None => (s, "0"),
        };
        Ok(StreamId {
            ms: ms.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

/// One entry of a stream. An entry read from a pending list whose data was
/// deleted (trimmed) has no fields: XADD never writes an empty entry, so
/// empty `fields` means "deleted".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id.
    pub id: StreamId,
    /// The fields, in order.
    pub fields: Fields,
}

impl StreamEntry {
    /// Whether the entry's data is gone (trimmed while pending).
    pub fn is_deleted(&self) -> bool {
        self.fields.is_empty()
    }
}

/// An entry handed to a consumer, with how many times it has been delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The entry.
    pub entry: StreamEntry,
    /// Delivery count including this delivery.
    pub deliveries: u64,
}

/// Where a consumer-group read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// This consumer's own pending entries (XREADGROUP id `0`), e.g. after a
    /// restart. Never blocks.
    Pending,
    /// New entries never delivered to the group (XREADGROUP id `>`).
    New,
}

/// Producer-side idempotency: the append happens only if `key` was not set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dedupe {
    /// Marker key (see [`KeySpace::publish_marker`](crate::keys::KeySpace::publish_marker)).
    pub key: String,
    /// How long the marker lives.
    pub ttl: Duration,
}

/// One append to a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    /// Stream key.
    pub stream: String,
    /// Fields, in order (at least one).
    pub fields: Fields,
    /// Approximate length bound (`MAXLEN ~`).
    pub maxlen: Option<u64>,
    /// Skip the append when this marker exists.
    pub dedupe: Option<Dedupe>,
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The entry id (for a duplicate: the id of the original append).
    pub id: StreamId,
    /// True when the marker already existed and nothing was appended.
    pub duplicate: bool,
}

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

/// [`Backend::apply_and_ack`] in two steps: the apply, then (if it
/// succeeded and there is anything to ack) the ack.
pub(crate) async fn apply_then_ack<B: Backend + ?Sized>(
    backend: &B,
    jobs: Vec<ApplyJob>,
    opts: &ApplyOptions,
    ack: AckRequest<'_>,
) -> BackendResult<Vec<ApplyResult>> {
    let applied = backend.apply(jobs, opts).await?;
    if !ack.ids.is_empty() {
        backend.ack(ack.stream, ack.group, ack.ids).await?;
    }
    Ok(applied)
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

/// One consumer of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Consumer name.
    pub name: String,
    /// Entries delivered to it and not yet acked.
    pub pending: u64,
    /// Milliseconds since it last read.
    pub idle_ms: u64,
}

/// Consumer-group statistics of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Entries in the stream.
    pub length: u64,
    /// Entries delivered and not acked.
    pub pending: u64,
    /// Entries not yet delivered to the group (`None` when unknown).
    pub lag: Option<u64>,
    /// Consumers.
    pub consumers: Vec<ConsumerStats>,
}

/// The result of claiming idle pending entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimResult {
    /// Entries now owned by the claiming consumer, with updated delivery counts.
    pub claimed: Vec<Delivered>,
    /// Pending entries whose data was deleted; removed from the pending list.
    pub deleted: Vec<StreamId>,
}

/// A message received on a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubSubMessage {
    /// The channel.
    pub channel: String,
    /// The payload.
    pub payload: Bytes,
}

/// Control side of a multiplexed subscriber connection.
#[async_trait]
pub trait SubscriberHandle: Send + Sync {
    /// Subscribes to channels (idempotent per channel).
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()>;
    /// Unsubscribes from channels.
    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()>;
}

/// One subscriber connection: subscribe through `handle`, receive on
/// `messages`. When the connection is lost, `messages` ends; the owner then
/// opens a new subscriber and must assume messages were missed.
pub struct Subscriber {
    /// Subscribe/unsubscribe control.
    pub handle: Box<dyn SubscriberHandle>,
    /// Incoming messages.
    pub messages: mpsc::Receiver<PubSubMessage>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

/// The storage operations relay needs. See the module docs.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and test names (`memory`, `redis`, `fred`).
    fn name(&self) -> &'static str;

    /// Checks the connection.
    async fn ping(&self) -> BackendResult<()>;

    /// Appends entries, each atomically with its dedupe marker; pipelined.
    async fn append_batch(&self, reqs: Vec<AppendRequest>) -> BackendResult<Vec<AppendOutcome>>;

    /// Appends one entry.
    async fn append(&self, req: AppendRequest) -> BackendResult<AppendOutcome> {
        self.append_batch(vec![req])
            .await?
            .pop()
            .ok_or_else(|| BackendError::Protocol("empty append reply".into()))
    }

    /// Creates the consumer group (and the stream) if missing, starting at the
    /// beginning of the stream so nothing appended before is skipped.
    async fn ensure_group(&self, stream: &str, group: &str) -> BackendResult<()>;

    /// Reads entries for `consumer`. With [`ReadFrom::New`] and `block`, waits
    /// up to `block` for entries.
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
    ) -> BackendResult<Vec<StreamEntry>>;

    /// Claims up to `count` entries pending (for any consumer) longer than
    /// `min_idle`, incrementing their delivery counts.
    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> BackendResult<ClaimResult>;

    /// Acknowledges entries; returns how many were pending.
    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> BackendResult<u64>;

    /// Group statistics (length, pending, lag, consumers).
    async fn group_stats(&self, stream: &str, group: &str) -> BackendResult<GroupStats>;

    /// Removes a consumer from a group; returns its pending count at removal.
    async fn delete_consumer(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> BackendResult<u64>;

    /// Applies a batch (see the module docs); one result per job, in order.
    async fn apply(
        &self,
        jobs: Vec<ApplyJob>,
        opts: &ApplyOptions,
    ) -> BackendResult<Vec<ApplyResult>>;

    /// [`Backend::apply`], then acknowledges `ack`'s entries: in the same
    /// atomic step where the backend can (one script on a single Redis
    /// server: one round trip and one command less per batch), otherwise
    /// with a second call once the apply succeeded. A failed apply acks
    /// nothing; an `Err` may follow a successful apply (the ack failed), and
    /// re-applying is a no-op (G3).
    async fn apply_and_ack(
        &self,
        jobs: Vec<ApplyJob>,
        opts: &ApplyOptions,
        ack: AckRequest<'_>,
    ) -> BackendResult<Vec<ApplyResult>> {
        apply_then_ack(self, jobs, opts, ack).await
    }

    /// Publishes messages, pipelined.
    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()>;

    /// Publishes one message.
    async fn publish(&self, channel: &str, payload: Bytes) -> BackendResult<()> {
        self.publish_batch(vec![(channel.to_owned(), payload)])
            .await
    }

    /// Opens a multiplexed subscriber connection.
    async fn subscriber(&self) -> BackendResult<Subscriber>;

    /// A job's current state, if it has one.
    async fn get_state(&self, keys: &JobKeys) -> BackendResult<Option<JobState>>;

    /// Up to `limit` history records with offset > `after`, read atomically
    /// with the epoch, top and first offset.
    async fn read_history(
        &self,
        keys: &JobKeys,
        after: Offset,
        limit: usize,
    ) -> BackendResult<HistoryPage>;

    /// Moves an entry to the dead-letter stream (fields: `reason`, `source`,
    /// `id`, `deliveries`, `ts`, then the original fields prefixed `f.`, see
    /// [`dead_letter_fields`]) and acks it on its source stream, atomically.
    /// The dead-letter stream is trimmed to [`DeadLetterLimits::maxlen`].
    async fn dead_letter(&self, dl: DeadLetter<'_>) -> BackendResult<StreamId>;

    /// Entries with id > `after` (from the start when `None`), up to `count`.
    async fn range(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
    ) -> BackendResult<Vec<StreamEntry>>;

    /// Deletes entries from a stream; returns how many existed.
    async fn delete_entries(&self, stream: &str, ids: &[StreamId]) -> BackendResult<u64>;

    /// Stream length (0 when missing).
    async fn stream_len(&self, stream: &str) -> BackendResult<u64>;

    /// Sets `key` only if absent; true when set.
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<bool>;

    /// Sets `key`.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<()>;

    /// Reads `key`.
    async fn get(&self, key: &str) -> BackendResult<Option<Bytes>>;

    /// Deletes keys; returns how many existed.
    async fn delete(&self, keys: &[String]) -> BackendResult<u64>;
}

/// Bounds on the dead-letter stream: poison can be large and arrive in
/// bulk, and the stream must not grow Redis without limit (G6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// Entries kept; the oldest are trimmed first.
    pub maxlen: u64,
    /// Original field values longer than this are cut to this many bytes;
    /// `t.<name>` then records `<original size> <sha256 hex>`, so the entry
    /// can still be identified (and is never replayed).
    pub max_field_bytes: usize,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        Self {
            maxlen: 100_000,
            max_field_bytes: 64 * 1024,
        }
    }
}

/// One [`Backend::dead_letter`] call.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// The dead-letter stream.
    pub dlq: &'a str,
    /// The stream the entry came from (it is acked there).
    pub source: &'a str,
    /// The consumer group that holds it pending.
    pub group: &'a str,
    /// The entry.
    pub entry: &'a StreamEntry,
    /// Why it is dead-lettered.
    pub reason: &'a str,
    /// How often it was delivered.
    pub deliveries: u64,
    /// Size bounds.
    pub limits: DeadLetterLimits,
}

impl DeadLetter<'_> {
    /// Whether some original field value is over the size limit (and is
    /// stored cut).
    pub fn truncates(&self) -> bool {
        self.entry
            .fields
            .iter()
            .any(|(_, v)| v.len() > self.limits.max_field_bytes)
    }
}

/// Prefix of the dead-letter field that marks a cut original field.
pub const DLQ_TRUNCATED_PREFIX: &str = "t.";

/// Builds the dead-letter entry fields shared by every backend.
pub fn dead_letter_fields(dl: &DeadLetter<'_>) -> Fields {
    use sha2::{Digest, Sha256};
    let mut fields: Fields = vec![
        (
            "reason".into(),
            Bytes::copy_from_slice(dl.reason.as_bytes()),
        ),
        (
            "source".into(),
            Bytes::copy_from_slice(dl.source.as_bytes()),
        ),
        ("id".into(), Bytes::from(dl.entry.id.to_string())),
        ("deliveries".into(), Bytes::from(dl.deliveries.to_string())),
        ("ts".into(), Bytes::from(crate::event::now_ms().to_string())),
    ];
    let max = dl.limits.max_field_bytes;
    for (k, v) in &dl.entry.fields {
        if v.len() > max {
            let digest = hex::encode(Sha256::digest(v));
            fields.push((format!("f.{k}"), v.slice(..max)));
            fields.push((
                format!("{DLQ_TRUNCATED_PREFIX}{k}"),
                Bytes::from(format!("{} {digest}", v.len())),
            ));
        } else {
            fields.push((format!("f.{k}"), v.clone()));
        }
    }
    fields
}
