//! The HTTP/1.1 front's own limits: a whole-head deadline, a head size
//! bound, a cap on connections that are not SSE streams, and accept-failure
//! back-off that neither spins nor floods the log.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::Backend;
use relay_sse::GatewayOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gw_with(opts: GatewayOptions) -> TestGateway {
    let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    TestGateway::start(b, opts).await
}

/// Reads until the server closes; returns what it sent.
async fn read_to_close(sock: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Slowloris: one byte of the head every 200 ms never completes it. The
/// head has one deadline as a whole (not per read), so the connection is
/// closed after `head_timeout` however steadily the bytes trickle.
#[tokio::test]
async fn slow_head_is_cut_at_the_whole_head_deadline() {
    let t = gw_with(GatewayOptions {
        head_timeout: Duration::from_secs(1),
        ..opts()
    })
    .await;
    let sock = TcpStream::connect(t.addr).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let trickle = tokio::spawn(async move {
        wr.write_all(b"GET /v1/jobs/job-loris/events HTTP/1.1\r\n")
            .await
            .unwrap();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(b"X").await.is_err() {
                return;
            }
        }
    });
    let closed = tokio::time::timeout(LIMIT, async {
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("a trickled head kept the connection open");
    trickle.abort();
    assert!(closed.starts_with(b"HTTP/1.1 408"), "{closed:?}");
    assert_eq!(t.rejected("head_timeout"), 1);
    assert_eq!(t.gateway.metrics().unrouted.get(), 0);
}

/// Connections that are not SSE streams are capped: at the cap a new
/// connection is closed at once (no response: an EventSource retries a
/// dropped connection), and counted; streams do not count.
#[tokio::test]
async fn unrouted_connections_are_capped() {
    let t = gw_with(GatewayOptions {
        max_unrouted: 3,
        head_timeout: Duration::from_secs(3600),
        ..opts()
    })
    .await;
    let job = "job-unrouted-1";
    t.apply(&step(job, 1, 5)).await;
    // A stream is routed: it does not count.
    let mut stream = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    assert_eq!(stream.status, 200);
    stream.next_event().await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap(); // never finished
        idle.push(s);
    }
    wait_for(|| t.gateway.metrics().unrouted.get() == 3).await;
    let mut extra = TcpStream::connect(t.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = tokio::time::timeout(LIMIT, read_to_close(&mut extra))
        .await
        .expect("over the cap the connection is closed");
    assert!(got.is_empty(), "no response over the cap: {got:?}");
    assert_eq!(t.rejected("unrouted_limit"), 1);
    // One idle connection leaves: plain requests are served again.
    drop(idle.pop());
    wait_for(|| t.gateway.metrics().unrouted.get() == 2).await;
    assert_eq!(connect(&t.url("/healthz"), None).await.status, 200);
}

/// A head larger than `max_head_bytes` is answered 431 and counted.
#[tokio::test]
async fn oversized_head_is_431() {
    let t = gw_with(GatewayOptions {
        max_head_bytes: 4096,
        ..opts()
    })
    .await;
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    let pad = "a".repeat(8192);
    let _ = s
        .write_all(format!("GET /v1/jobs/j/events HTTP/1.1\r\nx-pad: {pad}\r\n\r\n").as_bytes())
        .await;
    let got = tokio::time::timeout(LIMIT, read_to_close(&mut s))
        .await
        .expect("closed");
    assert!(got.starts_with(b"HTTP/1.1 431"), "{got:?}");
    assert_eq!(t.rejected("head_too_large"), 1);
}

/// The routes are all `GET`s and read no body: a request declaring a body
/// over `max_body_bytes` is refused with 413 at once (on the front's SSE
/// routes and on the plain HTTP path), instead of being served while the
/// client streams megabytes nobody reads.
#[tokio::test]
async fn oversized_declared_body_is_413() {
    let t = gw_with(GatewayOptions {
        max_body_bytes: 1024,
        ..opts()
    })
    .await;
    for path in ["/healthz", "/v1/jobs/job-body-1/events"] {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let got = tokio::time::timeout(LIMIT, read_to_close(&mut s))
            .await
            .expect("answered and closed");
        assert!(
            got.starts_with(b"HTTP/1.1 413"),
            "{path}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(t.rejected("body_too_large"), 2);
    // A small declared body is fine.
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(LIMIT, read_to_close(&mut s))
        .await
        .expect("answered");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}
