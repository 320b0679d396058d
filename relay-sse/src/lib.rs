//! # relay-sse
//!
//! relay's SSE gateway: streams a job's progress events to browsers and apps,
//! gap-free across reconnects (DESIGN.md G1, G2, G4, G6).
//!
//! Each connection subscribes to the job's live channel (one multiplexed
//! subscriber connection per process, refcounted per job), then catches up
//! from history after the client's `Last-Event-ID` and merges the live feed
//! with [`relay_core::resume::Resume`]. After a subscriber reconnect every
//! client re-runs its catch-up, so nothing published during the outage is
//! lost. A client that cannot keep up is disconnected (it resumes) instead of
//! slowing anyone else.
//!
//! Embedding (e.g. the all-in-one demo on the memory backend):
//!
//! ```no_run
//! use std::sync::Arc;
//! use relay_core::backend::memory::MemoryBackend;
//! use relay_sse::{Gateway, GatewayOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = Arc::new(MemoryBackend::new());
//! let gateway = Gateway::new(backend, GatewayOptions::default())?;
//! let app: axum::Router = gateway.router(); // merge with your own routes
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Endpoints: `GET /v1/jobs/{job_id}/events` (SSE), `GET /v1/jobs/{job_id}/state`,
//! the eco2 routes `GET /api/v1/stream?job_id=` and
//! `GET /api/v1/{scan|chat}/{job_id}/events`, `/healthz`, `/readyz`, `/metrics`
//! and, with `demo_page`, a demo page at `/`.
#![warn(missing_docs)]

pub mod client;
mod config;
mod front;
mod hub;
pub mod metrics;
pub mod sse;
mod stream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::BytesMut;
use futures::StreamExt;
use relay_core::auth::{self, AuthError};
use relay_core::backend::{Backend, StreamId};
use relay_core::{Domain, Epoch, JobId, KeySpace, Position, Profile};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

pub use config::{BackendKind, Config, LogFormat};
pub use metrics::{CloseReason, Metrics};
pub use stream::Framing;

/// Internals exposed for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::front::{parse_head, Head};
}

use hub::{Hub, HubOptions};
use stream::{Session, SessionConfig};

/// Errors building or running the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The backend could not be reached at start.
    #[error("backend: {0}")]
    Backend(#[from] relay_core::BackendError),
    /// Binding or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Gateway behaviour (the library side of [`Config`]).
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Wire profile (selects key names; framing follows the route).
    pub profile: Profile,
    /// Domain of the native routes and `/api/v1/stream`.
    pub domain: String,
    /// Shard count (key space).
    pub shards: u32,
    /// Comment heartbeat interval (also the idle history re-check interval).
    pub heartbeat: Duration,
    /// Most concurrent SSE connections.
    pub max_connections: usize,
    /// Wait for an unknown job this long before 404.
    pub pending_job: Duration,
    /// Per-client buffer in chunks (and live inbox in messages).
    pub client_buffer: usize,
    /// Longest single stream.
    pub max_stream: Duration,
    /// HMAC secret for stream tokens (`None`: open).
    pub auth_secret: Option<Vec<u8>>,
    /// CORS origins (`*` for any; empty: no CORS headers).
    pub allow_origins: Vec<String>,
    /// Serve the demo page at `/`.
    pub demo_page: bool,
    /// `retry:` hint in ms.
    pub retry_ms: u64,
    /// Subscriber liveness probe interval.
    pub probe_interval: Duration,
    /// History records per read.
    pub history_page: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            profile: Profile::Native,
            domain: "scan".into(),
            shards: 4,
            heartbeat: Duration::from_secs(15),
            max_connections: 10_000,
            pending_job: Duration::from_secs(10),
            client_buffer: 256,
            max_stream: Duration::from_secs(600),
            auth_secret: None,
            allow_origins: Vec::new(),
            demo_page: false,
            retry_ms: 2000,
            probe_interval: Duration::from_secs(5),
            history_page: 256,
        }
    }
}

impl From<&Config> for GatewayOptions {
    fn from(c: &Config) -> Self {
        Self {
            profile: c.conn.profile,
            domain: c.conn.key_space().domain().as_str().to_owned(),
            shards: c.conn.shards,
            heartbeat: config::secs(c.heartbeat_secs),
            max_connections: c.max_connections,
            pending_job: config::secs(c.pending_job_secs),
            client_buffer: c.client_buffer.max(1),
            max_stream: config::secs(c.max_stream_secs),
            auth_secret: c.auth_secret.clone().map(String::into_bytes),
            allow_origins: c.allow_origin.clone(),
            demo_page: c.demo_page,
            retry_ms: c.retry_ms,
            probe_interval: config::secs(c.probe_secs),
            history_page: c.history_page.max(1),
        }
    }
}

struct Inner {
    backend: Arc<dyn Backend>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    opts: GatewayOptions,
    default_keys: KeySpace,
    scan_keys: KeySpace,
    chat_keys: KeySpace,
    active: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

/// The SSE gateway. Cheap to clone; build its routes with [`Gateway::router`].
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("backend", &self.inner.backend.name())
            .field("active", &self.active_connections())
            .finish_non_exhaustive()
    }
}

/// Decrements the active-connection count when dropped.
struct ConnGuard(Arc<Inner>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.active.dec();
    }
}

impl Gateway {
    /// A gateway reading state, history and Pub/Sub from one backend.
    /// Must be called inside a Tokio runtime (it starts the subscriber).
    pub fn new(backend: Arc<dyn Backend>, opts: GatewayOptions) -> Result<Self, GatewayError> {
        Self::with_pubsub(backend.clone(), backend, opts)
    }

    /// A gateway whose Pub/Sub lives on another server than its data.
    pub fn with_pubsub(
        backend: Arc<dyn Backend>,
        pubsub: Arc<dyn Backend>,
        opts: GatewayOptions,
    ) -> Result<Self, GatewayError> {
        let domain =
            Domain::new(opts.domain.clone()).map_err(|e| GatewayError::Config(e.to_string()))?;
        let ks = |d: Domain| KeySpace::new(opts.profile, d, opts.shards);
        let scan = Domain::new("scan").map_err(|e| GatewayError::Config(e.to_string()))?;
        let chat = Domain::new("chat").map_err(|e| GatewayError::Config(e.to_string()))?;
        let default_keys = ks(domain);
        let metrics = Arc::new(Metrics::new());
        let instance = format!("{}-{}", std::process::id(), Epoch::random().0);
        let hub = Hub::start(
            pubsub,
            HubOptions {
                probe_channel: default_keys.probe_channel(&instance),
                probe_interval: opts.probe_interval,
                op_timeout: Duration::from_secs(5),
                max_backoff: Duration::from_secs(5),
            },
            metrics.clone(),
        );
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                hub,
                metrics,
                default_keys,
                scan_keys: ks(scan),
                chat_keys: ks(chat),
                opts,
                active: AtomicUsize::new(0),
                shutdown,
            }),
        })
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Whether the subscriber connection is up (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.inner.hub.is_ready()
    }

    /// Open SSE connections (streaming or waiting for their job).
    pub fn active_connections(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Ends every open stream (clients reconnect elsewhere and resume).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    /// The gateway's routes (with CORS when origins are configured).
    pub fn router(&self) -> Router {
        let mut r = Router::new()
            .route("/v1/jobs/{job_id}/events", get(native_events))
            .route("/v1/jobs/{job_id}/state", get(native_state))
            .route("/api/v1/stream", get(eco2_stream))
            .route("/api/v1/{domain}/{job_id}/events", get(eco2_events))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_handler));
        if self.inner.opts.demo_page {
            r = r.route("/", get(demo_page));
        }
        let r = r.with_state(self.clone());
        match cors(&self.inner.opts.allow_origins) {
            Some(layer) => r.layer(layer),
            None => r,
        }
    }

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
        front::serve(listener, self.clone(), shutdown).await?;
        Ok(())
    }

    /// A router serving only `/metrics` (for `--metrics-addr`).
    pub fn metrics_router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(self.clone())
    }
}

fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ]),
    )
}

fn json_error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let detail: String = detail.into();
    (status, axum::Json(json!({"detail": detail, "code": code}))).into_response()
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    if gw.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "subscriber down").into_response()
    }
}

async fn metrics_handler(State(gw): State<Gateway>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.inner.metrics.render(),
    )
        .into_response()
}

async fn demo_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../static/demo.html"),
    )
        .into_response()
}

type Params = Query<HashMap<String, String>>;

#[allow(clippy::result_large_err)]
fn check_auth(
    gw: &Gateway,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    job: &JobId,
) -> Result<(), Response> {
    let Some(secret) = &gw.inner.opts.auth_secret else {
        return Ok(());
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let token = bearer.or(params.get("token").map(String::as_str));
    match auth::verify(secret, token, job, auth::now_unix()) {
        Ok(()) => Ok(()),
        Err(e) => {
            gw.inner.metrics.reject(match e {
                AuthError::WrongJob => "forbidden",
                _ => "unauthorized",
            });
            let (status, code) = match e {
                AuthError::WrongJob => (StatusCode::FORBIDDEN, "FORBIDDEN"),
                AuthError::Expired => (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED"),
                _ => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            };
            let mut resp = json_error(status, code, e.to_string());
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Err(resp)
        }
    }
}

async fn native_events(
    State(gw): State<Gateway>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let job = match JobId::new(job_id) {
        Ok(j) => j,
        Err(e) => {
            gw.inner.metrics.reject("invalid_job_id");
            return json_error(StatusCode::BAD_REQUEST, "INVALID_JOB_ID", e.to_string());
        }
    };
    let keys = gw.inner.default_keys.clone();
    sse_response(gw, job, keys, Framing::Native, headers, params).await
}

async fn native_state(
    State(gw): State<Gateway>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let job = match JobId::new(job_id) {
        Ok(j) => j,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "INVALID_JOB_ID", e.to_string()),
    };
    if let Err(resp) = check_auth(&gw, &headers, &params, &job) {
        return resp;
    }
    let keys = gw.inner.default_keys.job(&job);
    match gw.inner.backend.get_state(&keys).await {
        Ok(Some(state)) => {
            let mut body = stream::state_json(&state);
            body["job_id"] = json!(job.as_str());
            axum::Json(body).into_response()
        }
        Ok(None) => json_error(StatusCode::NOT_FOUND, "JOB_NOT_FOUND", "job not found"),
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "BACKEND_UNAVAILABLE",
            e.to_string(),
        ),
    }
}

#[allow(clippy::result_large_err)]
fn eco2_job(raw: Option<&str>, status: StatusCode) -> Result<JobId, Response> {
    let raw = raw.unwrap_or("");
    if raw.chars().count() < 10 {
        return Err(json_error(
            status,
            "INVALID_JOB_ID",
            "job_id must be at least 10 characters",
        ));
    }
    JobId::new(raw).map_err(|e| json_error(status, "INVALID_JOB_ID", e.to_string()))
}

async fn eco2_stream(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let job = match eco2_job(
        params.get("job_id").map(String::as_str),
        StatusCode::UNPROCESSABLE_ENTITY,
    ) {
        Ok(j) => j,
        Err(r) => {
            gw.inner.metrics.reject("invalid_job_id");
            return r;
        }
    };
    let keys = gw.inner.default_keys.clone();
    sse_response(gw, job, keys, Framing::Eco2, headers, params).await
}

async fn eco2_events(
    State(gw): State<Gateway>,
    Path((domain, job_id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let keys = match domain.as_str() {
        "scan" => gw.inner.scan_keys.clone(),
        "chat" => gw.inner.chat_keys.clone(),
        _ => return json_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown domain"),
    };
    let job = match eco2_job(Some(&job_id), StatusCode::BAD_REQUEST) {
        Ok(j) => j,
        Err(r) => {
            gw.inner.metrics.reject("invalid_job_id");
            return r;
        }
    };
    sse_response(gw, job, keys, Framing::Eco2, headers, params).await
}

fn sse_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// A 200 event stream that only tells the client to retry (pre-stream
/// backend trouble: never a 5xx to an EventSource).
fn retry_later(retry_ms: u64) -> Response {
    let mut buf = BytesMut::new();
    sse::put_retry(&mut buf, retry_ms);
    let mut resp = Response::new(Body::from(buf.freeze()));
    sse_headers(&mut resp);
    resp
}

/// The client's position: `Last-Event-ID` header, else `last_event_id`
/// query. Unparsable ids become an unknown epoch (answered with a snapshot).
async fn client_position(
    gw: &Gateway,
    keys: &relay_core::keys::JobKeys,
    framing: Framing,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Option<Position>, relay_core::BackendError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            params
                .get("last_event_id")
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
        });
    let Some(raw) = raw else { return Ok(None) };
    if let Ok(p) = raw.parse::<Position>() {
        return Ok(Some(p));
    }
    let unknown = stream::UNKNOWN_POSITION;
    if framing == Framing::Eco2 {
        if let Ok(sid) = raw.parse::<StreamId>() {
            let p = stream::eco2_position(&gw.inner.backend, keys, sid, gw.inner.opts.history_page)
                .await?;
            return Ok(Some(p));
        }
    }
    Ok(Some(unknown))
}

async fn sse_response(
    gw: Gateway,
    job: JobId,
    keyspace: KeySpace,
    framing: Framing,
    headers: HeaderMap,
    params: HashMap<String, String>,
) -> Response {
    let inner = gw.inner.clone();
    let m = inner.metrics.clone();
    if let Err(resp) = check_auth(&gw, &headers, &params, &job) {
        return resp;
    }
    // Connection limit, before anything is streamed.
    if inner.active.fetch_add(1, Ordering::AcqRel) >= inner.opts.max_connections {
        inner.active.fetch_sub(1, Ordering::AcqRel);
        m.reject("connection_limit");
        let mut resp = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "TOO_MANY_CONNECTIONS",
            "connection limit reached",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    }
    m.active.inc();
    let guard = ConnGuard(inner.clone());
    let keys = keyspace.job(&job);
    let opts = &inner.opts;

    // Subscribe first, then catch up: nothing published from here on is missed.
    let member = inner.hub.join(keys.live.clone(), opts.client_buffer).await;
    let from = match client_position(&gw, &keys, framing, &headers, &params).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "backend unavailable before streaming");
            m.reject("backend");
            return retry_later(opts.retry_ms);
        }
    };
    let mut session = Session::new(
        inner.backend.clone(),
        keys,
        framing,
        from,
        member,
        m.clone(),
        SessionConfig {
            history_page: opts.history_page,
            heartbeat: opts.heartbeat,
            max_stream: opts.max_stream,
        },
        opts.client_buffer.max(1024),
    );
    let mut buf = BytesMut::new();
    sse::put_retry(&mut buf, opts.retry_ms);
    let start = session.resume.start();
    let mut result = session.run(start, &mut buf).await;

    // A job with no history yet: wait (without sending anything) so the
    // answer can still be a 404 an EventSource will not retry.
    let deadline = tokio::time::Instant::now() + opts.pending_job;
    let poll_every =
        (opts.pending_job / 8).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let signal = session.member.signal.clone();
    while result.is_ok() && !session.resume.is_known() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = signal.notified() => result = session.check_resync(&mut buf).await,
            msg = session.member.rx.recv() => match msg {
                Some(raw) => result = session.on_message(raw, &mut buf).await,
                None => break,
            },
            _ = tokio::time::sleep(poll_every) => {
                let actions = session.resume.poll();
                result = session.run(actions, &mut buf).await;
            }
        }
    }
    if let Err(e) = result {
        tracing::warn!(error = %e, "backend unavailable before streaming");
        m.reject("backend");
        return retry_later(opts.retry_ms);
    }
    if !session.resume.is_known() {
        m.reject("not_found");
        return json_error(StatusCode::NOT_FOUND, "JOB_NOT_FOUND", "job not found");
    }
    if from.is_some() {
        m.resume(session.resume.snapshots() > 0);
    }

    m.opened.inc();
    let streaming = Streaming {
        session,
        first: buf.freeze(),
        _guard: guard,
        shutdown: inner.shutdown.subscribe(),
        job,
    };
    let slot = SseTakeover(Arc::new(std::sync::Mutex::new(Some(Box::new(streaming)))));
    // Served by axum/hyper: on the first poll of the body, run the session
    // in its own task feeding a bounded channel. The gateway's own front
    // (`Gateway::serve`) instead takes the session out of the response
    // extension and writes to the socket directly.
    let body_slot = slot.clone();
    let capacity = opts.client_buffer.max(1);
    let body = futures::stream::once(async move {
        match body_slot.take() {
            Some(streaming) => {
                let (tx, rx) = mpsc::channel(capacity);
                tokio::spawn(streaming.run(stream::ChannelOut(tx)));
                ReceiverStream::new(rx).left_stream()
            }
            None => futures::stream::empty().right_stream(),
        }
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    let mut resp = Response::new(Body::from_stream(body));
    sse_headers(&mut resp);
    resp.extensions_mut().insert(slot);
    resp
}

/// A started SSE stream waiting for whoever writes the response.
pub(crate) struct Streaming {
    session: Session,
    /// `retry:` and the catch-up framed before the response was returned.
    first: bytes::Bytes,
    _guard: ConnGuard,
    shutdown: watch::Receiver<bool>,
    job: JobId,
}

impl Streaming {
    /// Writes the stream into `out` until it ends; records why.
    pub(crate) async fn run<O: stream::Output>(mut self, mut out: O) -> CloseReason {
        let m = self.session.metrics.clone();
        let signal = self.session.member.signal.clone();
        let session = &mut self.session;
        let first = std::mem::take(&mut self.first);
        let drive = async {
            if !first.is_empty() {
                out.write(first, &signal).await?;
                session.delivered();
            }
            Err::<(), _>(session.stream(&mut out).await)
        };
        let reason = tokio::select! {
            r = drive => r.err().unwrap_or(CloseReason::Done),
            _ = self.shutdown.wait_for(|s| *s) => CloseReason::Shutdown,
        };
        if reason == CloseReason::SlowClient {
            m.slow_disconnects.inc();
        }
        m.close(reason);
        tracing::debug!(job = %self.job, reason = reason.as_str(), "stream closed");
        reason
    }
}

/// Response extension carrying the stream to whoever serves the response.
#[derive(Clone)]
pub(crate) struct SseTakeover(Arc<std::sync::Mutex<Option<Box<Streaming>>>>);

impl SseTakeover {
    pub(crate) fn take(&self) -> Option<Box<Streaming>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

pub use relay_core::cli::init_tracing;

/// Runs the gateway described by `config` until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), GatewayError> {
    let opts = GatewayOptions::from(&config);
    if opts.auth_secret.is_none() {
        tracing::warn!(
            "no --auth-secret: the gateway is OPEN, any client can read any job's events"
        );
    }
    let (data, pubsub): (Arc<dyn Backend>, Arc<dyn Backend>) = match config.backend {
        BackendKind::Memory => {
            let b: Arc<dyn Backend> = Arc::new(relay_core::backend::memory::MemoryBackend::new());
            (b.clone(), b)
        }
        BackendKind::Redis => {
            let data = config.conn.connect().await?;
            let pubsub = config.conn.connect_pubsub().await?.unwrap_or(data.clone());
            (data, pubsub)
        }
    };
    let gateway = Gateway::with_pubsub(data, pubsub, opts)?;
    if let Some(addr) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let app = gateway.metrics_router();
        tracing::info!(%addr, "metrics listening");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %config.listen, profile = %config.conn.profile, "relay-sse listening");
    gateway
        .serve(listener, async {
            relay_core::cli::shutdown_signal().await;
            tracing::info!("shutting down: closing streams");
        })
        .await
}
