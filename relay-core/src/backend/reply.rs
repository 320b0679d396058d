//! Reply parsing for both Redis client backends. Replies come from the
//! network: nothing here panics on their shape, every surprise is a
//! [`BackendError::Protocol`].

use bytes::Bytes;
use redis::Value;

use crate::backend::{Applied, ApplyResult, BackendResult, StreamEntry, StreamId};
use crate::codec::Fields;
use crate::error::BackendError;
use crate::event::{Epoch, Offset};

/// A reply of an unexpected shape.
pub(in crate::backend) fn protocol(what: impl Into<String>) -> BackendError {
    BackendError::Protocol(what.into().into())
}

pub(in crate::backend) fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

pub(in crate::backend) fn str_of(v: &Value) -> Option<&str> {
    bytes_of(v).and_then(|b| std::str::from_utf8(b).ok())
}

pub(in crate::backend) fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Double(d) if *d >= 0.0 && d.fract() == 0.0 => Some(*d as u64),
        other => str_of(other).and_then(|s| s.parse().ok()),
    }
}

pub(in crate::backend) fn opt_u64(v: &Value, what: &str) -> BackendResult<Option<u64>> {
    match v {
        Value::Nil => Ok(None),
        other => u64_of(other)
            .map(Some)
            .ok_or_else(|| protocol(format!("{what}: expected an integer, got {other:?}"))),
    }
}

pub(in crate::backend) fn array_of(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Push { data, .. } => Some(data),
        _ => None,
    }
}

pub(in crate::backend) fn array<'a>(v: &'a Value, what: &str) -> BackendResult<&'a [Value]> {
    array_of(v).ok_or_else(|| protocol(format!("{what}: expected an array, got {v:?}")))
}

pub(in crate::backend) fn stream_id_of(v: &Value) -> BackendResult<StreamId> {
    str_of(v)
        .ok_or_else(|| protocol(format!("expected a stream id, got {v:?}")))?
        .parse()
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
pub(in crate::backend) fn pairs_of(v: &Value) -> BackendResult<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Ok(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Nil => Ok(Vec::new()),
        other => {
            let a = array(other, "field list")?;
            if a.len() % 2 != 0 {
                return Err(protocol("field list of odd length"));
            }
            Ok(a.chunks_exact(2).map(|c| (&c[0], &c[1])).collect())
        }
    }
}

pub(in crate::backend) fn fields_of(v: &Value) -> BackendResult<Fields> {
    pairs_of(v)?
        .into_iter()
        .map(|(k, val)| {
            let k = bytes_of(k).ok_or_else(|| protocol("non-string field name"))?;
            let val = bytes_of(val).ok_or_else(|| protocol("non-string field value"))?;
            // Lossy names: a poison entry must still be readable (and
            // dead-lettered), never block its shard with a decode error.
            Ok((
                String::from_utf8_lossy(k).into_owned(),
                Bytes::copy_from_slice(val),
            ))
        })
        .collect()
}

/// `[id, fields|nil]`.
pub(in crate::backend) fn entry_of(v: &Value) -> BackendResult<StreamEntry> {
    let a = array(v, "stream entry")?;
    let id = stream_id_of(a.first().ok_or_else(|| protocol("empty stream entry"))?)?;
    let fields = match a.get(1) {
        None | Some(Value::Nil) => Vec::new(),
        Some(f) => fields_of(f)?,
    };
    Ok(StreamEntry { id, fields })
}

pub(in crate::backend) fn entries_of(v: &Value) -> BackendResult<Vec<StreamEntry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        other => array(other, "entries")?.iter().map(entry_of).collect(),
    }
}

/// XREAD/XREADGROUP reply: nil, `[[stream, entries]...]` or a RESP3 map.
pub(in crate::backend) fn xread_entries(v: &Value) -> BackendResult<Vec<StreamEntry>> {
    let mut out = Vec::new();
    match v {
        Value::Nil => {}
        Value::Map(m) => {
            for (_, entries) in m {
                out.extend(entries_of(entries)?);
            }
        }
        other => {
            for s in array(other, "xreadgroup reply")? {
                let pair = array(s, "xreadgroup stream")?;
                if let Some(entries) = pair.get(1) {
                    out.extend(entries_of(entries)?);
                }
            }
        }
    }
    Ok(out)
}

pub(in crate::backend) fn find_field<'a>(pairs: &[(&'a Value, &'a Value)], name: &str) -> Option<&'a Value> {
    pairs
        .iter()
        .find(|(k, _)| bytes_of(k) == Some(name.as_bytes()))
        .map(|(_, v)| *v)
}

pub(in crate::backend) fn parse_apply(v: &Value, events: usize) -> BackendResult<ApplyResult> {
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

    #[test]
    fn parses_entries_with_deleted_data() {
        let v = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"s".to_vec()),
            Value::Array(vec![
                Value::Array(vec![
                    Value::BulkString(b"1-1".to_vec()),
                    Value::Array(vec![
                        Value::BulkString(b"k".to_vec()),
                        Value::BulkString(b"v".to_vec()),
                    ]),
                ]),
                Value::Array(vec![Value::BulkString(b"2-0".to_vec()), Value::Nil]),
            ]),
        ])]);
        let entries = xread_entries(&v).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, StreamId::new(1, 1));
        assert_eq!(
            entries[0].fields,
            vec![("k".to_owned(), Bytes::from_static(b"v"))]
        );
        assert!(entries[1].is_deleted());
        assert!(xread_entries(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn bad_replies_are_protocol_errors() {
        assert!(matches!(
            xread_entries(&Value::Int(3)),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            entry_of(&Value::Array(vec![])),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            parse_apply(&Value::Array(vec![Value::Int(1)]), 1),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            fields_of(&Value::Array(vec![Value::Int(1)])),
            Err(BackendError::Protocol(_))
        ));
    }
}
