//! fred's replies for the shared reply parsers ([`crate::backend::reply`]):
//! every fred [`Value`] converted to the redis-rs value it stands for, so
//! both backends read a reply with the same code.
//!
//! fred hands replies over with bulk strings as `String` when UTF-8, else
//! `Bytes`; RESP2, so no maps but from a future server.

use bytes::Bytes;
use fred::types::Value;

pub(super) use crate::backend::reply::*;

/// The redis-rs value `v` stands for. Total: every fred variant has one
/// (strings and bytes are bulk strings, `QUEUED` a simple string, a map
/// its key/value pairs).
pub(super) fn to_redis_value(v: Value) -> redis::Value {
    match v {
        Value::Boolean(b) => redis::Value::Boolean(b),
        Value::Integer(i) => redis::Value::Int(i),
        Value::Double(d) => redis::Value::Double(d),
        Value::String(s) => redis::Value::BulkString(Vec::from(s.into_inner())),
        Value::Bytes(b) => redis::Value::BulkString(Vec::from(b)),
        Value::Null => redis::Value::Nil,
        Value::Queued => redis::Value::SimpleString("QUEUED".to_owned()),
        Value::Map(m) => redis::Value::Map(
            m.inner()
                .into_iter()
                .map(|(k, v)| {
                    (
                        redis::Value::BulkString(Vec::from(k.into_bytes())),
                        to_redis_value(v),
                    )
                })
                .collect(),
        ),
        Value::Array(a) => redis::Value::Array(a.into_iter().map(to_redis_value).collect()),
    }
}

/// The bytes of a string reply, without copying when fred holds them as
/// `Bytes` (payloads: the pub/sub and `GET` paths skip the conversion).
pub(super) fn owned_bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::String(s) => Some(s.inner().clone()),
        Value::Bytes(b) => Some(b.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendResult, StreamId};
    use crate::error::BackendError;

    fn s(x: &str) -> Value {
        Value::from(x.to_owned())
    }

    fn r(v: Value) -> redis::Value {
        to_redis_value(v)
    }

    #[test]
    fn parses_entries_with_deleted_data_and_binary_values() {
        let v = Value::Array(vec![Value::Array(vec![
            s("s"),
            Value::Array(vec![
                Value::Array(vec![
                    s("1-1"),
                    Value::Array(vec![s("k"), Value::Bytes(Bytes::from_static(b"\xff\x00"))]),
                ]),
                Value::Array(vec![s("2-0"), Value::Null]),
            ]),
        ])]);
        let entries = xread_entries(r(v)).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, StreamId::new(1, 1));
        assert_eq!(
            entries[0].fields,
            vec![("k".to_owned(), Bytes::from_static(b"\xff\x00"))]
        );
        assert!(entries[1].is_deleted());
        assert!(xread_entries(r(Value::Null)).unwrap().is_empty());
    }

    #[test]
    fn bad_replies_are_protocol_errors() {
        let bad = |r: BackendResult<_>| matches!(r.map(|_: ()| ()), Err(BackendError::Protocol(_)));
        assert!(bad(xread_entries(r(Value::Integer(3))).map(|_| ())));
        assert!(bad(
            xread_entries(r(Value::Array(vec![Value::Integer(1)]))).map(|_| ())
        ));
        assert!(bad(entry_of(r(Value::Array(vec![]))).map(|_| ())));
        assert!(bad(entry_of(r(Value::Array(vec![s("x-y")]))).map(|_| ())));
        assert!(bad(parse_apply(
            &r(Value::Array(vec![Value::Integer(1)])),
            1
        )
        .map(|_| ())));
        assert!(bad(parse_apply(
            &r(Value::Array(vec![
                s("e"),
                Value::Integer(1),
                Value::Integer(1)
            ])),
            1
        )
        .map(|_| ())));
        assert!(bad(
            fields_of(r(Value::Array(vec![Value::Integer(1)]))).map(|_| ())
        ));
        assert!(bad(fields_of(r(Value::Array(vec![
            s("k"),
            Value::Integer(1)
        ])))
        .map(|_| ())));
        assert!(bad(opt_u64(&r(Value::Double(-1.0)), "x").map(|_| ())));
        assert_eq!(u64_of(&r(Value::Double(f64::INFINITY))), None);
        assert_eq!(u64_of(&r(Value::Double(1e30))), None);
        assert_eq!(u64_of(&r(s("18446744073709551615"))), Some(u64::MAX));
    }

    #[test]
    fn every_variant_converts() {
        assert_eq!(r(Value::Boolean(true)), redis::Value::Boolean(true));
        assert_eq!(r(Value::Null), redis::Value::Nil);
        assert_eq!(
            r(Value::Queued),
            redis::Value::SimpleString("QUEUED".to_owned())
        );
        assert_eq!(r(Value::Double(1.5)), redis::Value::Double(1.5));
        let mut m = std::collections::HashMap::new();
        m.insert(fred::types::Key::from("lag"), Value::Integer(7));
        let map = r(Value::Map(fred::types::Map::try_from(m).unwrap()));
        let pairs = pairs_of(&map).unwrap();
        assert_eq!(find_field(&pairs, "lag").and_then(u64_of), Some(7));
    }
}
