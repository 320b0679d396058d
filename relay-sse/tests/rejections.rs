//! Every error answer of the gateway's routes, pinned whole: status, JSON
//! body (`detail` and `code`), and the headers that matter to a client
//! (`www-authenticate` on 401, `connection: close` on 413). Both serving
//! paths are checked: the gateway's own front (`Gateway::serve`) and the
//! plain axum router (`Gateway::router`, the embedding path), so moving the
//! request validation around (extractors, one rejection type) cannot change
//! what a client sees.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay_core::auth;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::Backend;
use relay_core::JobId;
use relay_sse::GatewayOptions;
use serde_json::{json, Value};

const SECRET: &[u8] = b"golden-secret";
/// A valid job id of at least 10 characters (the eco2 minimum).
const JOB: &str = "job-golden-1";
const SHORT: &str = "job_id must be at least 10 characters";
/// `JobId::new("bad id")` / `JobId::new("bad job id x")`: a space at byte 3.
const BAD_CHAR: &str = "job id may only contain [A-Za-z0-9._:-]; invalid character at byte 3";

/// One request and the answer it must get.
struct Case {
    name: &'static str,
    path: String,
    /// `Authorization` header value.
    authorization: Option<String>,
    status: u16,
    body: Value,
    /// Expected `www-authenticate` (`None`: absent).
    www_authenticate: Option<&'static str>,
}

fn case(name: &'static str, path: impl Into<String>, status: u16, body: Value) -> Case {
    Case {
        name,
        path: path.into(),
        authorization: None,
        status,
        body,
        www_authenticate: None,
    }
}

fn err(detail: &str, code: &str) -> Value {
    json!({"detail": detail, "code": code})
}

async fn start(opts: GatewayOptions, axum: bool) -> TestGateway {
    let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    if axum {
        TestGateway::start_axum(b, opts).await
    } else {
        TestGateway::start(b, opts).await
    }
}

async fn check(t: &TestGateway, cases: &[Case]) {
    for c in cases {
        let auth = c.authorization.clone();
        let got = connect_with(&t.url(&c.path), |r| match auth {
            Some(v) => r.header("authorization", v),
            None => r,
        })
        .await;
        assert_eq!(got.status, c.status, "{}: status", c.name);
        assert_eq!(got.json(), c.body, "{}: body", c.name);
        assert_eq!(
            got.headers["content-type"], "application/json",
            "{}: content-type",
            c.name
        );
        assert_eq!(
            got.headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            c.www_authenticate,
            "{}: www-authenticate",
            c.name
        );
    }
}

/// Invalid job ids, unknown domains and unknown jobs on an open gateway.
fn open_cases() -> Vec<Case> {
    let long = "a".repeat(129);
    vec![
        case(
            "native events: bad character",
            "/v1/jobs/bad%20id/events",
            400,
            err(BAD_CHAR, "INVALID_JOB_ID"),
        ),
        case(
            "native events: too long",
            format!("/v1/jobs/{long}/events"),
            400,
            err("job id must be 1-128 characters, got 129", "INVALID_JOB_ID"),
        ),
        case(
            "native state: bad character",
            "/v1/jobs/bad%20id/state",
            400,
            err(BAD_CHAR, "INVALID_JOB_ID"),
        ),
        case(
            "native state: unknown job",
            "/v1/jobs/job-missing-1/state",
            404,
            err("job not found", "JOB_NOT_FOUND"),
        ),
        case(
            "native events: unknown job",
            "/v1/jobs/job-missing-1/events",
            404,
            err("job not found", "JOB_NOT_FOUND"),
        ),
        case(
            "eco2 stream: no job_id",
            "/api/v1/stream",
            422,
            err(SHORT, "INVALID_JOB_ID"),
        ),
        case(
            "eco2 stream: short job_id",
            "/api/v1/stream?job_id=short",
            422,
            err(SHORT, "INVALID_JOB_ID"),
        ),
        case(
            "eco2 stream: bad character",
            "/api/v1/stream?job_id=bad%20job%20id%20x",
            422,
            err(BAD_CHAR, "INVALID_JOB_ID"),
        ),
        case(
            "eco2 events: short job id",
            "/api/v1/scan/short/events",
            400,
            err(SHORT, "INVALID_JOB_ID"),
        ),
        case(
            "eco2 events: bad character",
            "/api/v1/chat/bad%20job%20id%20x/events",
            400,
            err(BAD_CHAR, "INVALID_JOB_ID"),
        ),
        case(
            "eco2 events: unknown domain (checked before the job id)",
            "/api/v1/other/short/events",
            404,
            err("unknown domain", "NOT_FOUND"),
        ),
    ]
}

/// Token failures, and what is checked before the token.
fn auth_cases() -> Vec<Case> {
    let job = JobId::new(JOB).unwrap();
    let other = auth::issue(
        SECRET,
        &JobId::new("job-golden-other").unwrap(),
        Duration::from_secs(600),
    );
    let expired = auth::issue_at(SECRET, &job, 1);
    let good = auth::issue(SECRET, &job, Duration::from_secs(600));
    let missing = || err("missing token", "UNAUTHORIZED");
    let unauthorized = |mut c: Case| {
        c.www_authenticate = Some("Bearer");
        c
    };
    let bearer = |mut c: Case, token: &str| {
        c.authorization = Some(format!("Bearer {token}"));
        c
    };
    vec![
        unauthorized(case(
            "native events: no token",
            format!("/v1/jobs/{JOB}/events"),
            401,
            missing(),
        )),
        unauthorized(case(
            "native events: garbage token",
            format!("/v1/jobs/{JOB}/events?token=nope"),
            401,
            err("invalid token", "UNAUTHORIZED"),
        )),
        unauthorized({
            let mut c = case(
                "native events: not a bearer scheme",
                format!("/v1/jobs/{JOB}/events"),
                401,
                missing(),
            );
            c.authorization = Some(format!("Basic {good}"));
            c
        }),
        case(
            "native events: another job's token",
            format!("/v1/jobs/{JOB}/events?token={other}"),
            403,
            err("token is for another job", "FORBIDDEN"),
        ),
        bearer(
            case(
                "native events: another job's token as bearer",
                format!("/v1/jobs/{JOB}/events"),
                403,
                err("token is for another job", "FORBIDDEN"),
            ),
            &other,
        ),
        unauthorized(case(
            "native events: expired token",
            format!("/v1/jobs/{JOB}/events?token={expired}"),
            401,
            err("token expired", "TOKEN_EXPIRED"),
        )),
        case(
            "native events: bad job id before the token",
            "/v1/jobs/bad%20id/events",
            400,
            err(BAD_CHAR, "INVALID_JOB_ID"),
        ),
        unauthorized(case(
            "native state: no token",
            format!("/v1/jobs/{JOB}/state"),
            401,
            missing(),
        )),
        case(
            "native state: another job's token",
            format!("/v1/jobs/{JOB}/state?token={other}"),
            403,
            err("token is for another job", "FORBIDDEN"),
        ),
        bearer(
            case(
                "native state: good token, unknown job",
                format!("/v1/jobs/{JOB}/state"),
                404,
                err("job not found", "JOB_NOT_FOUND"),
            ),
            &good,
        ),
        case(
            "native state: bad job id before the token",
            "/v1/jobs/bad%20id/state",
            400,
            err(BAD_CHAR, "INVALID_JOB_ID"),
        ),
        unauthorized(case(
            "eco2 stream: no token",
            format!("/api/v1/stream?job_id={JOB}"),
            401,
            missing(),
        )),
        case(
            "eco2 stream: short job id before the token",
            "/api/v1/stream?job_id=short",
            422,
            err(SHORT, "INVALID_JOB_ID"),
        ),
        unauthorized(case(
            "eco2 events: expired token",
            format!("/api/v1/scan/{JOB}/events?token={expired}"),
            401,
            err("token expired", "TOKEN_EXPIRED"),
        )),
        case(
            "eco2 events: unknown domain before the token",
            format!("/api/v1/other/{JOB}/events"),
            404,
            err("unknown domain", "NOT_FOUND"),
        ),
        bearer(
            case(
                "eco2 events: good token, unknown job",
                format!("/api/v1/chat/{JOB}/events"),
                404,
                err("job not found", "JOB_NOT_FOUND"),
            ),
            &good,
        ),
    ]
}

fn auth_opts() -> GatewayOptions {
    GatewayOptions {
        auth_secret: Some(SECRET.to_vec()),
        ..opts()
    }
}

#[tokio::test]
async fn error_answers_on_the_front_are_pinned() {
    let t = start(opts(), false).await;
    check(&t, &open_cases()).await;
    let t = start(auth_opts(), false).await;
    check(&t, &auth_cases()).await;
}

#[tokio::test]
async fn error_answers_on_the_axum_router_are_pinned() {
    let t = start(opts(), true).await;
    check(&t, &open_cases()).await;
    let t = start(auth_opts(), true).await;
    check(&t, &auth_cases()).await;
}

/// What each refusal counts in `relay_sse_rejected_total{reason}`.
#[tokio::test]
async fn error_answers_are_counted_by_reason() {
    let t = start(opts(), false).await;
    check(&t, &open_cases()).await;
    // Every invalid job id, `/state` included (the job extractor counts
    // every refusal; the hand-written `/state` check used to skip it).
    assert_eq!(t.rejected("invalid_job_id"), 8);
    assert_eq!(t.rejected("not_found"), 1, "only the SSE route's 404");
    let t = start(auth_opts(), false).await;
    check(&t, &auth_cases()).await;
    assert_eq!(t.rejected("unauthorized"), 7);
    assert_eq!(t.rejected("forbidden"), 3);
    assert_eq!(t.rejected("invalid_job_id"), 3);
    // The eco2 route's 404 after waiting for the job; `/state`'s is an
    // answer about the job, not a refusal.
    assert_eq!(t.rejected("not_found"), 1);
}

/// A path parameter that is not UTF-8 is refused by axum's own `Path`
/// extractor: its plain-text 400 is kept as it is.
#[tokio::test]
async fn non_utf8_path_parameter_keeps_axums_answer() {
    for axum in [false, true] {
        let t = start(opts(), axum).await;
        for path in ["/v1/jobs/%FF/events", "/v1/jobs/%FF/state"] {
            let got = connect(&t.url(path), None).await;
            assert_eq!(got.status, 400, "{path}");
            assert_eq!(
                got.body.as_deref(),
                Some("Invalid URL: Invalid UTF-8 in `job_id`"),
                "{path}"
            );
        }
    }
}

/// A declared body over `max_body_bytes`: 413 with the JSON error, and the
/// connection is closed.
#[tokio::test]
async fn oversized_body_answer_is_pinned() {
    for axum in [false, true] {
        let t = start(
            GatewayOptions {
                max_body_bytes: 1024,
                ..opts()
            },
            axum,
        )
        .await;
        let got = connect_with(&t.url(&format!("/v1/jobs/{JOB}/events")), |r| {
            r.body(vec![b'x'; 2048])
        })
        .await;
        assert_eq!(got.status, 413);
        assert_eq!(
            got.json(),
            err("request bodies are limited to 1024 bytes", "BODY_TOO_LARGE")
        );
        assert_eq!(got.headers["connection"], "close");
        assert_eq!(t.rejected("body_too_large"), 1);
    }
}
