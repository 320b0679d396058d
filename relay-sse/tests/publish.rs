//! The publish route, `POST /v1/jobs/{job_id}/events`, on both serving
//! paths (the gateway's own front, where a `POST` is handed to hyper, and
//! the plain axum router): every answer pinned (status, JSON body, the
//! headers a producer acts on), a retried publish appended once, every
//! request counted by outcome, and published events streamed to an SSE
//! client in order up to `done` through relay's router.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay_core::auth::PublisherKeys;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::{Backend, ReadFrom};
use relay_core::{JobId, RouterConfig};
use relay_sse::{GatewayOptions, PublishOutcome};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "pk-test-1";
const OTHER_KEY: &str = "pk-test-2";

fn publishing(max_publish_bytes: usize) -> GatewayOptions {
    GatewayOptions {
        publisher_keys: PublisherKeys::new([KEY, OTHER_KEY]),
        max_publish_bytes,
        ..opts()
    }
}

async fn start(opts: GatewayOptions, axum: bool) -> TestGateway {
    TestGateway::start_with(Arc::new(MemoryBackend::new()), opts, axum).await
}

/// A publish's answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn post(t: &TestGateway, job: &str, key: Option<&str>, body: impl Into<String>) -> Answer {
    let mut req = reqwest::Client::new()
        .post(t.url(&format!("/v1/jobs/{job}/events")))
        .header("content-type", "application/json")
        .body(body.into());
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = tokio::time::timeout(LIMIT, req.send())
        .await
        .expect("publish hung")
        .expect("publish sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    Answer {
        status,
        headers,
        body,
    }
}

fn err(detail: &str, code: &str) -> Value {
    json!({"detail": detail, "code": code})
}

/// Entries of `job`'s shard stream.
async fn entries(t: &TestGateway, job: &str) -> usize {
    let job = JobId::new(job).unwrap();
    let stream = t.keys.shard_stream(t.keys.shard_of(&job));
    t.backend.stream_len(&stream).await.unwrap() as usize
}

#[tokio::test]
async fn without_keys_publishing_is_disabled() {
    for axum in [false, true] {
        let t = start(opts(), axum).await;
        let got = post(
            &t,
            "job-1",
            Some(KEY),
            r#"{"seq":1,"stage":"a","status":"started"}"#,
        )
        .await;
        assert_eq!(got.status, 403);
        assert_eq!(
            got.body,
            err(
                "publishing is disabled: no publisher key is configured",
                "PUBLISH_DISABLED"
            )
        );
        assert_eq!(entries(&t, "job-1").await, 0);
        let m = t.gateway.metrics();
        assert_eq!(m.publish_count(PublishOutcome::Disabled), 1);
    }
}

#[tokio::test]
async fn every_refusal_is_pinned() {
    let progress_150 = r#"{"seq":1,"stage":"vision","status":"progress","progress":150}"#;
    let cases: Vec<(&str, Option<&str>, String, u16, Value)> = vec![
        (
            "no key",
            None,
            r#"{"seq":1,"stage":"a","status":"started"}"#.into(),
            401,
            err(
                "missing publisher key (Authorization: Bearer <key>)",
                "UNAUTHORIZED",
            ),
        ),
        (
            "wrong key",
            Some("pk-guess"),
            r#"{"seq":1,"stage":"a","status":"started"}"#.into(),
            403,
            err("wrong publisher key", "FORBIDDEN"),
        ),
        (
            "not JSON",
            Some(KEY),
            "seq=1".into(),
            400,
            err(
                "invalid event body: expected value at line 1 column 1",
                "INVALID_JSON",
            ),
        ),
        (
            "empty body",
            Some(KEY),
            String::new(),
            400,
            err(
                "invalid event body: EOF while parsing a value at line 1 column 0",
                "INVALID_JSON",
            ),
        ),
        (
            "no seq",
            Some(KEY),
            r#"{"stage":"a","status":"started"}"#.into(),
            422,
            err(
                "invalid event body: missing field `seq` at line 1 column 32",
                "INVALID_EVENT",
            ),
        ),
        (
            "unknown status",
            Some(KEY),
            r#"{"seq":1,"stage":"a","status":"running"}"#.into(),
            422,
            err(
                "invalid event body: unknown variant `running`, expected one of `started`, `progress`, `completed`, `failed` at line 1 column 39",
                "INVALID_EVENT",
            ),
        ),
        (
            "misspelt field",
            Some(KEY),
            r#"{"seq":1,"stage":"a","status":"started","progres":5}"#.into(),
            422,
            err(
                "invalid event body: unknown field `progres`, expected one of `seq`, `stage`, `status`, `progress`, `data`, `traceparent` at line 1 column 49",
                "INVALID_EVENT",
            ),
        ),
        (
            "progress over 100",
            Some(KEY),
            progress_150.into(),
            422,
            err("progress must be 0-100, got 150", "INVALID_EVENT"),
        ),
        (
            "bad traceparent",
            Some(KEY),
            r#"{"seq":1,"stage":"a","status":"started","traceparent":"00-xyz-01"}"#.into(),
            422,
            err("invalid traceparent \"00-xyz-01\"", "INVALID_EVENT"),
        ),
    ];
    for axum in [false, true] {
        let t = start(publishing(64 * 1024), axum).await;
        for (name, key, body, status, want) in &cases {
            let got = post(&t, "job-refused", *key, body.clone()).await;
            assert_eq!(got.status, *status, "{name} (axum: {axum})");
            assert_eq!(got.body, *want, "{name} (axum: {axum})");
            let www = got.headers.get("www-authenticate");
            assert_eq!(www.is_some(), *status == 401, "{name}: {www:?}");
        }
        // A bad job id in the path: the gateway's usual answer.
        let got = post(&t, "bad%20id", Some(KEY), "{}").await;
        assert_eq!(got.status, 400);
        assert_eq!(got.body["code"], "INVALID_JOB_ID");
        // An invalid stage is refused with the name rules.
        let got = post(
            &t,
            "job-refused",
            Some(KEY),
            r#"{"seq":1,"stage":"a b","status":"started"}"#,
        )
        .await;
        assert_eq!(got.status, 422);
        assert!(
            got.body["detail"]
                .as_str()
                .unwrap()
                .starts_with("invalid event body: invalid stage \"a b\""),
            "{}",
            got.body
        );
        assert_eq!(entries(&t, "job-refused").await, 0, "nothing appended");
        let m = t.gateway.metrics();
        assert_eq!(m.publish_count(PublishOutcome::Unauthorized), 1);
        assert_eq!(m.publish_count(PublishOutcome::Forbidden), 1);
        assert_eq!(m.publish_count(PublishOutcome::Invalid), 9);
        assert_eq!(m.publish_count(PublishOutcome::Published), 0);
    }
}

#[tokio::test]
async fn oversized_bodies_and_events_are_413() {
    for axum in [false, true] {
        let t = start(publishing(2048), axum).await;
        // A declared body over the limit: refused unread, connection closed.
        let got = post(&t, "job-big", Some(KEY), "x".repeat(4096)).await;
        assert_eq!(got.status, 413);
        assert_eq!(
            got.body,
            err("request bodies are limited to 2048 bytes", "BODY_TOO_LARGE")
        );
        assert_eq!(got.headers["connection"], "close");
        // A body under the limit whose stream entry is over it.
        let body = json!({"seq": 1, "stage": "a", "status": "started", "data": "d".repeat(1950)});
        let body = body.to_string();
        assert!(body.len() <= 2048);
        let got = post(&t, "job-big", Some(KEY), body).await;
        assert_eq!(got.status, 413, "{}", got.body);
        assert_eq!(got.body["code"], "EVENT_TOO_LARGE");
        let detail = got.body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("encoded event is ") && detail.ends_with("over the 2048-byte limit"),
            "{detail}"
        );
        assert_eq!(entries(&t, "job-big").await, 0);
        let m = t.gateway.metrics();
        assert_eq!(m.publish_count(PublishOutcome::TooLarge), 2);
    }
}

/// A chunked body (no declared length) is cut off once it passes the
/// limit, on the front's hyper path.
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() {
    let t = start(publishing(2048), false).await;
    let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs/job-chunked/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
    for _ in 0..3 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .expect("answered and closed");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains("BODY_TOO_LARGE"), "{got}");
    assert_eq!(
        t.gateway.metrics().publish_count(PublishOutcome::TooLarge),
        1
    );
}

#[tokio::test]
async fn a_retried_publish_is_appended_once_and_says_so() {
    for axum in [false, true] {
        let t = start(publishing(64 * 1024), axum).await;
        let body = r#"{"seq":10,"stage":"vision","status":"started","progress":5,"data":{"n":1},"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
        let first = post(&t, "job-retry", Some(KEY), body).await;
        assert_eq!(first.status, 201, "{}", first.body);
        assert_eq!(first.body["duplicate"], false);
        let id = first.body["id"].as_str().expect("entry id").to_owned();
        assert!(id.contains('-'), "{id}");
        // The retry (even with the other key, even with another body).
        let again = post(
            &t,
            "job-retry",
            Some(OTHER_KEY),
            r#"{"seq":10,"stage":"vision","status":"started"}"#,
        )
        .await;
        assert_eq!(again.status, 200);
        assert_eq!(again.body, json!({"id": id, "duplicate": true}));
        assert_eq!(entries(&t, "job-retry").await, 1);
        // What was appended is the first request's event.
        let job = JobId::new("job-retry").unwrap();
        let stream = t.keys.shard_stream(t.keys.shard_of(&job));
        t.backend.ensure_group(&stream, "check").await.unwrap();
        let read = t
            .backend
            .read_group(&stream, "check", "c", ReadFrom::New, 10, None)
            .await
            .unwrap();
        let entry = relay_core::codec::parse_native(&read[0].fields).unwrap();
        assert_eq!(entry.event.seq, 10);
        assert_eq!(entry.event.progress, Some(5));
        assert_eq!(entry.event.data, json!({"n": 1}));
        assert_eq!(entry.event.domain.as_str(), "scan");
        let trace = entry.event.trace.expect("trace kept");
        assert_eq!(trace.span_id, "00f067aa0ba902b7");
        let m = t.gateway.metrics();
        assert_eq!(m.publish_count(PublishOutcome::Published), 1);
        assert_eq!(m.publish_count(PublishOutcome::Duplicate), 1);
    }
}

/// Published over HTTP, routed by relay's router, streamed by the same
/// gateway: every event once, in order, and the stream ends at `done`.
#[tokio::test]
async fn published_events_stream_to_done() {
    for axum in [false, true] {
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let t = TestGateway::start_with(b.clone(), publishing(64 * 1024), axum).await;
        let mut config = RouterConfig::new(t.keys.clone());
        config.block = Duration::from_millis(50);
        let router = relay_core::Router::new(b, config).spawn();
        let job = "job-http-1";
        let steps = [
            (10, "vision", "started", Some(0)),
            (11, "vision", "progress", Some(50)),
            (12, "vision", "completed", Some(100)),
            (20, "done", "completed", Some(100)),
        ];
        for (seq, stage, status, progress) in steps {
            let body = json!({"seq": seq, "stage": stage, "status": status, "progress": progress, "data": {"seq": seq}});
            let got = post(&t, job, Some(KEY), body.to_string()).await;
            assert_eq!(got.status, 201, "{}", got.body);
        }
        let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
        assert_eq!(c.status, 200);
        let events = c.collect().await;
        let got: Vec<(String, u64, String)> = events
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                (
                    e.event.clone(),
                    v["seq"].as_u64().unwrap(),
                    v["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want: Vec<(String, u64, String)> = steps
            .iter()
            .map(|(seq, stage, status, _)| (stage.to_string(), *seq, status.to_string()))
            .collect();
        assert_eq!(got, want, "axum: {axum}");
        assert_eq!(
            events.iter().map(offset_of).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        router.shutdown().await;
    }
}
