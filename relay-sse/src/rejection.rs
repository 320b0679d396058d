//! Error answers of the gateway's routes: `{"detail": …, "code": …}` JSON
//! with the matching status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A JSON error answer.
pub(crate) fn json_error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let detail: String = detail.into();
    (status, axum::Json(json!({"detail": detail, "code": code}))).into_response()
}
