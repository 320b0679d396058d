//! Browser test: headless Debian Chromium (driven by playwright-core from
//! `tests/browser/`) loads `relay-sse --demo-page`, follows a job, the
//! gateway is SIGKILLed and restarted on the same port mid-job, and the page
//! still shows every stage exactly once and `done`: the browser's own
//! EventSource reconnects with Last-Event-ID.
//!
//! A second test holds the gateway at its connection limit while the page
//! opens its stream: the browser keeps retrying (the gateway answers with a
//! `retry:`-only event stream, never a status an EventSource gives up on)
//! and streams once a slot frees.
//!
//! Needs `/usr/bin/chromium` (or `$CHROMIUM_BIN`) and `node`/`npm`;
//! `scripts/test.sh` installs them. The test runs `npm ci` in `tests/browser/`
//! itself when `node_modules` is missing. A missing browser is a loud
//! failure, never a silent skip.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::{ApplyEvent, ApplyJob, ApplyOptions, Backend};
use relay_core::{
    Domain, Encoding, Epoch, Event, KeySpace, Payload, Profile, Publisher, PublisherConfig, Status,
};
use relay_sse::{Gateway, GatewayOptions};
use relay_testkit::bench::prometheus_sample;
use relay_testkit::procs::{free_port, wait_port, wait_readyz, KillOnDrop, Proc};
use relay_testkit::redis::TestRedis;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

use relay_testkit::browser::{browser_dir, chromium, ensure_node_modules};

/// The node script, stepped over stdin/stdout (one JSON object per line);
/// killed on drop.
struct Script {
    _child: KillOnDrop,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Script {
    fn start(url: &str, job: &str, shot: &Path) -> Self {
        let mut child = Command::new("node")
            .arg(browser_dir().join("gateway_demo.mjs"))
            .args([url, job])
            .arg(shot)
            .env("CHROMIUM_BIN", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node (is nodejs installed?)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            _child: KillOnDrop(child),
            stdin,
            stdout,
        }
    }

    /// The next JSON line (blocking; the script has its own time limits).
    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read script output");
        assert!(n > 0, "the browser script exited early");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad script output {line:?}: {e}"))
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to script");
        self.stdin.flush().expect("flush");
    }

    /// Waits until the page shows at least `n` rows.
    async fn wait_rows(&mut self, n: usize) -> Value {
        self.send(&format!("wait {n}"));
        let v = tokio::task::block_in_place(|| self.read());
        assert_eq!(v["phase"], "rows");
        assert_eq!(v["ok"], true, "the page never showed {n} rows: {v}");
        v
    }
}

/// The stages of the followed job, in publish order (seq = index + 1).
const STAGES: [(&str, Status); 10] = [
    ("queued", Status::Started),
    ("vision", Status::Started),
    ("vision", Status::Completed),
    ("rule", Status::Started),
    ("rule", Status::Completed),
    ("answer", Status::Started),
    ("answer", Status::Completed),
    ("reward", Status::Started),
    ("reward", Status::Completed),
    ("done", Status::Completed),
];

fn event(job: &str, i: usize) -> Event {
    let (stage, status) = STAGES[i];
    Event::new("scan", job, i as u64 + 1, stage, status)
        .expect("event")
        .with_progress(((i + 1) * 100 / STAGES.len()) as u8)
        .with_data(serde_json::json!({"step": i + 1, "detail": format!("{stage} {status}")}))
}

async fn wait_ready(addr: SocketAddr) {
    wait_port(addr, LIMIT).await;
    wait_readyz(addr, 200, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_every_stage_once_across_a_gateway_restart() {
    chromium();
    ensure_node_modules();
    let redis = TestRedis::private();
    let url = redis.url().to_owned();
    let _router = Proc::spawn(
        "relay-router",
        &[
            "--redis-url",
            &url,
            "--consumer",
            "r1",
            "--metrics-addr",
            "127.0.0.1:0",
            "--block-ms",
            "200",
        ],
        &[],
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr: SocketAddr = listen.parse().expect("addr");
    let mut gateway = Proc::spawn(
        "relay-sse",
        &[
            "--listen",
            &listen,
            "--redis-url",
            &url,
            "--demo-page",
            "--retry-ms",
            "300",
            "--heartbeat-secs",
            "1",
            "--pending-job-secs",
            "30",
        ],
        &[],
    );
    wait_ready(addr).await;
    let backend: Arc<dyn Backend> = Arc::new(
        RedisBackend::connect(redis.url())
            .await
            .expect("connect to redis"),
    );
    let keys = KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4);
    let publisher = Publisher::new(backend, keys, PublisherConfig::default());
    let job = "browser-job-1";
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser/gateway_demo.png");

    let mut script = Script::start(&format!("http://{listen}"), job, &shot);
    let loaded = tokio::task::block_in_place(|| script.read());
    assert_eq!(loaded["phase"], "loaded", "{loaded}");

    // The page waits on a job with no event yet; the first stages stream live.
    for i in 0..4 {
        publisher.publish(&event(job, i)).await.expect("publish");
    }
    script.wait_rows(4).await;

    // SIGKILL the gateway mid-job; publish while it is down; restart it on
    // the same port. The browser's EventSource reconnects by itself.
    gateway.kill9();
    for i in 4..7 {
        publisher.publish(&event(job, i)).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.restart();
    wait_ready(addr).await;
    script.wait_rows(7).await;
    for i in 7..STAGES.len() {
        publisher.publish(&event(job, i)).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    script.send("finish");
    let result = tokio::task::block_in_place(|| script.read());
    assert_eq!(result["phase"], "result", "{result}");
    assert_eq!(result["ok"], true, "the page did not finish: {result}");
    assert_eq!(result["state"]["finished"], "completed", "{result}");
    let rows = result["rows"].as_array().expect("rows");
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["offset"].as_str().unwrap_or("").to_owned(),
                r["stage"].as_str().unwrap_or("").to_owned(),
                r["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = STAGES
        .iter()
        .enumerate()
        .map(|(i, (stage, status))| {
            (
                (i + 1).to_string(),
                stage.to_string(),
                status.as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got, want,
        "every stage exactly once, in order, ending with done"
    );
    assert!(
        result["state"]["reconnects"].as_u64().unwrap_or(0) >= 1,
        "the EventSource reconnected after the restart: {result}"
    );
    eprintln!(
        "browser: {} rows, screenshot at {}",
        rows.len(),
        shot.display()
    );
}

/// Applies step `i` of `job` straight into the backend (as the router would).
async fn apply(backend: &dyn Backend, keys: &KeySpace, job: &str, i: usize) {
    let ev = event(job, i);
    let job_keys = keys.job(&ev.job_id);
    backend
        .apply(
            &[ApplyJob {
                keys: job_keys,
                epoch: Epoch::random(),
                events: vec![ApplyEvent {
                    seq: ev.seq,
                    payload: Payload::from_event(&ev, Encoding::Json).expect("encode"),
                }],
                extra_channel: None,
            }],
            &ApplyOptions::default(),
        )
        .await
        .expect("apply");
}

fn connection_limit_rejections(gateway: &Gateway) -> u64 {
    let series = "relay_sse_rejected_total{reason=\"connection_limit\"}";
    prometheus_sample(&gateway.metrics().render(), series).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_at_the_connection_limit_retries_then_streams() {
    chromium();
    ensure_node_modules();
    let mem = Arc::new(MemoryBackend::new());
    let backend: Arc<dyn Backend> = mem;
    let gateway = Gateway::new(
        backend.clone(),
        GatewayOptions {
            max_connections: 1,
            retry_ms: 200,
            demo_page: true,
            heartbeat: Duration::from_secs(1),
            ..GatewayOptions::default()
        },
    )
    .expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gw = gateway.clone();
    tokio::spawn(async move { gw.serve(listener, std::future::pending()).await });
    wait_ready(addr).await;
    let keys = KeySpace::new(Profile::Native, Domain::new("scan").expect("domain"), 4);
    let job = "browser-limit-1";
    for i in 0..3 {
        apply(&*backend, &keys, job, i).await;
    }

    // Another client holds the only slot.
    let holder = reqwest::get(format!("http://{addr}/v1/jobs/{job}/events"))
        .await
        .expect("holder connects");
    assert_eq!(holder.status(), 200);
    assert_eq!(gateway.active_connections(), 1);

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser/gateway_limit.png");
    let mut script = Script::start(&format!("http://{addr}"), job, &shot);
    let loaded = tokio::task::block_in_place(|| script.read());
    assert_eq!(loaded["phase"], "loaded", "{loaded}");

    // The page's EventSource is turned away again and again, and retries.
    tokio::time::timeout(LIMIT, async {
        while connection_limit_rejections(&gateway) < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the browser stopped retrying at the connection limit");
    let state = script.wait_rows(0).await;
    assert_eq!(state["rows"], 0, "{state}");
    assert!(
        !state["state"]["status"]
            .as_str()
            .unwrap_or("")
            .starts_with("closed"),
        "the EventSource gave up: {state}"
    );

    // A slot frees: the next retry streams the job from the start.
    drop(holder);
    script.wait_rows(3).await;
    for i in 3..STAGES.len() {
        apply(&*backend, &keys, job, i).await;
    }
    script.send("finish");
    let result = tokio::task::block_in_place(|| script.read());
    assert_eq!(result["ok"], true, "the page did not finish: {result}");
    assert_eq!(result["state"]["finished"], "completed", "{result}");
    let offsets: Vec<String> = result["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["offset"].as_str().unwrap_or("").to_owned())
        .collect();
    let want: Vec<String> = (1..=STAGES.len()).map(|n| n.to_string()).collect();
    assert_eq!(offsets, want, "every stage exactly once, in order");
}
