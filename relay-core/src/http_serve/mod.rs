//! One HTTP/1.1 server loop for the binaries' axum listeners (scan API, demo,
//! metrics endpoints), bounded where `axum::serve` is not.
//!
//! `axum::serve` keeps a connection open as long as the peer does: an idle
//! socket, or one that sent half a request head, holds a file descriptor
//! forever, and enough of them exhaust the process's descriptors (`accept
//! error: Too many open files`) until `/healthz` itself stops answering.
//! [`serve`] bounds every phase of a connection's life:
//!
//! | phase | bound | on expiry |
//! |---|---|---|
//! | idle (no request in flight, nothing received since the last response or since accept) | [`ServeConfig::idle_timeout`] | closed, `http_idle_timeouts` |
//! | request head (from its first byte to its last) | [`ServeConfig::head_timeout`] | closed, `http_head_timeouts` |
//! | request body (each pause between chunks, while the handler reads) | [`ServeConfig::body_timeout`] | the read fails with [`BodyReadTimeout`], `http_body_timeouts` |
//! | response (handler and response body, e.g. an SSE stream) | not bounded here: the handler's own limits apply | |
//!
//! and the whole listener:
//!
//! - at most [`ServeConfig::max_connections`] open connections: at the cap
//!   the loop stops accepting (new connections wait in the kernel's listen
//!   backlog) until one closes, counting `http_connection_limit_waits`; set
//!   it below the descriptor limit (`ulimit -n`) so accepting never fails;
//! - accept errors (`EMFILE`, `ENFILE`, `ENOBUFS`, …) back off exponentially
//!   (10 ms to 1 s) instead of spinning, and are logged at most once per
//!   5 s with the number suppressed (`http_accept_errors`).
//!
//! Only HTTP/1.1 (and 1.0) is served; no upgrades. Shutdown: when the
//! `shutdown` future resolves, accepting stops, idle connections close, and
//! [`serve`] returns once in-flight requests have finished.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

mod bind;
mod body;
mod config;
mod metrics;

pub use bind::{bind, BindError};
pub use body::{BodyReadTimeout, ReadTimeoutBody};
pub use config::{HttpServeArgs, ServeConfig};
pub use metrics::{ServeCounts, ServeMetrics};

/// A boxed error, as hyper and axum pass them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The requests [`serve`] passes on: their bodies bounded by
/// [`ServeConfig::body_timeout`].
pub type ServeRequest = Request<ReadTimeoutBody>;

/// The shape of a service [`serve`] can run (an axum `Router`, or any tower
/// service alike): it answers every request (errors are responses) and its
/// futures move between threads. Implemented for every such service; the
/// name spells the bounds once for the server loop, each connection and the
/// hyper adapter, which add `Clone + Send + 'static`.
pub trait HttpService<B>:
    tower::Service<ServeRequest, Response = Response<B>, Error = Infallible, Future: Send + 'static>
{
}

impl<S, B> HttpService<B> for S where
    S: tower::Service<
        ServeRequest,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    >
{
}

/// A response body [`serve`] can send (implemented for every such body).
pub trait ResponseBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> ResponseBody for B where
    B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

/// Serves `service` (an axum `Router`, or any tower service of the same
/// shape) on `listener` with `config`'s limits until `shutdown` resolves,
/// then stops accepting, closes idle connections and returns once the
/// in-flight requests have finished.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    config: ServeConfig,
    metrics: ServeMetrics,
    shutdown: impl Future<Output = ()>,
) where
    S: HttpService<B> + Clone + Send + 'static,
    B: ResponseBody,
{
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut error_log = LogLimiter::new(Duration::from_secs(5));
    let mut cap_log = LogLimiter::new(Duration::from_secs(5));
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics.limit_waits.inc();
                if let Some(suppressed) = cap_log.allow() {
                    tracing::warn!(
                        max_connections = config.max_connections,
                        suppressed,
                        "connection limit reached; new connections wait in the listen backlog"
                    );
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let sock = match accepted {
            Ok((sock, _)) => {
                backoff = Duration::ZERO;
                sock
            }
            // The peer gave up before we accepted: nothing wrong here.
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                metrics.accept_errors.inc();
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                if let Some(suppressed) = error_log.allow() {
                    tracing::warn!(error = %e, retry_in = ?backoff, suppressed, "accept failed; backing off");
                }
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => break,
                }
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        metrics.accepted.inc();
        tokio::spawn(connection(
            sock,
            service.clone(),
            config.clone(),
            metrics.clone(),
            stop_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    // Every connection task holds a receiver: resolves when all are gone.
    stop_tx.closed().await;
}

fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Allows one log line per period and counts the ones it suppressed.
struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

async fn connection<S, B>(
    sock: TcpStream,
    service: S,
    config: Arc<ServeConfig>,
    metrics: ServeMetrics,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    S: HttpService<B> + Clone + Send + 'static,
    B: ResponseBody,
{
    metrics.open.inc();
    let _open = OnDrop(|| {
        metrics.open.dec();
    });
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(TrackedIo {
        inner: sock,
        watch: watch.clone(),
    });
    let tracked = TrackedService {
        inner: service,
        watch: watch.clone(),
        body_timeout: config.body_timeout,
        body_timeouts: metrics.body_timeouts.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Head and idle time are bounded by the watchdog below (hyper's own
    // header timer also runs while idle, so it cannot tell the two apart).
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, tracked);
    tokio::pin!(conn);
    let dog = watchdog(&watch, &config);
    tokio::pin!(dog);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                break;
            }
            expired = &mut dog => {
                match expired {
                    Expiry::Idle => metrics.idle_timeouts.inc(),
                    Expiry::Head => metrics.head_timeouts.inc(),
                };
                tracing::debug!(?expired, "closing http connection");
                // No request is in flight: dropping the connection closes it.
                break;
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Which bound closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    Idle,
    Head,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request in flight, nothing received since `since`.
    Idle,
    /// The first bytes of a request head arrived at `since`.
    Head,
    /// A request is being handled or its response written.
    Busy,
}

struct WatchState {
    phase: Phase,
    since: Instant,
    in_flight: usize,
}

/// A connection's phase, shared by its socket wrapper, its service wrapper
/// and its watchdog.
struct Watch {
    state: Mutex<WatchState>,
    changed: Notify,
}

impl Watch {
    fn new() -> Self {
        Self {
            state: Mutex::new(WatchState {
                phase: Phase::Idle,
                since: Instant::now(),
                in_flight: 0,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: an idle connection starts a request head.
    fn received(&self) {
        let mut s = self.lock();
        if s.phase == Phase::Idle {
            s.phase = Phase::Head;
            s.since = Instant::now();
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Bytes left: an idle connection is not idle yet (its last response is
    /// still draining to the client).
    fn sent(&self) {
        let mut s = self.lock();
        if s.phase == Phase::Idle {
            s.since = Instant::now();
        }
    }

    fn begin(&self) {
        let mut s = self.lock();
        s.in_flight += 1;
        s.phase = Phase::Busy;
        drop(s);
        self.changed.notify_one();
    }

    fn end(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.phase = Phase::Idle;
            s.since = Instant::now();
            drop(s);
            self.changed.notify_one();
        }
    }

    fn deadline(&self, config: &ServeConfig) -> Option<(Instant, Expiry)> {
        let s = self.lock();
        match s.phase {
            Phase::Idle => Some((s.since + config.idle_timeout, Expiry::Idle)),
            Phase::Head => Some((s.since + config.head_timeout, Expiry::Head)),
            Phase::Busy => None,
        }
    }
}

/// Resolves when the connection has been idle, or reading a head, too long.
async fn watchdog(watch: &Watch, config: &ServeConfig) -> Expiry {
    loop {
        match watch.deadline(config) {
            Some((at, _)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {
                        // The deadline may have moved since: check again.
                        if let Some((at, kind)) = watch.deadline(config) {
                            if at <= Instant::now() {
                                return kind;
                            }
                        }
                    }
                    _ = watch.changed.notified() => {}
                }
            }
            None => watch.changed.notified().await,
        }
    }
}

/// The socket, reporting traffic to the connection's [`Watch`].
struct TrackedIo {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.received();
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.sent();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.sent();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks a request in flight from its head until its response body is done
/// (or dropped).
struct InFlight(Arc<Watch>);

impl InFlight {
    fn begin(watch: Arc<Watch>) -> Self {
        watch.begin();
        Self(watch)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The response body, holding its request's [`InFlight`] mark.
struct GuardedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The tower service as a hyper service, marking requests in flight and
/// bounding body reads.
struct TrackedService<S> {
    inner: S,
    watch: Arc<Watch>,
    body_timeout: Duration,
    body_timeouts: Counter,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for TrackedService<S>
where
    // The `Response` projection names `B` for the impl (E0207).
    S: HttpService<B>
        + tower::Service<ServeRequest, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    B: ResponseBody,
{
    type Response = Response<GuardedBody<B>>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<GuardedBody<B>>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(self.watch.clone());
        let (timeout, timeouts) = (self.body_timeout, self.body_timeouts.clone());
        let req = req.map(|inner| ReadTimeoutBody {
            inner,
            timeout,
            sleep: None,
            timeouts,
        });
        let service = self.inner.clone();
        Box::pin(async move {
            let resp = service.oneshot(req).await?;
            Ok(resp.map(|inner| GuardedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_allows_one_line_per_period_and_counts_the_rest() {
        let mut l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        l.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(l.allow(), Some(2));
    }

    #[test]
    fn flags_map_to_the_config_and_reject_nonsense() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            http: HttpServeArgs,
        }
        let c = Cli::try_parse_from(["x"]).expect("defaults");
        assert_eq!(c.http.config(), ServeConfig::default());
        assert_eq!(c.http, HttpServeArgs::default());
        let c = Cli::try_parse_from([
            "x",
            "--http-head-timeout-secs",
            "0.25",
            "--http-idle-timeout-secs",
            "2",
            "--http-body-timeout-secs",
            "1.5",
            "--http-max-connections",
            "7",
        ])
        .expect("flags");
        assert_eq!(
            c.http.config(),
            ServeConfig {
                head_timeout: Duration::from_millis(250),
                idle_timeout: Duration::from_secs(2),
                body_timeout: Duration::from_millis(1500),
                max_connections: 7,
            }
        );
        for bad in [
            ["--http-head-timeout-secs", "0"],
            ["--http-idle-timeout-secs", "-1"],
            ["--http-body-timeout-secs", "NaN"],
            ["--http-idle-timeout-secs", "inf"],
            ["--http-max-connections", "0"],
        ] {
            assert!(
                Cli::try_parse_from(["x", bad[0], bad[1]]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn metrics_append_before_eof() {
        let m = ServeMetrics::new();
        m.idle_timeouts.inc();
        let text = m.append_to("# TYPE a counter\na_total 1\n# EOF\n".into(), "svc");
        assert!(text.starts_with("# TYPE a counter\na_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.contains("svc_http_idle_timeouts_total 1"), "{text}");
        assert!(text.contains("svc_http_connections_open 0"), "{text}");
        let plain = m.append_to("a 1\n".into(), "svc");
        assert!(
            plain.starts_with("a 1\n") && !plain.contains("# EOF"),
            "{plain}"
        );
    }
}
