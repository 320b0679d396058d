//! `relay_core::http_serve::serve`: idle, half-sent and stalled connections
//! are closed after their (short, test-set) timeouts, responses that stream
//! longer than those timeouts are not cut, the connection cap holds while
//! `/healthz` keeps answering, and shutdown drains.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use relay_core::http_serve::{serve, BodyReadTimeout, ServeConfig, ServeMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Generous bound for "it should have happened by now".
const LIMIT: Duration = Duration::from_secs(15);

struct Server {
    addr: std::net::SocketAddr,
    metrics: ServeMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

const CHUNKS: usize = 4;
const CHUNK_GAP: Duration = Duration::from_millis(300);

/// A response streaming `CHUNKS` chunks `CHUNK_GAP` apart.
async fn slow() -> Response {
    let s = futures::stream::unfold(0usize, |i| async move {
        if i == CHUNKS {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(CHUNK_GAP).await;
        }
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("chunk-{i};"))),
            i + 1,
        ))
    });
    Body::from_stream(s).into_response()
}

/// Reads the body; a stalled one is a 408.
async fn echo(body: Body) -> Response {
    match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b.len().to_string().into_response(),
        Err(e) if BodyReadTimeout::in_chain(&e) => StatusCode::REQUEST_TIMEOUT.into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn start(config: ServeConfig) -> Server {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/slow", get(slow))
        .route("/echo", post(echo));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = ServeMetrics::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, config, metrics.clone(), async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        metrics,
        stop: Some(stop),
        task,
    }
}

fn config(head_ms: u64, idle_ms: u64, body_ms: u64, max: usize) -> ServeConfig {
    ServeConfig {
        head_timeout: Duration::from_millis(head_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        body_timeout: Duration::from_millis(body_ms),
        max_connections: max,
    }
}

/// Reads until the server closes the connection (EOF or reset); returns
/// what was read, or panics after `LIMIT`.
async fn read_until_closed(sock: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(LIMIT, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server never closed the connection");
    out
}

/// Reads until `needle` arrived; returns everything read.
async fn read_until(sock: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(LIMIT, async {
        while !out.windows(needle.len()).any(|w| w == needle) {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => panic!(
                    "closed before {:?}: {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&out)
                ),
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("response did not arrive");
    out
}

async fn wait_open(metrics: &ServeMetrics, want: i64) {
    tokio::time::timeout(LIMIT, async {
        while metrics.counts().open != want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "open connections never reached {want}: {:?}",
            metrics.counts()
        )
    });
}

#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let s = start(config(60_000, 300, 60_000, 64)).await;
    let t0 = Instant::now();
    let mut sock = TcpStream::connect(s.addr).await.expect("connect");
    let got = read_until_closed(&mut sock).await;
    assert!(got.is_empty(), "no response to nothing");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "closed before the idle timeout"
    );
    let c = s.metrics.counts();
    assert_eq!((c.idle_timeouts, c.head_timeouts), (1, 0), "{c:?}");
    wait_open(&s.metrics, 0).await;
}

#[tokio::test]
async fn half_sent_request_head_is_closed_after_the_head_timeout() {
    // Idle is long: only the head bound can close these.
    let s = start(config(300, 60_000, 60_000, 64)).await;
    let mut half = TcpStream::connect(s.addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut half).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // A trickle of header bytes does not extend the head deadline.
    let mut trickle = TcpStream::connect(s.addr).await.expect("connect");
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await
        .expect("write");
    let (mut rd, mut wr) = trickle.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..300 {
            if wr.write_all(b"a").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    tokio::time::timeout(LIMIT, async {
        let mut buf = [0u8; 64];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the trickling connection was never closed");
    writer.abort();
    let c = s.metrics.counts();
    assert_eq!((c.head_timeouts, c.idle_timeouts), (2, 0), "{c:?}");
    wait_open(&s.metrics, 0).await;
}

#[tokio::test]
async fn keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = start(config(60_000, 300, 60_000, 64)).await;
    let mut sock = TcpStream::connect(s.addr).await.expect("connect");
    for _ in 0..2 {
        sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let resp = read_until(&mut sock, b"\r\n\r\nok").await;
        assert!(resp.starts_with(b"HTTP/1.1 200"), "{resp:?}");
    }
    let got = read_until_closed(&mut sock).await;
    assert!(got.is_empty());
    assert_eq!(s.metrics.counts().idle_timeouts, 1);
}

#[tokio::test]
async fn a_response_streaming_longer_than_the_timeouts_is_not_cut() {
    // Each gap between chunks is longer than the idle and head timeouts.
    let s = start(config(100, 100, 100, 64)).await;
    let mut sock = TcpStream::connect(s.addr).await.expect("connect");
    sock.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let resp = read_until(&mut sock, b"\r\n0\r\n\r\n").await;
    let text = String::from_utf8_lossy(&resp);
    for i in 0..CHUNKS {
        assert!(text.contains(&format!("chunk-{i};")), "{text}");
    }
    // Then the connection is idle, and closed for it.
    read_until_closed(&mut sock).await;
    let c = s.metrics.counts();
    assert_eq!((c.idle_timeouts, c.head_timeouts), (1, 0), "{c:?}");
}

#[tokio::test]
async fn stalled_request_body_fails_with_408() {
    let s = start(config(60_000, 60_000, 300, 64)).await;
    let mut sock = TcpStream::connect(s.addr).await.expect("connect");
    sock.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let resp = read_until(&mut sock, b"\r\n\r\n").await;
    assert!(
        resp.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(s.metrics.counts().body_timeouts, 1);
    // A complete body on a fresh connection is fine.
    let mut ok = TcpStream::connect(s.addr).await.expect("connect");
    ok.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let resp = read_until(&mut ok, b"\r\n\r\n5").await;
    assert!(resp.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn healthz_answers_while_many_idle_sockets_hold_the_connection_cap() {
    const CAP: usize = 8;
    let s = start(config(60_000, 500, 60_000, CAP)).await;
    let mut idle = Vec::new();
    for _ in 0..(CAP * 4) {
        idle.push(TcpStream::connect(s.addr).await.expect("connect"));
    }
    let sampler = {
        let m = s.metrics.clone();
        tokio::spawn(async move {
            let mut max = 0;
            for _ in 0..400 {
                max = max.max(m.counts().open);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    let mut probe = TcpStream::connect(s.addr).await.expect("connect");
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let resp = read_until(&mut probe, b"\r\n\r\nok").await;
    assert!(resp.starts_with(b"HTTP/1.1 200"), "{resp:?}");
    let max_open = sampler.await.expect("sampler");
    assert!(max_open as usize <= CAP, "{max_open} open > cap {CAP}");
    let c = s.metrics.counts();
    assert!(c.limit_waits >= 1, "{c:?}");
    assert!(c.idle_timeouts >= CAP as u64, "{c:?}");
    // Every idle socket is eventually closed by the server.
    for mut sock in idle {
        read_until_closed(&mut sock).await;
    }
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_waits_for_in_flight_responses() {
    let mut s = start(config(60_000, 60_000, 60_000, 64)).await;
    let mut idle = TcpStream::connect(s.addr).await.expect("connect");
    let mut busy = TcpStream::connect(s.addr).await.expect("connect");
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut busy, b"chunk-0;").await;
    wait_open(&s.metrics, 2).await;
    let _ = s.stop.take().expect("stop").send(());
    assert!(read_until_closed(&mut idle).await.is_empty());
    let rest = read_until_closed(&mut busy).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains(&format!("chunk-{};", CHUNKS - 1)), "{text}");
    tokio::time::timeout(LIMIT, s.task)
        .await
        .expect("serve returned")
        .expect("serve task");
    // Nothing listens any more.
    assert!(TcpStream::connect(s.addr).await.is_err());
}
