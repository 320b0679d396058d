//! The gateway's HTTP/1.1 front: a lean server for the SSE routes that hands
//! every other request to axum (hyper).
//!
//! A hyper connection keeps an 8 KiB read buffer and an 8 KiB header write
//! buffer for its whole life, plus its dispatcher state: more than the whole
//! per-connection budget of an idle SSE stream. Here an SSE `GET` is parsed
//! with `httparse` from a small buffer that is freed once the request is
//! routed (through the same axum [`Router`], so auth, CORS, limits and error
//! responses are identical), and the stream is written straight to the
//! socket with chunked encoding from the connection's one task: no body
//! channel, no second task, no hyper state. Anything else (other paths,
//! methods, bodies, upgrades, HTTP/1.0) is handed, with the bytes already
//! read, to a hyper HTTP/1 connection serving the same router.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, Version};
use axum::Router;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::gateway::{Gateway, GatewayError};
use crate::hub::Signal;
use crate::metrics::{CloseReason, Metrics};
use crate::output::{write_watching, Output};
use crate::routes::is_sse_path;
use crate::takeover::SseTakeover;

/// Largest non-streaming response body written by the front.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Longest pause between `accept()` retries after failures.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// At most one accept-failure warning per this interval.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// What every connection of the front shares.
struct Front {
    router: Router,
    metrics: Arc<Metrics>,
    /// Whole-head deadline.
    head_timeout: Duration,
    max_head: usize,
    max_unrouted: usize,
    /// Connections currently counted by [`Unrouted`].
    unrouted: AtomicUsize,
}

/// Counts one connection that is not an SSE stream (see
/// `GatewayOptions::max_unrouted`); dropping it uncounts.
struct Unrouted(Arc<Front>);

impl Front {
    /// Counts one more unrouted connection, unless at the limit.
    fn unrouted(self: &Arc<Self>) -> Option<Unrouted> {
        if self.unrouted.fetch_add(1, Ordering::AcqRel) >= self.max_unrouted {
            self.unrouted.fetch_sub(1, Ordering::AcqRel);
            self.metrics.reject("unrouted_limit");
            return None;
        }
        self.metrics.unrouted.inc();
        Some(Unrouted(self.clone()))
    }
}

impl Drop for Unrouted {
    fn drop(&mut self) {
        self.0.unrouted.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.unrouted.dec();
    }
}

/// Warns about accept failures at most once per [`ACCEPT_LOG_EVERY`],
/// with the number of failures not logged since.
#[derive(Default)]
struct AcceptLog {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl AcceptLog {
    fn failed(&mut self, error: &io::Error, backoff: Duration) {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|t| now < t + ACCEPT_LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            error = %error,
            backoff_ms = backoff.as_millis() as u64,
            suppressed = self.suppressed,
            "accept failed; backing off (see relay_sse_accept_errors_total)"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

impl Gateway {
    /// Serves the gateway on `listener` until `shutdown` resolves, then ends
    /// every stream. SSE requests are served by a lean HTTP/1.1 front that
    /// writes the stream straight to the socket (a few KiB per idle
    /// connection); every other request goes to [`Gateway::router`] over
    /// hyper. Use [`Gateway::router`] instead to merge the routes into your
    /// own axum app.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), GatewayError> {
        serve(listener, self.clone(), shutdown).await?;
        Ok(())
    }
}

/// Accepts connections until `shutdown` resolves, then ends every stream.
pub(crate) async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let opts = &gateway.inner.opts;
    let front = Arc::new(Front {
        router: gateway.router(),
        metrics: gateway.metrics().clone(),
        head_timeout: opts.head_timeout,
        max_head: opts.max_head_bytes,
        max_unrouted: opts.max_unrouted,
        unrouted: AtomicUsize::new(0),
    });
    let mut backoff = Duration::ZERO;
    let mut log = AcceptLog::default();
    tokio::pin!(shutdown);
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off (exponentially, capped)
                    // instead of spinning, and do not flood the log.
                    front.metrics.accept_errors.inc();
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    log.failed(&e, backoff);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = &mut shutdown => break,
                    }
                }
            },
            _ = &mut shutdown => break,
        };
        backoff = Duration::ZERO;
        // Over the limit: close at once. An EventSource treats a dropped
        // connection as a network error and reconnects (a 503 would stop it).
        let Some(unrouted) = front.unrouted() else {
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        tokio::spawn(connection(sock, front.clone(), unrouted));
    }
    gateway.shutdown();
    // Give the streams a moment to write their end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gateway.active_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What [`parse_head`] made of the bytes read so far.
pub enum Head {
    /// More bytes needed.
    Partial,
    /// An SSE request this front serves (head length consumed).
    Sse(Box<Request<Body>>, usize, bool),
    /// Anything else: hyper's.
    Other,
}

/// Parses a request head from `buf` (sync: the header array stays off the
/// connection's future).
pub fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other, // hyper answers 400
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Head::Other;
    };
    let route = path.split('?').next().unwrap_or("");
    if method != "GET" || !is_sse_path(route) {
        return Head::Other;
    }
    let mut builder = Request::builder()
        .method("GET")
        .uri(path)
        .version(Version::HTTP_11);
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
            || (name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
        {
            return Head::Other;
        }
        if name.eq_ignore_ascii_case("connection")
            && h.value
                .to_ascii_lowercase()
                .windows(5)
                .any(|w| w == b"close")
        {
            close = true;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::Other;
        };
        builder = builder.header(n, v);
    }
    match builder.body(Body::empty()) {
        Ok(r) => Head::Sse(Box::new(r), len, close),
        Err(_) => Head::Other,
    }
}

/// Serves one connection: reads request heads, streams SSE requests itself
/// (keep-alive between short answers), hands anything else to hyper.
async fn connection(mut sock: TcpStream, front: Arc<Front>, unrouted: Unrouted) {
    let mut buf = BytesMut::new();
    let mut counted = Some(unrouted);
    let mut first = true;
    loop {
        // Reading a request head: count the connection as unrouted again
        // (keep-alive after a short response), or close it when at the limit.
        let unrouted = match counted.take() {
            Some(u) => u,
            None => match front.unrouted() {
                Some(u) => u,
                None => return,
            },
        };
        // One deadline for the whole head, however the bytes trickle in.
        let deadline = tokio::time::Instant::now() + front.head_timeout;
        let head = loop {
            match parse_head(&buf) {
                Head::Partial if buf.len() < front.max_head => {}
                Head::Partial => {
                    front.metrics.reject("head_too_large");
                    let _ = sock.try_write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    return;
                }
                head => break head,
            }
            buf.reserve(1024);
            match tokio::time::timeout_at(deadline, sock.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return, // closed or failed
                Err(_) => {
                    // An idle keep-alive connection simply ends; a head
                    // that did not arrive in time is counted.
                    if first || !buf.is_empty() {
                        front.metrics.reject("head_timeout");
                        let _ = sock.try_write(
                            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                    }
                    return;
                }
            }
        };
        first = false;
        let (req, len, close) = match head {
            Head::Sse(req, len, close) => (req, len, close),
            _ => return hand_to_hyper(sock, buf.freeze(), &front, unrouted).await,
        };
        // Routed: the SSE handler counts it against `--max-connections`.
        drop(unrouted);
        buf.advance(len);
        if buf.is_empty() {
            buf = BytesMut::new(); // release the head buffer while streaming
        }
        // Routing may wait (an unknown job is awaited for `pending_job`
        // before its 404) while holding a connection slot: a client that
        // hangs up meanwhile gives the slot back at once.
        let routed = front.router.clone().oneshot(*req);
        let resp = tokio::select! {
            Ok(resp) = routed => resp,
            () = peer_closed(&sock, &mut buf, front.max_head) => {
                front.metrics.reject("client_gone");
                return;
            }
        };
        let streaming = resp
            .extensions()
            .get::<SseTakeover>()
            .and_then(|t| t.take());
        match streaming {
            Some(streaming) => {
                // The connection ends with the stream: say so, or a client
                // pool may reuse it for its next request and fail.
                let head = response_head(&resp, None, true);
                drop(resp);
                if sock.write_all(&head).await.is_err() {
                    return;
                }
                drop(head);
                let mut out = SocketOut {
                    sock: &mut sock,
                    mid_chunk: false,
                };
                let reason = streaming.run(&mut out).await;
                if out.mid_chunk
                    || matches!(reason, CloseReason::ClientGone | CloseReason::SlowClient)
                {
                    return; // a cut chunk cannot be followed by the terminator
                }
                // End the chunked body, then close: an EventSource opens a
                // new connection to resume anyway.
                let _ = sock.write_all(b"0\r\n\r\n").await;
                let _ = sock.shutdown().await;
                return;
            }
            None => {
                let (parts, body) = resp.into_parts();
                let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
                    return;
                };
                let resp = Response::from_parts(parts, ());
                // The handler may end the connection too (a retry stream).
                let close = close
                    || resp
                        .headers()
                        .get(axum::http::header::CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                let mut out = response_head(&resp, Some(body.len()), close);
                out.extend_from_slice(&body);
                let write = tokio::time::timeout(front.head_timeout, sock.write_all(&out));
                if !matches!(write.await, Ok(Ok(()))) || close {
                    return;
                }
            }
        }
    }
}

/// Resolves when the peer closes (or resets) the connection. Bytes it sends
/// meanwhile (a pipelined request) are kept in `buf` up to `max`; beyond
/// that the connection is no longer watched (never resolves).
async fn peer_closed(sock: &TcpStream, buf: &mut BytesMut, max: usize) {
    loop {
        if buf.len() >= max {
            return std::future::pending().await;
        }
        if sock.readable().await.is_err() {
            return;
        }
        buf.reserve(1024);
        match sock.try_read_buf(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Status line and headers; `length: None` means a chunked body.
fn response_head<B>(resp: &Response<B>, length: Option<usize>, close: bool) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    let status = resp.status();
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in resp.headers() {
        if name == axum::http::header::CONTENT_LENGTH
            || name == axum::http::header::TRANSFER_ENCODING
            || name == axum::http::header::CONNECTION
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let bodyless = status == axum::http::StatusCode::NO_CONTENT
        || status == axum::http::StatusCode::NOT_MODIFIED
        || status.is_informational();
    match length {
        Some(_) if bodyless => {}
        Some(n) => {
            out.put_slice(b"content-length: ");
            out.put_slice(n.to_string().as_bytes());
            out.put_slice(b"\r\n");
        }
        None => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    out
}

/// A stream's output written to the socket as HTTP/1.1 chunks.
struct SocketOut<'a> {
    sock: &'a mut TcpStream,
    /// A chunk write was started and not finished (cancelled by a timeout).
    mid_chunk: bool,
}

impl Output for SocketOut<'_> {
    async fn closed(&mut self) {
        let mut scratch = [0u8; 64];
        loop {
            if self.sock.readable().await.is_err() {
                return;
            }
            match self.sock.try_read(&mut scratch) {
                Ok(0) => return,
                // Bytes the client sent after its request: ignored.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    async fn write(&mut self, chunk: Bytes, signal: &Signal) -> Result<(), CloseReason> {
        let mut frame = BytesMut::with_capacity(chunk.len() + 12);
        frame.put_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        frame.put_slice(&chunk);
        frame.put_slice(b"\r\n");
        drop(chunk);
        self.mid_chunk = true;
        let result = write_watching(self.sock.write_all(&frame), signal).await;
        // A slow client's write is abandoned with part of the chunk sent.
        self.mid_chunk = result == Err(CloseReason::SlowClient);
        result
    }
}

/// Serves the rest of the connection with hyper, `read` first.
async fn hand_to_hyper(sock: TcpStream, read: Bytes, front: &Front, unrouted: Unrouted) {
    let io = hyper_util::rt::TokioIo::new(Rewind { read, sock });
    let svc = hyper_util::service::TowerToHyperService::new(front.router.clone());
    // hyper's header read timeout also covers the whole head (and an idle
    // keep-alive wait); the connection stays counted as unrouted.
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(front.head_timeout)
        .max_buf_size(front.max_head.max(8192))
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
    drop(unrouted);
}

/// A socket with bytes already read put back in front.
struct Rewind {
    read: Bytes,
    sock: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.sock).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.sock).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.sock).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert!(matches!(
            parse_head(b"GET /v1/jobs/a/events HTTP/1.1\r\nHost: x\r\n"),
            Head::Partial
        ));
        assert!(matches!(
            parse_head(b"GET /v1/jobs/a/events HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Sse(_, 43, false)
        ));
        assert!(matches!(
            parse_head(b"GET /v1/jobs/a/events HTTP/1.0\r\n\r\n"),
            Head::Other
        ));
        assert!(matches!(
            parse_head(b"GET /healthz HTTP/1.1\r\n\r\n"),
            Head::Other
        ));
        assert!(matches!(
            parse_head(b"POST /v1/jobs/a/events HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi"),
            Head::Other
        ));
    }
}
