//! Confirmed publishes: every message the transport sends goes through
//! [`publish_confirmed`]; every envelope through [`publish_envelope`].

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};

use super::error::AmqpError;
use super::topology::Topology;
use crate::pipeline::Envelope;

/// Publishes persistently to `queue` and waits for the broker's confirm.
pub(super) async fn publish_confirmed(
    ch: &Channel,
    queue: &str,
    body: &[u8],
    headers: FieldTable,
) -> Result<(), AmqpError> {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers);
    let confirm = ch
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await?
        .await?;
    match confirm {
        lapin::Confirmation::Ack(None) => Ok(()),
        _ => Err(AmqpError::Rejected(queue.to_owned())),
    }
}

fn envelope_headers(env: &Envelope, topo: &Topology) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(
        "x-job-id".into(),
        AMQPValue::LongString(LongString::from(env.job_id.as_str())),
    );
    h.insert(
        "x-stage".into(),
        AMQPValue::LongString(LongString::from(
            topo.stages()
                .get(env.stage)
                .map(String::as_str)
                .unwrap_or("unknown"),
        )),
    );
    h.insert(
        "x-attempt".into(),
        AMQPValue::LongLongInt(i64::from(env.attempt)),
    );
    h
}

/// Publishes `env` as JSON to `queue` with its headers (`x-job-id`,
/// `x-stage`, `x-attempt`, and `x-reason` when given, for dead letters) and
/// waits for the broker's confirm. The one path every envelope takes: a
/// submission, a forward, a retry, a dead letter and a replay.
pub(super) async fn publish_envelope(
    ch: &Channel,
    topo: &Topology,
    queue: &str,
    env: &Envelope,
    reason: Option<&str>,
) -> Result<(), AmqpError> {
    let body = serde_json::to_vec(env)?;
    let mut headers = envelope_headers(env, topo);
    if let Some(reason) = reason {
        headers.insert("x-reason".into(), reason_header(reason));
    }
    publish_confirmed(ch, queue, &body, headers).await
}

/// The `x-reason` header value.
pub(super) fn reason_header(reason: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(reason))
}

/// A string header of a received message.
pub(super) fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
