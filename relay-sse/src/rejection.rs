//! [`GatewayRejection`]: the one error type of the gateway's routes.
//!
//! Every refusal, whether an extractor's (a bad job id, a bad token) or a
//! handler's (an unknown job), is a variant here, and this one
//! `IntoResponse` gives each its status, its `{"detail": …, "code": …}`
//! body and its headers. Clients (and `tests/rejections.rs`) rely on those
//! exact answers; keeping them in one place keeps the routes from drifting
//! apart. The eco2 routes keep their own rules (10-character minimum,
//! `422` for the query parameter) as their own variants, and so does the
//! publish route (`POST /v1/jobs/{job_id}/events`: publisher keys, event
//! bodies, append failures).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use relay_core::auth::{AuthError, KeyError};
use relay_core::{PublishError, ValidationError};
use serde_json::json;

use crate::metrics::Metrics;

/// The eco2 API's shortest job id.
pub(crate) const ECO2_MIN_JOB_ID: usize = 10;

/// `Retry-After` of a publish the backend refused for now, in seconds.
pub(crate) const PUBLISH_RETRY_AFTER_SECS: &str = "1";

/// Why a job id was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadJobId {
    /// eco2 job ids have at least [`ECO2_MIN_JOB_ID`] characters.
    #[error("job_id must be at least {ECO2_MIN_JOB_ID} characters")]
    TooShort,
    /// Not a job id at all (length, characters).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// Why a request was refused: see the module docs. `Display` is the
/// answer's `detail`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayRejection {
    /// The job id in the path is invalid: `400 INVALID_JOB_ID`.
    #[error(transparent)]
    InvalidJobId(BadJobId),
    /// eco2 `/api/v1/stream`: the `job_id` query parameter is missing or
    /// invalid: `422 INVALID_JOB_ID` (the status of the eco2 API's own
    /// query validation).
    #[error(transparent)]
    InvalidJobIdParam(BadJobId),
    /// eco2 `/api/v1/{domain}/…` with a domain other than `scan` or `chat`:
    /// `404 NOT_FOUND`.
    #[error("unknown domain")]
    UnknownDomain,
    /// The stream token is missing, invalid or expired (`401`, with
    /// `WWW-Authenticate: Bearer`), or for another job (`403 FORBIDDEN`).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The job has no history: `404 JOB_NOT_FOUND`.
    #[error("job not found")]
    JobNotFound,
    /// The backend failed while answering a JSON route:
    /// `503 BACKEND_UNAVAILABLE`. (SSE routes answer a retry-only stream
    /// instead: an EventSource stops for good on a 5xx.)
    #[error(transparent)]
    BackendUnavailable(relay_core::BackendError),
    /// A declared request body over `max_body_bytes`: `413 BODY_TOO_LARGE`,
    /// and the connection is closed (its body is not read).
    #[error("request bodies are limited to {max} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        max: u64,
    },
    /// Publish route: publishing is disabled (no publisher key configured:
    /// `403 PUBLISH_DISABLED`), or the `Authorization: Bearer` key is
    /// missing (`401 UNAUTHORIZED`, with `WWW-Authenticate: Bearer`) or
    /// wrong (`403 FORBIDDEN`).
    #[error(transparent)]
    PublisherKey(#[from] KeyError),
    /// Publish route: the request body could not be read (the client went
    /// away, or sent a malformed chunked body): `400 INVALID_BODY`.
    #[error("cannot read the request body: {0}")]
    BodyRead(#[source] axum::Error),
    /// Publish route: the body is not JSON (`400 INVALID_JSON`), or JSON
    /// that is not an event (a field missing, of the wrong type or unknown;
    /// an invalid stage or status): `422 INVALID_EVENT`.
    #[error("invalid event body: {0}")]
    EventBody(#[source] serde_json::Error),
    /// Publish route: the event was refused or could not be appended —
    /// invalid (`422 INVALID_EVENT`), its stream entry too large
    /// (`413 EVENT_TOO_LARGE`), the backend refusing writes or unreachable
    /// (`503 BACKEND_UNAVAILABLE` with `Retry-After`: retrying the same
    /// seq is safe), any other failure (`500 PUBLISH_FAILED`).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A path segment axum cannot decode: axum's own plain-text answer.
    #[error(transparent)]
    Path(#[from] PathRejection),
    /// A query string axum cannot decode: axum's own plain-text answer.
    #[error(transparent)]
    Query(#[from] QueryRejection),
}

impl GatewayRejection {
    /// Status and `code` of the answer (`Path`, `Query`: axum's status;
    /// their answer is axum's own text, without a code).
    fn status_code(&self) -> (StatusCode, &'static str) {
        use GatewayRejection as R;
        match self {
            R::InvalidJobId(_) => (StatusCode::BAD_REQUEST, "INVALID_JOB_ID"),
            R::InvalidJobIdParam(_) => (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_JOB_ID"),
            R::UnknownDomain => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            R::Auth(AuthError::WrongJob) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            R::Auth(AuthError::Expired) => (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED"),
            R::Auth(AuthError::Missing | AuthError::Invalid) => {
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
            }
            R::JobNotFound => (StatusCode::NOT_FOUND, "JOB_NOT_FOUND"),
            R::BackendUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "BACKEND_UNAVAILABLE"),
            R::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE"),
            R::PublisherKey(KeyError::Disabled) => (StatusCode::FORBIDDEN, "PUBLISH_DISABLED"),
            R::PublisherKey(KeyError::Missing) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            R::PublisherKey(KeyError::Wrong) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            R::BodyRead(_) => (StatusCode::BAD_REQUEST, "INVALID_BODY"),
            R::EventBody(e) if e.is_data() => (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_EVENT"),
            R::EventBody(_) => (StatusCode::BAD_REQUEST, "INVALID_JSON"),
            R::Publish(PublishError::Invalid(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_EVENT")
            }
            R::Publish(PublishError::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "EVENT_TOO_LARGE")
            }
            R::Publish(PublishError::Backend(e)) if e.is_transient() => {
                (StatusCode::SERVICE_UNAVAILABLE, "BACKEND_UNAVAILABLE")
            }
            R::Publish(_) => (StatusCode::INTERNAL_SERVER_ERROR, "PUBLISH_FAILED"),
            R::Path(r) => (r.status(), "INVALID_PATH"),
            R::Query(r) => (r.status(), "INVALID_QUERY"),
        }
    }

    /// The `reason` label this refusal counts under in
    /// `relay_sse_rejected_total` (`None`: not counted, like any request
    /// for a path that is not a route).
    pub(crate) fn reason(&self) -> Option<&'static str> {
        use GatewayRejection as R;
        match self {
            R::InvalidJobId(_) | R::InvalidJobIdParam(_) => Some("invalid_job_id"),
            R::Auth(AuthError::WrongJob) => Some("forbidden"),
            R::Auth(_) => Some("unauthorized"),
            R::JobNotFound => Some("not_found"),
            R::BodyTooLarge { .. } => Some("body_too_large"),
            R::PublisherKey(KeyError::Disabled) => Some("publish_disabled"),
            R::PublisherKey(KeyError::Missing) => Some("unauthorized"),
            R::PublisherKey(KeyError::Wrong) => Some("forbidden"),
            R::BodyRead(_) => Some("invalid_body"),
            R::EventBody(_) | R::Publish(PublishError::Invalid(_)) => Some("invalid_event"),
            R::Publish(PublishError::TooLarge { .. }) => Some("event_too_large"),
            R::UnknownDomain
            | R::BackendUnavailable(_)
            | R::Publish(_)
            | R::Path(_)
            | R::Query(_) => None,
        }
    }

    /// Counts this refusal in `metrics` (see [`GatewayRejection::reason`]).
    pub(crate) fn counted(self, metrics: &Metrics) -> Self {
        if let Some(reason) = self.reason() {
            metrics.reject(reason);
        }
        self
    }
}

impl IntoResponse for GatewayRejection {
    fn into_response(self) -> Response {
        let this = match self {
            GatewayRejection::Path(r) => return r.into_response(),
            GatewayRejection::Query(r) => return r.into_response(),
            this => this,
        };
        let (status, code) = this.status_code();
        let body = json!({"detail": this.to_string(), "code": code});
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(this, GatewayRejection::BodyTooLarge { .. }) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let GatewayRejection::Publish(PublishError::Backend(_)) = &this {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(PUBLISH_RETRY_AFTER_SECS),
                );
            }
        }
        resp
    }
}
