//! Gateway on a real (private) redis-server: subscriber loss and readiness.
//!
//! Each test runs once per Redis client (`redis_rs::…` and, with
//! `--features fred`, `fred::…`): the in-process gateway reads through a
//! backend of that client.

mod common;

use std::sync::Arc;

use common::*;
use relay_core::backend::Backend;
use relay_core::cli::RedisClient;
use relay_testkit::redis::TestRedis;

async fn pubsub_client_kill_every_event_exactly_once(client: RedisClient) {
    let redis = TestRedis::private();
    let backend = backend(client, &redis).await;
    // No heartbeat polls during the test: only the post-reconnect catch-up
    // (and gap detection) can recover what the killed subscriber missed.
    let no_poll = relay_sse::GatewayOptions {
        heartbeat: std::time::Duration::from_secs(3600),
        ..opts()
    };
    let t = TestGateway::start(backend, no_poll).await;
    let jobs: Vec<String> = (0..6).map(|i| format!("job-rkill-{i}")).collect();
    let total = 30u64;
    let mut clients = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        t.apply(&step(job, 1, total)).await;
        let url = t.url(&format!("/v1/jobs/{job}/events"));
        // Half the clients drop mid-stream and resume with Last-Event-ID.
        let drop_after = (i % 2 == 1).then_some(10usize);
        clients.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            let mut last: Option<String> = None;
            loop {
                let mut c = connect(&url, last.as_deref()).await;
                assert_eq!(c.status, 200);
                let mut n = 0;
                while let Some(e) = c.next_event().await {
                    offsets.push(offset_of(&e));
                    last = e.id.clone();
                    n += 1;
                    if e.event == "done" {
                        return offsets;
                    }
                    if drop_after == Some(n) && offsets.len() < 20 {
                        break;
                    }
                }
            }
        }));
    }
    wait_for(|| t.gateway.active_connections() == jobs.len()).await;
    let before = t.gateway.metrics().subscriber_reconnects.get();
    // Kill the subscriber every 8 rounds and once right before the last
    // rounds, publishing during each outage (so the tail, `done` included,
    // can only come back through the post-reconnect catch-up).
    let mut pending: Option<u64> = None;
    for n in 2..=total {
        if n.is_multiple_of(8) || n == total - 2 {
            if let Some(prev) = pending.take() {
                wait_for(|| t.gateway.metrics().subscriber_reconnects.get() > prev).await;
            }
            let prev = t.gateway.metrics().subscriber_reconnects.get();
            let killed = redis.client_kill(&["TYPE", "pubsub"]).await.unwrap();
            assert!(killed >= 1, "the gateway's subscriber connection exists");
            pending = Some(prev);
        }
        for job in &jobs {
            t.apply(&step(job, n, total)).await;
        }
    }
    for c in clients {
        let offs = c.await.unwrap();
        assert_eq!(
            offs,
            (1..=total).collect::<Vec<_>>(),
            "every event exactly once, in order"
        );
    }
    assert!(t.gateway.metrics().subscriber_reconnects.get() > before);
}

async fn readyz_fails_while_redis_is_down(client: RedisClient) {
    let redis = TestRedis::private();
    let backend = backend(client, &redis).await;
    let t = TestGateway::start(backend, opts()).await;
    assert_eq!(connect(&t.url("/readyz"), None).await.status, 200);
    redis.stop().unwrap();
    wait_for(|| !t.gateway.is_ready()).await;
    assert_eq!(connect(&t.url("/readyz"), None).await.status, 503);
    redis.restart().unwrap();
    t.wait_ready().await;
    assert_eq!(connect(&t.url("/readyz"), None).await.status, 200);
    // And it streams again (the data connection may need one failed call
    // to notice the restart).
    let job = "job-after-restart";
    let ev = step(job, 1, 1);
    let payload = relay_core::Payload::from_event(&ev, relay_core::Encoding::Json).unwrap();
    let opts = relay_core::backend::ApplyOptions::default();
    tokio::time::timeout(LIMIT, async {
        loop {
            let job = relay_core::backend::ApplyJob {
                keys: t.keys.job(&ev.job_id),
                epoch: relay_core::Epoch::random(),
                events: vec![relay_core::backend::ApplyEvent {
                    seq: 1,
                    payload: payload.clone(),
                }],
                extra_channel: None,
            };
            if t.backend.apply(&[job], &opts).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("backend never came back");
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    assert_eq!(c.collect().await.len(), 1);
}

/// D7: the first state read after Redis dropped the gateway's connections
/// (`CLIENT KILL`, or a restart) answers 200, not one 503 while the
/// connection is re-established.
async fn first_state_read_after_a_dropped_connection_is_200(client: RedisClient) {
    let redis = TestRedis::private_with(relay_testkit::redis::RedisServerOptions::with_aof());
    let backend = backend(client, &redis).await;
    let t = TestGateway::start(backend, opts()).await;
    let job = "job-d7-state";
    t.apply(&step(job, 1, 3)).await;
    let url = t.url(&format!("/v1/jobs/{job}/state"));
    assert_eq!(connect(&url, None).await.status, 200);
    for round in 0..3 {
        redis.client_kill(&["TYPE", "normal"]).await.unwrap();
        // The gateway is idle meanwhile: it learns of the drop only from
        // the next command.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(connect(&url, None).await.status, 200, "round {round}");
    }
    redis.restart().unwrap();
    t.wait_ready().await;
    assert_eq!(connect(&url, None).await.status, 200, "after a restart");
}

/// A backend on the test's Redis, with the client under test.
async fn backend(client: RedisClient, redis: &TestRedis) -> Arc<dyn Backend> {
    client.connect(redis.url()).await.expect("connect to redis")
}

relay_testkit::per_redis_client!(
    relay_core::cli::RedisClient;
    pubsub_client_kill_every_event_exactly_once,
    readyz_fails_while_redis_is_down,
    first_state_read_after_a_dropped_connection_is_200,
);
