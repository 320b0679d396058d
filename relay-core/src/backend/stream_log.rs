//! The stream log: sharded, append-only streams read through consumer
//! groups, with pending lists, claims and a dead-letter stream.
//!
//! This is the durable hand-off between producers and routers. What G1 and
//! G5 need from it is written on [`StreamLog`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::BackendResult;
use crate::codec::Fields;
use crate::error::BackendError;

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
        let err = || BackendError::Protocol(format!("invalid stream id {s:?}").into());
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

/// Streams, consumer groups and the dead-letter stream.
///
/// Contract (every implementation, checked by the conformance suite):
/// - **Durable hand-off**: an entry stays pending for the consumer it was
///   delivered to until it is acked; a crashed consumer's pending entries
///   are re-read by it ([`ReadFrom::Pending`]) or claimed by another
///   ([`StreamLog::claim_idle`]). Nothing is acked implicitly.
/// - **Ordering**: entries of one stream are delivered in id order; ids grow.
/// - **Idempotent append** with [`AppendRequest::dedupe`]: the marker and the
///   entry are written atomically; a repeat appends nothing.
/// - **Atomic dead-lettering**: the dead-letter entry and the ack of the
///   source entry happen together or not at all.
/// - Errors: [`BackendError::is_transient`] errors may be retried; a
///   missing group is [`BackendError::NoGroup`].
#[async_trait]
pub trait StreamLog: Send + Sync {
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
}
