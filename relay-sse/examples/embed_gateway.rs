//! Mounting relay's SSE gateway **inside your own axum application**, under
//! your own path prefix, behind your own auth, next to your own routes:
//!
//! ```text
//! cargo run -p relay-sse --example embed_gateway
//! # in another terminal: a browser-style stream of job-1's progress …
//! curl -N -H 'Authorization: Bearer demo-key' \
//!   http://127.0.0.1:3000/progress/v1/jobs/job-1/events
//! # … fed by the application's own route
//! curl -H 'Authorization: Bearer demo-key' -H 'Content-Type: application/json' \
//!   -d '{"seq":1,"stage":"upload","status":"started","progress":10}' \
//!   http://127.0.0.1:3000/jobs/job-1/events
//! curl -H 'Authorization: Bearer demo-key' -H 'Content-Type: application/json' \
//!   -d '{"seq":2,"stage":"done","status":"completed","progress":100}' \
//!   http://127.0.0.1:3000/jobs/job-1/events
//! ```
//!
//! Settings from the environment: `RELAY_REDIS_URL` (unset: the in-memory
//! backend, one process), `APP_LISTEN` (`127.0.0.1:3000`), `APP_API_KEY`
//! (`demo-key`).
//!
//! What it shows:
//! - [`Gateway::router`] is a plain axum `Router` (state already applied):
//!   `nest_service` mounts it under a prefix of an application whose own
//!   router has its own state type; every gateway route (`/v1/jobs/{id}/events`,
//!   `/healthz`, `/metrics`, …) then answers below that prefix;
//! - the application's own auth wraps the mounted gateway as an ordinary
//!   axum middleware layer (here a bearer API key). The gateway's built-in
//!   per-job stream tokens (`GatewayOptions::auth_secret`, issued with
//!   `relay_core::auth::issue`) work the same way when mounted, and are what
//!   a browser `EventSource` can carry (`?token=`: it cannot set headers);
//! - events reach the gateway the production way: the application appends
//!   them with a [`Publisher`] and relay's router applies them (run in
//!   process here; with Redis, a `relay-router` deployment can do it instead);
//! - on shutdown, [`Gateway::shutdown`] ends the open streams (clients resume
//!   elsewhere), so the listener can finish its in-flight requests.
//!
//! `tests/examples.rs` runs [`start`] and [`serve`], so this file cannot rot.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::redis::RedisBackend;
use relay_core::http_serve::{ServeConfig, ServeMetrics};
use relay_core::router::RouterHandle;
use relay_core::{
    Backend, Domain, Event, KeySpace, Profile, Publisher, PublisherConfig, RouterConfig, Status,
};
use relay_sse::{Gateway, GatewayOptions};
use serde::Deserialize;
use serde_json::json;

/// Any error of the example.
pub type AnyError = Box<dyn Error + Send + Sync>;

/// Where the gateway is mounted in the application.
pub const PREFIX: &str = "/progress";

/// The application's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// relay's Redis (`None`: the in-memory backend).
    pub redis_url: Option<String>,
    /// Where the application listens.
    pub listen: SocketAddr,
    /// The API key the application's clients send as `Bearer`.
    pub api_key: String,
}

impl Settings {
    /// From the environment, with local defaults.
    pub fn from_env() -> Result<Self, AnyError> {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Ok(Self {
            redis_url: std::env::var("RELAY_REDIS_URL").ok(),
            listen: var("APP_LISTEN", "127.0.0.1:3000").parse()?,
            api_key: var("APP_API_KEY", "demo-key"),
        })
    }
}

/// relay's backend: Redis at `redis_url`, else in memory.
pub async fn backend(redis_url: Option<&str>) -> Result<Arc<dyn Backend>, AnyError> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisBackend::connect(url).await?),
        None => Arc::new(MemoryBackend::new()),
    })
}

/// The application's own state: what its handlers need.
#[derive(Clone)]
pub struct AppState {
    /// Appends the application's progress events to relay's streams.
    pub publisher: Publisher,
    /// The gateway (its handle answers `/status`).
    pub gateway: Gateway,
    /// The key the application's clients must send.
    pub api_key: Arc<str>,
}

/// The running parts besides the listener.
pub struct Embedded {
    /// The whole application: its own routes and the gateway under [`PREFIX`].
    pub app: axum::Router,
    /// The gateway (shut down to end its streams).
    pub gateway: Gateway,
    router: RouterHandle,
}

/// Builds the application on `backend`: relay's router (stream → state,
/// history, live feed), the gateway, and the app around them. Must be
/// called inside a Tokio runtime.
pub fn start(backend: Arc<dyn Backend>, api_key: &str) -> Result<Embedded, AnyError> {
    // Publisher, router and gateway must agree on the key space.
    let keys = KeySpace::new(Profile::Native, Domain::new("media")?, 4);
    let router = relay_core::Router::new(backend.clone(), RouterConfig::new(keys.clone())).spawn();
    let gateway = Gateway::new(
        backend.clone(),
        GatewayOptions {
            profile: keys.profile(),
            domain: keys.domain().as_str().to_owned(),
            shards: keys.shards(),
            ..GatewayOptions::default()
        },
    )?;
    let state = AppState {
        publisher: Publisher::new(backend, keys, PublisherConfig::default()),
        gateway: gateway.clone(),
        api_key: api_key.into(),
    };
    Ok(Embedded {
        app: app(state),
        gateway,
        router,
    })
}

/// The application's router: its own routes, and the gateway's routes
/// under [`PREFIX`], all behind its API key.
pub fn app(state: AppState) -> axum::Router {
    let auth = axum::middleware::from_fn_with_state(state.clone(), require_api_key);
    // Already a `Router<()>`; `nest_service` mounts it into a router of any
    // state type (`nest` would need the same state type on both sides).
    let sse = state.gateway.router().layer(auth.clone());
    axum::Router::new()
        .route("/status", get(status))
        .route("/jobs/{job_id}/events", post(publish).layer(auth))
        .nest_service(PREFIX, sse)
        .with_state(state)
}

/// Serves `embedded.app` on `listener` until `shutdown` resolves, then ends
/// the gateway's streams, waits for in-flight requests and stops the
/// router.
pub async fn serve(
    embedded: Embedded,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let Embedded {
        app,
        gateway,
        router,
    } = embedded;
    // relay's bounded listener (idle, head and body timeouts, connection
    // cap); `axum::serve` works too.
    let stop = async {
        shutdown.await;
        gateway.shutdown();
    };
    relay_core::http_serve::serve(
        listener,
        app,
        ServeConfig::default(),
        ServeMetrics::new(),
        stop,
    )
    .await;
    router.shutdown().await;
}

/// The application's auth: `Authorization: Bearer <api key>`, else `401`.
async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(&*state.api_key) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong API key").into_response();
    }
    next.run(req).await
}

/// `GET /status`: the application's own route (no key needed).
async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "service": "embed-gateway-example",
        "gateway_ready": state.gateway.is_ready(),
        "open_streams": state.gateway.active_connections(),
    }))
}

/// What `POST /jobs/{job_id}/events` takes.
#[derive(Debug, Deserialize)]
pub struct NewEvent {
    /// The event's position in its job (higher replaces lower; repeats are
    /// dropped).
    pub seq: u64,
    /// The stage (`done` with `completed` or `failed` ends the job).
    pub stage: String,
    /// What happened.
    pub status: Status,
    /// Percent done.
    #[serde(default)]
    pub progress: u8,
}

/// `POST /jobs/{job_id}/events`: publishes one progress event of the job.
async fn publish(
    State(state): State<AppState>,
    Path(job): Path<String>,
    Json(new): Json<NewEvent>,
) -> Response {
    let domain = state.publisher.keys().domain().as_str();
    let event = match Event::new(domain, &job, new.seq, &new.stage, new.status) {
        Ok(e) => e.with_progress(new.progress),
        Err(e) => return (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    };
    match state.publisher.publish(&event).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let settings = Settings::from_env()?;
    let embedded = start(
        backend(settings.redis_url.as_deref()).await?,
        &settings.api_key,
    )?;
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    println!(
        "listening on http://{}: own routes /status, POST /jobs/{{job}}/events; \
         the gateway under {PREFIX}/ (Ctrl-C to stop)",
        listener.local_addr()?
    );
    serve(embedded, listener, relay_core::cli::shutdown_signal()).await;
    Ok(())
}
