//! The examples' logic, run and checked, so they cannot rot: `cargo test`
//! builds `examples/*.rs` as binaries, and these tests include the same
//! files as modules and call what their `main` calls.

// Each example declares `examples/common` itself, as a binary must.
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../examples/media_pipeline.rs"]
mod media_pipeline;

#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../examples/progress_worker.rs"]
mod progress_worker;

use std::time::{Duration, Instant};

/// `(seq, stage, status, progress)` of events.
fn steps(events: &[relay_core::Event]) -> Vec<(u64, String, String, u8)> {
    events
        .iter()
        .map(|e| {
            (
                e.seq,
                e.stage.as_str().to_owned(),
                e.status.to_string(),
                e.progress.unwrap_or(0),
            )
        })
        .collect()
}

fn want(rows: &[(u64, &str, &str, u8)]) -> Vec<(u64, String, String, u8)> {
    rows.iter()
        .map(|(q, s, t, p)| (*q, s.to_string(), t.to_string(), *p))
        .collect()
}

#[tokio::test]
async fn media_pipeline_example_prints_every_progress_event_in_order() {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut lines = Vec::new();
    let uploaded = media_pipeline::run("https://media.example.com/talk.mov", |e| {
        lines.push(media_pipeline::format_event(e));
        seen.push(e.clone());
    })
    .await
    .expect("example runs");
    assert_eq!(
        steps(&seen),
        want(&[
            (0, "queued", "started", 0),
            (10, "download", "started", 0),
            (11, "download", "completed", 33),
            (20, "transcode", "started", 33),
            (21, "transcode", "completed", 66),
            (30, "upload", "started", 66),
            (31, "upload", "completed", 100),
            (41, "done", "completed", 100),
        ])
    );
    // Each stage's `event_data` is its `completed` data; `done` carries the result.
    assert_eq!(seen[2].data, serde_json::json!({ "bytes": 34 }));
    assert_eq!(
        seen[4].data,
        serde_json::json!({ "format": "webm", "bytes": 17 })
    );
    assert_eq!(seen[7].data, serde_json::to_value(&uploaded).expect("json"));
    assert!(uploaded.url.ends_with(".webm"), "{}", uploaded.url);
    assert_eq!(
        lines[3], " 20  transcode  started     33%  null",
        "the printed line format"
    );
    // A hang guard, not a performance assertion: the example is meant to be instant.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn media_pipeline_example_refuses_a_non_https_source_without_retrying() {
    let mut seen = Vec::new();
    let err = media_pipeline::run("ftp://media.example.com/talk.mov", |e| seen.push(e.clone()))
        .await
        .expect_err("a fatal stage error fails the job");
    assert!(err.to_string().contains("only https"), "{err}");
    assert_eq!(
        steps(&seen),
        want(&[
            (0, "queued", "started", 0),
            (10, "download", "started", 0),
            (12, "download", "failed", 0),
            (49, "done", "failed", 100),
        ])
    );
}

#[tokio::test]
async fn progress_worker_example_publishes_a_jobs_progress_to_relay_streams() {
    let redis = relay_testkit::redis::RedisServer::start();
    let settings = progress_worker::Settings {
        redis_url: redis.url(),
        amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        queue_prefix: format!(
            "test.example.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        shards: 4,
    };
    let mut printed = 0;
    let events = progress_worker::demo(&settings, |_| printed += 1)
        .await
        .expect("demo runs (needs RabbitMQ on 127.0.0.1:5672)");
    assert_eq!(printed, events.len());
    assert_eq!(
        steps(&events),
        want(&[
            (0, "queued", "started", 0),
            (10, "fetch", "started", 0),
            (11, "fetch", "completed", 50),
            (20, "thumbnail", "started", 50),
            (21, "thumbnail", "completed", 100),
            (31, "done", "completed", 100),
        ])
    );
    assert_eq!(events[5].data["edge"], 128);
}
