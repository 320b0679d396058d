//! `POST /v1/jobs/{job_id}/events`: the publish route, so a producer in
//! any language can publish with an HTTP client instead of a Redis client
//! speaking the stream-entry format (docs/PRODUCERS.md).
//!
//! Why in the gateway: it already holds a backend connection, an HTTP
//! front with bounded connections and one rejection type, and it is the
//! one relay process producers can reach over HTTP; a separate publish
//! service would add a deployment for what is one append per request.
//!
//! The request is checked in this order, each step answering with its own
//! [`GatewayRejection`]: a publisher key is configured and presented and
//! right ([`PublisherKey`]); the job id; the body's size and JSON shape
//! ([`PublishRequest`]); the event's validity and encoded size and the
//! append itself (the gateway's `Publisher`, deduplicated at append, so a
//! retried publish yields one event and says it was a duplicate). Every
//! request is counted once in `relay_sse_publishes_total{outcome}`.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::RequestExt;
use futures::StreamExt;
use relay_core::backend::AppendOutcome;
use relay_core::{Event, JobId, PublishError, Stage, Status, TraceContext, ValidationError};
use serde::Deserialize;
use serde_json::json;

use crate::auth::bearer;
use crate::extract::Job;
use crate::gateway::Gateway;
use crate::metrics::PublishOutcome;
use crate::rejection::GatewayRejection;

/// The request carried a configured publisher key (`Authorization: Bearer
/// <key>`). Checked before anything else of the request is looked at.
#[derive(Debug)]
pub(crate) struct PublisherKey;

impl FromRequestParts<Gateway> for PublisherKey {
    type Rejection = GatewayRejection;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        gw.inner
            .opts
            .publisher_keys
            .check(bearer(&parts.headers))
            .map(|()| PublisherKey)
            .map_err(|e| GatewayRejection::PublisherKey(e).counted(&gw.inner.metrics))
    }
}

/// The JSON body of a publish: the event without what the gateway fills in
/// (the domain is the gateway's, the job comes from the path, `ts` is the
/// time of receipt). Unknown fields are refused, so a misspelt optional
/// field is an error instead of silently missing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishRequest {
    /// Producer-assigned order within the job; the idempotency key.
    seq: u64,
    /// The stage (`done` ends the job).
    stage: Stage,
    /// What happened.
    status: Status,
    /// Percent complete, 0–100.
    #[serde(default)]
    progress: Option<u64>,
    /// Arbitrary payload.
    #[serde(default)]
    data: serde_json::Value,
    /// W3C `traceparent` of the producer's span.
    #[serde(default)]
    traceparent: Option<String>,
}

impl PublishRequest {
    /// The event this request publishes for `job`, stamped now.
    fn into_event(self, gw: &Gateway, job: JobId) -> Result<Event, ValidationError> {
        let progress = match self.progress {
            Some(p) if p > u64::from(relay_core::event::MAX_PROGRESS) => {
                return Err(ValidationError::Progress { value: p })
            }
            // At most 100 here.
            p => p.map(|p| p as u8),
        };
        let trace = self
            .traceparent
            .as_deref()
            .map(TraceContext::parse_traceparent)
            .transpose()?;
        Ok(Event {
            domain: gw.inner.default_keys.domain().clone(),
            job_id: job,
            seq: self.seq,
            stage: self.stage,
            status: self.status,
            progress,
            data: self.data,
            ts: relay_core::event::now_ms(),
            trace,
        })
    }
}

/// The declared `Content-Length`, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl FromRequest<Gateway> for PublishRequest {
    type Rejection = GatewayRejection;

    /// Reads at most `max_publish_bytes` of body (a larger declared length
    /// is refused before reading; a chunked body once it passes the limit)
    /// and parses it.
    async fn from_request(req: Request, gw: &Gateway) -> Result<Self, Self::Rejection> {
        let metrics = &gw.inner.metrics;
        let max = gw.inner.opts.max_publish_bytes;
        let too_large = || GatewayRejection::BodyTooLarge { max: max as u64 }.counted(metrics);
        if content_length(req.headers()).is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut chunks = req.into_body().into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| GatewayRejection::BodyRead(e).counted(metrics))?;
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| GatewayRejection::EventBody(e).counted(metrics))
    }
}

/// `POST /v1/jobs/{job_id}/events`: publishes one event. `201` with
/// `{"id", "duplicate": false}` when appended; `200` with the original
/// entry's id and `"duplicate": true` for a repeat of an appended (job,
/// seq).
pub(crate) async fn publish_event(State(gw): State<Gateway>, req: Request) -> Response {
    let result = publish(&gw, req).await;
    let outcome = match &result {
        Ok(o) if o.duplicate => PublishOutcome::Duplicate,
        Ok(_) => PublishOutcome::Published,
        Err(rejection) => outcome_of(rejection),
    };
    gw.inner.metrics.publish(outcome);
    match result {
        Ok(o) => {
            let status = if o.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let body = json!({"id": o.id.to_string(), "duplicate": o.duplicate});
            (status, axum::Json(body)).into_response()
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// The steps of a publish, in order (see the module docs).
async fn publish(gw: &Gateway, mut req: Request) -> Result<AppendOutcome, GatewayRejection> {
    let PublisherKey = req.extract_parts_with_state::<PublisherKey, _>(gw).await?;
    let Job(job) = req.extract_parts_with_state::<Job, _>(gw).await?;
    let body: PublishRequest = req.extract_with_state(gw).await?;
    let metrics = &gw.inner.metrics;
    let event = body
        .into_event(gw, job)
        .map_err(|e| GatewayRejection::Publish(e.into()).counted(metrics))?;
    gw.inner.publisher.publish(&event).await.map_err(|e| {
        if let PublishError::Backend(err) = &e {
            tracing::warn!(error = %err, job = %event.job_id, seq = event.seq, "publish failed");
        }
        GatewayRejection::Publish(e).counted(metrics)
    })
}

/// The `outcome` a refused publish is counted under.
fn outcome_of(rejection: &GatewayRejection) -> PublishOutcome {
    use relay_core::auth::KeyError;
    use GatewayRejection as R;
    match rejection {
        R::PublisherKey(KeyError::Disabled) => PublishOutcome::Disabled,
        R::PublisherKey(KeyError::Missing) => PublishOutcome::Unauthorized,
        R::PublisherKey(KeyError::Wrong) => PublishOutcome::Forbidden,
        R::BodyTooLarge { .. } | R::Publish(PublishError::TooLarge { .. }) => {
            PublishOutcome::TooLarge
        }
        R::Publish(PublishError::Backend(e)) if e.is_transient() => PublishOutcome::Unavailable,
        R::Publish(PublishError::Invalid(_))
        | R::InvalidJobId(_)
        | R::BodyRead(_)
        | R::EventBody(_)
        | R::Path(_) => PublishOutcome::Invalid,
        _ => PublishOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<PublishRequest, serde_json::Error> {
        serde_json::from_str(body)
    }

    #[test]
    fn request_bodies() {
        let r = parse(r#"{"seq":10,"stage":"vision","status":"started"}"#).unwrap();
        assert_eq!(
            (r.seq, r.stage.as_str(), r.status),
            (10, "vision", Status::Started)
        );
        assert_eq!(r.progress, None);
        assert!(r.data.is_null());
        for (body, syntax) in [
            ("", true),
            ("{", true),
            (r#"{"seq":1,"stage":"a","status":"started"} x"#, true),
            (r#"{"stage":"a","status":"started"}"#, false),
            (r#"{"seq":"1","stage":"a","status":"started"}"#, false),
            (r#"{"seq":-1,"stage":"a","status":"started"}"#, false),
            (r#"{"seq":1,"stage":"a b","status":"started"}"#, false),
            (r#"{"seq":1,"stage":"a","status":"running"}"#, false),
            (
                r#"{"seq":1,"stage":"a","status":"started","progres":5}"#,
                false,
            ),
        ] {
            let err = parse(body).expect_err(body);
            assert_eq!(!err.is_data(), syntax, "{body}: {err}");
        }
    }
}
