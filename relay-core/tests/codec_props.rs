//! Property tests for the codecs: any event round-trips through MessagePack
//! and JSON; any eco2 entry round-trips to routed JSON; garbage gives typed
//! errors, never a panic.

use bytes::Bytes;
use proptest::prelude::*;
use relay_core::codec::{
    decode_event, encode_event, native_fields, parse_native, Encoding, Fields,
};
use relay_core::eco2::{Eco2Entry, Eco2Routed};
use relay_core::{Event, LiveEnvelope, Payload, Status, TraceContext};
use serde_json::Value;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,64}"
}

fn job_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,128}"
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Started),
        Just(Status::Progress),
        Just(Status::Completed),
        Just(Status::Failed)
    ]
}

prop_compose! {
    fn event()(domain in name(), job in job_id(), seq in any::<u64>(), stage in name(),
               status in status(), progress in prop::option::of(0u8..=100), data in json_value(),
               ts in any::<u64>(),
               trace in prop::option::of(("[0-9a-f]{32}", "[0-9a-f]{16}", any::<u8>())))
               -> Event {
        let mut e = Event::new(&domain, &job, seq, &stage, status).unwrap();
        e.progress = progress;
        e.data = data;
        e.ts = ts;
        e.trace = trace.map(|(t, s, f)| TraceContext::new(&t, &s, f).unwrap());
        e
    }
}

proptest! {
    #[test]
    fn event_round_trips_msgpack_and_json(e in event()) {
        for enc in [Encoding::MsgPack, Encoding::Json] {
            let body = encode_event(&e, enc).unwrap();
            prop_assert_eq!(&decode_event(&body, enc).unwrap(), &e);
            let fields = native_fields(&e, enc).unwrap();
            prop_assert_eq!(&parse_native(&fields).unwrap().event, &e);
            let payload = Payload::from_event(&e, enc).unwrap();
            let env = LiveEnvelope {
                epoch: relay_core::Epoch(7),
                record: relay_core::Record { offset: relay_core::Offset(3), payload },
            };
            prop_assert_eq!(LiveEnvelope::decode(&env.encode()).unwrap(), env);
        }
    }

    #[test]
    fn eco2_entry_round_trips_to_routed_json(
        job in job_id(), stage in name(), status in "[a-z]{1,10}", seq in 0u64..100_000,
        ts in "[0-9]{10}\\.[0-9]{1,6}", progress in prop::option::of(0u8..=100),
        result in prop::option::of(json_value().prop_filter("non-null", |v| !v.is_null())),
        traced in any::<bool>(), ms in any::<u64>(), n in any::<u64>(),
    ) {
        let job = relay_core::JobId::new(job).unwrap();
        let stage = relay_core::Stage::new(stage).unwrap();
        let trace = traced.then(|| TraceContext::new(&"a".repeat(32), &"b".repeat(16), 1).unwrap());
        let entry = Eco2Entry::build(&job, &stage, &status, seq, &ts, progress, result.as_ref(), trace.as_ref());
        // Fields survive the stream round trip exactly.
        let reparsed = Eco2Entry::parse(&entry.to_fields()).unwrap();
        prop_assert_eq!(&reparsed, &entry);
        // Routed JSON parses back with the same identity and carries the fields.
        let stream_id = format!("{ms}-{n}");
        let json = entry.routed_json(&stream_id);
        let routed = Eco2Routed::parse(&Bytes::from(json.clone())).unwrap();
        prop_assert_eq!(&routed.job_id, &job);
        prop_assert_eq!(&routed.stage, &stage);
        prop_assert_eq!(routed.seq, seq);
        prop_assert_eq!(&routed.stream_id, &stream_id);
        let v: Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(v["ts"].as_str(), Some(ts.as_str()));
        prop_assert_eq!(v["seq"].as_u64(), Some(seq));
        match progress {
            Some(p) => prop_assert_eq!(v["progress"].as_u64(), Some(p as u64)),
            None => prop_assert_eq!(v["progress"].as_str(), Some("")),
        }
        match &result {
            Some(r) => prop_assert_eq!(&v["result"], r),
            None => prop_assert_eq!(v["result"].as_str(), Some("")),
        }
        prop_assert_eq!(v.get("trace_id").is_some(), traced);
    }

    #[test]
    fn garbage_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_event(&body, Encoding::MsgPack);
        let _ = decode_event(&body, Encoding::Json);
        let _ = Payload(Bytes::from(body.clone())).decode();
        let _ = LiveEnvelope::decode(&Bytes::from(body.clone()));
        let _ = Eco2Routed::parse(&Bytes::from(body));
    }

    #[test]
    fn garbage_fields_are_rejected(
        fields in prop::collection::vec(("[a-z_]{1,10}", prop::collection::vec(any::<u8>(), 0..40)), 0..12)
    ) {
        let fields: Fields = fields.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect();
        // Random fields essentially never form a valid native entry (the body
        // must decode and agree with job and seq).
        prop_assert!(parse_native(&fields).is_err());
        let _ = Eco2Entry::parse(&fields);
    }
}

#[test]
fn invalid_utf8_fields_are_typed_errors() {
    let e = Event::new("scan", "job-1", 1, "vision", Status::Started).unwrap();
    let mut f = native_fields(&e, Encoding::Json).unwrap();
    f[0].1 = Bytes::from_static(b"\xff\xfe");
    let err = parse_native(&f).unwrap_err();
    assert!(matches!(err, relay_core::CodecError::Utf8("job")), "{err}");

    let eco: Fields = vec![
        ("job_id".into(), Bytes::from_static(b"abc-123")),
        ("stage".into(), Bytes::from_static(b"vision")),
        ("status".into(), Bytes::from_static(b"\xc3\x28")),
        ("seq".into(), Bytes::from_static(b"10")),
    ];
    assert!(matches!(
        Eco2Entry::parse(&eco),
        Err(relay_core::CodecError::InvalidField { .. })
    ));
    let body_json = Payload(Bytes::from_static(b"j{not json")).decode();
    assert!(matches!(body_json, Err(relay_core::CodecError::Json(_))));
    let body_mp = Payload(Bytes::from_static(b"m\xc1")).decode();
    assert!(matches!(
        body_mp,
        Err(relay_core::CodecError::MsgPackDecode(_))
    ));
}
