//! eco2 routes and framing (docs/ECO2_WIRE.md): `id: <stream_id>`, `event: <stage>` or
//! `error`, `data: <routed JSON verbatim>`, Last-Event-ID as a stream id.

mod common;

use std::sync::Arc;

use common::*;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::Backend;
use relay_core::eco2::{seq_for, Eco2Entry};
use relay_core::{JobId, Payload, Profile, Stage};
use relay_sse::GatewayOptions;

const JOB: &str = "fc052f15-449f-4ce4-aa96-99d400ed7865";

async fn gw() -> TestGateway {
    let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    TestGateway::start(
        b,
        GatewayOptions {
            profile: Profile::Eco2,
            ..opts()
        },
    )
    .await
}

/// Routes one step as the relay router would in the eco2 profile; returns the routed JSON.
async fn route(t: &TestGateway, stage: &str, status: &str, n: u64) -> String {
    route_as(t, stage, status, n, &format!("1766899796{n:03}-0")).await
}

/// [`route`] with an explicit stream id.
async fn route_as(t: &TestGateway, stage: &str, status: &str, n: u64, stream_id: &str) -> String {
    let job = JobId::new(JOB).unwrap();
    let seq = seq_for(stage, status);
    let result =
        (stage == "done").then(|| serde_json::json!({"final_answer": "종이류로 배출하세요"}));
    let entry = Eco2Entry::build(
        &job,
        &Stage::new(stage).unwrap(),
        status,
        seq,
        "1766899796.475799",
        Some((n * 10) as u8),
        result.as_ref(),
        None,
    );
    let json = entry.routed_json(stream_id);
    apply_payload(&*t.backend, &t.keys, &job, seq, Payload(bytes(&json))).await;
    json
}

const STEPS: [(&str, &str); 6] = [
    ("queued", "started"),
    ("vision", "started"),
    ("vision", "completed"),
    ("rule", "started"),
    ("rule", "completed"),
    ("done", "completed"),
];

#[tokio::test]
async fn eco2_path_route_framing_verbatim() {
    let t = gw().await;
    let mut sent = Vec::new();
    for (n, (stage, status)) in STEPS.iter().enumerate().take(3) {
        sent.push(route(&t, stage, status, n as u64).await);
    }
    let mut c = connect(&t.url(&format!("/api/v1/scan/{JOB}/events")), None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.headers["content-type"], "text/event-stream");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.next_event().await.unwrap());
    }
    for (n, (stage, status)) in STEPS.iter().enumerate().skip(3) {
        sent.push(route(&t, stage, status, n as u64).await);
    }
    got.extend(c.collect().await);
    assert_eq!(got.len(), STEPS.len());
    for (n, (e, json)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(&e.data, json, "data must be the routed JSON verbatim");
        assert_eq!(e.event, STEPS[n].0);
        assert_eq!(
            e.id.as_deref(),
            Some(format!("1766899796{n:03}-0").as_str())
        );
    }
    let done: serde_json::Value = serde_json::from_str(&got[5].data).unwrap();
    assert_eq!(done["result"]["final_answer"], "종이류로 배출하세요");
}

#[tokio::test]
async fn eco2_failure_is_error_event_and_closes() {
    let t = gw().await;
    route(&t, "queued", "started", 0).await;
    route(&t, "vision", "failed", 1).await;
    let mut c = connect(&t.url(&format!("/api/v1/stream?job_id={JOB}")), None).await;
    let events = c.collect().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].event, "error");
}

#[tokio::test]
async fn eco2_resume_by_stream_id() {
    let t = gw().await;
    for (n, (stage, status)) in STEPS.iter().enumerate() {
        route(&t, stage, status, n as u64).await;
    }
    let url = t.url(&format!("/api/v1/scan/{JOB}/events"));
    let mut c = connect(&url, Some("1766899796002-0")).await;
    let ids: Vec<String> = c.collect().await.into_iter().filter_map(|e| e.id).collect();
    assert_eq!(
        ids,
        ["1766899796003-0", "1766899796004-0", "1766899796005-0"]
    );
    // An id of no retained entry: snapshot semantics (the state, sent as the
    // event it is, here `done`).
    let mut c = connect(&url, Some("1766899796004-5")).await;
    let ids: Vec<String> = c.collect().await.into_iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, ["1766899796005-0"]);
}

#[tokio::test]
async fn eco2_short_or_invalid_job_ids_rejected() {
    let t = gw().await;
    let c = connect(&t.url("/api/v1/stream?job_id=short"), None).await;
    assert_eq!(c.status, 422);
    assert_eq!(c.json()["code"], "INVALID_JOB_ID");
    assert!(c.json()["detail"].is_string());
    let c = connect(&t.url("/api/v1/stream"), None).await;
    assert_eq!(c.status, 422);
    let c = connect(&t.url("/api/v1/scan/short/events"), None).await;
    assert_eq!(c.status, 400);
    assert_eq!(c.json()["code"], "INVALID_JOB_ID");
    let c = connect(&t.url("/api/v1/chat/bad%20job%20id%20x/events"), None).await;
    assert_eq!(c.status, 400);
    let c = connect(&t.url(&format!("/api/v1/other/{JOB}/events")), None).await;
    assert_eq!(c.status, 404);
}

/// Resuming from the terminal entry's stream id: nothing is left to send,
/// the answer is `204 No Content` (an EventSource stops reconnecting).
#[tokio::test]
async fn eco2_resume_at_terminal_id_is_204() {
    let t = gw().await;
    for (n, (stage, status)) in STEPS.iter().enumerate() {
        route(&t, stage, status, n as u64).await;
    }
    let c = connect(
        &t.url(&format!("/api/v1/scan/{JOB}/events")),
        Some("1766899796005-0"),
    )
    .await;
    assert_eq!(c.status, 204);
}

/// History offsets out of stream-id order: a restarted router routes new
/// entries at once while a dead consumer's pending entry (`vision
/// completed`) is claimed only later, so it lands after `rule started`.
/// A Last-Event-ID resumes after the record with exactly that stream id,
/// never by comparing ids: nothing lost, nothing twice.
#[tokio::test]
async fn eco2_resume_with_history_out_of_stream_id_order() {
    let t = gw().await;
    let order = [
        ("queued", "started", "1766899796001-0"),
        ("vision", "started", "1766899796002-0"),
        ("rule", "started", "1766899796004-0"),
        ("vision", "completed", "1766899796003-0"),
        ("rule", "completed", "1766899796005-0"),
    ];
    for (n, (stage, status, id)) in order.iter().enumerate() {
        route_as(&t, stage, status, n as u64, id).await;
    }
    let url = t.url(&format!("/api/v1/scan/{JOB}/events"));
    // Resuming from `rule started`: `vision completed` follows it.
    let mut c = connect(&url, Some("1766899796004-0")).await;
    assert_eq!(c.status, 200);
    let mut got = vec![c.next_event().await.unwrap(), c.next_event().await.unwrap()];
    // Resuming from `vision completed`: only `rule completed` (once).
    let mut c2 = connect(&url, Some("1766899796003-0")).await;
    let mut got2 = vec![c2.next_event().await.unwrap()];
    route_as(&t, "done", "completed", 9, "1766899796006-0").await;
    got.extend(c.collect().await);
    got2.extend(c2.collect().await);
    let ids: Vec<&str> = got.iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(
        ids,
        ["1766899796003-0", "1766899796005-0", "1766899796006-0"]
    );
    let ids: Vec<&str> = got2.iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(ids, ["1766899796005-0", "1766899796006-0"]);
}
