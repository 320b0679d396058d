//! Stream entries and routed records: what producers XADD (native fields with
//! a MessagePack/JSON body, or eco2's flat string fields), the payloads the
//! router stores and the live envelopes it publishes.
//!
//! Input: one mode byte, then
//! - `0`: stream-entry fields (`relay_fuzz::fields_from_bytes`), parsed as a
//!   native entry and as an eco2 entry, as the router does;
//! - `1`: a stored payload / live envelope, decoded as the gateway does;
//! - `2`: an event built from the bytes (`arbitrary`), encoded every way the
//!   system encodes it and decoded back.
//!
//! Invariants: whatever parses re-encodes to something that parses to the
//! same value; the router's view of an eco2 entry (job, stage, status, seq)
//! is the gateway's view of the routed JSON it stores; a payload the router
//! builds from an accepted entry always decodes.
#![no_main]

use arbitrary::Unstructured;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relay_core::codec::{self, Decoded, Encoding, LiveEnvelope, Payload};
use relay_core::eco2::{Eco2Entry, Eco2Routed};
use relay_core::{CodecError, Event, Status, TraceContext};
use serde_json::Value;

const STREAM_ID: &str = "1766899796476-0";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => fields(rest),
        1 => payload(rest),
        _ => {
            if let Ok(ev) = arb_event(&mut Unstructured::new(rest)) {
                event_round_trips(&ev);
            }
        }
    }
});

fn fields(data: &[u8]) {
    let fields = relay_fuzz::fields_from_bytes(data);
    // The size the limits count never panics (and bounds both parsers' input).
    let _ = codec::fields_size(&fields);

    if let Ok(entry) = codec::parse_native(&fields) {
        let text = |name| codec::field(&fields, name).map(|v| std::str::from_utf8(v).unwrap());
        assert_eq!(text("job"), Some(entry.event.job_id.as_str()));
        assert_eq!(
            text("seq").unwrap().parse::<u64>().unwrap(),
            entry.event.seq
        );
        if let Some(stage) = text("stage") {
            assert_eq!(stage, entry.event.stage.as_str());
        }
        assert_eq!(codec::field(&fields, "body"), Some(&entry.body));
        assert_eq!(
            codec::decode_event(&entry.body, entry.enc).unwrap(),
            entry.event
        );
        // The payload the router stores decodes to the same event.
        assert_eq!(
            entry.payload().decode().unwrap(),
            Decoded::Native(entry.event.clone())
        );
        event_round_trips(&entry.event);
    }

    if let Ok(entry) = Eco2Entry::parse(&fields) {
        // Every value was UTF-8: the fields are kept verbatim, in order.
        assert_eq!(entry.to_fields(), fields);
        let reparsed = Eco2Entry::parse(&entry.to_fields()).unwrap();
        assert_eq!(reparsed, entry);
        eco2_routed_agrees(&entry);
    }
}

/// The routed JSON the router stores for `entry` is valid JSON that the
/// gateway parses to the same job, stage, status and seq.
fn eco2_routed_agrees(entry: &Eco2Entry) {
    let json = entry.routed_json(STREAM_ID);
    let routed = Eco2Routed::parse(&Bytes::from(json.clone()))
        .unwrap_or_else(|e| panic!("router accepted an entry the gateway cannot read: {e}"));
    assert_eq!(routed.job_id, entry.job_id, "job_id");
    assert_eq!(routed.stage, entry.stage, "stage");
    assert_eq!(routed.status, entry.status, "status");
    assert_eq!(routed.seq, entry.seq, "seq");
    assert_eq!(routed.stream_id, STREAM_ID);
    assert_eq!(routed.raw, json.as_bytes());
    let payload = Payload(Bytes::from(json));
    match payload.decode().unwrap() {
        Decoded::Eco2(r) => assert_eq!(r, routed),
        other => panic!("routed JSON decoded as {other:?}"),
    }
}

fn payload(data: &[u8]) {
    let raw = Bytes::copy_from_slice(data);
    match Payload(raw.clone()).decode() {
        Ok(Decoded::Native(ev)) => {
            let enc = if raw[0] == b'm' {
                Encoding::MsgPack
            } else {
                Encoding::Json
            };
            let again = Payload::from_event(&ev, enc).unwrap();
            assert_eq!(again.decode().unwrap(), Decoded::Native(ev.clone()));
            event_round_trips(&ev);
        }
        Ok(Decoded::Eco2(r)) => {
            assert_eq!(r.raw, raw);
            assert_eq!(
                r.is_terminal(),
                r.stage.as_str() == "done" || r.status == "failed"
            );
        }
        Err(_) => {}
    }
    if let Ok(env) = LiveEnvelope::decode(&raw) {
        let wire = env.encode();
        assert_eq!(LiveEnvelope::decode(&wire).unwrap(), env);
        // Canonical numbers come back byte for byte.
        let canonical = format!("{}:{}:", env.epoch, env.record.offset);
        if raw.starts_with(canonical.as_bytes()) {
            assert_eq!(wire, raw);
        }
        let _ = env.record.payload.decode();
    }
}

/// Every encoding of `ev` decodes back to `ev`; an event out of range
/// (progress over 100) is refused in every entry form instead.
fn event_round_trips(ev: &Event) {
    if ev.validate().is_err() {
        for enc in [Encoding::MsgPack, Encoding::Json] {
            if let Ok(fields) = codec::native_fields(ev, enc) {
                assert!(
                    matches!(
                        codec::parse_native(&fields),
                        Err(CodecError::Validation(_) | CodecError::Json(_))
                    ),
                    "an invalid event passed the router's door as {enc}"
                );
            }
        }
        let entry = Eco2Entry::from_event(ev);
        assert!(
            Eco2Entry::parse(&entry.to_fields()).is_err(),
            "an invalid event passed the router's door as an eco2 entry"
        );
        return;
    }
    for enc in [Encoding::MsgPack, Encoding::Json] {
        let fields = match codec::native_fields(ev, enc) {
            Ok(f) => f,
            Err(e) => panic!("cannot encode a decoded event as {enc}: {e}"),
        };
        match codec::parse_native(&fields) {
            Ok(back) => {
                assert_eq!(&back.event, ev, "{enc} round trip");
                assert_eq!(back.enc, enc);
            }
            // JSON nests at most 128 deep; MessagePack allows more, so a
            // MessagePack event may not have a JSON form that parses back.
            Err(CodecError::Json(e)) if enc == Encoding::Json && depth(&ev.data) >= 127 => {
                let _ = e;
            }
            Err(e) => panic!("{enc} round trip failed: {e}"),
        }
        let payload = Payload::from_event(ev, enc).unwrap();
        if depth(&ev.data) < 127 || enc == Encoding::MsgPack {
            assert_eq!(payload.decode().unwrap(), Decoded::Native(ev.clone()));
        }
    }
    // The eco2 producer's entry for the same event.
    let entry = Eco2Entry::from_event(ev);
    assert_eq!(Eco2Entry::parse(&entry.to_fields()).unwrap(), entry);
    if depth(&ev.data) < 126 {
        eco2_routed_agrees(&entry);
        let back = entry.to_event(ev.domain.as_str()).unwrap();
        let mut expected = ev.clone();
        // `ts` travels as Python's float seconds with microseconds.
        if ev.ts < 4_000_000_000_000 {
            assert!(back.ts.abs_diff(ev.ts) <= 1, "ts {} → {}", ev.ts, back.ts);
        }
        expected.ts = back.ts;
        assert_eq!(back, expected);
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn arb_name(u: &mut Unstructured, known: &[&str]) -> arbitrary::Result<String> {
    Ok(if u.arbitrary::<bool>()? {
        (*u.choose(known)?).to_owned()
    } else {
        u.arbitrary::<String>()?
    })
}

fn arb_json(u: &mut Unstructured, depth: u32) -> arbitrary::Result<Value> {
    let kind = if depth == 0 {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=6)?
    };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => {
            if u.arbitrary()? {
                Value::from(u.arbitrary::<i64>()?)
            } else {
                Value::from(u.arbitrary::<u64>()?)
            }
        }
        3 => serde_json::Number::from_f64(u.arbitrary()?)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        4 => Value::String(u.arbitrary()?),
        5 => Value::Array(
            (0..u.int_in_range(0..=4)?)
                .map(|_| arb_json(u, depth - 1))
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=4)? {
                map.insert(u.arbitrary()?, arb_json(u, depth - 1)?);
            }
            Value::Object(map)
        }
    })
}

fn arb_event(u: &mut Unstructured) -> arbitrary::Result<Event> {
    let domain = arb_name(u, &["scan", "chat"])?;
    let job = arb_name(u, &["job-1", "fc052f15-449f-4ce4-aa96-99d400ed7865"])?;
    let stage = arb_name(u, &["queued", "vision", "rule", "answer", "reward", "done"])?;
    let status = *u.choose(&[
        Status::Started,
        Status::Progress,
        Status::Completed,
        Status::Failed,
    ])?;
    let seq = u.arbitrary()?;
    let Ok(mut ev) = Event::new(&domain, &job, seq, &stage, status) else {
        return Err(arbitrary::Error::IncorrectFormat);
    };
    ev.ts = u.arbitrary()?;
    ev.progress = u.arbitrary()?;
    ev.data = arb_json(u, 4)?;
    if u.arbitrary()? {
        let trace: [u8; 16] = u.arbitrary()?;
        let span: [u8; 8] = u.arbitrary()?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        ev.trace = Some(TraceContext::new(&hex(&trace), &hex(&span), u.arbitrary()?).unwrap());
    }
    Ok(ev)
}
