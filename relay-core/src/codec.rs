//! Codecs: event bodies (MessagePack or JSON), native stream entries, stored
//! records and live envelopes.
//!
//! A native stream entry keeps plain fields (`job`, `seq`, `stage`, `status`,
//! `ts`) next to the encoded body so `redis-cli XRANGE` stays readable and the
//! router can validate before decoding. Routed records (state, history, live)
//! carry a *payload*: a one-byte tag followed by the body (`m` msgpack, `j`
//! json), or, in the eco2 profile, the routed JSON object itself (`{`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::eco2::Eco2Routed;
use crate::error::CodecError;
use crate::event::{parse_canonical_u64, Epoch, Event, JobId, Offset, Position, Stage, Status};

/// How an event body is encoded. Its `enc` field value (`as_str`,
/// `Display`, `FromStr`) is the lowercase variant name, as in serde.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(strum::IntoStaticStr, strum::Display, strum::EnumString)]
#[strum(
    serialize_all = "lowercase",
    parse_err_ty = CodecError,
    parse_err_fn = unknown_encoding
)]
pub enum Encoding {
    /// MessagePack with field names (rmp-serde): compact, the default.
    #[default]
    MsgPack,
    /// JSON: larger, human-readable.
    Json,
}

impl Encoding {
    /// The `enc` field value.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    fn tag(self) -> u8 {
        match self {
            Encoding::MsgPack => b'm',
            Encoding::Json => b'j',
        }
    }
}

/// `Encoding::from_str`'s error: the unknown name, cut to 40 characters.
fn unknown_encoding(name: &str) -> CodecError {
    CodecError::UnknownEncoding(name.chars().take(40).collect())
}

/// Encodes an event body.
pub fn encode_event(event: &Event, enc: Encoding) -> Result<Vec<u8>, CodecError> {
    Ok(match enc {
        Encoding::MsgPack => rmp_serde::to_vec_named(event)?,
        Encoding::Json => serde_json::to_vec(event)?,
    })
}

/// Decodes an event body.
pub fn decode_event(body: &[u8], enc: Encoding) -> Result<Event, CodecError> {
    Ok(match enc {
        Encoding::MsgPack => rmp_serde::from_slice(body)?,
        Encoding::Json => serde_json::from_slice(body)?,
    })
}

pub use crate::fields::{field, fields_size, Fields};

fn text_field<'a>(
    fields: &'a [(String, Bytes)],
    name: &'static str,
) -> Result<&'a str, CodecError> {
    let raw = field(fields, name).ok_or(CodecError::MissingField(name))?;
    std::str::from_utf8(raw).map_err(|_| CodecError::Utf8(name))
}

/// A decoded native stream entry.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeEntry {
    /// The event.
    pub event: Event,
    /// How the body was encoded.
    pub enc: Encoding,
    /// The body bytes as stored (reused verbatim as the record payload).
    pub body: Bytes,
}

impl NativeEntry {
    /// The payload to store in state/history and publish live.
    pub fn payload(&self) -> Payload {
        Payload::native(self.enc, &self.body)
    }
}

/// The fields of a native stream entry for `event`.
pub fn native_fields(event: &Event, enc: Encoding) -> Result<Fields, CodecError> {
    let body = encode_event(event, enc)?;
    Ok(vec![
        (
            "job".into(),
            Bytes::copy_from_slice(event.job_id.as_str().as_bytes()),
        ),
        ("seq".into(), Bytes::from(event.seq.to_string())),
        (
            "stage".into(),
            Bytes::copy_from_slice(event.stage.as_str().as_bytes()),
        ),
        (
            "status".into(),
            Bytes::from_static(event.status.as_str().as_bytes()),
        ),
        ("ts".into(), Bytes::from(event.ts.to_string())),
        ("enc".into(), Bytes::from_static(enc.as_str().as_bytes())),
        ("body".into(), Bytes::from(body)),
    ])
}

/// Parses a native stream entry, checking the body against the plain fields.
pub fn parse_native(fields: &[(String, Bytes)]) -> Result<NativeEntry, CodecError> {
    let job = JobId::new(text_field(fields, "job")?)?;
    let seq = parse_canonical_u64("seq", text_field(fields, "seq")?).map_err(|source| {
        CodecError::InvalidNumber {
            field: "seq",
            source,
        }
    })?;
    let enc: Encoding = match field(fields, "enc") {
        Some(_) => text_field(fields, "enc")?.parse()?,
        None => Encoding::MsgPack,
    };
    let body = field(fields, "body")
        .ok_or(CodecError::MissingField("body"))?
        .clone();
    let event = decode_event(&body, enc)?;
    if event.job_id != job {
        return Err(CodecError::Mismatch("job"));
    }
    if event.seq != seq {
        return Err(CodecError::Mismatch("seq"));
    }
    event.validate()?;
    if let Some(stage) = field(fields, "stage") {
        if stage.as_ref() != event.stage.as_str().as_bytes() {
            return Err(CodecError::Mismatch("stage"));
        }
    }
    Ok(NativeEntry { event, enc, body })
}

/// A routed record's payload: what the state key holds, what a history entry
/// holds and what a live envelope carries after its position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Payload(pub Bytes);

/// A decoded payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A native event.
    Native(Event),
    /// An eco2 routed event (the JSON the Python gateways and frontend read).
    Eco2(Eco2Routed),
}

impl Decoded {
    /// `native(event)` or `eco2(routed)`, whichever this is.
    fn either<'a, T>(
        &'a self,
        native: impl FnOnce(&'a Event) -> T,
        eco2: impl FnOnce(&'a Eco2Routed) -> T,
    ) -> T {
        match self {
            Decoded::Native(e) => native(e),
            Decoded::Eco2(r) => eco2(r),
        }
    }

    /// The job id.
    pub fn job_id(&self) -> &JobId {
        self.either(|e| &e.job_id, |r| &r.job_id)
    }

    /// The producer seq.
    pub fn seq(&self) -> u64 {
        self.either(|e| e.seq, |r| r.seq)
    }

    /// The stage.
    pub fn stage(&self) -> &Stage {
        self.either(|e| &e.stage, |r| &r.stage)
    }

    /// Whether the job ends with this event.
    pub fn is_terminal(&self) -> bool {
        self.either(Event::is_terminal, Eco2Routed::is_terminal)
    }

    /// Whether this event reports a failure.
    pub fn is_failure(&self) -> bool {
        self.either(|e| e.status == Status::Failed, |r| r.status == "failed")
    }
}

impl Payload {
    /// A native payload: the tag byte then the body.
    pub fn native(enc: Encoding, body: &[u8]) -> Self {
        let mut v = Vec::with_capacity(body.len() + 1);
        v.push(enc.tag());
        v.extend_from_slice(body);
        Payload(Bytes::from(v))
    }

    /// Encodes an event as a native payload.
    pub fn from_event(event: &Event, enc: Encoding) -> Result<Self, CodecError> {
        Ok(Self::native(enc, &encode_event(event, enc)?))
    }

    /// Decodes the payload, whatever its profile.
    pub fn decode(&self) -> Result<Decoded, CodecError> {
        match self.0.first() {
            Some(b'm') => Ok(Decoded::Native(decode_event(
                &self.0[1..],
                Encoding::MsgPack,
            )?)),
            Some(b'j') => Ok(Decoded::Native(decode_event(&self.0[1..], Encoding::Json)?)),
            Some(b'{') => Ok(Decoded::Eco2(Eco2Routed::parse(&self.0)?)),
            _ => Err(CodecError::Envelope("unknown payload tag")),
        }
    }
}

/// One entry of a job's history (or its state), with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Gap-free offset within the job's history.
    pub offset: Offset,
    /// The stored payload.
    pub payload: Payload,
}

/// A live message: the record and the history it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveEnvelope {
    /// History identity.
    pub epoch: Epoch,
    /// The record.
    pub record: Record,
}

impl LiveEnvelope {
    /// The client position after this message.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.record.offset,
        }
    }

    /// Wire form: `{epoch}:{offset}:{payload}` (the apply script builds the
    /// same bytes with string concatenation).
    pub fn encode(&self) -> Bytes {
        let head = format!("{}:{}:", self.epoch, self.record.offset);
        let mut v = Vec::with_capacity(head.len() + self.record.payload.0.len());
        v.extend_from_slice(head.as_bytes());
        v.extend_from_slice(&self.record.payload.0);
        Bytes::from(v)
    }

    /// Parses the wire form.
    pub fn decode(raw: &Bytes) -> Result<Self, CodecError> {
        let first = raw
            .iter()
            .position(|b| *b == b':')
            .ok_or(CodecError::Envelope("no epoch separator"))?;
        let second = raw[first + 1..]
            .iter()
            .position(|b| *b == b':')
            .map(|p| p + first + 1)
            .ok_or(CodecError::Envelope("no offset separator"))?;
        let num = |s: &[u8]| -> Result<u64, CodecError> {
            std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(CodecError::Envelope("non-numeric position"))
        };
        Ok(LiveEnvelope {
            epoch: Epoch(num(&raw[..first])?),
            record: Record {
                offset: Offset(num(&raw[first + 1..second])?),
                payload: Payload(raw.slice(second + 1..)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ValidationError;
    use crate::event::Status;

    fn ev() -> Event {
        Event::new("scan", "job-1", 11, "vision", Status::Completed)
            .unwrap()
            .with_progress(25)
            .with_data(serde_json::json!({"k": [1, 2, "x"]}))
    }

    #[test]
    fn encoding_names_parse_back_and_an_unknown_one_is_kept_cut() {
        for (enc, name) in [(Encoding::MsgPack, "msgpack"), (Encoding::Json, "json")] {
            assert_eq!(enc.as_str(), name);
            assert_eq!(enc.to_string(), name);
            assert_eq!(name.parse::<Encoding>().ok(), Some(enc));
        }
        let long = "y".repeat(100);
        assert!(matches!(
            long.parse::<Encoding>(),
            Err(CodecError::UnknownEncoding(s)) if s == "y".repeat(40)
        ));
    }

    #[test]
    fn native_fields_round_trip() {
        for enc in [Encoding::MsgPack, Encoding::Json] {
            let e = ev();
            let f = native_fields(&e, enc).unwrap();
            let parsed = parse_native(&f).unwrap();
            assert_eq!(parsed.event, e);
            assert_eq!(parsed.enc, enc);
            assert_eq!(parsed.payload().decode().unwrap(), Decoded::Native(e));
        }
    }

    #[test]
    fn native_rejects_bad_entries() {
        let e = ev();
        let mut f = native_fields(&e, Encoding::MsgPack).unwrap();
        f.retain(|(k, _)| k != "job");
        assert!(matches!(
            parse_native(&f),
            Err(CodecError::MissingField("job"))
        ));

        let mut f = native_fields(&e, Encoding::MsgPack).unwrap();
        f[1].1 = Bytes::from_static(b"ten");
        let err = parse_native(&f).unwrap_err();
        assert!(
            matches!(err, CodecError::InvalidNumber { field: "seq", .. }),
            "{err:?}"
        );
        // The validation error is the source, and still in the message.
        let source = std::error::Error::source(&err).expect("source kept");
        assert!(matches!(
            source.downcast_ref::<crate::ValidationError>(),
            Some(crate::ValidationError::NotCanonical { what: "seq", .. })
        ));
        assert_eq!(
            err.to_string(),
            "field \"seq\" is invalid: seq must be a canonical decimal integer, got \"ten\""
        );

        let mut f = native_fields(&e, Encoding::MsgPack).unwrap();
        f[1].1 = Bytes::from_static(b"12");
        assert!(matches!(parse_native(&f), Err(CodecError::Mismatch("seq"))));

        // Non-canonical seqs would alias the canonical one.
        for alias in [format!("+{}", e.seq), format!("000{}", e.seq)] {
            let mut f = native_fields(&e, Encoding::MsgPack).unwrap();
            f[1].1 = Bytes::from(alias.clone());
            assert!(
                matches!(
                    parse_native(&f),
                    Err(CodecError::InvalidNumber { field: "seq", .. })
                ),
                "{alias} accepted"
            );
        }

        // Progress over 100 is refused at the router's door.
        let mut over = e.clone();
        over.progress = Some(150);
        let f = native_fields(&over, Encoding::Json).unwrap();
        assert!(matches!(
            parse_native(&f),
            Err(CodecError::Validation(ValidationError::Progress {
                value: 150
            }))
        ));

        let mut f = native_fields(&e, Encoding::MsgPack).unwrap();
        f[6].1 = Bytes::from_static(b"\xc1garbage");
        assert!(matches!(
            parse_native(&f),
            Err(CodecError::MsgPackDecode(_))
        ));

        let mut f = native_fields(&e, Encoding::MsgPack).unwrap();
        f[5].1 = Bytes::from_static(b"xml");
        assert!(matches!(
            parse_native(&f),
            Err(CodecError::UnknownEncoding(_))
        ));
    }

    #[test]
    fn envelope_round_trip() {
        let env = LiveEnvelope {
            epoch: Epoch(77),
            record: Record {
                offset: Offset(5),
                payload: Payload::from_event(&ev(), Encoding::MsgPack).unwrap(),
            },
        };
        let raw = env.encode();
        assert!(raw.starts_with(b"77:5:m"));
        assert_eq!(LiveEnvelope::decode(&raw).unwrap(), env);
        assert!(LiveEnvelope::decode(&Bytes::from_static(b"x:1:m")).is_err());
        assert!(LiveEnvelope::decode(&Bytes::from_static(b"1")).is_err());
    }

    /// docs/PRODUCERS.md's worked example, built field by field as a
    /// producer in another language would (strings and a hand-written JSON
    /// body, no relay types), is accepted by the router's decoder, lands on
    /// the shard the doc computes, and the doc still says exactly this. The
    /// doc's table of dead-letter reasons is checked against the decoder
    /// too.
    #[test]
    fn producers_md_worked_example() {
        use md5::{Digest, Md5};

        let doc = include_str!("../../docs/PRODUCERS.md");
        let job = "abc-123";
        let body = r#"{"domain":"scan","job_id":"abc-123","seq":20,"stage":"vision","status":"progress","progress":40,"data":{"note":"reading the label"},"ts":1700000000000}"#;
        let fields: Fields = [
            ("job", job),
            ("seq", "20"),
            ("stage", "vision"),
            ("status", "progress"),
            ("ts", "1700000000000"),
            ("enc", "json"),
            ("body", body),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect();

        // The shard, step by step as the doc's table shows it.
        let digest = Md5::digest(job.as_bytes());
        let head = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(hex::encode(digest), "6351623c8cef86fefabfa7da046fc619");
        assert_eq!(head, 7156609295070496510);
        assert_eq!(head % 4, 2);
        assert_eq!(crate::keys::shard_for(job, 4), 2);
        assert_eq!(crate::keys::shard_for(job, 8), 6);
        let keys = crate::KeySpace::new(
            crate::Profile::Native,
            crate::Domain::new("scan").unwrap(),
            4,
        );
        let stream = keys.shard_stream(keys.shard_of(&JobId::new(job).unwrap()));
        assert_eq!(stream, "relay:{scan:2}:events");
        for text in [
            "`6351623c8cef86fefabfa7da046fc619`",
            "`6351623c8cef86fe`",
            "| 7156609295070496510 |",
            "**2** → stream `relay:{scan:2}:events`",
            "(With 8 shards the same job is on shard 6.)",
        ] {
            assert!(doc.contains(text), "docs/PRODUCERS.md lost {text:?}");
        }

        // The XADD line, exactly.
        let mut xadd = format!("XADD {stream} MAXLEN ~ 100000 *");
        for (k, v) in &fields {
            let v = std::str::from_utf8(v).unwrap();
            if k == "body" {
                xadd.push_str(&format!(" {k} '{v}'"));
            } else {
                xadd.push_str(&format!(" {k} {v}"));
            }
        }
        assert!(doc.contains(&xadd), "docs/PRODUCERS.md lost {xadd}");

        // The router's decoder accepts it.
        let entry = parse_native(&fields).expect("the worked example decodes");
        assert_eq!(entry.enc, Encoding::Json);
        let e = &entry.event;
        assert_eq!(
            (
                e.domain.as_str(),
                e.job_id.as_str(),
                e.seq,
                e.stage.as_str()
            ),
            ("scan", job, 20, "vision")
        );
        assert_eq!(
            (e.status, e.progress, e.ts),
            (Status::Progress, Some(40), 1700000000000)
        );
        assert_eq!(e.data, serde_json::json!({"note": "reading the label"}));
        assert!(!e.is_terminal());
        // What the client receives is the same JSON, re-encoded.
        let sse_data = format!("data: {}", serde_json::to_string(e).unwrap());
        assert!(doc.contains(&sse_data), "docs/PRODUCERS.md lost {sse_data}");

        // Only job, seq and body are required; enc only for JSON.
        let only = |names: &[&str]| -> Fields {
            fields
                .iter()
                .filter(|(k, _)| names.contains(&k.as_str()))
                .cloned()
                .collect()
        };
        assert!(parse_native(&only(&["job", "seq", "enc", "body"])).is_ok());

        // The doc's dead-letter reasons, as the decoder words them.
        let with = |name: &str, value: &[u8]| -> Fields {
            let mut f = fields.clone();
            for (k, v) in f.iter_mut() {
                if k == name {
                    *v = Bytes::copy_from_slice(value);
                }
            }
            f
        };
        let no_ts = body.replace(r#","ts":1700000000000"#, "");
        let cases: Vec<(Fields, &str)> = vec![
            (only(&["seq", "enc", "body"]), r#"`missing field "job"`"#),
            (with("seq", b"\xff"), r#"`field "seq" is not valid UTF-8`"#),
            (
                with("job", b"abc 123"),
                "`job id may only contain [A-Za-z0-9._:-]; invalid character at byte 3`",
            ),
            (
                with("seq", b"+20"),
                r#"`field "seq" is invalid: seq must be a canonical decimal integer, got "+20"`"#,
            ),
            (with("enc", b"xml"), r#"`unknown encoding "xml"`"#),
            (
                with("body", no_ts.as_bytes()),
                "``json: missing field `ts` at line 1 column 132``",
            ),
            (with("seq", b"21"), r#"`body disagrees with field "seq"`"#),
            (
                with("body", body.replace(":40,", ":150,").as_bytes()),
                "`progress must be 0-100, got 150`",
            ),
        ];
        for (f, quoted) in cases {
            let reason = parse_native(&f).expect_err(quoted).to_string();
            let bare = quoted.trim_matches('`');
            assert_eq!(reason, bare);
            assert!(doc.contains(quoted), "docs/PRODUCERS.md lost {quoted}");
        }
    }
}
