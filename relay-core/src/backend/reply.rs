//! Reply parsing for both Redis client backends. Replies come from the
//! network: nothing here panics on their shape, every surprise is a
//! [`BackendError::Protocol`].
//!
//! The parsers work on redis-rs [`Value`]s; the fred backend converts its
//! replies first (`fred::reply::to_redis_value`), so the two clients read
//! every reply the same way and cannot drift apart.

use bytes::Bytes;
use redis::Value;

use crate::backend::{
    AppendOutcome, Applied, ApplyJob, ApplyResult, BackendResult, ClaimResult, ConsumerStats,
    Delivered, HistoryPage, JobState, StreamEntry, StreamId,
};
use crate::codec::{Fields, Payload, Record};
use crate::error::BackendError;
use crate::event::{Epoch, Offset};

/// A client error as a [`BackendError`] when its class follows from the
/// server's error `code` (when it is a server error reply) or from being a
/// `connection` failure; otherwise `e` back, for the client's own error
/// kinds to decide. Both Redis backends classify server codes here, so a
/// code cannot be transient for one client and fatal for the other.
pub(in crate::backend) fn classify_error<E>(
    e: E,
    code: Option<&str>,
    connection: bool,
    group: Option<(&str, &str)>,
) -> Result<BackendError, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    if let Some(code) = code {
        return Ok(match code {
            "NOGROUP" => match group {
                Some((stream, group)) => BackendError::NoGroup {
                    stream: stream.to_owned(),
                    group: group.to_owned(),
                },
                None => BackendError::Server(Box::new(e)),
            },
            // The server is up but refuses for now: (re)starting, failing
            // over, busy, out of memory under `noeviction`, short of
            // replicas, or unable to persist; on a cluster, a slot moving
            // (a redirection the client did not follow in time, `TRYAGAIN`
            // during a migration), the cluster being down, or a blocked
            // read released by a failover or migration (`UNBLOCKED`).
            // Retry later; never a reason to dead-letter the event being
            // written.
            "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "BUSY" | "OOM"
            | "NOREPLICAS" | "MISCONF" | "UNBLOCKED" | "MOVED" | "ASK" => {
                BackendError::Unavailable(Box::new(e))
            }
            _ => BackendError::Server(Box::new(e)),
        });
    }
    if connection {
        return Ok(BackendError::Connection(Box::new(e)));
    }
    Err(e)
}

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
        // Bounded: a double past u64::MAX is no count, not a saturated one.
        Value::Double(d) if *d >= 0.0 && d.fract() == 0.0 && *d < u64::MAX as f64 => {
            Some(*d as u64)
        }
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

/// The bytes of a string reply, moved out (no copy); the value back when it
/// is no string.
fn into_bytes(v: Value) -> Result<Vec<u8>, Value> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(other),
    }
}

/// The items of an array reply, moved out.
fn into_array(v: Value, what: &str) -> BackendResult<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Push { data, .. } => Ok(data),
        other => Err(protocol(format!(
            "{what}: expected an array, got {other:?}"
        ))),
    }
}

/// The items of an array reply of exactly `N` items, moved out.
fn into_parts<const N: usize>(v: Value, what: &str) -> BackendResult<[Value; N]> {
    into_array(v, what)?
        .try_into()
        .map_err(|items: Vec<Value>| protocol(format!("{what}: {} items, not {N}", items.len())))
}

/// An entry's field list (RESP2 flat array or RESP3 map). Takes the reply
/// by value: field values become `Bytes` over the reply's own buffers, and
/// names move into `String`s — the stream read is the router's hottest
/// reply, and copying each of its strings once more was measurable.
pub(in crate::backend) fn fields_of(v: Value) -> BackendResult<Fields> {
    fn field(k: Value, val: Value) -> BackendResult<(String, Bytes)> {
        let k = into_bytes(k).map_err(|_| protocol("non-string field name"))?;
        let val = into_bytes(val).map_err(|_| protocol("non-string field value"))?;
        // Lossy names: a poison entry must still be readable (and
        // dead-lettered), never block its shard with a decode error.
        let name = String::from_utf8(k)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok((name, Bytes::from(val)))
    }
    match v {
        Value::Map(m) => m.into_iter().map(|(k, v)| field(k, v)).collect(),
        Value::Nil => Ok(Vec::new()),
        other => {
            let a = into_array(other, "field list")?;
            if a.len() % 2 != 0 {
                return Err(protocol("field list of odd length"));
            }
            let mut out = Vec::with_capacity(a.len() / 2);
            let mut items = a.into_iter();
            while let (Some(k), Some(val)) = (items.next(), items.next()) {
                out.push(field(k, val)?);
            }
            Ok(out)
        }
    }
}

/// `[id, fields|nil]`.
pub(in crate::backend) fn entry_of(v: Value) -> BackendResult<StreamEntry> {
    let mut a = into_array(v, "stream entry")?.into_iter();
    let id = stream_id_of(&a.next().ok_or_else(|| protocol("empty stream entry"))?)?;
    let fields = match a.next() {
        None | Some(Value::Nil) => Vec::new(),
        Some(f) => fields_of(f)?,
    };
    Ok(StreamEntry { id, fields })
}

pub(in crate::backend) fn entries_of(v: Value) -> BackendResult<Vec<StreamEntry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        other => into_array(other, "entries")?
            .into_iter()
            .map(entry_of)
            .collect(),
    }
}

/// XREAD/XREADGROUP reply: nil, `[[stream, entries]...]` or a RESP3 map.
pub(in crate::backend) fn xread_entries(v: Value) -> BackendResult<Vec<StreamEntry>> {
    let mut out = Vec::new();
    match v {
        Value::Nil => {}
        Value::Map(m) => {
            for (_, entries) in m {
                out.extend(entries_of(entries)?);
            }
        }
        other => {
            for s in into_array(other, "xreadgroup reply")? {
                if let Some(entries) = into_array(s, "xreadgroup stream")?.into_iter().nth(1) {
                    out.extend(entries_of(entries)?);
                }
            }
        }
    }
    Ok(out)
}

pub(in crate::backend) fn find_field<'a>(
    pairs: &[(&'a Value, &'a Value)],
    name: &str,
) -> Option<&'a Value> {
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

/// The result of the claim script: `[[[id, deliveries, fields]...], [deleted id...]]`.
/// Taken by value, like the stream reads: the field lists move out of the
/// reply.
pub(in crate::backend) fn claim_reply(v: Value) -> BackendResult<ClaimResult> {
    let [claimed, deleted] = into_parts(v, "claim reply")?;
    let claimed = into_array(claimed, "claimed")?
        .into_iter()
        .map(|item| {
            let [id, n, fields] = into_parts(item, "claimed entry")?;
            Ok(Delivered {
                entry: StreamEntry {
                    id: stream_id_of(&id)?,
                    fields: fields_of(fields)?,
                },
                deliveries: u64_of(&n)
                    .ok_or_else(|| protocol("claimed entry: bad delivery count"))?,
            })
        })
        .collect::<BackendResult<Vec<_>>>()?;
    let deleted = array(&deleted, "deleted")?
        .iter()
        .map(stream_id_of)
        .collect::<BackendResult<Vec<_>>>()?;
    Ok(ClaimResult { claimed, deleted })
}

/// `group`'s pending count and lag in an `XINFO GROUPS` reply, `None`
/// when the stream has no such group.
pub(in crate::backend) fn group_info(
    groups: &Value,
    group: &str,
) -> BackendResult<Option<(u64, Option<u64>)>> {
    let mut found = None;
    for g in array(groups, "xinfo groups")? {
        let pairs = pairs_of(g)?;
        if find_field(&pairs, "name").and_then(bytes_of) != Some(group.as_bytes()) {
            continue;
        }
        let pending = find_field(&pairs, "pending").and_then(u64_of).unwrap_or(0);
        let lag = match find_field(&pairs, "lag") {
            Some(v) => opt_u64(v, "lag")?,
            None => None,
        };
        found = Some((pending, lag));
    }
    Ok(found)
}

/// The consumers of an `XINFO CONSUMERS` reply.
pub(in crate::backend) fn consumers_of(v: &Value) -> BackendResult<Vec<ConsumerStats>> {
    array(v, "xinfo consumers")?
        .iter()
        .map(|c| {
            let pairs = pairs_of(c)?;
            let name = find_field(&pairs, "name")
                .and_then(bytes_of)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| protocol("consumer without name"))?;
            Ok(ConsumerStats {
                name,
                pending: find_field(&pairs, "pending").and_then(u64_of).unwrap_or(0),
                idle_ms: find_field(&pairs, "idle").and_then(u64_of).unwrap_or(0),
            })
        })
        .collect()
}

/// The new entry's id in the reply of a dead-letter transaction (`XADD`
/// first).
pub(in crate::backend) fn dead_letter_id(replies: &[Value]) -> BackendResult<StreamId> {
    stream_id_of(
        replies
            .first()
            .ok_or_else(|| protocol("empty dead-letter reply"))?,
    )
}

/// The outcomes of an append pipeline: per call, whether it was a dedupe
/// script call and how many requests it carried (a plain `XADD` carries
/// one), with its reply in the same order.
pub(in crate::backend) fn append_outcomes(
    runs: Vec<(bool, usize)>,
    replies: impl IntoIterator<Item = BackendResult<Value>>,
) -> BackendResult<Vec<AppendOutcome>> {
    let mut out = Vec::new();
    for ((dedupe, n), res) in runs.into_iter().zip(replies) {
        let v = res?;
        if !dedupe {
            out.push(AppendOutcome {
                id: stream_id_of(&v)?,
                duplicate: false,
            });
            continue;
        }
        let items = array(&v, "append reply")?;
        if items.len() != n {
            return Err(protocol(format!(
                "append reply has {} items for {n} requests",
                items.len()
            )));
        }
        for item in items {
            let a = array(item, "append item")?;
            let id = a.first().ok_or_else(|| protocol("empty append item"))?;
            let duplicate = a.get(1).and_then(u64_of).unwrap_or(0) == 1;
            let id = stream_id_of(id)
                .map_err(|_| protocol(format!("dedupe marker holds no stream id: {id:?}")))?;
            out.push(AppendOutcome { id, duplicate });
        }
    }
    Ok(out)
}

/// The per-job results of the apply script's calls (one call for the
/// batch, or one per job on a cluster), in `jobs` order.
pub(in crate::backend) fn apply_results(
    jobs: &[ApplyJob],
    replies: impl IntoIterator<Item = BackendResult<Value>>,
) -> BackendResult<Vec<ApplyResult>> {
    let mut per_job = Vec::with_capacity(jobs.len());
    for r in replies {
        let v = r?;
        per_job.extend(array(&v, "apply reply")?.iter().cloned());
    }
    if per_job.len() != jobs.len() {
        return Err(protocol(format!(
            "apply reply covers {} of {} jobs",
            per_job.len(),
            jobs.len()
        )));
    }
    jobs.iter()
        .zip(per_job)
        .map(|(job, r)| parse_apply(&r, job.events.len()))
        .collect()
}

/// The state script's reply: `[epoch, top, seq, offset, state]`, no state
/// without an epoch and a state string.
pub(in crate::backend) fn state_reply(v: &Value) -> BackendResult<Option<JobState>> {
    let [epoch, top, sq, so, state] = array(v, "state reply")? else {
        return Err(protocol("state reply must have five parts"));
    };
    let (Some(epoch), Some(state)) = (opt_u64(epoch, "epoch")?, bytes_of(state)) else {
        return Ok(None);
    };
    Ok(Some(JobState {
        epoch: Epoch(epoch),
        top: Offset(opt_u64(top, "top")?.unwrap_or(0)),
        seq: opt_u64(sq, "state seq")?.unwrap_or(0),
        record: Record {
            offset: Offset(opt_u64(so, "state offset")?.unwrap_or(0)),
            payload: Payload(Bytes::copy_from_slice(state)),
        },
    }))
}

/// The history script's reply: `[epoch, top, first, start, payloads]`.
pub(in crate::backend) fn history_reply(v: &Value) -> BackendResult<HistoryPage> {
    let [epoch, top, first, start, payloads] = array(v, "history reply")? else {
        return Err(protocol("history reply must have five parts"));
    };
    let Some(epoch) = opt_u64(epoch, "epoch")? else {
        return Ok(HistoryPage::default());
    };
    let start = opt_u64(start, "start")?.unwrap_or(0);
    let records = array(payloads, "history payloads")?
        .iter()
        .map_while(bytes_of)
        .enumerate()
        .map(|(i, payload)| Record {
            offset: Offset(start + i as u64),
            payload: Payload(Bytes::copy_from_slice(payload)),
        })
        .collect::<Vec<_>>();
    Ok(HistoryPage {
        epoch: Some(Epoch(epoch)),
        top: Offset(opt_u64(top, "top")?.unwrap_or(0)),
        first: opt_u64(first, "first")?.map(Offset),
        records,
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
        let entries = xread_entries(v).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, StreamId::new(1, 1));
        assert_eq!(
            entries[0].fields,
            vec![("k".to_owned(), Bytes::from_static(b"v"))]
        );
        assert!(entries[1].is_deleted());
        assert!(xread_entries(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn claim_replies_move_their_entries_out_and_reject_bad_shapes() {
        let bulk = |b: &[u8]| Value::BulkString(b.to_vec());
        let v = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![
                bulk(b"5-1"),
                Value::Int(3),
                Value::Array(vec![bulk(b"k"), bulk(b"\xff\x00")]),
            ])]),
            Value::Array(vec![bulk(b"4-0")]),
        ]);
        let r = claim_reply(v).unwrap();
        assert_eq!(r.claimed.len(), 1);
        assert_eq!(r.claimed[0].entry.id, StreamId::new(5, 1));
        assert_eq!(r.claimed[0].deliveries, 3);
        assert_eq!(
            r.claimed[0].entry.fields,
            vec![("k".to_owned(), Bytes::from_static(b"\xff\x00"))]
        );
        assert_eq!(r.deleted, vec![StreamId::new(4, 0)]);

        let one_part = Value::Array(vec![Value::Array(vec![])]);
        assert!(claim_reply(one_part).is_err());
        let short_entry = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![bulk(b"5-1"), Value::Int(1)])]),
            Value::Array(vec![]),
        ]);
        assert!(claim_reply(short_entry).is_err());
        let bad_count = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![
                bulk(b"5-1"),
                bulk(b"many"),
                Value::Array(vec![]),
            ])]),
            Value::Array(vec![]),
        ]);
        assert!(claim_reply(bad_count).is_err());
    }

    #[test]
    fn field_lists_keep_every_name_and_value_resp2_and_resp3() {
        let bad_name = vec![b'k', 0xff];
        let flat = Value::Array(vec![
            Value::BulkString(bad_name.clone()),
            Value::BulkString(b"v1".to_vec()),
            Value::SimpleString("n".into()),
            Value::BulkString(vec![0, 159, 146, 150]),
        ]);
        let map = Value::Map(vec![
            (
                Value::BulkString(bad_name),
                Value::BulkString(b"v1".to_vec()),
            ),
            (
                Value::SimpleString("n".into()),
                Value::BulkString(vec![0, 159, 146, 150]),
            ),
        ]);
        let expected = vec![
            ("k\u{fffd}".to_owned(), Bytes::from_static(b"v1")),
            ("n".to_owned(), Bytes::from_static(&[0, 159, 146, 150])),
        ];
        assert_eq!(fields_of(flat).unwrap(), expected);
        assert_eq!(fields_of(map).unwrap(), expected);
    }

    #[test]
    fn bad_replies_are_protocol_errors() {
        assert!(matches!(
            xread_entries(Value::Int(3)),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            entry_of(Value::Array(vec![])),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            parse_apply(&Value::Array(vec![Value::Int(1)]), 1),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            fields_of(Value::Array(vec![Value::Int(1)])),
            Err(BackendError::Protocol(_))
        ));
    }
}
