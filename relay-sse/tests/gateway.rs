//! Gateway behaviour on the in-process memory backend.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::Backend;
use relay_core::{auth, Event, JobId, Payload, Status};
use relay_sse::client::SseItem;
use relay_sse::{CloseReason, GatewayOptions};
use tokio::io::AsyncWriteExt;

async fn gw_with(opts: GatewayOptions) -> (TestGateway, Arc<MemoryBackend>) {
    let mem = Arc::new(MemoryBackend::new());
    let b: Arc<dyn Backend> = mem.clone();
    (TestGateway::start(b, opts).await, mem)
}

async fn gw() -> (TestGateway, Arc<MemoryBackend>) {
    gw_with(opts()).await
}

#[tokio::test]
async fn history_then_live_then_close_after_done() {
    let (t, _) = gw().await;
    let job = "job-live-1";
    for n in 1..=3 {
        t.apply(&step(job, n, 6)).await;
    }
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.headers["content-type"], "text/event-stream");
    assert_eq!(c.headers["cache-control"], "no-cache");
    assert_eq!(c.headers["x-accel-buffering"], "no");
    // The connection ends with the stream, so no client pool may reuse it.
    assert_eq!(c.headers["connection"], "close");
    assert_eq!(c.next_item().await, Some(SseItem::Retry(2000)));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.next_event().await.unwrap());
    }
    for n in 4..=6 {
        t.apply(&step(job, n, 6)).await;
    }
    got.extend(c.collect().await); // ends after done
    let offsets: Vec<u64> = got.iter().map(offset_of).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6]);
    assert_eq!(got[5].event, "done");
    assert_eq!(got[0].event, "vision");
    assert_eq!(got[1].event, "rule");
    let ev: Event = serde_json::from_str(&got[1].data).unwrap();
    assert_eq!(ev.seq, 2);
    let epoch = got[0].id.as_deref().unwrap().split(':').next().unwrap();
    assert!(got
        .iter()
        .all(|e| e.id.as_deref().unwrap().starts_with(&format!("{epoch}:"))));
    wait_for(|| t.gateway.metrics().closed_count(CloseReason::Done) == 1).await;
}

#[tokio::test]
async fn terminal_failure_is_named_failed() {
    let (t, _) = gw().await;
    let job = "job-fail-1";
    t.apply(&step(job, 1, 5)).await;
    t.apply(&Event::new("scan", job, 9, "done", Status::Failed).unwrap())
        .await;
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    let events = c.collect().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].event, "failed");
}

#[tokio::test]
async fn resume_exact_from_header_and_query_header_wins() {
    let (t, _) = gw().await;
    let job = "job-resume-1";
    let mut epoch = None;
    for n in 1..=5 {
        epoch = Some(t.apply(&step(job, n, 5)).await.0);
    }
    let e = epoch.unwrap();
    let url = t.url(&format!("/v1/jobs/{job}/events"));
    let mut c = connect(&url, Some(&format!("{e}:3"))).await;
    let offs: Vec<u64> = c.collect().await.iter().map(offset_of).collect();
    assert_eq!(offs, [4, 5]);
    // Query parameter alone.
    let mut c = connect(&format!("{url}?last_event_id={e}:1"), None).await;
    let offs: Vec<u64> = c.collect().await.iter().map(offset_of).collect();
    assert_eq!(offs, [2, 3, 4, 5]);
    // Header wins over the query.
    let mut c = connect(
        &format!("{url}?last_event_id={e}:1"),
        Some(&format!("{e}:4")),
    )
    .await;
    let offs: Vec<u64> = c.collect().await.iter().map(offset_of).collect();
    assert_eq!(offs, [5]);
    let m = t.gateway.metrics().render();
    assert!(
        m.contains("relay_sse_resumes_total{kind=\"exact\"} 3"),
        "{m}"
    );
}

#[tokio::test]
async fn unknown_epoch_gets_snapshot_then_continues() {
    let (t, _) = gw().await;
    let job = "job-snap-1";
    for n in 1..=3 {
        t.apply(&step(job, n, 5)).await;
    }
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), Some("12345:2")).await;
    let snap = c.next_event().await.unwrap();
    assert_eq!(snap.event, "snapshot");
    let data: serde_json::Value = serde_json::from_str(&snap.data).unwrap();
    assert_eq!(data["reason"], "epoch_mismatch");
    assert_eq!(data["offset"], 3);
    assert_eq!(data["state"]["seq"], 3);
    assert_eq!(offset_of(&snap), 3);
    t.apply(&step(job, 4, 5)).await;
    t.apply(&step(job, 5, 5)).await;
    let offs: Vec<u64> = c.collect().await.iter().map(offset_of).collect();
    assert_eq!(offs, [4, 5]);
    let m = t.gateway.metrics().render();
    assert!(
        m.contains("relay_sse_resumes_total{kind=\"snapshot\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn heartbeats_while_idle() {
    let (t, _) = gw().await;
    let job = "job-hb-1";
    t.apply(&step(job, 1, 5)).await;
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    let mut comments = 0;
    let mut events = 0;
    while comments < 2 {
        match c.next_item().await.unwrap() {
            SseItem::Comment(_) => comments += 1,
            SseItem::Event(_) => events += 1,
            SseItem::Retry(_) => {}
        }
    }
    assert_eq!(events, 1);
}

#[tokio::test]
async fn unknown_job_404_after_pending_wait() {
    let (t, _) = gw().await;
    let c = connect(&t.url("/v1/jobs/never-seen/events"), None).await;
    assert_eq!(c.status, 404);
    assert_eq!(c.json()["code"], "JOB_NOT_FOUND");
    assert_eq!(t.gateway.active_connections(), 0);
}

#[tokio::test]
async fn job_appearing_during_pending_wait_streams() {
    let (t, _) = gw_with(GatewayOptions {
        pending_job: Duration::from_secs(20),
        ..opts()
    })
    .await;
    let job = "job-late-1";
    let url = t.url(&format!("/v1/jobs/{job}/events"));
    let client = tokio::spawn(async move {
        let mut c = connect(&url, None).await;
        assert_eq!(c.status, 200);
        c.collect().await.iter().map(offset_of).collect::<Vec<_>>()
    });
    wait_for(|| t.gateway.active_connections() == 1).await;
    for n in 1..=3 {
        t.apply(&step(job, n, 3)).await;
    }
    assert_eq!(client.await.unwrap(), [1, 2, 3]);
}

/// At the connection limit the answer is one an EventSource retries: a
/// `200 text/event-stream` that only carries the `retry:` hint and ends at
/// once (any non-200 answer, e.g. a 503, makes a browser give up for
/// good). Resuming requests get the same; both paths, counted.
#[tokio::test]
async fn connection_limit_answers_a_retry_stream() {
    let o = GatewayOptions {
        max_connections: 1,
        retry_ms: 1500,
        ..opts()
    };
    let (t, mem) = gw_with(o.clone()).await;
    let embedded = TestGateway::start_axum(mem, o).await;
    let job = "job-limit-1";
    let (e, _) = t.apply(&step(job, 1, 5)).await;
    let path = format!("/v1/jobs/{job}/events");
    for gw in [&t, &embedded] {
        let url = gw.url(&path);
        let mut first = connect(&url, None).await;
        assert_eq!(first.status, 200);
        first.next_event().await.unwrap();
        for last_id in [None, Some(format!("{e}:1"))] {
            let mut c = connect(&url, last_id.as_deref()).await;
            assert_eq!(c.status, 200);
            assert_eq!(c.headers["content-type"], "text/event-stream");
            assert_eq!(c.headers["connection"], "close");
            assert_eq!(c.next_item().await, Some(SseItem::Retry(1500)));
            assert_eq!(c.next_item().await, None, "no events, then the end");
        }
        let m = gw.gateway.metrics().render();
        assert!(
            m.contains("relay_sse_rejected_total{reason=\"connection_limit\"} 2"),
            "{m}"
        );
        drop(first);
        wait_for(|| gw.gateway.active_connections() == 0).await;
        let mut third = connect(&url, None).await;
        assert_eq!(third.status, 200);
        assert_eq!(offset_of(&third.next_event().await.unwrap()), 1);
    }
}

#[tokio::test]
async fn auth_required_401_403_expired_and_ok() {
    let secret = b"s3cret".to_vec();
    let (t, _) = gw_with(GatewayOptions {
        auth_secret: Some(secret.clone()),
        ..opts()
    })
    .await;
    let job = JobId::new("job-auth-1").unwrap();
    t.apply(&step(job.as_str(), 1, 1)).await;
    let url = t.url(&format!("/v1/jobs/{job}/events"));
    assert_eq!(connect(&url, None).await.status, 401);
    assert_eq!(
        connect(&format!("{url}?token=nope"), None).await.status,
        401
    );
    let other = auth::issue(
        &secret,
        &JobId::new("job-other").unwrap(),
        Duration::from_secs(60),
    );
    let c = connect(&format!("{url}?token={other}"), None).await;
    assert_eq!(c.status, 403);
    assert_eq!(c.json()["code"], "FORBIDDEN");
    let expired = auth::issue_at(&secret, &job, 1);
    let c = connect(&format!("{url}?token={expired}"), None).await;
    assert_eq!(c.status, 401);
    assert_eq!(c.json()["code"], "TOKEN_EXPIRED");
    let good = auth::issue(&secret, &job, Duration::from_secs(60));
    let mut c = connect_with(&url, |r| r.bearer_auth(&good)).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.collect().await.len(), 1);
    let mut c = connect(&format!("{url}?token={good}"), None).await;
    assert_eq!(c.collect().await.len(), 1);
    // The state endpoint is guarded too.
    assert_eq!(
        connect(&t.url(&format!("/v1/jobs/{job}/state")), None)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn cr_lf_nul_in_payload_are_encoded_safely() {
    let (t, _) = gw().await;
    let job = "job-crlf-1";
    // Raw JSON with literal line breaks between tokens (valid JSON whitespace)
    // and escaped ones inside strings.
    let ev = Event::new("scan", job, 1, "vision", Status::Progress)
        .unwrap()
        .with_data(serde_json::json!({"text": "a\r\nb\nc\rd\u{0}e"}));
    t.apply(&ev).await;
    let raw_json = "{\"job_id\":\"job-crlf-1x\",\r\n\"stage\":\"done\",\n\"status\":\"completed\",\r\"seq\":2,\"stream_id\":\"1-0\"}";
    apply_payload(
        &*t.backend,
        &t.keys,
        &JobId::new(job).unwrap(),
        2,
        Payload(bytes(raw_json)),
    )
    .await;
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    let events = c.collect().await;
    assert_eq!(events.len(), 2);
    let back: Event = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(back.data["text"], "a\r\nb\nc\rd\u{0}e");
    // Multi-line data arrives as several data: lines joined with \n.
    let v: serde_json::Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(v["stage"], "done");
    assert_eq!(events[1].data.matches('\n').count(), 3);
}

#[tokio::test]
async fn slow_client_is_disconnected_and_counted() {
    let (t, _) = gw_with(GatewayOptions {
        client_buffer: 2,
        heartbeat: Duration::from_secs(60),
        ..opts()
    })
    .await;
    let job = "job-slow-1";
    t.apply(&step(job, 1, 1000)).await;
    // A client with a tiny receive window that never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stream = sock.connect(t.addr).await.unwrap();
    stream
        .write_all(format!("GET /v1/jobs/{job}/events HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    wait_for(|| t.gateway.metrics().opened.get() == 1).await;
    let big = "x".repeat(64 * 1024);
    let mut n = 2;
    tokio::time::timeout(LIMIT, async {
        while t.gateway.metrics().slow_disconnects.get() == 0 {
            let ev = step(job, n, 1_000_000).with_data(serde_json::json!({ "pad": big }));
            t.apply(&ev).await;
            n += 1;
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("slow client never disconnected");
    assert_eq!(t.gateway.metrics().closed_count(CloseReason::SlowClient), 1);
    wait_for(|| t.gateway.active_connections() == 0).await;
    // Meanwhile a normal client of the same job gets everything.
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    let mut last = 0;
    while last < n - 1 {
        last = offset_of(&c.next_event().await.unwrap());
    }
    drop(stream);
}

#[tokio::test]
async fn subscriber_loss_every_event_exactly_once() {
    // No heartbeat polls: only the post-reconnect catch-up can recover.
    let (t, mem) = gw_with(GatewayOptions {
        heartbeat: Duration::from_secs(3600),
        ..opts()
    })
    .await;
    let jobs: Vec<String> = (0..4).map(|i| format!("job-kill-{i}")).collect();
    let total = 40u64;
    let mut clients = Vec::new();
    for job in &jobs {
        t.apply(&step(job, 1, total)).await;
        let url = t.url(&format!("/v1/jobs/{job}/events"));
        clients.push(tokio::spawn(async move {
            let mut c = connect(&url, None).await;
            c.collect().await.iter().map(offset_of).collect::<Vec<_>>()
        }));
    }
    wait_for(|| t.gateway.metrics().opened.get() == jobs.len() as u64).await;
    let mut pending: Option<u64> = None;
    for n in 2..=total {
        if n.is_multiple_of(10) || n == total - 2 {
            if let Some(prev) = pending.take() {
                wait_for(|| t.gateway.metrics().subscriber_reconnects.get() > prev).await;
            }
            pending = Some(t.gateway.metrics().subscriber_reconnects.get());
            mem.kill_subscribers(); // the rounds published now are lost live
        }
        for job in &jobs {
            t.apply(&step(job, n, total)).await;
        }
    }
    for c in clients {
        let offs = c.await.unwrap();
        assert_eq!(offs, (1..=total).collect::<Vec<_>>());
    }
    assert!(t.gateway.metrics().subscriber_reconnects.get() >= 1);
}

#[tokio::test]
async fn state_health_ready_metrics_endpoints() {
    let (t, _) = gw().await;
    let job = "job-state-1";
    t.apply(&step(job, 1, 3)).await;
    t.apply(&step(job, 2, 3)).await;
    let c = connect(&t.url(&format!("/v1/jobs/{job}/state")), None).await;
    assert_eq!(c.status, 200);
    let v = c.json();
    assert_eq!(v["offset"], 2);
    assert_eq!(v["event"]["seq"], 2);
    assert_eq!(v["job_id"], job);
    assert_eq!(
        connect(&t.url("/v1/jobs/nope/state"), None).await.status,
        404
    );
    assert_eq!(
        connect(&t.url("/v1/jobs/bad%20id/events"), None)
            .await
            .status,
        400
    );
    assert_eq!(connect(&t.url("/healthz"), None).await.status, 200);
    assert_eq!(connect(&t.url("/readyz"), None).await.status, 200);
    let m = connect(&t.url("/metrics"), None).await;
    let body = m.body.unwrap();
    for name in [
        "relay_sse_active_connections",
        "relay_sse_connections_opened_total",
        "relay_sse_events_delivered_total",
        "relay_sse_slow_client_disconnects_total",
        "relay_sse_subscriber_reconnects_total",
        "relay_sse_delivery_latency_seconds_bucket",
    ] {
        assert!(body.contains(name), "{name} missing in {body}");
    }
    assert_eq!(connect(&t.url("/"), None).await.status, 404); // demo page off
}

#[tokio::test]
async fn demo_page_and_cors() {
    let (t, _) = gw_with(GatewayOptions {
        demo_page: true,
        allow_origins: vec!["http://app.example".into()],
        ..opts()
    })
    .await;
    let c = connect(&t.url("/"), None).await;
    assert_eq!(c.status, 200);
    assert!(c.body.unwrap().contains("EventSource"));
    let job = "job-cors-1";
    t.apply(&step(job, 1, 1)).await;
    let c = connect_with(&t.url(&format!("/v1/jobs/{job}/events")), |r| {
        r.header("Origin", "http://app.example")
    })
    .await;
    assert_eq!(
        c.headers["access-control-allow-origin"],
        "http://app.example"
    );
}

/// After a dead-letter replay a job's history holds a terminal `failed`
/// (offset 59) followed by the replay's events and its `done` (offset 151).
/// A fresh client replays everything and closes only after `done`.
#[tokio::test]
async fn replayed_job_history_streams_past_earlier_terminal() {
    let (t, _) = gw().await;
    let job = "job-replayed-1";
    for n in 1..=151u64 {
        let ev = if n == 59 {
            Event::new("scan", job, n, "done", Status::Failed).unwrap()
        } else {
            step(job, n, 151)
        };
        t.apply(&ev).await;
    }
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    let events = c.collect().await;
    let offsets: Vec<u64> = events.iter().map(offset_of).collect();
    assert_eq!(offsets, (1..=151).collect::<Vec<u64>>());
    assert_eq!(events[58].event, "failed");
    assert_eq!(events[150].event, "done");
    wait_for(|| t.gateway.metrics().closed_count(CloseReason::Done) == 1).await;
}

/// A client following a job live still closes at a terminal event that is
/// the job's last.
#[tokio::test]
async fn live_client_closes_at_last_terminal() {
    let (t, _) = gw().await;
    let job = "job-live-fail-1";
    for n in 1..=3 {
        t.apply(&step(job, n, 10)).await;
    }
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    for _ in 0..3 {
        c.next_event().await.unwrap();
    }
    t.apply(&Event::new("scan", job, 4, "done", Status::Failed).unwrap())
        .await;
    let rest = c.collect().await; // ends after the failure
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].event, "failed");
    assert_eq!(offset_of(&rest[0]), 4);
    wait_for(|| t.gateway.metrics().closed_count(CloseReason::Done) == 1).await;
}

/// The routes merged into an embedding app (`axum::serve` on
/// `Gateway::router`) stream the same way as the gateway's own front,
/// including the non-SSE routes handed to hyper by the front.
#[tokio::test]
async fn embedded_router_streams_history_then_live() {
    let mem = Arc::new(MemoryBackend::new());
    let b: Arc<dyn Backend> = mem.clone();
    let t = TestGateway::start_axum(b, opts()).await;
    let job = "job-embedded-1";
    for n in 1..=2 {
        t.apply(&step(job, n, 4)).await;
    }
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.headers["content-type"], "text/event-stream");
    let mut got = vec![c.next_event().await.unwrap(), c.next_event().await.unwrap()];
    for n in 3..=4 {
        t.apply(&step(job, n, 4)).await;
    }
    got.extend(c.collect().await);
    let offsets: Vec<u64> = got.iter().map(offset_of).collect();
    assert_eq!(offsets, [1, 2, 3, 4]);
    wait_for(|| t.gateway.metrics().closed_count(CloseReason::Done) == 1).await;
    wait_for(|| t.gateway.active_connections() == 0).await;
}

/// Keep-alive on the front: a non-SSE request first (handed to hyper), and
/// an SSE request after a 404 on the same connection.
#[tokio::test]
async fn front_serves_other_routes_and_keeps_alive() {
    let (t, _) = gw().await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r = client.get(t.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
        let r = client
            .get(t.url("/v1/jobs/job-none-1/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "JOB_NOT_FOUND");
    }
    let job = "job-front-1";
    t.apply(&step(job, 1, 1)).await;
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events?x=1")), None).await;
    assert_eq!(c.headers["transfer-encoding"], "chunked");
    let events = c.collect().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "done");
}

/// Clients that hang up while their request waits for an unknown job give
/// their connection slots back at once, not after `pending_job`: otherwise
/// a burst of abandoned requests holds the gateway at its connection limit.
#[tokio::test]
async fn hung_up_pending_requests_release_their_slots() {
    let (t, _) = gw_with(GatewayOptions {
        max_connections: 5,
        pending_job: Duration::from_secs(3600),
        ..opts()
    })
    .await;
    let mut socks = Vec::new();
    for i in 0..5 {
        let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        s.write_all(
            format!("GET /v1/jobs/job-gone-{i}/events HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        socks.push(s);
    }
    wait_for(|| t.gateway.active_connections() == 5).await;
    drop(socks);
    wait_for(|| t.gateway.active_connections() == 0).await;
    let m = t.gateway.metrics().render();
    assert!(
        m.contains("relay_sse_rejected_total{reason=\"client_gone\"} 5"),
        "{m}"
    );
    // The slots are free: a client of a known job streams.
    let job = "job-gone-ok";
    t.apply(&step(job, 1, 1)).await;
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.collect().await.len(), 1);
}

/// A client resuming at a finished job's terminal event has everything:
/// the gateway answers `204 No Content` at once (an EventSource stops
/// reconnecting on 204) instead of holding an empty stream open with
/// heartbeats until `max_stream`.
#[tokio::test]
async fn resume_at_terminal_offset_ends_with_204() {
    let o = GatewayOptions {
        max_stream: Duration::from_secs(3600),
        ..opts()
    };
    let (t, mem) = gw_with(o.clone()).await;
    let job = "job-resume-done-1";
    let mut epoch = None;
    for n in 1..=4 {
        epoch = Some(t.apply(&step(job, n, 4)).await.0);
    }
    let e = epoch.unwrap();
    let url = t.url(&format!("/v1/jobs/{job}/events"));
    let c = connect(&url, Some(&format!("{e}:4"))).await;
    assert_eq!(c.status, 204);
    assert_eq!(c.body.as_deref(), Some(""));
    // The query parameter form too.
    let c = connect(&format!("{url}?last_event_id={e}:4"), None).await;
    assert_eq!(c.status, 204);
    // And on the embedding (axum) path.
    let embedded = TestGateway::start_axum(mem, o).await;
    let path = format!("/v1/jobs/{job}/events");
    let c = connect(&embedded.url(&path), Some(&format!("{e}:4"))).await;
    assert_eq!(c.status, 204);
    assert_eq!(t.gateway.active_connections(), 0);
    let m = t.gateway.metrics().render();
    assert!(
        m.contains("relay_sse_rejected_total{reason=\"finished\"} 2"),
        "{m}"
    );
    // One event short of the end still streams the terminal event, then ends.
    let mut c = connect(&url, Some(&format!("{e}:3"))).await;
    assert_eq!(c.status, 200);
    let events = c.collect().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "done");
}

/// A late lower-seq event after `done`: seqs 1–3, `done` as seq 10, then a
/// late seq 4. The history is `1, 2, 3, done, seq 4` and the job's state
/// stays `done` (the highest seq). A client catching up gets every record
/// and then the stream ends, instead of idling until `max_stream`.
#[tokio::test]
async fn late_event_after_done_still_ends_the_catch_up() {
    let (t, _) = gw_with(GatewayOptions {
        max_stream: Duration::from_secs(3600),
        ..opts()
    })
    .await;
    let job = "job-late-after-done";
    for n in 1..=3 {
        t.apply(&step(job, n, 10)).await;
    }
    t.apply(&Event::new("scan", job, 10, "done", Status::Completed).unwrap())
        .await;
    t.apply(&step(job, 4, 10)).await;
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    let events = c.collect().await;
    let offsets: Vec<u64> = events.iter().map(offset_of).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    assert_eq!(events[3].event, "done");
    wait_for(|| t.gateway.metrics().closed_count(CloseReason::Done) == 1).await;
    // Resuming right after `done` gets the late event, then the end.
    let e = events[0].id.as_deref().unwrap().split(':').next().unwrap();
    let mut c = connect(
        &t.url(&format!("/v1/jobs/{job}/events")),
        Some(&format!("{e}:4")),
    )
    .await;
    let offsets: Vec<u64> = c.collect().await.iter().map(offset_of).collect();
    assert_eq!(offsets, [5]);
}

/// The same history found by a client already streaming (here through a
/// heartbeat poll: no live message reaches it): `done` arrives with a
/// record after it, and the stream still ends once both are sent.
#[tokio::test]
async fn late_event_after_done_ends_a_following_client() {
    let mem = Arc::new(MemoryBackend::new());
    let silent: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let t = TestGateway::start_split(
        mem.clone(),
        silent,
        GatewayOptions {
            max_stream: Duration::from_secs(3600),
            ..opts()
        },
    )
    .await;
    let job = "job-late-after-done-2";
    for n in 1..=3 {
        t.apply(&step(job, n, 10)).await;
    }
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    for _ in 0..3 {
        c.next_event().await.unwrap();
    }
    t.apply(&Event::new("scan", job, 10, "done", Status::Completed).unwrap())
        .await;
    t.apply(&step(job, 4, 10)).await;
    let rest = c.collect().await;
    let offsets: Vec<u64> = rest.iter().map(offset_of).collect();
    assert_eq!(offsets, [4, 5]);
    assert_eq!(rest[0].event, "done");
    wait_for(|| t.gateway.metrics().closed_count(CloseReason::Done) == 1).await;
}

/// A client that never reads during its catch-up used to pin the job's
/// whole retained history (framed into one buffer before the response,
/// written with no time bound). The catch-up is now written chunk by chunk
/// under the write timeout: the client is disconnected as slow, and what
/// the gateway holds for it meanwhile stays around two chunks.
#[tokio::test]
async fn stuck_reader_during_catch_up_is_cut_with_bounded_buffer() {
    let chunk = 16 * 1024;
    let (t, _) = gw_with(GatewayOptions {
        heartbeat: Duration::from_secs(60),
        max_stream: Duration::from_secs(3600),
        write_timeout: Duration::from_secs(1),
        catchup_chunk_bytes: chunk,
        ..opts()
    })
    .await;
    let job = "job-stuck-catchup";
    let pad = "x".repeat(4000);
    let mut event_len = 0;
    for n in 1..=1000u64 {
        let ev = step(job, n, 1_000_000).with_data(serde_json::json!({ "pad": pad }));
        event_len = serde_json::to_vec(&ev).unwrap().len();
        t.apply(&ev).await;
    }
    // A tiny receive window, and nothing is ever read.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stream = sock.connect(t.addr).await.unwrap();
    stream
        .write_all(format!("GET /v1/jobs/{job}/events HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let m = t.gateway.metrics().clone();
    let mut peak = 0;
    tokio::time::timeout(LIMIT, async {
        while m.closed_count(CloseReason::SlowClient) == 0 {
            peak = peak.max(m.buffered_bytes.get());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the stuck client was never disconnected");
    assert_eq!(m.slow_disconnects.get(), 1);
    assert_eq!(m.write_timeouts.get(), 1);
    assert!(peak > 0, "nothing was ever held for the client");
    // A chunk being written, plus about one chunk of records read ahead,
    // each overshooting by at most one event (framing adds a little).
    let bound = 2 * (chunk + 2 * event_len) as i64;
    assert!(peak <= bound, "held {peak} bytes (bound {bound})");
    wait_for(|| t.gateway.active_connections() == 0).await;
    assert_eq!(m.buffered_bytes.get(), 0);
    assert!(m.chunk_cuts.get() > 0);
    drop(stream);
}

/// The catch-up of a long history streams in chunks to a client that
/// reads, in order and complete, on the gateway's front and on the
/// embedding (axum) path.
#[tokio::test]
async fn long_catch_up_streams_in_chunks_complete_and_in_order() {
    let o = GatewayOptions {
        catchup_chunk_bytes: 8 * 1024,
        history_page: 50,
        ..opts()
    };
    let (t, mem) = gw_with(o.clone()).await;
    let embedded = TestGateway::start_axum(mem, o).await;
    let job = "job-long-catchup";
    let pad = "y".repeat(1000);
    for n in 1..=400u64 {
        let ev = step(job, n, 400).with_data(serde_json::json!({ "pad": pad }));
        t.apply(&ev).await;
    }
    let path = format!("/v1/jobs/{job}/events");
    for url in [t.url(&path), embedded.url(&path)] {
        let mut c = connect(&url, None).await;
        let offsets: Vec<u64> = c.collect().await.iter().map(offset_of).collect();
        assert_eq!(offsets, (1..=400).collect::<Vec<u64>>());
    }
    assert!(t.gateway.metrics().chunk_cuts.get() > 0);
    assert!(embedded.gateway.metrics().chunk_cuts.get() > 0);
}
