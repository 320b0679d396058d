//! The scan pipeline through real processes: `pipeline-scan api` →
//! RabbitMQ (127.0.0.1:5672, guest/guest; a unique queue prefix per test) →
//! `pipeline-scan worker` → a harness redis-server → `relay-router` →
//! `relay-sse` → an SSE client; and a worker killed with SIGKILL mid-stage.
//!
//! Needs the workspace binaries (`cargo test --workspace` builds them),
//! `redis-server` and RabbitMQ (`scripts/test.sh` starts it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pipeline_scan::app::PipelineArgs;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::{KvStore, StreamLog};
use relay_core::codec::parse_native;
use relay_core::{Domain, Event, JobId, KeySpace, Profile};
use relay_sse::client::SseReader;
use relay_testkit::procs::{free_addr, wait_port, Proc};
use relay_testkit::redis::TestRedis;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(90);
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BACKOFF_MS: &str = "200";

/// The broker settings every process of a test shares (a unique prefix).
fn pipeline_args(name: &str) -> PipelineArgs {
    PipelineArgs {
        amqp_url: AMQP_URL.into(),
        queue_prefix: format!(
            "e2e.{name}.{}",
            relay_testkit::redis::unique_prefix()
                .trim_end_matches(':')
                .replace(':', "-")
        ),
        max_attempts: 3,
        backoff_ms: BACKOFF_MS.parse().expect("backoff"),
        max_backoff_ms: 30_000,
    }
}

/// Global flags for a `pipeline-scan` process, then the subcommand's.
fn scan_args(redis: &str, profile: &str, p: &PipelineArgs, sub: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--redis-url",
        redis,
        "--profile",
        profile,
        "--amqp-url",
        &p.amqp_url,
        "--queue-prefix",
        &p.queue_prefix,
        "--backoff-ms",
        BACKOFF_MS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(sub.iter().map(|s| s.to_string()));
    v
}

fn spawn(name: &str, args: &[String]) -> Proc {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(name, &refs, &[])
}

async fn submit(api: SocketAddr, user: &str, image_url: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/scan"))
        .header("x-user-id", user)
        .json(&json!({ "image_url": image_url }))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), 200, "submit rejected");
    resp.json().await.expect("submit JSON")
}

/// The job's events in its shard stream (native profile), in append order.
async fn stream_events(backend: &RedisBackend, ks: &KeySpace, job: &JobId) -> Vec<Event> {
    let entries = backend
        .range(&ks.shard_stream(ks.shard_of(job)), None, 100_000)
        .await
        .expect("XRANGE");
    entries
        .iter()
        .filter_map(|e| parse_native(&e.fields).ok().map(|n| n.event))
        .filter(|e| &e.job_id == job)
        .collect()
}

async fn wait_events<F: Fn(&[Event]) -> bool>(
    backend: &RedisBackend,
    ks: &KeySpace,
    job: &JobId,
    what: &str,
    until: F,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let evs = stream_events(backend, ks, job).await;
        if until(&evs) {
            return evs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; events so far: {:?}",
            steps(&evs)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn steps(evs: &[Event]) -> Vec<(String, String)> {
    evs.iter()
        .map(|e| (e.stage.to_string(), e.status.to_string()))
        .collect()
}

fn full_scan() -> Vec<(String, String)> {
    [
        ("queued", "started"),
        ("vision", "started"),
        ("vision", "completed"),
        ("rule", "started"),
        ("rule", "completed"),
        ("answer", "started"),
        ("answer", "completed"),
        ("reward", "started"),
        ("reward", "completed"),
        ("done", "completed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

fn has(evs: &[Event], stage: &str, status: &str) -> bool {
    evs.iter()
        .any(|e| e.stage.as_str() == stage && e.status.to_string() == status)
}

async fn teardown(p: &PipelineArgs) {
    if let Err(e) = p.topology().delete_all(&p.amqp()).await {
        eprintln!("queue cleanup failed: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_stage_is_redelivered_and_the_job_completes_with_one_reward() {
    let redis = TestRedis::private();
    let url = redis.url().to_owned();
    let p = pipeline_args("kill");
    // Vision takes 3 s, so the kill lands while the stage is running.
    let mut worker_a = spawn(
        "pipeline-scan",
        &scan_args(
            &url,
            "native",
            &p,
            &[
                "worker",
                "--metrics-addr",
                "127.0.0.1:0",
                "--sim-latency-ms",
                "3000",
            ],
        ),
    );
    let api = free_addr();
    let api_proc = spawn(
        "pipeline-scan",
        &scan_args(&url, "native", &p, &["api", "--listen", &api.to_string()]),
    );
    wait_port(api, LIMIT).await;
    let backend = Arc::new(
        RedisBackend::connect(redis.url())
            .await
            .expect("connect to redis"),
    );
    let ks = KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4);

    let user = "kill-user";
    let body = submit(api, user, "https://images.example.com/items/drink-can.jpg").await;
    let job = JobId::new(body["job_id"].as_str().expect("job_id")).expect("job id");

    // Worker A has started vision: kill -9 it mid-stage.
    wait_events(&backend, &ks, &job, "vision started", |e| {
        has(e, "vision", "started")
    })
    .await;
    worker_a.kill9();
    let evs = stream_events(&backend, &ks, &job).await;
    assert!(
        !has(&evs, "vision", "completed"),
        "precondition: the worker must die mid-stage (vision takes 3 s): {:?}",
        steps(&evs)
    );

    // A new worker gets the redelivered message and finishes the job.
    let worker_b = spawn(
        "pipeline-scan",
        &scan_args(
            &url,
            "native",
            &p,
            &[
                "worker",
                "--metrics-addr",
                "127.0.0.1:0",
                "--sim-latency-ms",
                "100",
            ],
        ),
    );
    let evs = wait_events(&backend, &ks, &job, "done", |e| has(e, "done", "completed")).await;
    // Give a duplicate (the failure this test hunts) a moment to be appended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let evs = {
        let later = stream_events(&backend, &ks, &job).await;
        assert!(later.len() >= evs.len());
        later
    };
    // Each event exactly once (the re-run vision's `started` deduplicated),
    // exactly one `done`, last.
    assert_eq!(steps(&evs), full_scan(), "every stage once, done last");
    assert_eq!(evs.iter().filter(|e| e.is_terminal()).count(), 1);

    // Exactly one reward grant: the reward event reports a new grant, and
    // the user owns exactly one character, granted by this job.
    let reward = &evs
        .iter()
        .find(|e| e.stage.as_str() == "reward" && e.status.to_string() == "completed")
        .expect("reward completed")
        .data["reward"];
    assert_eq!(reward["already_owned"], false, "{reward}");
    let character = reward["character_id"].as_str().expect("character granted");
    let keys = redis
        .server()
        .expect("private server")
        .command(&["KEYS", &format!("scan:reward:{user}:*")])
        .await
        .expect("KEYS");
    match &keys {
        redis::Value::Array(v) => assert_eq!(v.len(), 1, "{keys:?}"),
        other => panic!("KEYS answered {other:?}"),
    }
    let owner = backend
        .get(&format!("scan:reward:{user}:{character}"))
        .await
        .expect("GET")
        .expect("grant stored");
    assert_eq!(owner.as_ref(), job.as_str().as_bytes());

    // The stored result agrees.
    let result: Value = serde_json::from_slice(
        &backend
            .get(&format!("scan:result:{job}"))
            .await
            .expect("GET")
            .expect("result stored"),
    )
    .expect("result JSON");
    assert_eq!(result["status"], "completed");
    assert_eq!(result["reward"]["character_id"], character);
    drop((worker_b, api_proc));
    teardown(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rabbitmq_worker_redis_router_gateway_client_eco2_end_to_end() {
    let redis = TestRedis::private();
    let url = redis.url().to_owned();
    let p = pipeline_args("e2e");
    let secret = "e2e-scan-secret";
    let _router = Proc::spawn(
        "relay-router",
        &[
            "--redis-url",
            &url,
            "--profile",
            "eco2",
            "--consumer",
            "r1",
            "--metrics-addr",
            "127.0.0.1:0",
            "--block-ms",
            "200",
        ],
        &[],
    );
    let sse = free_addr();
    let _gateway = Proc::spawn(
        "relay-sse",
        &[
            "--listen",
            &sse.to_string(),
            "--redis-url",
            &url,
            "--profile",
            "eco2",
            "--auth-secret",
            secret,
            "--pending-job-secs",
            "30",
        ],
        &[],
    );
    let worker = spawn(
        "pipeline-scan",
        &scan_args(
            &url,
            "eco2",
            &p,
            &[
                "worker",
                "--metrics-addr",
                "127.0.0.1:0",
                "--sim-latency-ms",
                "50",
            ],
        ),
    );
    let api = free_addr();
    let api_proc = spawn(
        "pipeline-scan",
        &scan_args(
            &url,
            "eco2",
            &p,
            &["api", "--listen", &api.to_string(), "--auth-secret", secret],
        ),
    );
    wait_port(api, LIMIT).await;
    wait_port(sse, LIMIT).await;

    let body = submit(
        api,
        "e2e-user",
        "https://images.example.com/items/newspaper.jpg",
    )
    .await;
    let job = body["job_id"].as_str().expect("job_id").to_owned();
    let token = body["token"]
        .as_str()
        .expect("token (auth is on)")
        .to_owned();
    let stream_url = body["stream_url"].as_str().expect("stream_url").to_owned();
    assert_eq!(
        stream_url,
        format!("/api/v1/scan/{job}/events?token={token}")
    );
    assert_eq!(body["result_url"], format!("/api/v1/scan/{job}/result"));
    assert_eq!(body["status"], "queued");

    let http = reqwest::Client::new();
    // The gateway checks the API's token (same HMAC secret).
    let denied = http
        .get(format!("http://{sse}/api/v1/scan/{job}/events"))
        .send()
        .await
        .expect("GET");
    assert_eq!(denied.status(), 401);

    let resp = http
        .get(format!("http://{sse}{stream_url}"))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp.bytes_stream());
    let mut events = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(ev) = reader.next_event().await {
            events.push(ev.expect("stream"));
        }
    })
    .await
    .expect("the stream did not end after done");

    // eco2 framing: `event: <stage>`, `id: <stream id>`, data = routed JSON.
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "queued", "vision", "vision", "rule", "rule", "answer", "answer", "reward", "reward",
            "done"
        ]
    );
    let mut seqs = Vec::new();
    for ev in &events {
        let id = ev.id.as_deref().expect("id");
        let (ms, n) = id.split_once('-').expect("stream id");
        assert!(
            ms.parse::<u64>().is_ok() && n.parse::<u64>().is_ok(),
            "{id}"
        );
        let data: Value = serde_json::from_str(&ev.data).expect("routed JSON");
        assert_eq!(data["job_id"], job.as_str());
        assert_eq!(data["stage"], ev.event);
        assert_eq!(data["stream_id"], id);
        assert!(
            data["ts"]
                .as_str()
                .is_some_and(|t| t.parse::<f64>().is_ok()),
            "{data}"
        );
        seqs.push(data["seq"].as_u64().expect("integer seq"));
    }
    assert_eq!(seqs, [0, 10, 11, 20, 21, 30, 31, 40, 41, 51]);

    // The done event's `result` is the docs/ECO2_WIRE.md done result.
    let done: Value = serde_json::from_str(&events[9].data).expect("done JSON");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["progress"], 100);
    let result = &done["result"];
    let mut fields: Vec<&str> = result
        .as_object()
        .expect("result object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "error",
            "message",
            "pipeline_result",
            "reward",
            "status",
            "task_id"
        ]
    );
    assert_eq!(result["task_id"], job.as_str());
    assert_eq!(result["status"], "completed");
    assert!(result["error"].is_null());
    let pr = &result["pipeline_result"];
    let mut pr_fields: Vec<&str> = pr
        .as_object()
        .expect("pipeline_result")
        .keys()
        .map(String::as_str)
        .collect();
    pr_fields.sort_unstable();
    assert_eq!(
        pr_fields,
        ["classification_result", "disposal_rules", "final_answer"]
    );
    let c = &pr["classification_result"]["classification"];
    for k in ["major_category", "middle_category", "minor_category"] {
        assert!(c[k].is_string(), "{c}");
    }
    assert_eq!(c["minor_category"], "newspaper");
    assert!(pr["classification_result"]["situation_tags"].is_array());
    assert!(pr["disposal_rules"].is_object());
    assert!(pr["final_answer"]["user_answer"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(result["reward"]["character_id"].is_string());

    // The result API serves the same result.
    let stored: Value = http
        .get(format!("http://{api}/api/v1/scan/{job}/result"))
        .send()
        .await
        .expect("GET result")
        .json()
        .await
        .expect("result JSON");
    assert_eq!(&stored, result);
    drop((worker, api_proc));
    teardown(&p).await;
}
