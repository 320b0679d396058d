//! Every axum listener of the real binaries closes idle and half-sent
//! connections (`relay_core::http_serve`) and counts it in its `/metrics`:
//! `relay-router --metrics-addr`, `pipeline-scan api`, `pipeline-scan worker
//! --metrics-addr` and `relay-sse --metrics-addr`. (The demo is covered in
//! `pipeline-scan/tests/http_limits.rs`.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_testkit::bench::prometheus_sample;
use relay_testkit::procs::{free_addr, wait_port, Proc};
use relay_testkit::rabbitmq::{delete_queues_with_prefix, unique_prefix};
use relay_testkit::redis::TestRedis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for "it should have happened by now".
const LIMIT: Duration = Duration::from_secs(30);

/// Short timeouts through the environment (a binary without the flags
/// ignores them, and then never closes the sockets).
const SHORT: &[(&str, &str)] = &[
    ("RELAY_HTTP_IDLE_TIMEOUT_SECS", "0.3"),
    ("RELAY_HTTP_HEAD_TIMEOUT_SECS", "0.3"),
];

/// Reads until the peer closes; panics after `LIMIT`.
async fn closed_by_server(mut sock: TcpStream, what: &str) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(LIMIT, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the server never closed the connection"));
    t0.elapsed()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

fn sample(text: &str, name: &str) -> f64 {
    prometheus_sample(text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Opens an idle and a half-sent connection and waits until the server
/// closed both; then checks the counters under `prefix`.
async fn assert_bounded(addr: SocketAddr, prefix: &str, idle_too: bool) {
    wait_port(addr, LIMIT).await;
    let idle = TcpStream::connect(addr).await.expect("connect");
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    closed_by_server(half, "half-sent head").await;
    if idle_too {
        closed_by_server(idle, "idle").await;
    }
    let metrics = get(addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(sample(&metrics, &format!("{prefix}_http_head_timeouts_total")) >= 1.0);
    if idle_too {
        assert!(sample(&metrics, &format!("{prefix}_http_idle_timeouts_total")) >= 1.0);
    }
    assert!(sample(&metrics, &format!("{prefix}_http_connections_open")) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_router_metrics_listener_closes_idle_and_half_sent_connections() {
    let redis = TestRedis::private();
    let metrics = free_addr();
    let _router = Proc::spawn(
        "relay-router",
        &[
            "--redis-url",
            redis.url(),
            "--metrics-addr",
            &metrics.to_string(),
        ],
        SHORT,
    );
    assert_bounded(metrics, "relay_router", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_scan_api_and_worker_listeners_close_idle_and_half_sent_connections() {
    let redis = TestRedis::private();
    let api = free_addr();
    let worker = free_addr();
    // Queues of this test's own (the broker is shared): never the default
    // `scan.*` another user may run on.
    let prefix = unique_prefix("limits");
    // The broker may be down: the API starts anyway, the worker retries,
    // and both listeners serve.
    let api_proc = Proc::spawn(
        "pipeline-scan",
        &[
            "--redis-url",
            redis.url(),
            "--queue-prefix",
            &prefix,
            "api",
            "--listen",
            &api.to_string(),
        ],
        SHORT,
    );
    let worker_proc = Proc::spawn(
        "pipeline-scan",
        &[
            "--redis-url",
            redis.url(),
            "--queue-prefix",
            &prefix,
            "worker",
            "--metrics-addr",
            &worker.to_string(),
        ],
        SHORT,
    );
    assert_bounded(api, "pipeline_scan", true).await;
    assert!(get(api, "/healthz").await.ends_with("ok"));
    assert_bounded(worker, "pipeline_scan", true).await;
    drop((api_proc, worker_proc));
    delete_queues_with_prefix(&prefix);
}

/// relay-sse's metrics listener runs with the default limits (10 s head
/// timeout); only the half-sent head is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sse_metrics_listener_closes_half_sent_connections() {
    let listen = free_addr();
    let metrics = free_addr();
    let _sse = Proc::spawn(
        "relay-sse",
        &[
            "--backend",
            "memory",
            "--listen",
            &listen.to_string(),
            "--metrics-addr",
            &metrics.to_string(),
        ],
        &[],
    );
    assert_bounded(metrics, "relay_sse", false).await;
    let text = get(metrics, "/metrics").await;
    assert!(text.contains("relay_sse_active_connections"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
}
