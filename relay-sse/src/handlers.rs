//! The route handlers: parse the request, then answer (JSON, text) or open
//! a stream ([`crate::open`]).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use relay_core::JobId;
use serde_json::json;

use crate::auth::check_auth;
use crate::frame::{self, Framing};
use crate::gateway::Gateway;
use crate::open::sse_response;
use crate::rejection::json_error;

/// `GET /healthz`.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn readyz(State(gw): State<Gateway>) -> Response {
    if gw.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "subscriber down").into_response()
    }
}

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

pub(crate) async fn demo_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../static/demo.html"),
    )
        .into_response()
}

pub(crate) type Params = Query<HashMap<String, String>>;

pub(crate) async fn native_events(
    State(gw): State<Gateway>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let job = match JobId::new(job_id) {
        Ok(j) => j,
        Err(e) => {
            gw.inner.metrics.reject("invalid_job_id");
            return json_error(StatusCode::BAD_REQUEST, "INVALID_JOB_ID", e.to_string());
        }
    };
    let keys = gw.inner.default_keys.clone();
    sse_response(gw, job, keys, Framing::Native, headers, params).await
}

pub(crate) async fn native_state(
    State(gw): State<Gateway>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let job = match JobId::new(job_id) {
        Ok(j) => j,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "INVALID_JOB_ID", e.to_string()),
    };
    if let Err(resp) = check_auth(&gw, &headers, &params, &job) {
        return resp;
    }
    let keys = gw.inner.default_keys.job(&job);
    match gw.inner.backend.get_state(&keys).await {
        Ok(Some(state)) => {
            let mut body = frame::state_json(&state);
            body["job_id"] = json!(job.as_str());
            axum::Json(body).into_response()
        }
        Ok(None) => json_error(StatusCode::NOT_FOUND, "JOB_NOT_FOUND", "job not found"),
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "BACKEND_UNAVAILABLE",
            e.to_string(),
        ),
    }
}

#[allow(clippy::result_large_err)]
fn eco2_job(raw: Option<&str>, status: StatusCode) -> Result<JobId, Response> {
    let raw = raw.unwrap_or("");
    if raw.chars().count() < 10 {
        return Err(json_error(
            status,
            "INVALID_JOB_ID",
            "job_id must be at least 10 characters",
        ));
    }
    JobId::new(raw).map_err(|e| json_error(status, "INVALID_JOB_ID", e.to_string()))
}

pub(crate) async fn eco2_stream(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let job = match eco2_job(
        params.get("job_id").map(String::as_str),
        StatusCode::UNPROCESSABLE_ENTITY,
    ) {
        Ok(j) => j,
        Err(r) => {
            gw.inner.metrics.reject("invalid_job_id");
            return r;
        }
    };
    let keys = gw.inner.default_keys.clone();
    sse_response(gw, job, keys, Framing::Eco2, headers, params).await
}

pub(crate) async fn eco2_events(
    State(gw): State<Gateway>,
    Path((domain, job_id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let keys = match domain.as_str() {
        "scan" => gw.inner.scan_keys.clone(),
        "chat" => gw.inner.chat_keys.clone(),
        _ => return json_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown domain"),
    };
    let job = match eco2_job(Some(&job_id), StatusCode::BAD_REQUEST) {
        Ok(j) => j,
        Err(r) => {
            gw.inner.metrics.reject("invalid_job_id");
            return r;
        }
    };
    sse_response(gw, job, keys, Framing::Eco2, headers, params).await
}
