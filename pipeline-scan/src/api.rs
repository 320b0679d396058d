//! The scan HTTP API (docs/ECO2_WIRE.md "Scan API"), as an axum [`Router`] builder so
//! the `api` binary, the demo and tests mount the same code.
//!
//! - `POST /api/v1/scan`: header `X-User-ID` required (401), optional
//!   `X-Idempotency-Key` (a two-state record claimed by an atomic `SET NX`
//!   on a hash of the `(user, key)` pair — see `IdempotencyRecord` in the source; a
//!   repeat of the same request returns the first response and, when the
//!   first request died before its job was enqueued, enqueues that same job;
//!   the key reused with a different request is a 422), body `{"image_url","user_input"?,"model"?}` bounded by
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
//! | 408 | `REQUEST_TIMEOUT` | the body stalled longer than `--http-body-timeout-secs` |
//! | 413 | `PAYLOAD_TOO_LARGE` | body over the limit |
//! | 422 | `VALIDATION_ERROR` | missing field / wrong type |
//! | 422 | `IDEMPOTENCY_KEY_REUSED` | key already used by this user for a different request |
//! | 422 | `INVALID_IMAGE_URL` | not an absolute http/https URL, credentials, `\\`/space/control characters |
//! | 422 | `IMAGE_URL_NOT_ALLOWED` | host inside by its literal form ([`crate::image_url`]), or not allow-listed |
//!
//! The accepted image URL is forwarded (job input, `queued` event) in its
//! canonical serialization, never as the raw string.
//! | 422 | `UNSUPPORTED_MODEL` | model not in the allow-list |
//! | 503 | `EVENT_STORE_UNAVAILABLE` / `QUEUE_UNAVAILABLE` | backend / broker down |
//! | 503 | `IDEMPOTENCY_KEY_IN_PROGRESS` | the key's first request is still being enqueued (`Retry-After`) |

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
use relay_core::backend::KvStore;
use relay_core::http_serve::BodyReadTimeout;
use relay_core::{auth, Backend, Decoded, JobId, KeySpace, Publisher};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::image_url::{self, ImageUrlError, ImageUrlPolicy};
use crate::pipeline::{ControlError, Envelope, JobControl, JobStore};
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
    /// How long a `pending` idempotency record belongs to the request that
    /// wrote it (or to the replay that resumed it): a replay finding a
    /// younger one waits for it to be committed; an older one is taken as
    /// abandoned (the API died mid-submit) and its job is enqueued by the
    /// replay. Keep it above the longest submission (event store + broker
    /// confirm, with their retries) so a slow but live submission is not
    /// duplicated; see `IdempotencyRecord` in this module's source.
    pub idempotency_pending_lease: Duration,
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
            idempotency_pending_lease: Duration::from_secs(10),
            auth_secret: None,
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// The API's dependencies.
#[derive(Clone)]
pub struct ScanApi {
    backend: Arc<dyn Backend>,
    kv: Arc<dyn KvStore>,
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
    /// An API emitting through `publisher` (domain `scan`), keeping its
    /// idempotency records and reading results in `kv` (the workers' store,
    /// see [`crate::pipeline`]), and submitting to `transport`.
    pub fn new(
        publisher: Publisher,
        kv: Arc<dyn KvStore>,
        transport: Arc<dyn Transport>,
        config: ApiConfig,
    ) -> Self {
        let backend = publisher.backend().clone();
        let keys = publisher.keys().clone();
        let engine_defaults = scan::engine_config();
        let store = JobStore::new(
            kv.clone(),
            engine_defaults.domain,
            engine_defaults.record_ttl,
        );
        let control = JobControl::new(
            publisher,
            store,
            Arc::new(ScanHooks::new(kv.clone())),
            scan::STAGES,
        );
        Self {
            backend,
            kv,
            keys,
            control,
            transport,
            config: Arc::new(config),
        }
    }

    /// The routes (`POST /api/v1/scan`, `GET /api/v1/scan/{job_id}/result`).
    pub fn router(self) -> Router {
        Router::new()
            .route(
                "/api/v1/scan",
                post(submit).layer(axum::middleware::from_fn(crate::submit_span::submit_span)),
            )
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
    /// `Retry-After` seconds, when trying again later is the answer.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({ "detail": self.detail, "code": self.code })),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn job_marker(job: &JobId) -> String {
    format!("{}:job:{job}", scan::DOMAIN)
}

/// The store key of an idempotency record: a SHA-256 over the
/// length-prefixed `(user, key)` pair, so no two distinct pairs share a
/// record whatever characters they contain (`alice` + `k:tail` and
/// `alice:k` + `tail` are different pairs), and the key stays 64 hex chars.
fn idempotency_key(user: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"scan-idempotency-v2\0");
    h.update((user.len() as u64).to_be_bytes());
    h.update(user.as_bytes());
    h.update((key.len() as u64).to_be_bytes());
    h.update(key.as_bytes());
    format!("{}:idempotency:{}", scan::DOMAIN, hex::encode(h.finalize()))
}

/// SHA-256 (hex) of the canonical form of a validated request: its typed
/// fields re-serialized in a fixed order, so JSON that differs only in
/// whitespace, key order or ignored fields has the same fingerprint.
fn request_fingerprint(req: &ScanRequest) -> Result<String, ApiError> {
    let canonical = serde_json::to_vec(req).map_err(|e| unavailable("INTERNAL", e.to_string()))?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

/// The life cycle of an idempotency record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum RecordState {
    /// Claimed: the job id is chosen, its marker, `queued` event and
    /// enqueue may or may not have happened yet.
    Pending,
    /// The job was enqueued (the transport took responsibility for it).
    Committed,
}

/// Records written before the two states existed had no `state`; they were
/// only ever written by a request that went on to enqueue (or delete them).
fn legacy_state() -> RecordState {
    RecordState::Committed
}

/// What is stored under an idempotency key: the fingerprint of the request
/// that claimed it, the response it gets (job id and stream token) and
/// whether that job is known to be enqueued.
///
/// # Why two states
///
/// The record must be claimed (`SET NX`) before the job is created, or two
/// concurrent duplicates would create two jobs; but a process that dies
/// between the claim and the confirmed enqueue must not leave a record whose
/// replays answer 200 with a job that never runs. So the claim is written
/// [`Pending`](RecordState::Pending) with the job id it chose and the time,
/// and marked [`Committed`](RecordState::Committed) only after
/// [`Transport::submit`] returned `Ok`. A replay that finds:
///
/// - `committed`: answers with the stored response;
/// - `pending`, younger than [`ApiConfig::idempotency_pending_lease`]: the
///   first request is presumably still submitting; it polls until the record
///   is committed (the usual concurrent-duplicate case: milliseconds), or
///   deleted (the first request failed: it claims afresh), or the lease runs
///   out;
/// - `pending`, older than the lease: the first request is taken as dead. One
///   replay at a time (a second `SET NX` on [`resume_key`], living one lease)
///   re-runs the submit steps for the **same** job id and user, then commits
///   and answers with the stored response, token included.
///
/// Re-running the steps is safe because each is idempotent per job id: the
/// job marker is a plain `SET` of the same user; the `queued` event has seq
/// 0, and a repeated (job, seq) is dropped once (at apply by the router, or
/// by the publisher: see [`relay_core::publisher`]); and a second first-step
/// envelope for the job is a redelivery to the engine, which skips a job that
/// already has its terminal record (re-emitting the same terminal event),
/// reuses the recorded output of a completed stage instead of running it
/// again, and whose reward grant is a `SET NX` per (user, character) holding
/// the job id, so a job never grants twice (see `scan::reward`). The second
/// envelope exists only when the first process died after the broker's
/// confirm and before the commit (a single backend `SET`), or when a
/// submission outlived the lease; it then usually finds the job finished or
/// its stages recorded, since it is sent a lease later.
///
/// Clocks: the age is the API host's wall clock minus `claimed_at_ms`, so
/// API replicas are assumed to agree on time to well within the lease; a
/// record from the future counts as age 0 (wait).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct IdempotencyRecord {
    request_sha256: String,
    response: Value,
    #[serde(default = "legacy_state")]
    state: RecordState,
    /// Unix milliseconds when the record was claimed.
    #[serde(default)]
    claimed_at_ms: u64,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The lock a replay takes (`SET NX`, one lease long) before resuming an
/// abandoned `pending` record, so concurrent replays resume it once.
fn resume_key(record_key: &str) -> String {
    format!("{record_key}:resume")
}

/// Whether this submission claimed its idempotency key or repeats an earlier one.
enum Claim {
    /// First use: go on and create the job.
    Fresh,
    /// The same request again, its job enqueued: answer with the stored response.
    Replay(Value),
    /// The same request again, whose first submission was abandoned before
    /// the enqueue: run the submit steps for the stored job, then commit.
    Resume(IdempotencyRecord),
}

/// How often a replay re-reads a `pending` record.
const PENDING_POLL: Duration = Duration::from_millis(25);

/// Claims `key` for `record` (a `pending` record, atomic `SET NX`), or reads
/// the earlier claim: same request → [`Claim::Replay`] once committed or
/// [`Claim::Resume`] once abandoned (see [`IdempotencyRecord`]), different
/// request → 422 `IDEMPOTENCY_KEY_REUSED`; still pending after the lease →
/// 503 `IDEMPOTENCY_KEY_IN_PROGRESS`.
async fn claim_idempotency(
    api: &ScanApi,
    key: &str,
    record: &IdempotencyRecord,
) -> Result<Claim, ApiError> {
    let store = |e: relay_core::BackendError| unavailable("EVENT_STORE_UNAVAILABLE", e.to_string());
    let stored = serde_json::to_vec(record).map_err(|e| unavailable("INTERNAL", e.to_string()))?;
    let lease = api.config.idempotency_pending_lease;
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    // Long enough for a fresh pending record to become resumable; a resume
    // lock left by a replay that died answers 503 and the client retries.
    let deadline = tokio::time::Instant::now() + lease + 4 * PENDING_POLL;
    loop {
        if api
            .kv
            .set_nx(
                key,
                Bytes::from(stored.clone()),
                Some(api.config.idempotency_ttl),
            )
            .await
            .map_err(store)?
        {
            return Ok(Claim::Fresh);
        }
        // The record can expire, or be released by a failed submission,
        // between the SET NX and the GET: then claim again.
        if let Some(raw) = api.kv.get(key).await.map_err(store)? {
            let previous: IdempotencyRecord = serde_json::from_slice(&raw).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    format!("unreadable idempotency record: {e}"),
                )
            })?;
            if previous.request_sha256 != record.request_sha256 {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "IDEMPOTENCY_KEY_REUSED",
                    "X-Idempotency-Key was already used with a different request body; \
                     use a new key for a new request",
                ));
            }
            if previous.state == RecordState::Committed {
                return Ok(Claim::Replay(previous.response));
            }
            let age_ms = now_unix_ms().saturating_sub(previous.claimed_at_ms);
            if age_ms >= lease_ms
                && api
                    .kv
                    .set_nx(&resume_key(key), Bytes::from_static(b"1"), Some(lease))
                    .await
                    .map_err(store)?
            {
                return Ok(Claim::Resume(previous));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let mut err = unavailable(
                "IDEMPOTENCY_KEY_IN_PROGRESS",
                "the first request with this X-Idempotency-Key is still being submitted; \
                 retry with the same key"
                    .into(),
            );
            err.retry_after = Some(lease.as_secs().max(1));
            return Err(err);
        }
        tokio::time::sleep(PENDING_POLL).await;
    }
}

/// Marks the record committed (its job is enqueued). A failure is logged and
/// not returned: the job is accepted, and a replay that finds the record
/// still pending resumes it, which is idempotent (see [`IdempotencyRecord`]).
async fn commit_idempotency(api: &ScanApi, key: &str, mut record: IdempotencyRecord) {
    record.state = RecordState::Committed;
    let raw = match serde_json::to_vec(&record) {
        Ok(raw) => raw,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the idempotency record");
            return;
        }
    };
    if let Err(e) = api
        .kv
        .set(key, Bytes::from(raw), Some(api.config.idempotency_ttl))
        .await
    {
        tracing::warn!(error = %e, "cannot commit the idempotency record; a replay will resume it");
    }
}

/// Exposed for the fuzz targets in `fuzz/` (not a stable API).
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

/// Exposed for the fuzz targets in `fuzz/` (not a stable API).
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
/// public unicast address (see [`crate::image_url::ip_non_public`]).
pub fn is_non_public_ip(ip: IpAddr) -> bool {
    image_url::ip_non_public(ip).is_some()
}

impl From<ImageUrlError> for ApiError {
    fn from(e: ImageUrlError) -> Self {
        let code = if e.is_malformed() {
            "INVALID_IMAGE_URL"
        } else {
            "IMAGE_URL_NOT_ALLOWED"
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

/// Validates an image URL against the API config ([`crate::image_url`]) and
/// returns its canonical form, the one to forward.
pub fn validate_image_url(raw: &str, config: &ApiConfig) -> Result<url::Url, ApiError> {
    let policy = ImageUrlPolicy {
        max_len: config.max_url_len,
        allowed_hosts: &config.allowed_hosts,
        allow_private_hosts: config.allow_private_hosts,
    };
    Ok(image_url::check(raw, &policy)?)
}

/// Exposed for the fuzz targets in `fuzz/` (not a stable API).
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
    let mut req: ScanRequest = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
            e.to_string(),
        )
    })?;
    // Forward the checked URL's canonical serialization, never the raw string.
    req.image_url = validate_image_url(&req.image_url, config)?.into();
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
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if BodyReadTimeout::in_chain(&e) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                format!("the request body stalled: {e}"),
            )
        } else {
            too_large()
        }
    })
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

    let Some(idem) = idem else {
        start_job(&api, &job, &user, &req, &headers, None).await?;
        return Ok((StatusCode::OK, Json(response)).into_response());
    };
    let key = idempotency_key(&user, &idem);
    let record = IdempotencyRecord {
        request_sha256: request_fingerprint(&req)?,
        response,
        state: RecordState::Pending,
        claimed_at_ms: now_unix_ms(),
    };
    let (job, record) = match claim_idempotency(&api, &key, &record).await? {
        Claim::Fresh => (job, record),
        Claim::Replay(previous) => return Ok((StatusCode::OK, Json(previous)).into_response()),
        Claim::Resume(previous) => {
            // The key hashes this user, so the record is this user's own.
            let stored = previous
                .response
                .get("job_id")
                .and_then(Value::as_str)
                .and_then(|j| JobId::new(j).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "INTERNAL",
                        "the idempotency record has no valid job id",
                    )
                })?;
            tracing::warn!(job = %stored, "resuming a submission abandoned before its enqueue");
            (stored, previous)
        }
    };
    start_job(&api, &job, &user, &req, &headers, Some(&key)).await?;
    commit_idempotency(&api, &key, record.clone()).await;
    Ok((StatusCode::OK, Json(record.response)).into_response())
}

/// The submit steps of a job, each idempotent per job id so that a replay
/// can run them again for an abandoned submission (see
/// [`IdempotencyRecord`]): the job marker, the `queued` event, the enqueue.
/// On failure the idempotency record (if any) is released so a retry starts
/// a new job, and an enqueue failure ends this job with its terminal
/// `failed` event — never an orphan job.
async fn start_job(
    api: &ScanApi,
    job: &JobId,
    user: &str,
    req: &ScanRequest,
    headers: &HeaderMap,
    idem_key: Option<&str>,
) -> Result<(), ApiError> {
    let forget_idem = || async {
        if let Some(k) = idem_key {
            let _ = api.kv.delete(&[k.to_owned(), resume_key(k)]).await;
        }
    };

    // 1. The job exists (for the result route) and has its `queued` event
    //    before any worker can emit a stage event.
    let marker = api
        .kv
        .set(
            &job_marker(job),
            Bytes::copy_from_slice(user.as_bytes()),
            Some(scan::RESULT_TTL),
        )
        .await;
    let traceparent = crate::submit_span::job_traceparent(headers);
    let queued = match marker {
        Ok(()) => {
            let data = json!({ "image_url": req.image_url });
            let trace = traceparent.as_deref();
            api.control.queued_in_trace(job, data, trace).await
        }
        Err(e) => Err(ControlError::Store(e)),
    };
    if let Err(e) = queued {
        forget_idem().await;
        return Err(unavailable(
            "EVENT_STORE_UNAVAILABLE",
            format!("cannot record the job: {e}"),
        ));
    }

    // 2. Enqueue; a failure ends the job with its terminal `failed` event.
    let input = serde_json::to_value(req).map_err(|e| unavailable("INTERNAL", e.to_string()))?;
    let mut envelope = Envelope::first(job.clone(), user, input);
    envelope.traceparent = traceparent.clone();
    if let Err(e) = api.transport.submit(envelope).await {
        tracing::error!(job = %job, error = %e, "enqueue failed; failing the job");
        let info = crate::pipeline::JobInfo {
            job_id: job.clone(),
            user_id: user.to_owned(),
            run: 0,
        };
        let reason = format!("enqueue failed: {e}");
        let failed = api
            .control
            .fail(&info, None, &reason, traceparent.as_deref());
        if let Err(e2) = failed.await {
            tracing::error!(job = %job, error = %e2, "could not emit the failed event");
        }
        forget_idem().await;
        let mut err = unavailable("QUEUE_UNAVAILABLE", reason);
        err.detail.push_str(&format!(" (job {job} failed)"));
        return Err(err);
    }
    Ok(())
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
        .kv
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
        .kv
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
    /// accepted by the validator of that time): reserved IPv6 ranges, and
    /// IPv6 forms that deliver to a private IPv4 address through a
    /// translator or tunnel, are not public.
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
