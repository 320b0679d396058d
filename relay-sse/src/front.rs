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
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, Version};
use axum::Router;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::hub::Signal;
use crate::metrics::CloseReason;
use crate::stream::Output;
use crate::{Gateway, SseTakeover};

/// Largest request head accepted on the SSE front.
const MAX_HEAD: usize = 16 * 1024;
/// Time allowed for a request head to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest non-streaming response body written by the front.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Accepts connections until `shutdown` resolves, then ends every stream.
pub(crate) async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let router = gateway.router();
    tokio::pin!(shutdown);
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = sock.set_nodelay(true);
        tokio::spawn(connection(sock, router.clone()));
    }
    gateway.shutdown();
    // Give the streams a moment to write their end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gateway.active_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Whether a path is one of the SSE routes.
fn is_sse_path(path: &str) -> bool {
    path == "/api/v1/stream"
        || ((path.starts_with("/v1/jobs/") || path.starts_with("/api/v1/"))
            && path.ends_with("/events"))
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

async fn connection(mut sock: TcpStream, router: Router) {
    let mut buf = BytesMut::new();
    loop {
        // Read one request head.
        let head = loop {
            match parse_head(&buf) {
                Head::Partial if buf.len() < MAX_HEAD => {}
                Head::Partial => {
                    let _ = sock
                        .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                head => break head,
            }
            buf.reserve(1024);
            match tokio::time::timeout(HEAD_TIMEOUT, sock.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return, // closed, failed or idle
            }
        };
        let (req, len, close) = match head {
            Head::Sse(req, len, close) => (req, len, close),
            _ => return hand_to_hyper(sock, buf.freeze(), router).await,
        };
        buf.advance(len);
        if buf.is_empty() {
            buf = BytesMut::new(); // release the head buffer while streaming
        }
        let Ok(resp) = router.clone().oneshot(*req).await;
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
                let reason = streaming.run(SocketOut { sock: &mut sock }).await;
                if matches!(reason, CloseReason::ClientGone | CloseReason::SlowClient) {
                    return;
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
                let mut out = response_head(&resp, Some(body.len()), close);
                out.extend_from_slice(&body);
                if sock.write_all(&out).await.is_err() || close {
                    return;
                }
            }
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
    match length {
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
        let write = self.sock.write_all(&frame);
        tokio::pin!(write);
        let mut resync = false;
        let result = loop {
            tokio::select! {
                r = &mut write => break r.map_err(|_| CloseReason::ClientGone),
                // The live inbox overflowed while the socket would not take
                // more: a slow client. It reconnects and resumes.
                _ = signal.notified() => {
                    if signal.take_overflow() {
                        return Err(CloseReason::SlowClient);
                    }
                    resync = true;
                }
            }
        };
        if resync {
            // Keep the resync request for the session loop.
            signal.renotify();
        }
        result
    }
}

async fn hand_to_hyper(sock: TcpStream, read: Bytes, router: Router) {
    let io = hyper_util::rt::TokioIo::new(Rewind { read, sock });
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
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
    fn sse_paths() {
        assert!(is_sse_path("/v1/jobs/j1/events"));
        assert!(is_sse_path("/api/v1/stream"));
        assert!(is_sse_path("/api/v1/scan/abcdefghijk/events"));
        assert!(!is_sse_path("/v1/jobs/j1/state"));
        assert!(!is_sse_path("/healthz"));
    }

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
