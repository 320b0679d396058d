//! Producers in other languages, against the real binaries: a private
//! redis-server, `relay-router` and `relay-sse` as processes.
//!
//! - `python_producer_…` and `node_producer_…`: the example producers of
//!   `examples/producers/` (redis-py; node-redis) write native stream
//!   entries with JSON bodies as docs/PRODUCERS.md specifies, to the shard
//!   stream the doc's shard function names; an SSE client connected before
//!   the first event receives every one of them exactly once, in order, and
//!   its stream ends at `done`.
//! - `http_publish_…`: the gateway's `POST /v1/jobs/{job_id}/events` with
//!   publisher keys: missing and wrong keys, bad bodies and oversized ones
//!   refused; a retried publish appended once and reported as a duplicate;
//!   the published job streamed in order to `done`; a Redis refusing
//!   writes answered `503` with `Retry-After`, and the retry then lands.
//!
//! The examples' dependencies are installed by `examples/producers/install.sh`
//! (scripts/test.sh runs it); a missing one fails the test, saying so.
//! No timed assertions: every wait is a hang guard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use relay_core::keys::shard_for;
use relay_sse::client::{SseEvent, SseReader};
use serde_json::{json, Value};

// The test harness, in one place.
use relay_testkit::procs::{free_port, wait_port, wait_readyz, Proc};
use relay_testkit::redis::{TestRedis, WriteRefusal};
use relay_testkit::wait::wait_until;

/// Hang guard for one wait.
const LIMIT: Duration = Duration::from_secs(60);
/// The gateway's publisher keys (`RELAY_PUBLISHER_KEYS`).
const KEYS: &str = "pk-producers-1,pk-producers-2";
const KEY: &str = "pk-producers-1";
const SHARDS: u32 = 4;
/// `--max-publish-bytes` of the gateway.
const MAX_PUBLISH: usize = 4096;

/// redis-server + relay-router + relay-sse (publishing enabled), killed on drop.
struct Stack {
    // Field order is drop order: the processes go before their Redis.
    _router: Proc,
    _gateway: Proc,
    addr: SocketAddr,
    redis: TestRedis,
}

impl Stack {
    async fn start() -> Self {
        let redis = TestRedis::private();
        let url = redis.url().to_owned();
        let shards = SHARDS.to_string();
        let both = ["--redis-url", &url, "--shards", &shards];
        let router_only = ["--consumer", "r1", "--metrics-addr", "127.0.0.1:0"];
        let router = Proc::spawn(
            "relay-router",
            &[&both[..], &router_only[..], &["--block-ms", "200"]].concat(),
            &[],
        );
        let listen = format!("127.0.0.1:{}", free_port());
        let max_publish = MAX_PUBLISH.to_string();
        let gateway_only = [
            "--listen",
            &listen,
            // The client connects before its job's first event.
            "--pending-job-secs",
            "60",
            "--heartbeat-secs",
            "1",
            "--max-publish-bytes",
            &max_publish,
        ];
        let gateway = Proc::spawn(
            "relay-sse",
            &[&both[..], &gateway_only[..]].concat(),
            &[("RELAY_PUBLISHER_KEYS", KEYS)],
        );
        let addr: SocketAddr = listen.parse().expect("addr");
        wait_port(addr, LIMIT).await;
        wait_readyz(addr, 200, LIMIT).await;
        Self {
            _router: router,
            _gateway: gateway,
            addr,
            redis,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Entries in each shard stream.
    async fn stream_lengths(&self) -> Vec<u64> {
        let client = redis::Client::open(self.redis.url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let mut out = Vec::new();
        for shard in 0..SHARDS {
            let len: u64 = redis::cmd("XLEN")
                .arg(
                    relay_core::KeySpace::new(
                        relay_core::Profile::Native,
                        relay_core::Domain::new("scan").expect("domain"),
                        SHARDS,
                    )
                    .shard_stream(shard),
                )
                .query_async(&mut conn)
                .await
                .expect("XLEN");
            out.push(len);
        }
        out
    }

    /// A value of the gateway's `/metrics` (`series` is the name with its
    /// labels; 0 when absent).
    async fn metric(&self, series: &str) -> u64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let key = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |v| v.trim().parse().expect("a number"))
    }

    /// Publish requests counted under `outcome`.
    async fn publishes(&self, outcome: &str) -> u64 {
        self.metric(&format!(
            "relay_sse_publishes_total{{outcome=\"{outcome}\"}}"
        ))
        .await
    }

    /// Opens the job's SSE stream in a task that collects every event until
    /// the gateway ends the stream, and waits until the gateway holds the
    /// connection (so what follows reaches it live).
    async fn follow(&self, job: &str) -> tokio::task::JoinHandle<Vec<SseEvent>> {
        let before = self.active_connections().await;
        let url = self.url(&format!("/v1/jobs/{job}/events"));
        let task = tokio::spawn(async move {
            let resp = reqwest::get(&url).await.expect("stream request");
            assert_eq!(resp.status(), 200, "stream status");
            let mut reader = SseReader::new(resp.bytes_stream());
            let mut events = Vec::new();
            while let Some(e) = reader.next_event().await {
                events.push(e.expect("stream read"));
            }
            events
        });
        wait_until(LIMIT, "the SSE client connected", || async {
            self.active_connections().await > before
        })
        .await;
        task
    }

    async fn active_connections(&self) -> u64 {
        self.metric("relay_sse_active_connections").await
    }
}

/// Waits for a follower's events (the stream must end by itself).
async fn events_of(task: tokio::task::JoinHandle<Vec<SseEvent>>) -> Vec<SseEvent> {
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("the stream did not end (no terminal event?)")
        .expect("follower task")
}

/// Checks that `events` are exactly `published` (each a JSON object with
/// `seq`, `stage`, `status`, `progress`, `data`), once each, in order,
/// under one epoch with offsets 1, 2, …, ending at `done`.
fn check_stream(job: &str, events: &[SseEvent], published: &[Value]) {
    let summary: Vec<String> = events.iter().map(|e| e.data.clone()).collect();
    assert_eq!(
        events.len(),
        published.len(),
        "events received: {summary:#?}"
    );
    let mut epoch = None;
    for (i, (e, want)) in events.iter().zip(published).enumerate() {
        let id = e.id.as_deref().expect("event id");
        let (ep, offset) = id.split_once(':').expect("epoch:offset id");
        assert_eq!(*epoch.get_or_insert(ep.to_owned()), ep, "one epoch");
        assert_eq!(offset, (i + 1).to_string(), "offsets are 1, 2, …");
        let got: Value = serde_json::from_str(&e.data).expect("event JSON");
        assert_eq!(got["job_id"], job, "{got}");
        assert_eq!(got["domain"], "scan", "{got}");
        for field in ["seq", "stage", "status", "progress", "data"] {
            assert_eq!(
                got[field], want[field],
                "event {i}, {field}: {got} vs {want}"
            );
        }
        assert_eq!(
            e.event,
            want["stage"].as_str().expect("stage"),
            "event name"
        );
    }
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
}

/// Runs an example producer to completion; returns what it published (one
/// JSON line per event on stdout).
async fn run_producer(mut cmd: Command, what: &str) -> Vec<Value> {
    let what = what.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run the {what} producer: {e}"));
        assert!(
            out.status.success(),
            "{what} producer failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8 output")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line per event"))
            .collect()
    })
    .await
    .expect("producer task")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of the producer venv, with redis-py importable.
///
/// # Panics
/// When it is missing: says how to install it.
fn python() -> PathBuf {
    let venv = std::env::var_os("RELAY_PRODUCERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/producers-venv"));
    let python = repo().join(venv).join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import redis: run examples/producers/install.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

/// The Node example's directory, its `redis` package installed.
///
/// # Panics
/// When node or the package is missing: says how to install them.
fn node_example() -> PathBuf {
    let dir = repo().join("examples/producers/node");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node,
        "node is missing: install nodejs (scripts/test.sh does)"
    );
    assert!(
        dir.join("node_modules/redis/package.json").is_file(),
        "{}/node_modules lacks the redis package: run examples/producers/install.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// One example producer end to end: `command(redis_url)` publishes
/// `job`; a client connected before sees all of it.
async fn example_producer(job: &str, command: impl FnOnce(&str) -> Command, what: &str) {
    let stack = Stack::start().await;
    let follower = stack.follow(job).await;
    let published = run_producer(command(stack.redis.url()), what).await;
    assert_eq!(published.len(), 6, "{published:#?}");
    let events = events_of(follower).await;
    check_stream(job, &events, &published);
    // Every entry went to the stream the doc's shard function names.
    let mut want = vec![0; SHARDS as usize];
    want[shard_for(job, SHARDS) as usize] = published.len() as u64;
    assert_eq!(stack.stream_lengths().await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_events_reach_an_sse_client_once_in_order_to_done() {
    let python = python();
    let job = "py-producer-job-1";
    let command = |url: &str| {
        let mut cmd = Command::new(&python);
        cmd.arg(repo().join("examples/producers/python/produce.py"))
            .args(["--redis-url", url, "--job", job]);
        cmd
    };
    example_producer(job, command, "Python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_producer_events_reach_an_sse_client_once_in_order_to_done() {
    let dir = node_example();
    let job = "node-producer-job-1";
    let command = |url: &str| {
        let mut cmd = Command::new("node");
        cmd.arg("produce.mjs")
            .args(["--redis-url", url, "--job", job])
            .current_dir(&dir);
        cmd
    };
    example_producer(job, command, "Node").await;
}

/// A publish's answer: status, `Retry-After`, JSON body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn publish(stack: &Stack, job: &str, key: Option<&str>, body: String) -> Answer {
    let mut req = reqwest::Client::new()
        .post(stack.url(&format!("/v1/jobs/{job}/events")))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = tokio::time::timeout(LIMIT, req.send())
        .await
        .expect("publish hung")
        .expect("publish sent");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let text = resp.text().await.expect("answer body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    Answer {
        status,
        retry_after,
        body,
    }
}

/// The events of an HTTP-published job, as request bodies.
fn http_steps() -> Vec<Value> {
    vec![
        json!({"seq": 10, "stage": "upload", "status": "started", "progress": 0, "data": null}),
        json!({"seq": 11, "stage": "upload", "status": "progress", "progress": 40, "data": {"bytes": 4000}}),
        json!({"seq": 12, "stage": "upload", "status": "completed", "progress": 100, "data": {"bytes": 10000}}),
        json!({"seq": 20, "stage": "done", "status": "completed", "progress": 100, "data": {"url": "s3://bucket/key"}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_refuses_bad_keys_and_bodies_and_appends_a_retry_once() {
    let stack = Stack::start().await;
    let job = "http-producer-job-1";
    let ok = r#"{"seq":1,"stage":"a","status":"started"}"#.to_owned();
    let refused = [
        (None, ok.clone(), 401, "UNAUTHORIZED"),
        (Some("pk-guess"), ok.clone(), 403, "FORBIDDEN"),
        (Some(KEY), "{seq: 1}".to_owned(), 400, "INVALID_JSON"),
        (
            Some(KEY),
            r#"{"seq":1,"stage":"a","status":"progress","progress":101}"#.to_owned(),
            422,
            "INVALID_EVENT",
        ),
        (
            Some(KEY),
            json!({"seq": 1, "stage": "a", "status": "started", "data": "x".repeat(MAX_PUBLISH)})
                .to_string(),
            413,
            "BODY_TOO_LARGE",
        ),
    ];
    for (key, body, status, code) in refused {
        let got = publish(&stack, job, key, body).await;
        assert_eq!(
            (got.status, got.body["code"].as_str()),
            (status, Some(code)),
            "{}",
            got.body
        );
    }
    assert_eq!(
        stack.stream_lengths().await,
        vec![0; SHARDS as usize],
        "nothing appended"
    );

    let follower = stack.follow(job).await;
    let steps = http_steps();
    for (i, step) in steps.iter().enumerate() {
        let got = publish(&stack, job, Some(KEY), step.to_string()).await;
        assert_eq!(got.status, 201, "{}", got.body);
        assert_eq!(got.body["duplicate"], false);
        if i == 1 {
            // The producer retries (a timeout, say) with the other key:
            // one event, and the answer names the first entry.
            let again = publish(&stack, job, Some("pk-producers-2"), step.to_string()).await;
            assert_eq!(again.status, 200, "{}", again.body);
            assert_eq!(again.body, json!({"id": got.body["id"], "duplicate": true}));
        }
    }
    let events = events_of(follower).await;
    check_stream(job, &events, &steps);
    let mut want = vec![0; SHARDS as usize];
    want[shard_for(job, SHARDS) as usize] = steps.len() as u64;
    assert_eq!(stack.stream_lengths().await, want);
    for (outcome, n) in [
        ("published", 4),
        ("duplicate", 1),
        ("unauthorized", 1),
        ("forbidden", 1),
        ("invalid", 2),
        ("too_large", 1),
    ] {
        assert_eq!(stack.publishes(outcome).await, n, "{outcome}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_is_503_with_retry_after_while_redis_refuses_writes() {
    let stack = Stack::start().await;
    let job = "http-producer-job-2";
    let follower = stack.follow(job).await;
    let steps = http_steps();
    let first = publish(&stack, job, Some(KEY), steps[0].to_string()).await;
    assert_eq!(first.status, 201, "{}", first.body);

    let server = stack.redis.server().expect("a private redis-server");
    server
        .refuse_writes(WriteRefusal::NoReplicas)
        .await
        .expect("refuse writes");
    let refused = publish(&stack, job, Some(KEY), steps[1].to_string()).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["code"], "BACKEND_UNAVAILABLE");
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    server.allow_writes().await.expect("allow writes");

    // The producer retries after Retry-After: the event lands once.
    for step in &steps[1..] {
        let got = publish(&stack, job, Some(KEY), step.to_string()).await;
        assert_eq!(got.status, 201, "{}", got.body);
    }
    check_stream(job, &events_of(follower).await, &steps);
    assert_eq!(stack.publishes("unavailable").await, 1);
}
