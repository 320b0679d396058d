//! The scan HTTP API (WIRE.md "Scan API"), as an axum [`Router`] builder so
//! the `api` binary, the demo and tests mount the same code.
//!
//! - `POST /api/v1/scan`: header `X-User-ID` required (401), optional
//!   `X-Idempotency-Key` (atomic `SET NX`; a repeat returns the first
//!   response), body `{"image_url","user_input"?,"model"?}` bounded by
//!   [`ApiConfig::body_limit`] (413). Emits `queued`, then enqueues; when the
//!   enqueue fails the job gets its terminal `failed` event and the client a
//!   503 — never an orphan job.
//! - `GET /api/v1/scan/{job_id}/result`: 200 with the stored result, 202
//!   `{"status":"processing","current_stage","progress"}` + `Retry-After: 2`
//!   while running, 404 `RESULT_NOT_FOUND` when unknown.
//!
//! With [`ApiConfig::auth_secret`] set (`pipeline-scan api --auth-secret`,
//! the same secret as `relay-sse --auth-secret`), the submit response also
//! carries a gateway stream token for the new job, issued with
//! [`relay_core::auth::issue_at`] (HMAC-SHA256 over job id and expiry):
//!
//! ```json
//! {"job_id":"…","status":"queued",
//!  "stream_url":"/api/v1/scan/{job}/events?token=<token>",
//!  "result_url":"/api/v1/scan/{job}/result",
//!  "token":"<token>","token_expires_at":1767000000}
//! ```
//!
//! The token opens only that job's stream (another job: 403), until
//! `token_expires_at` (unix seconds, [`ApiConfig::token_ttl`] after submit);
//! send it as `?token=` (EventSource) or `Authorization: Bearer <token>`.
//! Without a secret the response is exactly the eco2 shape.
//!
//! Every error is JSON `{"detail": "...", "code": "..."}`:
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `INVALID_JSON` | body is not JSON |
//! | 400 | `INVALID_USER_ID` | `X-User-ID` is not 1–128 chars of `[A-Za-z0-9._:@-]` |
//! | 400 | `INVALID_IDEMPOTENCY_KEY` | key not 1–128 printable ASCII chars |
//! | 400 | `INVALID_JOB_ID` | malformed job id on the result route |
//! | 401 | `MISSING_USER_ID` | no `X-User-ID` |
//! | 404 | `RESULT_NOT_FOUND` | unknown job |
//! | 413 | `PAYLOAD_TOO_LARGE` | body over the limit |
//! | 422 | `VALIDATION_ERROR` | missing field / wrong type |
//! | 422 | `INVALID_IMAGE_URL` | not an absolute http/https URL |
//! | 422 | `IMAGE_URL_NOT_ALLOWED` | private/loopback/link-local host, or host not allow-listed |
//! | 422 | `UNSUPPORTED_MODEL` | model not in the allow-list |
//! | 503 | `EVENT_STORE_UNAVAILABLE` / `QUEUE_UNAVAILABLE` | backend / broker down |

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use relay_core::{auth, Backend, Decoded, JobId, KeySpace, Publisher};
use serde_json::{json, Value};

use crate::pipeline::{Envelope, JobControl, JobStore};
use crate::scan::{self, ScanHooks, ScanRequest};
use crate::transport::Transport;

/// API settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest accepted request body, bytes.
    pub body_limit: usize,
    /// Longest accepted image URL, bytes.
    pub max_url_len: usize,
    /// When non-empty, image URL hosts must be one of these (or a subdomain).
    pub allowed_hosts: Vec<String>,
    /// Accept private, loopback and link-local hosts (off by default: SSRF).
    pub allow_private_hosts: bool,
    /// Accepted `model` values (`model` absent or null is always accepted).
    pub models: Vec<String>,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// HMAC secret shared with the SSE gateway (`relay-sse --auth-secret`).
    /// When set, a submission's response carries a stream token for its job
    /// (see the module docs); `None`: no token (the gateway is open).
    pub auth_secret: Option<Vec<u8>>,
    /// How long an issued stream token is valid.
    pub token_ttl: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            max_url_len: 2048,
            allowed_hosts: Vec::new(),
            allow_private_hosts: false,
            models: vec!["gpt-4o-mini".into(), "gpt-4o".into(), "simulated".into()],
            idempotency_ttl: Duration::from_secs(3600),
            auth_secret: None,
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// The API's dependencies.
#[derive(Clone)]
pub struct ScanApi {
    backend: Arc<dyn Backend>,
    keys: KeySpace,
    control: JobControl,
    transport: Arc<dyn Transport>,
    config: Arc<ApiConfig>,
}

impl std::fmt::Debug for ScanApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanApi")
            .field("transport", &self.transport.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ScanApi {
    /// An API emitting through `publisher` (domain `scan`) and submitting to `transport`.
    pub fn new(publisher: Publisher, transport: Arc<dyn Transport>, config: ApiConfig) -> Self {
        let backend = publisher.backend().clone();
        let keys = publisher.keys().clone();
        let engine_defaults = scan::engine_config();
        let store = JobStore::new(
            backend.clone(),
            engine_defaults.domain,
            engine_defaults.record_ttl,
        );
        let control = JobControl::new(
            publisher,
            store,
            Arc::new(ScanHooks::new(backend.clone())),
            scan::STAGES,
        );
        Self {
            backend,
            keys,
            control,
            transport,
            config: Arc::new(config),
        }
    }

    /// The routes (`POST /api/v1/scan`, `GET /api/v1/scan/{job_id}/result`).
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/v1/scan", post(submit))
            .route("/api/v1/scan/{job_id}/result", get(result))
            .with_state(self)
    }
}

/// A JSON API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "detail": self.detail, "code": self.code })),
        )
            .into_response()
    }
}

fn job_marker(job: &JobId) -> String {
    format!("{}:job:{job}", scan::DOMAIN)
}

fn idempotency_key(user: &str, key: &str) -> String {
    format!("{}:idempotency:{user}:{key}", scan::DOMAIN)
}

#[doc(hidden)]
pub fn user_id(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(raw) = headers.get("x-user-id") else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "MISSING_USER_ID",
            "the X-User-ID header is required",
        ));
    };
    let v = raw.to_str().unwrap_or("").trim();
    if v.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "MISSING_USER_ID",
            "the X-User-ID header is required",
        ));
    }
    if v.len() > 128
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'@'))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_USER_ID",
            "X-User-ID must be 1-128 characters of [A-Za-z0-9._:@-]",
        ));
    }
    Ok(v.to_owned())
}

#[doc(hidden)]
pub fn idempotency(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("x-idempotency-key") else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(v.to_owned()))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_IDEMPOTENCY_KEY",
            "X-Idempotency-Key must be 1-128 printable ASCII characters",
        )),
    }
}

/// Whether an IP address is private, loopback, link-local or otherwise not a
/// public unicast address. An IPv6 address that embeds an IPv4 one (mapped,
/// NAT64, 6to4) is judged by the IPv4 address it reaches.
pub fn is_non_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0], o[1], o[2]) == (192, 0, 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let v4 = |hi: u16, lo: u16| std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
            // IPv4 addresses a translator or tunnel delivers to: mapped
            // (::ffff:0:0/96), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
            let embedded = match s {
                [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
                    Some(v4(hi, lo))
                }
                [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
                _ => None,
            };
            match embedded {
                Some(ip) => is_non_public_ip(IpAddr::V4(ip)),
                // ::/16 holds unspecified, loopback and the deprecated
                // IPv4-compatible addresses; then local NAT64, discard-only,
                // documentation, unique-local, link-local, site-local, multicast.
                None => {
                    s[0] == 0
                        || (s[0], s[1], s[2]) == (0x64, 0xff9b, 1)
                        || s[..4] == [0x100, 0, 0, 0]
                        || (s[0], s[1]) == (0x2001, 0xdb8)
                        || (s[0] & 0xfe00) == 0xfc00
                        || (s[0] & 0xffc0) == 0xfe80
                        || (s[0] & 0xffc0) == 0xfec0
                        || v6.is_multicast()
                }
            }
        }
    }
}

/// Validates an image URL against the API config.
pub fn validate_image_url(raw: &str, config: &ApiConfig) -> Result<(), ApiError> {
    let invalid = |why: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_IMAGE_URL",
            format!("image_url {why}"),
        )
    };
    let denied = |why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IMAGE_URL_NOT_ALLOWED",
            why,
        )
    };
    if raw.len() > config.max_url_len {
        return Err(invalid("is too long"));
    }
    let url = url::Url::parse(raw).map_err(|_| invalid("is not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must use http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not contain credentials"));
    }
    let host = url.host().ok_or_else(|| invalid("has no host"))?;
    let host_name = match &host {
        url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    if !config.allow_private_hosts {
        let private = match host {
            url::Host::Ipv4(ip) => is_non_public_ip(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => is_non_public_ip(IpAddr::V6(ip)),
            url::Host::Domain(_) => {
                host_name == "localhost"
                    || host_name.ends_with(".localhost")
                    || host_name.ends_with(".local")
                    || host_name.ends_with(".internal")
            }
        };
        if private {
            return Err(denied(format!(
                "image_url host {host_name} is private, loopback or link-local"
            )));
        }
    }
    if !config.allowed_hosts.is_empty()
        && !config.allowed_hosts.iter().any(|h| {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            host_name == h || host_name.ends_with(&format!(".{h}"))
        })
    {
        return Err(denied(format!("image_url host {host_name} is not allowed")));
    }
    Ok(())
}

#[doc(hidden)]
pub fn parse_request(body: &[u8], config: &ApiConfig) -> Result<ScanRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
            "request body must be a JSON object",
        ));
    }
    let req: ScanRequest = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
            e.to_string(),
        )
    })?;
    validate_image_url(&req.image_url, config)?;
    if let Some(model) = &req.model {
        if !config.models.iter().any(|m| m == model) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UNSUPPORTED_MODEL",
                format!(
                    "model {model:?} is not supported; allowed: {}",
                    config.models.join(", ")
                ),
            ));
        }
    }
    Ok(req)
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

fn unavailable(code: &'static str, detail: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
}

async fn submit(
    State(api): State<ScanApi>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = user_id(&headers)?;
    let idem = idempotency(&headers)?;
    let raw = read_body(&headers, body, api.config.body_limit).await?;
    let req = parse_request(&raw, &api.config)?;

    let job = JobId::new(uuid::Uuid::new_v4().to_string())
        .map_err(|e| unavailable("INTERNAL", e.to_string()))?;
    let mut response = json!({
        "job_id": job.as_str(),
        "stream_url": format!("/api/v1/scan/{job}/events"),
        "result_url": format!("/api/v1/scan/{job}/result"),
        "status": "queued",
    });
    if let Some(secret) = &api.config.auth_secret {
        let expires = auth::now_unix().saturating_add(api.config.token_ttl.as_secs());
        let token = auth::issue_at(secret, &job, expires);
        // Tokens are URL-safe (base64url, digits and dots): no escaping needed.
        response["stream_url"] = json!(format!("/api/v1/scan/{job}/events?token={token}"));
        response["token"] = json!(token);
        response["token_expires_at"] = json!(expires);
    }

    let idem_key = idem.map(|k| idempotency_key(&user, &k));
    if let Some(key) = &idem_key {
        let stored = Bytes::from(response.to_string());
        let fresh = api
            .backend
            .set_nx(key, stored, Some(api.config.idempotency_ttl))
            .await
            .map_err(|e| unavailable("EVENT_STORE_UNAVAILABLE", e.to_string()))?;
        if !fresh {
            let previous = api
                .backend
                .get(key)
                .await
                .map_err(|e| unavailable("EVENT_STORE_UNAVAILABLE", e.to_string()))?;
            if let Some(prev) = previous.and_then(|p| serde_json::from_slice::<Value>(&p).ok()) {
                return Ok((StatusCode::OK, Json(prev)).into_response());
            }
        }
    }

    let forget_idem = |api: ScanApi, key: Option<String>| async move {
        if let Some(k) = key {
            let _ = api.backend.delete(&[k]).await;
        }
    };

    // 1. The job exists (for the result route) and has its `queued` event
    //    before any worker can emit a stage event.
    let marker = api
        .backend
        .set(
            &job_marker(&job),
            Bytes::copy_from_slice(user.as_bytes()),
            Some(scan::RESULT_TTL),
        )
        .await;
    let queued = match marker {
        Ok(()) => {
            api.control
                .queued(&job, json!({ "image_url": req.image_url }))
                .await
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = queued {
        forget_idem(api.clone(), idem_key).await;
        return Err(unavailable(
            "EVENT_STORE_UNAVAILABLE",
            format!("cannot record the job: {e}"),
        ));
    }

    // 2. Enqueue; a failure ends the job with its terminal `failed` event.
    let input = serde_json::to_value(&req).map_err(|e| unavailable("INTERNAL", e.to_string()))?;
    let mut envelope = Envelope::first(job.clone(), user.clone(), input);
    envelope.traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| relay_core::TraceContext::parse_traceparent(v).is_ok())
        .map(str::to_owned);
    if let Err(e) = api.transport.submit(envelope).await {
        tracing::error!(job = %job, error = %e, "enqueue failed; failing the job");
        let info = crate::pipeline::JobInfo {
            job_id: job.clone(),
            user_id: user,
            run: 0,
        };
        let reason = format!("enqueue failed: {e}");
        if let Err(e2) = api.control.fail(&info, None, &reason, None).await {
            tracing::error!(job = %job, error = %e2, "could not emit the failed event");
        }
        forget_idem(api.clone(), idem_key).await;
        let mut err = unavailable("QUEUE_UNAVAILABLE", reason);
        err.detail.push_str(&format!(" (job {job} failed)"));
        return Err(err);
    }
    Ok((StatusCode::OK, Json(response)).into_response())
}

async fn result(State(api): State<ScanApi>, Path(job): Path<String>) -> Result<Response, ApiError> {
    let job = JobId::new(job).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_JOB_ID",
            format!("invalid job id: {e}"),
        )
    })?;
    let store_err =
        |e: relay_core::BackendError| unavailable("EVENT_STORE_UNAVAILABLE", e.to_string());
    if let Some(raw) = api
        .backend
        .get(&scan::result_key(&job))
        .await
        .map_err(store_err)?
    {
        let mut resp = Response::new(Body::from(raw));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    if api
        .backend
        .get(&job_marker(&job))
        .await
        .map_err(store_err)?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "RESULT_NOT_FOUND",
            format!("no result for job {job}"),
        ));
    }
    let (stage, progress) = match api.backend.get_state(&api.keys.job(&job)).await {
        Ok(Some(state)) => match state.record.payload.decode() {
            Ok(Decoded::Native(e)) => (e.stage.to_string(), json!(e.progress.unwrap_or(0))),
            Ok(Decoded::Eco2(r)) => {
                let progress = serde_json::from_slice::<Value>(&r.raw)
                    .ok()
                    .and_then(|v| v.get("progress").cloned())
                    .unwrap_or(json!(0));
                (r.stage.to_string(), progress)
            }
            Err(_) => (crate::pipeline::QUEUED_STAGE.to_owned(), json!(0)),
        },
        _ => (crate::pipeline::QUEUED_STAGE.to_owned(), json!(0)),
    };
    let body = json!({ "status": "processing", "current_stage": stage, "progress": progress });
    Ok((
        StatusCode::ACCEPTED,
        [(header::RETRY_AFTER, HeaderValue::from_static("2"))],
        Json(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `scan_api` fuzz target (`http://[::2]/a.jpg` was
    /// accepted): reserved IPv6 ranges, and IPv6 forms that deliver to a
    /// private IPv4 address through a translator or tunnel, are not public.
    #[test]
    fn reserved_and_embedded_private_addresses_are_refused() {
        let c = ApiConfig::default();
        for private in [
            "http://[::2]/a.jpg",
            "http://[::127.0.0.1]/a.jpg",
            "http://[::a00:1]/a.jpg",
            "http://[64:ff9b::7f00:1]/a.jpg",
            "http://[64:ff9b::10.0.0.1]/a.jpg",
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "http://[2002:7f00:1::1]/a.jpg",
            "http://[2002:c0a8:101::]/a.jpg",
            "http://[64:ff9b:1::1]/a.jpg",
            "http://[fec0::1]/a.jpg",
            "http://[2001:db8::1]/a.jpg",
            "http://[100::1]/a.jpg",
            "http://192.0.0.8/a.jpg",
        ] {
            assert_eq!(
                validate_image_url(private, &c).map_err(|e| e.code),
                Err("IMAGE_URL_NOT_ALLOWED"),
                "{private}"
            );
        }
        for public in [
            "http://[2606:4700::1111]/a.jpg",
            "http://[64:ff9b::5db8:d822]/a.jpg",
            "http://[2002:5db8:d822::1]/a.jpg",
            "http://192.0.1.1/a.jpg",
        ] {
            assert!(validate_image_url(public, &c).is_ok(), "{public}");
        }
    }

    #[test]
    fn url_rules() {
        let c = ApiConfig::default();
        assert!(validate_image_url("https://images.example.com/a.jpg", &c).is_ok());
        assert!(validate_image_url("http://93.184.216.34/a.jpg", &c).is_ok());
        for bad in [
            "ftp://example.com/a.jpg",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "not a url",
            "https://user:pw@example.com/a.jpg",
        ] {
            assert_eq!(
                validate_image_url(bad, &c).unwrap_err().code,
                "INVALID_IMAGE_URL",
                "{bad}"
            );
        }
        for private in [
            "http://127.0.0.1/a.jpg",
            "http://10.1.2.3/a.jpg",
            "http://192.168.0.1/a.jpg",
            "http://172.16.5.4/a.jpg",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/a.jpg",
            "http://[fd00::1]/a.jpg",
            "http://[fe80::1]/a.jpg",
            "http://[::ffff:127.0.0.1]/a.jpg",
            "http://0.0.0.0/a.jpg",
            "http://localhost/a.jpg",
            "http://2130706433/a.jpg",
        ] {
            assert_eq!(
                validate_image_url(private, &c).unwrap_err().code,
                "IMAGE_URL_NOT_ALLOWED",
                "{private}"
            );
        }
        let open = ApiConfig {
            allow_private_hosts: true,
            ..ApiConfig::default()
        };
        assert!(validate_image_url("http://127.0.0.1/a.jpg", &open).is_ok());
        let listed = ApiConfig {
            allowed_hosts: vec!["example.com".into()],
            ..ApiConfig::default()
        };
        assert!(validate_image_url("https://cdn.example.com/a.jpg", &listed).is_ok());
        assert!(validate_image_url("https://example.org/a.jpg", &listed).is_err());
    }
}
