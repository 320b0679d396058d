//! The event model: what producers publish and what clients receive.
//!
//! An [`Event`] is one step of a long-running job's progress. Producers assign
//! `seq` (a meaningful per-job order); the router assigns the gap-free
//! [`Offset`] and the per-history [`Epoch`] when it first applies the event, and
//! the pair `(epoch, offset)` is what a client resumes from.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Longest accepted job id, in bytes.
pub const MAX_JOB_ID_LEN: usize = 128;
/// Longest accepted stage or domain name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The stage name of the job-level terminal event (`done` or a terminal `failed`).
pub const DONE_STAGE: &str = "done";

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// A validated job id: 1–128 characters of `[A-Za-z0-9._:-]`.
///
/// Every entry point (publisher, router, gateway, API) parses job ids through
/// this type, so a malformed id is rejected with a [`ValidationError`] and can
/// never reach a Redis key or an SSE frame.
///
/// ```
/// use relay_core::JobId;
/// assert!(JobId::new("scan-42").is_ok());
/// assert!(JobId::new("bad id").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Validates and wraps a job id.
    pub fn new(id: impl Into<String>) -> Result<Self, ValidationError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_JOB_ID_LEN {
            return Err(ValidationError::JobIdLength { len: id.len() });
        }
        if let Some(pos) = id.bytes().position(|b| !is_id_byte(b)) {
            return Err(ValidationError::JobIdChar { position: pos });
        }
        Ok(Self(id))
    }

    /// Validates a job id given as raw bytes (e.g. a Redis field).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ValidationError> {
        let s = std::str::from_utf8(bytes).map_err(|_| ValidationError::JobIdChar {
            position: bytes.iter().position(|b| !b.is_ascii()).unwrap_or(0),
        })?;
        Self::new(s)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        JobId::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

impl FromStr for JobId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name: 1–64 characters of `[A-Za-z0-9._:-]`.
            pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
                let name = name.into();
                if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(is_id_byte) {
                    return Err(ValidationError::Name { what: $what, value: truncate(&name) });
                }
                Ok(Self(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::new(s).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

name_type!(
    /// A stage of a job (`vision`, `rule`, …, and [`DONE_STAGE`] for the terminal event).
    /// Safe to use as an SSE `event:` name: it can never contain CR, LF or NUL.
    Stage,
    "stage"
);
name_type!(
    /// An event domain (`scan`, `chat`): selects the shard streams and key space.
    Domain,
    "domain"
);

/// What happened at a stage. Its wire name (`as_str`, `Display`,
/// `FromStr`) is the lowercase variant name, as in serde.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(strum::IntoStaticStr, strum::Display, strum::EnumString)]
#[strum(
    serialize_all = "lowercase",
    parse_err_ty = ValidationError,
    parse_err_fn = unknown_status
)]
pub enum Status {
    /// The stage began.
    Started,
    /// Intermediate progress within a stage.
    Progress,
    /// The stage (or, at [`DONE_STAGE`], the job) finished successfully.
    Completed,
    /// The stage (or, at [`DONE_STAGE`], the job) failed for good.
    Failed,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// `Status::from_str`'s error, with the value truncated.
fn unknown_status(value: &str) -> ValidationError {
    ValidationError::Status {
        value: truncate(value),
    }
}

/// W3C trace context carried with an event (`traceparent`, optional).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Deserialised through [`TraceContext::new`]: a body's trace context is
/// validated like its job id, never taken on trust.
impl<'de> Deserialize<'de> for TraceContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            trace_id: String,
            span_id: String,
            flags: u8,
        }
        let r = Raw::deserialize(d)?;
        TraceContext::new(&r.trace_id, &r.span_id, r.flags).map_err(serde::de::Error::custom)
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TraceContext {
    /// Builds a context from its ids, validating their shape.
    pub fn new(trace_id: &str, span_id: &str, flags: u8) -> Result<Self, ValidationError> {
        if !is_lower_hex(trace_id, 32) || !is_lower_hex(span_id, 16) {
            return Err(ValidationError::Traceparent {
                value: truncate(&format!("{trace_id}/{span_id}")),
            });
        }
        Ok(Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            flags,
        })
    }

    /// Parses a `traceparent` header value (`00-<trace>-<span>-<flags>`).
    pub fn parse_traceparent(value: &str) -> Result<Self, ValidationError> {
        let err = || ValidationError::Traceparent {
            value: truncate(value),
        };
        let mut parts = value.split('-');
        let (Some(ver), Some(trace), Some(span), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err());
        };
        if !is_lower_hex(ver, 2) || ver == "ff" || !is_lower_hex(flags, 2) {
            return Err(err());
        }
        let flags = u8::from_str_radix(flags, 16).map_err(|_| err())?;
        Self::new(trace, span, flags).map_err(|_| err())
    }

    /// Renders the `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// Current wall-clock time in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Largest progress percentage.
pub const MAX_PROGRESS: u8 = 100;

/// Parses a decimal integer written the one canonical way: ASCII digits, no
/// sign, no leading zeros (except `0` itself), no spaces, no overflow. Seqs
/// and progress from untrusted entries go through this, so that `+1`,
/// `00001` and ` 1` are rejected instead of aliasing `1`.
pub fn parse_canonical_u64(what: &'static str, s: &str) -> Result<u64, ValidationError> {
    let bad = || ValidationError::NotCanonical {
        what,
        value: s.chars().take(32).collect(),
    };
    let bytes = s.as_bytes();
    if bytes.is_empty()
        || bytes.len() > 20
        || !bytes.iter().all(u8::is_ascii_digit)
        || (bytes.len() > 1 && bytes[0] == b'0')
    {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

/// One progress event of a job, as a producer publishes it.
///
/// ```
/// use relay_core::{Event, Status};
/// let e = Event::new("scan", "job-1", 10, "vision", Status::Started).unwrap()
///     .with_progress(10)
///     .with_data(serde_json::json!({"note": "looking"}));
/// assert_eq!(e.job_id.as_str(), "job-1");
/// assert!(!e.is_terminal());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The domain (`scan`, `chat`, …).
    pub domain: Domain,
    /// The job this event belongs to.
    pub job_id: JobId,
    /// Producer-assigned order within the job; the state keeps the highest.
    pub seq: u64,
    /// The stage the event reports on.
    pub stage: Stage,
    /// What happened.
    pub status: Status,
    /// Percent complete, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Arbitrary payload (stage output, error details, …).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    /// Unix milliseconds when the producer created the event.
    pub ts: u64,
    /// Trace context, when the producer runs inside a trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

impl Event {
    /// Builds an event stamped with the current time, validating all names.
    pub fn new(
        domain: &str,
        job_id: &str,
        seq: u64,
        stage: &str,
        status: Status,
    ) -> Result<Self, ValidationError> {
        Ok(Self {
            domain: Domain::new(domain)?,
            job_id: JobId::new(job_id)?,
            seq,
            stage: Stage::new(stage)?,
            status,
            progress: None,
            data: serde_json::Value::Null,
            ts: now_ms(),
            trace: None,
        })
    }

    /// Checks what the type does not: progress within 0–100.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self.progress {
            Some(p) if p > MAX_PROGRESS => Err(ValidationError::Progress { value: p.into() }),
            _ => Ok(()),
        }
    }

    /// Sets the progress percentage (clamped to 100).
    pub fn with_progress(mut self, progress: u8) -> Self {
        self.progress = Some(progress.min(100));
        self
    }

    /// Sets the payload.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Sets the timestamp (unix ms).
    pub fn with_ts(mut self, ts: u64) -> Self {
        self.ts = ts;
        self
    }

    /// Whether this is the job's terminal event (`done`, completed or failed):
    /// the gateway closes the stream after delivering it.
    pub fn is_terminal(&self) -> bool {
        self.stage.as_str() == DONE_STAGE
    }
}

/// Gap-free position of an event in its job's history, assigned by the router
/// on first apply, starting at 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The position before the first event.
    pub const ZERO: Offset = Offset(0);
    /// The next offset.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Identity of one job history. Chosen at random when a job's history is first
/// created; if the history expires and is re-created the epoch changes, so a
/// client holding an offset of the old history gets a snapshot, never a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Largest epoch: kept within 2^53 so JavaScript clients can hold it exactly.
    pub const MAX: u64 = (1 << 53) - 1;

    /// A fresh random epoch.
    pub fn random() -> Epoch {
        Epoch(rand::random::<u64>() & Self::MAX).max(Epoch(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl PartialOrd for Epoch {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Epoch {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// A client's position in a job's history: the SSE `id:` in the native profile,
/// rendered `{epoch}:{offset}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The history the offset belongs to.
    pub epoch: Epoch,
    /// The last offset the client has.
    pub offset: Offset,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl FromStr for Position {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ValidationError::Position { value: truncate(s) };
        let (e, o) = s.split_once(':').ok_or_else(err)?;
        Ok(Position {
            epoch: Epoch(e.parse().map_err(|_| err())?),
            offset: Offset(o.parse().map_err(|_| err())?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_wire_names_parse_back_and_unknown_ones_are_status_errors() {
        for (status, name) in [
            (Status::Started, "started"),
            (Status::Progress, "progress"),
            (Status::Completed, "completed"),
            (Status::Failed, "failed"),
        ] {
            assert_eq!(status.as_str(), name);
            assert_eq!(status.to_string(), name);
            assert_eq!(name.parse::<Status>(), Ok(status));
        }
        // Display pads like a string (aligned log columns).
        assert_eq!(format!("{:<9}|", Status::Failed), "failed   |");
        assert_eq!(
            "Started".parse::<Status>(),
            Err(ValidationError::Status {
                value: "Started".into()
            })
        );
        let long = "x".repeat(200);
        assert_eq!(
            long.parse::<Status>(),
            Err(ValidationError::Status {
                value: "x".repeat(80)
            })
        );
    }

    #[test]
    fn canonical_integers_only() {
        assert_eq!(parse_canonical_u64("seq", "0"), Ok(0));
        assert_eq!(parse_canonical_u64("seq", "1"), Ok(1));
        assert_eq!(
            parse_canonical_u64("seq", "18446744073709551615"),
            Ok(u64::MAX)
        );
        for bad in [
            "",
            "+1",
            "-1",
            "00001",
            "01",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "0x10",
            "18446744073709551616",
            "１",
        ] {
            assert!(
                matches!(
                    parse_canonical_u64("seq", bad),
                    Err(ValidationError::NotCanonical { what: "seq", .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn progress_over_100_is_invalid() {
        let mut e = Event::new("scan", "j", 1, "vision", Status::Progress).unwrap();
        assert!(e.validate().is_ok());
        e.progress = Some(100);
        assert!(e.validate().is_ok());
        e.progress = Some(101);
        assert!(matches!(
            e.validate(),
            Err(ValidationError::Progress { value: 101 })
        ));
    }

    #[test]
    fn job_id_rules() {
        assert!(JobId::new("a").is_ok());
        assert!(JobId::new("A-z_0.9:x").is_ok());
        assert!(JobId::new("x".repeat(128)).is_ok());
        assert!(matches!(
            JobId::new("x".repeat(129)),
            Err(ValidationError::JobIdLength { len: 129 })
        ));
        assert!(matches!(
            JobId::new(""),
            Err(ValidationError::JobIdLength { len: 0 })
        ));
        assert!(matches!(
            JobId::new("ab/c"),
            Err(ValidationError::JobIdChar { position: 2 })
        ));
        assert!(JobId::new("é").is_err());
        assert!(JobId::new("a\nb").is_err());
        assert!(JobId::from_bytes(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn json_rejects_invalid_job_id() {
        let r: Result<JobId, _> = serde_json::from_str("\"a b\"");
        assert!(r.is_err());
    }

    /// Found by the `stream_entry` fuzz target: an event body whose trace
    /// context is not hex was accepted, so the event could not be re-sent as
    /// eco2 (its `traceparent` no longer parsed) and carried ids no
    /// `TraceContext::new` would build.
    #[test]
    fn event_with_malformed_trace_is_rejected() {
        let ok = r#"{"domain":"scan","job_id":"job-1","seq":11,"stage":"vision","status":"completed","ts":1,"trace":{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","flags":1}}"#;
        let e: Event = serde_json::from_str(ok).unwrap();
        assert_eq!(e.trace.unwrap().span_id, "00f067aa0ba902b7");
        for bad in [
            ok.replace("00f067aa0ba902b7", "00f067aa0,ba902b7"),
            ok.replace(
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "4BF92F3577B34DA6A3CE929D0E0E4736",
            ),
            ok.replace("00f067aa0ba902b7", "00f067aa"),
        ] {
            assert!(serde_json::from_str::<Event>(&bad).is_err(), "{bad}");
        }
        let e = Event::new("scan", "job-1", 1, "vision", Status::Started).unwrap();
        let mut v = rmp_serde::to_vec_named(&e).unwrap();
        let with_trace = rmp_serde::to_vec_named(
            &e.clone()
                .with_trace(TraceContext::new(&"a".repeat(32), &"b".repeat(16), 0).unwrap()),
        )
        .unwrap();
        assert!(rmp_serde::from_slice::<Event>(&with_trace).is_ok());
        // The same body with a span id that is not 16 hex digits.
        v.clear();
        v.extend(
            String::from_utf8_lossy(&with_trace)
                .replace(&"b".repeat(16), "bbbbbbbbbbbbbbb!")
                .bytes(),
        );
        assert!(rmp_serde::from_slice::<Event>(&v).is_err());
    }

    #[test]
    fn traceparent_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse_traceparent(tp).unwrap();
        assert_eq!(t.traceparent(), tp);
        assert!(TraceContext::parse_traceparent("00-xyz-00f067aa0ba902b7-01").is_err());
        assert!(TraceContext::parse_traceparent("").is_err());
    }

    #[test]
    fn position_parse() {
        let p: Position = "123:45".parse().unwrap();
        assert_eq!(p.epoch, Epoch(123));
        assert_eq!(p.offset, Offset(45));
        assert_eq!(p.to_string(), "123:45");
        assert!("123".parse::<Position>().is_err());
        assert!("a:1".parse::<Position>().is_err());
    }

    #[test]
    fn epoch_is_js_safe() {
        for _ in 0..100 {
            let e = Epoch::random();
            assert!(e.0 >= 1 && e.0 <= Epoch::MAX);
        }
    }
}
