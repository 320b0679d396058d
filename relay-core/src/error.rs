//! Typed errors. Every way input can be wrong has its own variant, so callers
//! can map them to the right response (a 4xx, a dead-letter reason, …).

use thiserror::Error;

/// A value that does not satisfy relay's naming or format rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// Job id is empty or longer than 128 bytes.
    #[error("job id must be 1-128 characters, got {len}")]
    JobIdLength {
        /// The offending length in bytes.
        len: usize,
    },
    /// Job id contains a character outside `[A-Za-z0-9._:-]`.
    #[error("job id may only contain [A-Za-z0-9._:-]; invalid character at byte {position}")]
    JobIdChar {
        /// Byte position of the first invalid character.
        position: usize,
    },
    /// A stage or domain name is malformed.
    #[error("invalid {what} {value:?}: must be 1-64 characters of [A-Za-z0-9._:-]")]
    Name {
        /// Which kind of name.
        what: &'static str,
        /// The offending value (truncated).
        value: String,
    },
    /// Unknown event status.
    #[error("invalid status {value:?}: expected started, progress, completed or failed")]
    Status {
        /// The offending value (truncated).
        value: String,
    },
    /// Malformed W3C trace context.
    #[error("invalid traceparent {value:?}")]
    Traceparent {
        /// The offending value (truncated).
        value: String,
    },
    /// Progress outside 0–100.
    #[error("progress must be 0-100, got {value}")]
    Progress {
        /// The offending value.
        value: u64,
    },
    /// A number that is not written the one canonical way (decimal digits,
    /// no sign, no leading zeros, no spaces): `+1`, `00001` and ` 1` would
    /// otherwise alias `1`.
    #[error("{what} must be a canonical decimal integer, got {value:?}")]
    NotCanonical {
        /// Which field.
        what: &'static str,
        /// The offending value (truncated).
        value: String,
    },
    /// Malformed resume position.
    #[error("invalid position {value:?}: expected <epoch>:<offset>")]
    Position {
        /// The offending value (truncated).
        value: String,
    },
}

/// An encoded event or stream entry that cannot be decoded (or an event that
/// cannot be encoded).
#[derive(Debug, Error)]
pub enum CodecError {
    /// A required stream field is absent.
    #[error("missing field {0:?}")]
    MissingField(&'static str),
    /// A stream field has a value of the wrong shape.
    #[error("field {field:?} is invalid: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A numeric field is not a decimal integer written the one canonical
    /// way (the validation error is the source).
    #[error("field {field:?} is invalid: {source}")]
    InvalidNumber {
        /// The field name.
        field: &'static str,
        /// Why the value was refused.
        #[source]
        source: ValidationError,
    },
    /// A field or body is not valid UTF-8 where text is required.
    #[error("field {0:?} is not valid UTF-8")]
    Utf8(&'static str),
    /// The body's declared encoding is unknown.
    #[error("unknown encoding {0:?}")]
    UnknownEncoding(String),
    /// MessagePack decoding failed.
    #[error("msgpack decode: {0}")]
    MsgPackDecode(#[from] rmp_serde::decode::Error),
    /// MessagePack encoding failed.
    #[error("msgpack encode: {0}")]
    MsgPackEncode(#[from] rmp_serde::encode::Error),
    /// JSON encoding or decoding failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A name or id inside the entry is invalid.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// A field name appears more than once in one stream entry (its readers
    /// would disagree on the value).
    #[error("field {0:?} appears more than once")]
    DuplicateField(String),
    /// The body disagrees with the plain fields next to it.
    #[error("body disagrees with field {0:?}")]
    Mismatch(&'static str),
    /// A stored record or live message does not have the expected envelope.
    #[error("malformed envelope: {0}")]
    Envelope(&'static str),
}

/// The error a backend client reports, kept whole as the `source` of a
/// [`BackendError`] (for Redis a `redis::RedisError`; for relay's own checks
/// a message).
pub type ClientError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure talking to the storage backend. The client's own error is
/// kept as the source: `{:#}`-style reporters (anyhow, tracing) show the
/// whole chain.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The connection failed or was lost; retrying later may succeed.
    #[error("connection: {0}")]
    Connection(#[source] ClientError),
    /// The server is up but refuses the operation for now: out of memory
    /// under `noeviction`, too few replicas (`NOREPLICAS`), a failed disk
    /// save (`MISCONF`), loading, failing over or busy. Retrying after a
    /// backoff succeeds once the condition clears; never a reason to
    /// dead-letter what was being written.
    #[error("server refuses for now: {0}")]
    Unavailable(#[source] ClientError),
    /// The server answered with an error (bad command, script error, …).
    #[error("server error: {0}")]
    Server(#[source] ClientError),
    /// The server's reply had an unexpected shape.
    #[error("unexpected reply: {0}")]
    Protocol(#[source] ClientError),
    /// The consumer group does not exist.
    #[error("no such consumer group {group:?} on {stream:?}")]
    NoGroup {
        /// Stream key.
        stream: String,
        /// Group name.
        group: String,
    },
    /// The backend has been shut down.
    #[error("backend closed")]
    Closed,
}

impl BackendError {
    /// Whether retrying (after a backoff) can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BackendError::Connection(_) | BackendError::Unavailable(_) | BackendError::Closed
        )
    }
}

/// Why [`Publisher::publish`](crate::Publisher::publish) refused or failed.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The event failed validation.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The encoded event exceeds the configured limit.
    #[error("encoded event is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The event belongs to another domain than the publisher's.
    #[error("event domain {event:?} does not match publisher domain {publisher:?}")]
    WrongDomain {
        /// The event's domain.
        event: String,
        /// The publisher's domain.
        publisher: String,
    },
    /// Encoding failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The backend failed; the event may or may not have been appended, and
    /// publishing it again is safe (appends are idempotent per (job, seq)).
    #[error(transparent)]
    Backend(#[from] BackendError),
}
