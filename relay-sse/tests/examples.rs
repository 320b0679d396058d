//! The examples' logic, run and checked, so they cannot rot: `cargo test`
//! builds `examples/*.rs` as binaries, and these tests include the same
//! files as modules and call what their `main` calls.

#[allow(dead_code)]
#[path = "../examples/embed_gateway.rs"]
mod embed_gateway;

use std::sync::Arc;
use std::time::Duration;

use relay_core::backend::memory::MemoryBackend;
use relay_sse::client::{SseEvent, SseReader};
use serde_json::json;

/// Upper bound on any single wait (a hang guard, never a timing assertion).
const LIMIT: Duration = Duration::from_secs(30);

const KEY: &str = "test-key";

fn bearer(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("Authorization", format!("Bearer {KEY}"))
}

async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(LIMIT, req.send())
        .await
        .expect("request hung")
        .expect("request sent")
}

async fn next_event(reader: &mut SseReader<reqwest::Error>) -> Option<SseEvent> {
    match tokio::time::timeout(LIMIT, reader.next_event())
        .await
        .expect("no event within the limit")
    {
        Some(Ok(e)) => Some(e),
        Some(Err(_)) | None => None,
    }
}

#[tokio::test]
async fn embedded_gateway_streams_under_the_apps_prefix_next_to_its_own_routes() {
    let embedded =
        embed_gateway::start(Arc::new(MemoryBackend::new()), KEY).expect("the example starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(embed_gateway::serve(embedded, listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{base}{path}");

    // The gateway's own readiness route answers under the prefix once its
    // subscriber is up.
    tokio::time::timeout(LIMIT, async {
        while send(bearer(http.get(url("/progress/readyz"))))
            .await
            .status()
            != 200
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the mounted gateway never became ready");

    // The application's own route still answers, and sees the gateway.
    let status: serde_json::Value = send(http.get(url("/status"))).await.json().await.unwrap();
    assert_eq!(status["service"], "embed-gateway-example");
    assert_eq!(status["gateway_ready"], true);

    // The application's auth guards the mounted gateway, and the gateway is
    // only under the prefix.
    let job = "job-embed-1";
    let events = format!("/progress/v1/jobs/{job}/events");
    assert_eq!(send(http.get(url(&events))).await.status(), 401);
    assert_eq!(
        send(bearer(http.get(url(&format!("/v1/jobs/{job}/events")))))
            .await
            .status(),
        404
    );

    // Published through the application's route (relay's router applies
    // it), streamed by the gateway; the second while the stream is open.
    let publish = |body: serde_json::Value| {
        let req = bearer(http.post(url(&format!("/jobs/{job}/events")))).json(&body);
        async move { send(req).await.status() }
    };
    let started = json!({"seq": 1, "stage": "upload", "status": "started", "progress": 10});
    assert_eq!(publish(started).await, 202);
    let resp = send(bearer(http.get(url(&events)))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut reader = SseReader::new(resp.bytes_stream());
    let first = next_event(&mut reader).await.expect("the first event");
    assert_eq!(first.event, "upload");
    let ev: relay_core::Event = serde_json::from_str(&first.data).unwrap();
    assert_eq!((ev.seq, ev.progress), (1, Some(10)));

    let done = json!({"seq": 2, "stage": "done", "status": "completed", "progress": 100});
    assert_eq!(publish(done).await, 202);
    let last = next_event(&mut reader).await.expect("the done event");
    assert_eq!(last.event, "done");
    let ev: relay_core::Event = serde_json::from_str(&last.data).unwrap();
    assert_eq!(ev.seq, 2);
    assert_eq!(
        next_event(&mut reader).await,
        None,
        "the stream ends after done"
    );

    // A bad event is the application's 422, not published.
    let bad = json!({"seq": 3, "stage": "no spaces", "status": "started"});
    assert_eq!(publish(bad).await, 422);

    stop.send(()).unwrap();
    tokio::time::timeout(LIMIT, server)
        .await
        .expect("the example's server stops on shutdown")
        .unwrap();
}
