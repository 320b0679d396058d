//! The all-in-one demo (`pipeline-scan demo`): in-process with auth tokens
//! over real HTTP, and the real binary's page driven by headless Chromium.
//!
//! The browser test needs `/usr/bin/chromium` (or `$CHROMIUM_BIN`) and
//! `node`/`npm`; it runs `npm ci` in `tests/browser/` itself when
//! `node_modules` is missing. A missing browser is a loud failure, never a
//! silent skip.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

mod common;

use pipeline_scan::demo::{self, DemoConfig};
use pipeline_scan::scan::{LatencyDist, RuleSet};
use relay_core::{Domain, JobId, KeySpace, Profile};
use relay_sse::client::SseReader;
use relay_testkit::procs::{free_port, KillOnDrop};
use relay_testkit::wait::wait_until;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

async fn wait_http(base: &str) {
    let http = reqwest::Client::new();
    let url = format!("{base}/healthz");
    wait_until(LIMIT, "demo answering /healthz", || async {
        http.get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// Reads an SSE stream to its end; returns `(event name, data JSON)` pairs.
async fn read_stream(resp: reqwest::Response) -> Vec<(String, Value)> {
    let mut reader = SseReader::new(resp.bytes_stream());
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(ev) = reader.next_event().await {
            let ev = ev.expect("stream error");
            out.push((ev.event, serde_json::from_str(&ev.data).expect("JSON data")));
        }
    })
    .await
    .expect("stream did not end");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_auth_issues_tokens_the_gateway_accepts() {
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let secret = b"demo-test-secret".to_vec();
    let stop = CancellationToken::new();
    let server = tokio::spawn(demo::run(
        DemoConfig {
            listen,
            keys: KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4),
            vision_latency: LatencyDist {
                mean_ms: 5,
                jitter_ms: 2,
            },
            answer_latency: LatencyDist {
                mean_ms: 5,
                jitter_ms: 2,
            },
            rules: Arc::new(RuleSet::default_dataset()),
            auth_secret: Some(secret.clone()),
            http: Default::default(),
        },
        stop.clone(),
    ));
    let base = format!("http://{listen}");
    wait_http(&base).await;
    let http = reqwest::Client::new();

    // The page is served.
    let page = http.get(format!("{base}/")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("body").contains("EventSource"));

    let submit = http
        .post(format!("{base}/api/v1/scan"))
        .header("x-user-id", "auth-user")
        .json(&json!({"image_url": "https://images.example.com/items/glass-jar.jpg"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(submit.status(), 200);
    let body: Value = submit.json().await.expect("json");
    let job = JobId::new(body["job_id"].as_str().expect("job_id")).expect("job id");
    let token = body["token"].as_str().expect("token issued").to_owned();
    let expires = body["token_expires_at"].as_u64().expect("expiry");
    assert!(expires > relay_core::auth::now_unix());
    assert_eq!(
        body["stream_url"],
        format!("/api/v1/scan/{job}/events?token={token}")
    );
    // The token is the gateway's HMAC token for exactly this job.
    assert!(
        relay_core::auth::verify(&secret, Some(&token), &job, relay_core::auth::now_unix()).is_ok()
    );
    let other = JobId::new("another-job-1234").expect("job id");
    assert!(
        relay_core::auth::verify(&secret, Some(&token), &other, relay_core::auth::now_unix())
            .is_err()
    );

    // Without the token the gateway refuses; with it the whole job streams.
    let denied = http
        .get(format!("{base}/api/v1/scan/{job}/events"))
        .send()
        .await
        .expect("get");
    assert_eq!(denied.status(), 401);
    let wrong = http
        .get(format!(
            "{base}/api/v1/scan/another-job-1234/events?token={token}"
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 403);
    let stream = http
        .get(format!(
            "{base}{}",
            body["stream_url"].as_str().expect("url")
        ))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let events = read_stream(stream).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "queued", "vision", "vision", "rule", "rule", "answer", "answer", "reward", "reward",
            "done"
        ]
    );
    let done = &events.last().expect("done").1;
    assert_eq!(done["data"]["status"], "completed");
    assert_eq!(
        done["data"]["pipeline_result"]["classification_result"]["classification"]
            ["minor_category"],
        "glass jar"
    );
    // Bearer works too.
    let bearer = http
        .get(format!("{base}/api/v1/scan/{job}/events"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("bearer");
    assert_eq!(bearer.status(), 200);
    drop(bearer);

    stop.cancel();
    tokio::time::timeout(LIMIT, server)
        .await
        .expect("demo did not stop")
        .expect("join")
        .expect("demo run");
}

// ---- headless Chromium against the real binary ----

use relay_testkit::browser::{browser_dir, chromium, ensure_node_modules};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_submits_a_scan_on_the_demo_page_and_sees_done_rendered() {
    let chromium = chromium();
    ensure_node_modules();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _demo = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_pipeline-scan"))
            .args([
                "demo",
                "--listen",
                &listen,
                "--vision-latency-ms",
                "30±10",
                "--answer-latency-ms",
                "30±10",
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pipeline-scan demo"),
    );
    let base = format!("http://{listen}");
    wait_http(&base).await;

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser/scan_demo.png");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(browser_dir().join("scan_demo.mjs"))
            .arg(&base)
            .arg("https://images.example.com/items/clear-water-bottle.jpg")
            .arg(&shot)
            .env("CHROMIUM_BIN", chromium)
            .stderr(Stdio::inherit())
            .output()
            .expect("run node (is nodejs installed?)")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let seen: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad script output {stdout:?}: {e}"));
    assert!(out.status.success(), "script failed: {seen}");
    assert_eq!(seen["state"], "done", "{seen}");

    // Every event appeared exactly once, in order.
    let rows: Vec<(String, String)> = seen["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap_or("").to_owned(),
                r["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(rows, common::full_scan_steps(), "{seen}");
    // Every row's cells sit under the header's columns.
    assert_eq!(seen["misaligned"], serde_json::json!([]), "{seen}");
    for stage in ["vision", "rule", "answer", "reward"] {
        assert_eq!(seen["stages"][stage], "completed", "{seen}");
    }

    // The done result is rendered: classification, rules, answer, reward.
    assert_eq!(seen["resultVisible"], true);
    let result = &seen["result"];
    let text = |k: &str| result[k].as_str().unwrap_or("").to_owned();
    assert!(
        text("classification").contains("clear water bottle"),
        "{result}"
    );
    assert!(text("rules").contains("Clear PET bottles"), "{result}");
    assert!(text("answer").contains("clear water bottle"), "{result}");
    assert!(
        text("reward").contains("Clearwater the Bottle Sprite"),
        "{result}"
    );
    assert!(result["failure"].is_null(), "{result}");
    assert_eq!(seen["raw"]["status"], "completed");
    assert_eq!(seen["raw"]["task_id"], seen["job"]);
}
