//! The eco2 compatibility profile: the Python Eco² system's stream entries,
//! seq scheme and routed-event JSON, byte for byte (see docs/ECO2_WIRE.md).
//!
//! An eco2 stream entry is a flat list of string fields. The router turns it
//! into the *routed JSON*: the same fields as one JSON object, in XADD order,
//! with `result` parsed, `seq`/`progress` converted to integers when they
//! parse, and `stream_id` appended. That JSON is the state value, the Pub/Sub
//! payload and the SSE `data:` the frontend reads.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;

use crate::error::{CodecError, ValidationError};
use crate::event::{
    parse_canonical_u64, Event, JobId, Stage, Status, TraceContext, DONE_STAGE, MAX_PROGRESS,
};
use crate::fields::Fields;

/// The seq of the job-level terminal `failed` event relay's eco2 producer emits.
pub const TERMINAL_FAILED_SEQ: u64 = 59;

/// Stage order of the Python pipeline (`queued 0 … done 5`, unknown 99).
pub fn stage_order(stage: &str) -> u64 {
    match stage {
        "queued" => 0,
        "vision" => 1,
        "rule" => 2,
        "answer" => 3,
        "reward" => 4,
        "done" => 5,
        _ => 99,
    }
}

/// The eco2 seq of a (stage, status): `order * 10`, `+1` when completed, and
/// (relay's fix) `+2` when failed so a failure is never deduplicated against
/// the stage's start. A failed `done` is the terminal failure, seq 59.
pub fn seq_for(stage: &str, status: &str) -> u64 {
    let base = stage_order(stage) * 10;
    match status {
        "completed" => base + 1,
        "failed" if stage == DONE_STAGE => TERMINAL_FAILED_SEQ,
        "failed" => base + 2,
        _ => base,
    }
}

/// Python's `str(time.time())` for a moment: seconds, a dot, up to six
/// decimals with trailing zeros dropped (at least one digit).
pub fn python_ts(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut frac = format!("{:06}", d.subsec_micros());
    while frac.len() > 1 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{}.{}", d.as_secs(), frac)
}

/// An eco2 stream entry: its fields in XADD order, with the ones the router
/// needs validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eco2Entry {
    /// All fields, in order, as text.
    pub fields: Vec<(String, String)>,
    /// The job id (validated).
    pub job_id: JobId,
    /// The stage (validated: safe as an SSE event name).
    pub stage: Stage,
    /// The status string.
    pub status: String,
    /// The seq.
    pub seq: u64,
}

impl Eco2Entry {
    /// The entry's trace context (`traceparent`), when present and valid.
    pub fn trace(&self) -> Option<TraceContext> {
        self.fields
            .iter()
            .find(|(k, _)| k == "traceparent")
            .and_then(|(_, v)| TraceContext::parse_traceparent(v).ok())
    }

    /// Builds the entry a Python producer would XADD for this step.
    /// `trace: None` omits the three trace fields (as the API's `queued` event does).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        job_id: &JobId,
        stage: &Stage,
        status: &str,
        seq: u64,
        ts: &str,
        progress: Option<u8>,
        result: Option<&serde_json::Value>,
        trace: Option<&TraceContext>,
    ) -> Self {
        let mut fields = vec![
            ("job_id".to_owned(), job_id.to_string()),
            ("stage".to_owned(), stage.to_string()),
            ("status".to_owned(), status.to_owned()),
            ("seq".to_owned(), seq.to_string()),
            ("ts".to_owned(), ts.to_owned()),
            (
                "progress".to_owned(),
                progress.map(|p| p.to_string()).unwrap_or_default(),
            ),
            (
                "result".to_owned(),
                result
                    .filter(|v| !v.is_null())
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ),
        ];
        if let Some(t) = trace {
            fields.push(("trace_id".to_owned(), t.trace_id.clone()));
            fields.push(("span_id".to_owned(), t.span_id.clone()));
            fields.push(("traceparent".to_owned(), t.traceparent()));
        }
        Self {
            fields,
            job_id: job_id.clone(),
            stage: stage.clone(),
            status: status.to_owned(),
            seq,
        }
    }

    /// The entry for a native event, with the eco2 seq scheme applied by the
    /// caller (the event's `seq` is used as is) and `data` as `result`.
    pub fn from_event(event: &Event) -> Self {
        let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(event.ts);
        Self::build(
            &event.job_id,
            &event.stage,
            event.status.as_str(),
            event.seq,
            &python_ts(ts),
            event.progress,
            Some(&event.data),
            event.trace.as_ref(),
        )
    }

    /// Parses raw stream fields.
    pub fn parse(raw: &[(String, Bytes)]) -> Result<Self, CodecError> {
        let mut fields = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let v = std::str::from_utf8(v).map_err(|_| CodecError::InvalidField {
                field: "value",
                reason: format!("field {k:?} is not valid UTF-8"),
            })?;
            fields.push((k.clone(), v.to_owned()));
        }
        // One value per name: the routed JSON is an object, where a repeated
        // key would override what the router validated here.
        let mut names = std::collections::HashSet::with_capacity(fields.len());
        if let Some((k, _)) = fields.iter().find(|(k, _)| !names.insert(k.as_str())) {
            return Err(CodecError::DuplicateField(k.chars().take(40).collect()));
        }
        let get = |name: &'static str| -> Result<&str, CodecError> {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .ok_or(CodecError::MissingField(name))
        };
        let job_id = JobId::new(get("job_id")?)?;
        let stage = Stage::new(get("stage")?)?;
        let status = get("status")?.to_owned();
        let seq = parse_canonical_u64("seq", get("seq")?).map_err(|source| {
            CodecError::InvalidNumber {
                field: "seq",
                source,
            }
        })?;
        // `progress` is an integer as a string, or "" (WIRE: see docs).
        if let Ok(p) = get("progress") {
            if !p.is_empty() {
                let n = parse_canonical_u64("progress", p).map_err(|source| {
                    CodecError::InvalidNumber {
                        field: "progress",
                        source,
                    }
                })?;
                if n > u64::from(MAX_PROGRESS) {
                    return Err(ValidationError::Progress { value: n }.into());
                }
            }
        }
        Ok(Self {
            job_id,
            stage,
            status,
            seq,
            fields,
        })
    }

    /// The fields to XADD, in order.
    pub fn to_fields(&self) -> Fields {
        self.fields
            .iter()
            .map(|(k, v)| (k.clone(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    /// The routed JSON for this entry stored under `stream_id`, exactly as
    /// the Python router writes it (compact, UTF-8 not escaped, field order kept).
    pub fn routed_json(&self, stream_id: &str) -> String {
        let mut out = String::with_capacity(256);
        out.push('{');
        for (k, v) in &self.fields {
            push_json_str(&mut out, k);
            out.push(':');
            match k.as_str() {
                "seq" | "progress" => match v.trim().parse::<i64>() {
                    Ok(n) => out.push_str(&n.to_string()),
                    Err(_) => push_json_str(&mut out, v),
                },
                "result" if !v.is_empty() => match serde_json::from_str::<serde_json::Value>(v) {
                    Ok(val) if nesting(&val) <= MAX_RESULT_NESTING => {
                        out.push_str(&val.to_string())
                    }
                    _ => push_json_str(&mut out, v),
                },
                _ => push_json_str(&mut out, v),
            }
            out.push(',');
        }
        push_json_str(&mut out, "stream_id");
        out.push(':');
        push_json_str(&mut out, stream_id);
        out.push('}');
        out
    }

    /// Converts to a native event (fails on statuses outside the native four).
    pub fn to_event(&self, domain: &str) -> Result<Event, CodecError> {
        let get = |name: &str| {
            self.fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let status: Status = self.status.parse()?;
        let mut e = Event::new(
            domain,
            self.job_id.as_str(),
            self.seq,
            self.stage.as_str(),
            status,
        )?;
        e.ts = parse_python_ts(get("ts")).unwrap_or(e.ts);
        e.progress = get("progress").parse::<u8>().ok();
        let result = get("result");
        if !result.is_empty() {
            e.data =
                serde_json::from_str(result).unwrap_or(serde_json::Value::String(result.into()));
        }
        let tp = get("traceparent");
        if !tp.is_empty() {
            e.trace = TraceContext::parse_traceparent(tp).ok();
        }
        Ok(e)
    }
}

/// Deepest `result` embedded as JSON in the routed object: serde_json reads
/// 127 levels and the routed object adds one. A deeper (but parsable)
/// `result` is embedded as a string, so the gateway can always read the
/// event (the Python router would embed it; no real result nests this deep).
const MAX_RESULT_NESTING: usize = 126;

/// Array/object nesting depth of a value (bounded: it was parsed by serde_json).
fn nesting(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

fn parse_python_ts(ts: &str) -> Option<u64> {
    let f: f64 = ts.parse().ok()?;
    (f.is_finite() && f >= 0.0).then_some((f * 1000.0) as u64)
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json writes UTF-8 unescaped, like Python's ensure_ascii=False.
    out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
}

/// A routed eco2 event as read back from state, history or a live envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct Eco2Routed {
    /// The JSON bytes, verbatim (the SSE `data:`).
    pub raw: Bytes,
    /// The job id.
    pub job_id: JobId,
    /// The stage (SSE `event:` unless failed).
    pub stage: Stage,
    /// The status.
    pub status: String,
    /// The seq.
    pub seq: u64,
    /// The XADD id of the source entry (the SSE `id:`).
    pub stream_id: String,
    /// The producer timestamp in unix ms (`ts`: Python's float seconds, as
    /// a string or a number), when present and positive.
    pub ts_ms: Option<u64>,
}

impl Eco2Routed {
    /// Parses routed JSON.
    pub fn parse(raw: &Bytes) -> Result<Self, CodecError> {
        let v: serde_json::Value = serde_json::from_slice(raw)?;
        let s = |name: &'static str| -> Result<&str, CodecError> {
            v.get(name)
                .and_then(|x| x.as_str())
                .ok_or(CodecError::MissingField(name))
        };
        let seq = match v.get("seq") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .ok_or(CodecError::InvalidField {
            field: "seq",
            reason: "not an integer".into(),
        })?;
        let ts: Option<f64> = match v.get("ts") {
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            _ => None,
        };
        Ok(Self {
            job_id: JobId::new(s("job_id")?)?,
            stage: Stage::new(s("stage")?)?,
            status: s("status")?.to_owned(),
            stream_id: s("stream_id")?.to_owned(),
            seq,
            ts_ms: ts
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(|f| (f * 1000.0) as u64),
            raw: raw.clone(),
        })
    }

    /// The trace context of the routed JSON's `traceparent`, when present
    /// and valid (parsed from `raw` on demand: not every reader wants it).
    pub fn trace(&self) -> Option<TraceContext> {
        #[derive(Deserialize)]
        struct Traced<'a> {
            #[serde(borrow)]
            traceparent: Option<std::borrow::Cow<'a, str>>,
        }
        let t: Traced<'_> = serde_json::from_slice(&self.raw).ok()?;
        TraceContext::parse_traceparent(&t.traceparent?).ok()
    }

    /// The SSE event name: the stage, or `error` for a failure (docs/ECO2_WIRE.md).
    pub fn sse_event(&self) -> &str {
        if self.status == "failed" {
            "error"
        } else {
            self.stage.as_str()
        }
    }

    /// The stream ends after `done` or any failure (as the Python gateway did).
    pub fn is_terminal(&self) -> bool {
        self.stage.as_str() == DONE_STAGE || self.status == "failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(fields: &[(&str, &str)]) -> Fields {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    #[test]
    fn seq_scheme() {
        assert_eq!(seq_for("queued", "started"), 0);
        assert_eq!(seq_for("vision", "started"), 10);
        assert_eq!(seq_for("vision", "completed"), 11);
        assert_eq!(seq_for("rule", "completed"), 21);
        assert_eq!(seq_for("answer", "failed"), 32);
        assert_eq!(seq_for("reward", "completed"), 41);
        assert_eq!(seq_for("done", "completed"), 51);
        assert_eq!(seq_for("done", "failed"), 59);
        assert_eq!(seq_for("mystery", "started"), 990);
    }

    #[test]
    fn non_canonical_seq_and_bad_progress_are_rejected() {
        let entry = |seq: &str, progress: &str| {
            Eco2Entry::parse(&raw(&[
                ("job_id", "abc-123"),
                ("stage", "vision"),
                ("status", "progress"),
                ("seq", seq),
                ("ts", "1766899796.475799"),
                ("progress", progress),
                ("result", ""),
            ]))
        };
        assert!(entry("11", "25").is_ok());
        assert!(entry("11", "").is_ok());
        assert!(entry("11", "100").is_ok());
        for seq in ["+11", "011", " 11", "11 ", "1.1e1"] {
            assert!(
                matches!(
                    entry(seq, "25"),
                    Err(CodecError::InvalidNumber { field: "seq", .. })
                ),
                "seq {seq:?} accepted"
            );
        }
        assert!(matches!(
            entry("11", "101"),
            Err(CodecError::Validation(ValidationError::Progress {
                value: 101
            }))
        ));
        for progress in ["-1", "+5", "05", "50%", "1e2"] {
            assert!(
                matches!(
                    entry("11", progress),
                    Err(CodecError::InvalidNumber {
                        field: "progress",
                        ..
                    })
                ),
                "progress {progress:?} accepted"
            );
        }
    }

    #[test]
    fn python_ts_format() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_766_899_796_475_799);
        assert_eq!(python_ts(t), "1766899796.475799");
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_766_899_796_470_000);
        assert_eq!(python_ts(t), "1766899796.47");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(5);
        assert_eq!(python_ts(t), "5.0");
    }

    #[test]
    fn routed_json_matches_wire_md() {
        let e = Eco2Entry::parse(&raw(&[
            ("job_id", "abc-123"),
            ("stage", "vision"),
            ("status", "completed"),
            ("seq", "11"),
            ("ts", "1766899796.475799"),
            ("progress", "25"),
            ("result", ""),
            ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("span_id", "00f067aa0ba902b7"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]))
        .unwrap();
        assert_eq!(
            e.routed_json("1766899796476-0"),
            r#"{"job_id":"abc-123","stage":"vision","status":"completed","seq":11,"ts":"1766899796.475799","progress":25,"result":"","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","stream_id":"1766899796476-0"}"#
        );
        // The trace reads the same from the entry and from the routed JSON.
        let trace = e.trace().expect("entry trace");
        assert_eq!(trace.span_id, "00f067aa0ba902b7");
        let routed = Eco2Routed::parse(&Bytes::from(e.routed_json("1-0"))).unwrap();
        assert_eq!(routed.trace(), Some(trace));
    }

    #[test]
    fn routed_json_parses_result_keeps_order_and_utf8() {
        let e = Eco2Entry::parse(&raw(&[
            ("job_id", "abc-123"),
            ("stage", "done"),
            ("status", "completed"),
            ("seq", "51"),
            ("ts", "1.5"),
            ("progress", ""),
            ("result", r#"{"z": 1, "a": "종이"}"#),
        ]))
        .unwrap();
        let json = e.routed_json("1-0");
        assert_eq!(
            json,
            r#"{"job_id":"abc-123","stage":"done","status":"completed","seq":51,"ts":"1.5","progress":"","result":{"z":1,"a":"종이"},"stream_id":"1-0"}"#
        );
        let routed = Eco2Routed::parse(&Bytes::from(json.clone())).unwrap();
        assert_eq!((e.trace(), routed.trace()), (None, None));
        assert_eq!(routed.seq, 51);
        assert!(routed.is_terminal());
        assert_eq!(routed.stream_id, "1-0");
        assert_eq!(routed.ts_ms, Some(1500), "Python's float seconds as ms");
        let numeric = Bytes::from(json.replace(r#""ts":"1.5""#, r#""ts":2.25"#));
        assert_eq!(Eco2Routed::parse(&numeric).unwrap().ts_ms, Some(2250));
        let missing = Bytes::from(json.replace(r#""ts":"1.5","#, ""));
        assert_eq!(Eco2Routed::parse(&missing).unwrap().ts_ms, None);
    }

    #[test]
    fn bad_entries_are_typed_errors() {
        assert!(matches!(
            Eco2Entry::parse(&raw(&[
                ("stage", "vision"),
                ("status", "started"),
                ("seq", "1")
            ])),
            Err(CodecError::MissingField("job_id"))
        ));
        assert!(matches!(
            Eco2Entry::parse(&raw(&[
                ("job_id", "abc-123"),
                ("stage", "v"),
                ("status", "s"),
                ("seq", "x")
            ])),
            Err(CodecError::InvalidNumber { field: "seq", .. })
        ));
        assert!(matches!(
            Eco2Entry::parse(&raw(&[
                ("job_id", "bad id"),
                ("stage", "v"),
                ("status", "s"),
                ("seq", "1")
            ])),
            Err(CodecError::Validation(_))
        ));
        let bad = vec![("job_id".to_string(), Bytes::from_static(b"\xff"))];
        assert!(Eco2Entry::parse(&bad).is_err());
    }

    /// Found by the `stream_entry` fuzz target: with a field given twice the
    /// router used the first value and the routed JSON (a JSON object: last
    /// key wins) told the gateway the second, so they disagreed on the
    /// status, stage or job of the event.
    #[test]
    fn duplicate_field_is_rejected() {
        let e = Eco2Entry::parse(&raw(&[
            ("job_id", "abc-123"),
            ("stage", "queued"),
            ("status", "started"),
            ("seq", "0"),
            ("status", "s\u{7}\0tarted"),
        ]));
        assert!(
            matches!(&e, Err(CodecError::DuplicateField(f)) if f == "status"),
            "{e:?}"
        );
        // Any repeated name, not only the ones the router reads.
        let e = Eco2Entry::parse(&raw(&[
            ("job_id", "abc-123"),
            ("stage", "queued"),
            ("status", "started"),
            ("seq", "0"),
            ("result", "1"),
            ("result", "2"),
        ]));
        assert!(matches!(e, Err(CodecError::DuplicateField(_))), "{e:?}");
    }

    /// Found while writing the `stream_entry` fuzz target's invariant (the
    /// gateway reads every routed JSON the router writes): a `result` nested
    /// as deep as the JSON parser allows parsed on its own, but one level
    /// deeper inside the routed object it did not, so the gateway dropped
    /// the event — a terminal `done` never reached the client.
    #[test]
    fn deepest_result_still_gives_readable_routed_json() {
        for depth in [100, 126, 127, 128, 200] {
            let result = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let e = Eco2Entry::parse(&raw(&[
                ("job_id", "abc-123"),
                ("stage", "done"),
                ("status", "completed"),
                ("seq", "51"),
                ("result", &result),
            ]))
            .unwrap();
            let json = e.routed_json("1-0");
            let routed = Eco2Routed::parse(&Bytes::from(json))
                .unwrap_or_else(|err| panic!("depth {depth}: {err}"));
            assert!(routed.is_terminal());
        }
    }

    #[test]
    fn build_omits_trace_when_absent() {
        let job = JobId::new("abc-123").unwrap();
        let e = Eco2Entry::build(
            &job,
            &Stage::new("queued").unwrap(),
            "started",
            0,
            "1.0",
            None,
            None,
            None,
        );
        let names: Vec<_> = e.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["job_id", "stage", "status", "seq", "ts", "progress", "result"]
        );
        let reparsed = Eco2Entry::parse(&e.to_fields()).unwrap();
        assert_eq!(reparsed, e);
    }
}
