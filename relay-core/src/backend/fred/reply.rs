//! Reply parsing. Replies come from the network: nothing here panics on
//! their shape, every surprise is a [`BackendError::Protocol`]. fred hands
//! replies over as [`Value`]s (bulk strings as `String` when UTF-8, else
//! `Bytes`; RESP2, so no maps but from a future server).

use bytes::Bytes;
use fred::types::Value;

use super::error::protocol;
use crate::backend::{Applied, ApplyResult, BackendResult, StreamEntry, StreamId};
use crate::codec::Fields;
use crate::event::{Epoch, Offset};

pub(super) fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::String(s) => Some(s.as_bytes()),
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// The bytes of a string reply, without copying when fred holds them as
/// `Bytes`.
pub(super) fn owned_bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::String(s) => Some(s.inner().clone()),
        Value::Bytes(b) => Some(b.clone()),
        _ => None,
    }
}

pub(super) fn str_of(v: &Value) -> Option<&str> {
    bytes_of(v).and_then(|b| std::str::from_utf8(b).ok())
}

pub(super) fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(*i).ok(),
        Value::Double(d) if *d >= 0.0 && d.fract() == 0.0 && *d < u64::MAX as f64 => {
            Some(*d as u64)
        }
        other => str_of(other).and_then(|s| s.parse().ok()),
    }
}

pub(super) fn opt_u64(v: &Value, what: &str) -> BackendResult<Option<u64>> {
    match v {
        Value::Null => Ok(None),
        other => u64_of(other)
            .map(Some)
            .ok_or_else(|| protocol(format!("{what}: expected an integer, got {other:?}"))),
    }
}

pub(super) fn array_of(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

pub(super) fn array<'a>(v: &'a Value, what: &str) -> BackendResult<&'a [Value]> {
    array_of(v).ok_or_else(|| protocol(format!("{what}: expected an array, got {v:?}")))
}

pub(super) fn stream_id_of(v: &Value) -> BackendResult<StreamId> {
    str_of(v)
        .ok_or_else(|| protocol(format!("expected a stream id, got {v:?}")))?
        .parse()
}

/// Key/value pairs of a flat array.
pub(super) fn pairs_of(v: &Value) -> BackendResult<Vec<(&Value, &Value)>> {
    match v {
        Value::Null => Ok(Vec::new()),
        other => {
            let a = array(other, "field list")?;
            if a.len() % 2 != 0 {
                return Err(protocol("field list of odd length"));
            }
            Ok(a.chunks_exact(2).map(|c| (&c[0], &c[1])).collect())
        }
    }
}

pub(super) fn fields_of(v: &Value) -> BackendResult<Fields> {
    pairs_of(v)?
        .into_iter()
        .map(|(k, val)| {
            let k = bytes_of(k).ok_or_else(|| protocol("non-string field name"))?;
            let val = owned_bytes(val).ok_or_else(|| protocol("non-string field value"))?;
            // Lossy names, as RedisBackend: a poison entry must still be
            // readable (and dead-lettered), never block its shard.
            Ok((String::from_utf8_lossy(k).into_owned(), val))
        })
        .collect()
}

/// `[id, fields|nil]`.
pub(super) fn entry_of(v: &Value) -> BackendResult<StreamEntry> {
    let a = array(v, "stream entry")?;
    let id = stream_id_of(a.first().ok_or_else(|| protocol("empty stream entry"))?)?;
    let fields = match a.get(1) {
        None | Some(Value::Null) => Vec::new(),
        Some(f) => fields_of(f)?,
    };
    Ok(StreamEntry { id, fields })
}

pub(super) fn entries_of(v: &Value) -> BackendResult<Vec<StreamEntry>> {
    match v {
        Value::Null => Ok(Vec::new()),
        other => array(other, "entries")?.iter().map(entry_of).collect(),
    }
}

/// XREADGROUP reply: nil or `[[stream, entries]...]`.
pub(super) fn xread_entries(v: &Value) -> BackendResult<Vec<StreamEntry>> {
    let mut out = Vec::new();
    if let Value::Null = v {
        return Ok(out);
    }
    for s in array(v, "xreadgroup reply")? {
        let pair = array(s, "xreadgroup stream")?;
        if let Some(entries) = pair.get(1) {
            out.extend(entries_of(entries)?);
        }
    }
    Ok(out)
}

pub(super) fn find_field<'a>(pairs: &[(&'a Value, &'a Value)], name: &str) -> Option<&'a Value> {
    pairs
        .iter()
        .find(|(k, _)| bytes_of(k) == Some(name.as_bytes()))
        .map(|(_, v)| *v)
}

pub(super) fn parse_apply(v: &Value, events: usize) -> BackendResult<ApplyResult> {
    let a = array(v, "apply reply")?;
    if a.len() != 1 + 2 * events {
        return Err(protocol(format!(
            "apply reply has {} items for {events} events",
            a.len()
        )));
    }
    let epoch = u64_of(&a[0]).ok_or_else(|| protocol("apply reply: bad epoch"))?;
    let applied = a[1..]
        .chunks_exact(2)
        .map(|c| {
            let offset = u64_of(&c[0]).ok_or_else(|| protocol("apply reply: bad offset"))?;
            let new = u64_of(&c[1]).ok_or_else(|| protocol("apply reply: bad flag"))?;
            Ok(Applied {
                offset: Offset(offset),
                new: new == 1,
            })
        })
        .collect::<BackendResult<Vec<_>>>()?;
    Ok(ApplyResult {
        epoch: Epoch(epoch),
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BackendError;

    fn s(x: &str) -> Value {
        Value::from(x.to_owned())
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
        let entries = xread_entries(&v).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, StreamId::new(1, 1));
        assert_eq!(
            entries[0].fields,
            vec![("k".to_owned(), Bytes::from_static(b"\xff\x00"))]
        );
        assert!(entries[1].is_deleted());
        assert!(xread_entries(&Value::Null).unwrap().is_empty());
    }

    #[test]
    fn bad_replies_are_protocol_errors() {
        let bad = |r: BackendResult<_>| matches!(r.map(|_: ()| ()), Err(BackendError::Protocol(_)));
        assert!(bad(xread_entries(&Value::Integer(3)).map(|_| ())));
        assert!(bad(
            xread_entries(&Value::Array(vec![Value::Integer(1)])).map(|_| ())
        ));
        assert!(bad(entry_of(&Value::Array(vec![])).map(|_| ())));
        assert!(bad(entry_of(&Value::Array(vec![s("x-y")])).map(|_| ())));
        assert!(bad(
            parse_apply(&Value::Array(vec![Value::Integer(1)]), 1).map(|_| ())
        ));
        assert!(bad(parse_apply(
            &Value::Array(vec![s("e"), Value::Integer(1), Value::Integer(1)]),
            1
        )
        .map(|_| ())));
        assert!(bad(
            fields_of(&Value::Array(vec![Value::Integer(1)])).map(|_| ())
        ));
        assert!(bad(fields_of(&Value::Array(vec![
            s("k"),
            Value::Integer(1)
        ]))
        .map(|_| ())));
        assert!(bad(opt_u64(&Value::Double(-1.0), "x").map(|_| ())));
        assert_eq!(u64_of(&Value::Double(f64::INFINITY)), None);
        assert_eq!(u64_of(&s("18446744073709551615")), Some(u64::MAX));
    }
}
