//! Stream tokens: a request for a job's events or state carries a token
//! (`Authorization: Bearer …` or `?token=`) signed for that job, when the
//! gateway has an `auth_secret`.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use relay_core::auth::{self, AuthError};
use relay_core::JobId;

use crate::gateway::Gateway;
use crate::rejection::json_error;

/// Checks the request's token against `job` (open gateway: always ok).
#[allow(clippy::result_large_err)]
pub(crate) fn check_auth(
    gw: &Gateway,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    job: &JobId,
) -> Result<(), Response> {
    let Some(secret) = &gw.inner.opts.auth_secret else {
        return Ok(());
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let token = bearer.or(params.get("token").map(String::as_str));
    match auth::verify(secret, token, job, auth::now_unix()) {
        Ok(()) => Ok(()),
        Err(e) => {
            gw.inner.metrics.reject(match e {
                AuthError::WrongJob => "forbidden",
                _ => "unauthorized",
            });
            let (status, code) = match e {
                AuthError::WrongJob => (StatusCode::FORBIDDEN, "FORBIDDEN"),
                AuthError::Expired => (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED"),
                _ => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            };
            let mut resp = json_error(status, code, e.to_string());
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Err(resp)
        }
    }
}
