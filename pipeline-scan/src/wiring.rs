//! Process wiring shared by the `pipeline-scan` entry points: the
//! [`app`](crate::app) subcommands (`api`, `worker`, `dlq`) and the all-in-one
//! [`demo`](crate::demo) compose the same parts from here — the scan engine on
//! a backend ([`scan_engine`], [`start_in_process`]), the ops routes
//! ([`api_ops_router`], [`metrics_router`]) and the error they stop with
//! ([`AppError`]).
//!
//! It sits below both entry points so neither imports the other's internals
//! (the binary's `app` runs the `demo`; the demo only needs these parts).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use relay_core::backend::KvStore;
use relay_core::cli::ConnectionArgs;
use relay_core::http_serve::ServeMetrics;
use relay_core::{Backend, Publisher};

use crate::metrics::Metrics;
use crate::pipeline::{Engine, EngineConfig};
use crate::scan::{self, ScanModels};
use crate::transport::amqp::AmqpProducer;
use crate::transport::inprocess::{InProcess, InProcessConfig};

/// Why the binary stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad flag values.
    #[error("config: {0}")]
    Config(String),
    /// The demo's SSE gateway could not be built from its options.
    #[error("gateway: {0}")]
    Gateway(#[source] relay_sse::GatewayError),
    /// Backend connection failed.
    #[error("backend: {0}")]
    Backend(#[from] relay_core::BackendError),
    /// Broker failure.
    #[error(transparent)]
    Amqp(#[from] crate::transport::amqp::AmqpError),
    /// Rules failed to load.
    #[error(transparent)]
    Rules(#[from] crate::scan::rules::RulesError),
    /// Taxonomy failed to load.
    #[error(transparent)]
    Taxonomy(#[from] crate::scan::vision::TaxonomyError),
    /// Model client setup failed.
    #[error(transparent)]
    Model(#[from] crate::scan::openai::ModelError),
    /// Listening or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The scan engine on `backend` with the connection's key space, its
/// records in `kv`.
pub fn scan_engine(
    backend: Arc<dyn Backend>,
    kv: Arc<dyn KvStore>,
    connection: &ConnectionArgs,
    models: &ScanModels,
    config: EngineConfig,
) -> Engine {
    let publisher = Publisher::new(
        backend,
        connection.key_space(),
        crate::pipeline::publisher_config(),
    );
    scan::engine(models, publisher, kv, config)
}

/// Starts the scan engine with in-process workers (the embedded mode the
/// demo uses with a `MemoryBackend`): returns the engine and the transport,
/// which is also what [`ScanApi`](crate::api::ScanApi) submits to.
pub fn start_in_process(
    publisher: Publisher,
    kv: Arc<dyn KvStore>,
    models: &ScanModels,
    config: EngineConfig,
    transport: InProcessConfig,
) -> (Arc<Engine>, InProcess) {
    let engine = Arc::new(scan::engine(models, publisher, kv, config));
    let inprocess = InProcess::start(engine.clone(), transport);
    (engine, inprocess)
}

/// Prefix of the listener metrics of every `pipeline-scan` listener
/// (`pipeline_scan_http_*`, see [`relay_core::http_serve`]).
pub const HTTP_METRICS_PREFIX: &str = "pipeline_scan";

/// What the API's `/readyz` checks: the API can take a submission only when
/// Redis answers (it records the job and publishes its first event) and the
/// broker accepts a connection (it queues the first stage).
#[derive(Clone)]
pub struct ApiReadiness {
    backend: Arc<dyn Backend>,
    producer: Arc<AmqpProducer>,
    timeout: Duration,
}

impl ApiReadiness {
    /// Checks `backend` (PING) and `producer` (an open channel, reconnecting
    /// when the last one was lost), each bounded by 2 s.
    pub fn new(backend: Arc<dyn Backend>, producer: Arc<AmqpProducer>) -> Self {
        Self {
            backend,
            producer,
            timeout: Duration::from_secs(2),
        }
    }

    /// The dependencies that are not reachable now, with why (empty: ready).
    pub async fn unready(&self) -> Vec<String> {
        let (redis, broker) = tokio::join!(
            tokio::time::timeout(self.timeout, self.backend.ping()),
            tokio::time::timeout(self.timeout, self.producer.connect()),
        );
        let mut down = Vec::new();
        match redis {
            Ok(Ok(())) => {}
            Ok(Err(e)) => down.push(format!("redis: {e}")),
            Err(_) => down.push(format!("redis: no answer within {:?}", self.timeout)),
        }
        match broker {
            Ok(Ok(())) => {}
            Ok(Err(e)) => down.push(format!("rabbitmq: {e}")),
            Err(_) => down.push(format!("rabbitmq: no connection within {:?}", self.timeout)),
        }
        down
    }
}

/// `/metrics` (the listener's `pipeline_scan_http_*`), `/healthz` (the
/// process serves) and `/readyz` (200 when [`ApiReadiness`] finds Redis and
/// RabbitMQ reachable, else 503 naming what is down), for the `api` listener.
pub fn api_ops_router(http: ServeMetrics, readiness: ApiReadiness) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let http = http.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        http.render(HTTP_METRICS_PREFIX),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let down = readiness.unready().await;
                    if down.is_empty() {
                        (StatusCode::OK, "ready".to_owned())
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, down.join("\n"))
                    }
                }
            }),
        )
}

/// `/metrics` (Prometheus text: the worker's metrics, then its listener's
/// `pipeline_scan_http_*`) and `/healthz`, for the `worker` listener.
pub fn metrics_router(metrics: Arc<Metrics>, http: ServeMetrics) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (m, http) = (metrics.clone(), http.clone());
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        http.append_to(m.render(), HTTP_METRICS_PREFIX),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}
