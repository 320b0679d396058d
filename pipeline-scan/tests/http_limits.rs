//! The real `pipeline-scan demo` binary under a small descriptor limit:
//! idle and half-sent connections are closed after `RELAY_HTTP_*` timeouts,
//! so `/healthz` keeps answering when more of them arrive than the process
//! has descriptors.

use std::process::Stdio;
use std::time::Duration;

use relay_testkit::bench::prometheus_sample;
use relay_testkit::procs::{free_port, with_fd_limit, KillOnDrop};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Generous bound for "it should have happened by now".
const LIMIT: Duration = Duration::from_secs(60);

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// Before: the demo accepted until `EMFILE`, never closed the idle sockets,
/// and `/healthz` stopped answering for good ("accept error: Too many open
/// files", repeated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_healthz_keeps_answering_with_more_idle_sockets_than_descriptors() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let _demo = KillOnDrop(
        with_fd_limit(64, env!("CARGO_BIN_EXE_pipeline-scan"))
            .args(["demo", "--listen", &listen])
            // The cap stays at its default (above 64): accepting hits EMFILE
            // and must back off, the timeouts must free the descriptors.
            .env("RELAY_HTTP_IDLE_TIMEOUT_SECS", "1")
            .env("RELAY_HTTP_HEAD_TIMEOUT_SECS", "1")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pipeline-scan demo"),
    );
    tokio::time::timeout(LIMIT, async {
        while get(&format!("{base}/healthz")).await.map(|r| r.0) != Some(200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("demo never answered /healthz");

    // 150 connections against 64 descriptors: 100 idle, 50 half-sent heads.
    let mut held = Vec::new();
    for i in 0..150 {
        let mut s = TcpStream::connect(&listen).await.expect("connect");
        if i % 3 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
        }
        held.push(s);
    }
    let answered = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some((200, body)) = get(&format!("{base}/healthz")).await {
                return body;
            }
        }
    })
    .await
    .expect("/healthz stopped answering while idle sockets were held");
    assert!(!answered.is_empty());

    let (_, metrics) = get(&format!("{base}/metrics")).await.expect("/metrics");
    let idle: Option<f64> = prometheus_sample(&metrics, "pipeline_scan_http_idle_timeouts_total");
    let head: Option<f64> = prometheus_sample(&metrics, "pipeline_scan_http_head_timeouts_total");
    let accept: Option<f64> = prometheus_sample(&metrics, "pipeline_scan_http_accept_errors_total");
    assert!(idle.is_some_and(|v| v >= 1.0), "idle {idle:?}\n{metrics}");
    assert!(head.is_some_and(|v| v >= 1.0), "head {head:?}\n{metrics}");
    assert!(
        accept.is_some_and(|v| v >= 1.0),
        "accept errors {accept:?}\n{metrics}"
    );
    // The gateway's own metrics are still there, in one document.
    assert!(metrics.contains("relay_sse_"), "{metrics}");
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    drop(held);
}
