//! The all-in-one demo (`pipeline-scan demo`): the router, the SSE gateway,
//! the scan API and in-process workers with simulated models, on the
//! in-process [`MemoryBackend`], in one process — no Redis, no RabbitMQ.
//!
//! One listener serves:
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the demo page: submit an image URL, watch the stages arrive live |
//! | `POST /api/v1/scan`, `GET /api/v1/scan/{job}/result` | the scan API ([`ScanApi`]) |
//! | `GET /api/v1/scan/{job}/events`, `GET /v1/jobs/{job}/events`, … | the SSE gateway ([`relay_sse::Gateway`]) |
//! | `/healthz`, `/readyz` | the gateway's |
//! | `/metrics` | the gateway's, and the listener's `pipeline_scan_http_*` |
//!
//! The listener is [`relay_core::http_serve::serve`]: idle, slow-head and
//! stalled-body connections are closed, open connections are capped
//! ([`DemoConfig::http`], flags `--http-*`).
//!
//! The models are the simulators ([`SimulatedVision`]: a deterministic
//! classification derived from the URL, [`SimulatedAnswer`]: the template
//! composer), each behind a configurable latency so the stages are visible
//! arriving one by one. The image URL is never fetched, so private and
//! loopback URLs are accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use relay_core::backend::memory::MemoryBackend;
use relay_core::http_serve::{self, ServeConfig, ServeMetrics};
use relay_core::{KeySpace, Publisher, Router, RouterConfig};
use relay_sse::{Gateway, GatewayOptions};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiConfig, ScanApi};
use crate::scan::{
    self, LatencyDist, RuleSet, ScanModels, SimulatedAnswer, SimulatedVision, Taxonomy,
};
use crate::transport::inprocess::InProcessConfig;
use crate::wiring::{start_in_process, AppError, HTTP_METRICS_PREFIX};

/// The demo page served at `/`.
pub const PAGE: &str = include_str!("../static/demo.html");

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Key space (profile and shards; domain `scan`).
    pub keys: KeySpace,
    /// Simulated vision latency.
    pub vision_latency: LatencyDist,
    /// Simulated answer latency.
    pub answer_latency: LatencyDist,
    /// The rule set (default: the embedded dataset).
    pub rules: Arc<RuleSet>,
    /// Stream token secret (API issues, gateway checks); `None`: open.
    pub auth_secret: Option<Vec<u8>>,
    /// Listener limits (timeouts, connection cap).
    pub http: ServeConfig,
}

/// The demo's simulated models.
pub fn models(config: &DemoConfig) -> ScanModels {
    ScanModels {
        vision: Arc::new(SimulatedVision::new(
            Arc::new(Taxonomy::default_dataset()),
            config.vision_latency,
        )),
        rules: config.rules.clone(),
        answer: Arc::new(SimulatedAnswer::new(config.answer_latency)),
        stage_latency: Vec::new(),
    }
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

/// Runs the demo until `shutdown` is cancelled: binds, prints the URL to
/// open on stdout, serves, then drains the workers and the router.
pub async fn run(config: DemoConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    // One in-process server: the relay's backend and the pipeline's records.
    let backend = Arc::new(MemoryBackend::new());

    // 1. The router turns the shard streams into state, history and live feed.
    let mut router_config = RouterConfig::new(config.keys.clone());
    router_config.block = Duration::from_millis(250);
    let router = Router::new(backend.clone(), router_config).spawn();

    // 2. The gateway streams them (native and eco2 routes).
    let gateway = Gateway::new(
        backend.clone(),
        GatewayOptions {
            profile: config.keys.profile(),
            domain: scan::DOMAIN.into(),
            shards: config.keys.shards(),
            auth_secret: config.auth_secret.clone(),
            ..GatewayOptions::default()
        },
    )
    .map_err(AppError::Gateway)?;

    // 3. Workers and API on the in-process transport.
    let publisher = Publisher::new(
        backend.clone(),
        config.keys.clone(),
        crate::pipeline::publisher_config(),
    );
    let (_engine, workers) = start_in_process(
        publisher.clone(),
        backend.clone(),
        &models(&config),
        scan::engine_config(),
        InProcessConfig::default(),
    );
    let api = ScanApi::new(
        publisher,
        backend.clone(),
        Arc::new(workers.clone()),
        ApiConfig {
            // Nothing fetches the image URL here (simulated vision).
            allow_private_hosts: true,
            auth_secret: config.auth_secret.clone(),
            ..ApiConfig::default()
        },
    );

    // `/metrics` serves the gateway's registry and this listener's
    // `pipeline_scan_http_*`; every other gateway route falls through.
    let http = ServeMetrics::new();
    let metrics = {
        let (gw, http) = (gateway.clone(), http.clone());
        move || async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                http.append_to(gw.metrics().render(), HTTP_METRICS_PREFIX),
            )
        }
    };
    let app = api
        .router()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/metrics", get(metrics))
        .fallback_service(gateway.router());
    let listener = relay_core::http_serve::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, vision = %config.vision_latency, answer = %config.answer_latency, "demo listening");
    println!("relay scan demo: open http://{addr}/  (Ctrl-C to stop)");

    let stop = shutdown.clone();
    let gw = gateway.clone();
    http_serve::serve(listener, app, config.http, http, async move {
        stop.cancelled().await;
        // End open streams so the graceful shutdown does not wait on them.
        gw.shutdown();
    })
    .await;
    workers.shutdown().await;
    router.shutdown().await;
    Ok(())
}
