//! The route handlers. Each takes what its route names through typed
//! extractors (a valid, authorized job; the client's last event id), so a
//! handler only runs for a request it can answer, then answers it (JSON,
//! text) or opens a stream ([`crate::open`]). Their errors are
//! [`GatewayRejection`]s.

use axum::extract::{FromRequestParts, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Authorized;
use crate::extract::{DefaultDomainStream, Eco2PathJob, Job, LastEventId};
use crate::frame::{self, Framing};
use crate::gateway::Gateway;
use crate::open::sse_response;
use crate::rejection::GatewayRejection;

/// `GET /healthz`.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: `200` while the subscriber connection is up, else `503`.
pub(crate) async fn readyz(State(gw): State<Gateway>) -> Response {
    if gw.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "subscriber down").into_response()
    }
}

/// `GET /metrics`: the gateway's metrics, Prometheus text.
pub(crate) async fn metrics_handler(State(gw): State<Gateway>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.inner.metrics.render(),
    )
        .into_response()
}

/// `GET /`: the demo page (when enabled).
pub(crate) async fn demo_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../static/demo.html"),
    )
        .into_response()
}

/// `GET /v1/jobs/{job_id}/events` (native framing) and `GET
/// /api/v1/stream?job_id=` (eco2): the job's event stream in the gateway's
/// default domain. The route's extractor names the job and, through
/// [`DefaultDomainStream`], how the stream is framed.
pub(crate) async fn default_domain_events<J>(
    State(gw): State<Gateway>,
    Authorized(named): Authorized<J>,
    LastEventId(last): LastEventId,
) -> Result<Response, GatewayRejection>
where
    J: DefaultDomainStream + FromRequestParts<Gateway, Rejection = GatewayRejection> + Send,
{
    let keys = gw.inner.default_keys.clone();
    let job = named.job().clone();
    sse_response(gw, job, keys, J::FRAMING, last).await
}

/// `GET /v1/jobs/{job_id}/state`: the job's state (its highest-seq event
/// and the history's top) as JSON.
pub(crate) async fn native_state(
    State(gw): State<Gateway>,
    Authorized(Job(job)): Authorized<Job>,
) -> Result<Response, GatewayRejection> {
    let keys = gw.inner.default_keys.job(&job);
    match gw.inner.backend.get_state(&keys).await {
        Ok(Some(state)) => {
            let mut body = frame::state_json(&state);
            body["job_id"] = json!(job.as_str());
            Ok(axum::Json(body).into_response())
        }
        Ok(None) => Err(GatewayRejection::JobNotFound),
        Err(e) => Err(GatewayRejection::BackendUnavailable(e)),
    }
}

/// `GET /api/v1/{scan|chat}/{job_id}/events`: the job's eco2 event stream
/// in that domain.
pub(crate) async fn eco2_events(
    State(gw): State<Gateway>,
    Authorized(Eco2PathJob { keys, job }): Authorized<Eco2PathJob>,
    LastEventId(last): LastEventId,
) -> Result<Response, GatewayRejection> {
    sse_response(gw, job, keys, Framing::Eco2, last).await
}
