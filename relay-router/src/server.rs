//! The router's HTTP side: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Extension;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use relay_core::backend::Backend;
use relay_core::http_serve::{self, ServeConfig, ServeMetrics};
use relay_core::router::RouterMetrics;
use relay_core::KeySpace;
use tokio::sync::oneshot;

/// What the handlers read.
#[derive(Clone)]
pub struct ServerState {
    /// The data server (for per-shard pending and lag).
    pub data: Arc<dyn Backend>,
    /// Group override (None: the profile's default).
    pub group: Option<String>,
    /// Per domain: key space and metrics.
    pub routers: Vec<(KeySpace, Arc<RouterMetrics>)>,
}

/// A running server.
pub struct ServerHandle {
    /// The bound address.
    pub local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops the server.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Serves on `listener` (bound with [`http_serve::bind`] before the router
/// connects, so a clashing port fails at once) until stopped, with `limits`
/// on the listener ([`relay_core::http_serve`]: idle/head/body timeouts,
/// connection cap; its counters are `/metrics`' `relay_router_http_*`).
pub async fn spawn(
    listener: tokio::net::TcpListener,
    state: ServerState,
    limits: ServeConfig,
) -> std::io::Result<ServerHandle> {
    let http = ServeMetrics::new();
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(Extension(Arc::new(Exposition::new(&state, &http))))
        .with_state(state);
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(http_serve::serve(listener, app, limits, http, async {
        let _ = stopped.await;
    }));
    Ok(ServerHandle {
        local_addr,
        stop,
        task,
    })
}

async fn readyz(State(s): State<ServerState>) -> impl IntoResponse {
    let engines_up = s.routers.iter().all(|(_, m)| m.is_ready());
    match s.data.ping().await {
        Ok(()) if engines_up => (StatusCode::OK, "ready".to_owned()),
        Ok(()) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "router reconnecting".to_owned(),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis unavailable: {e}"),
        ),
    }
}

/// Per-shard gauges, read from the data server at each scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    domain: String,
    shard: String,
}

/// Per-domain gauges, read from the data server at each scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
}

/// The `/metrics` registry: every router's metrics under its `domain`
/// label, the listener's `relay_router_http_*` counters, and the stream
/// gauges (pending, lag, dead letters) refreshed from Redis at each scrape.
pub(crate) struct Exposition {
    registry: Registry,
    pending: Family<ShardLabels, Gauge>,
    lag: Family<ShardLabels, Gauge>,
    dlq: Family<DomainLabels, Gauge>,
}

impl Exposition {
    fn new(state: &ServerState, http: &ServeMetrics) -> Self {
        let mut registry = Registry::with_prefix("relay_router");
        for (keys, m) in &state.routers {
            let sub = registry.sub_registry_with_label((
                "domain".into(),
                keys.domain().as_str().to_owned().into(),
            ));
            m.register(sub);
        }
        http.register(&mut registry);
        let pending = Family::<ShardLabels, Gauge>::default();
        let lag = Family::<ShardLabels, Gauge>::default();
        let dlq = Family::<DomainLabels, Gauge>::default();
        registry.register(
            "pending",
            "Entries delivered and not yet acked, per shard",
            pending.clone(),
        );
        registry.register(
            "consumer_lag",
            "Entries not yet delivered to the group, per shard",
            lag.clone(),
        );
        registry.register(
            "dlq_length",
            "Entries in the dead-letter streams (one per shard in the native profile)",
            dlq.clone(),
        );
        Self {
            registry,
            pending,
            lag,
            dlq,
        }
    }

    /// Refreshes the stream gauges from the data server. A shard whose
    /// stats cannot be read is left out of this scrape (not reported as 0).
    async fn refresh(&self, s: &ServerState) {
        self.pending.clear();
        self.lag.clear();
        self.dlq.clear();
        for (keys, _) in &s.routers {
            let group = s
                .group
                .clone()
                .unwrap_or_else(|| keys.default_group().to_owned());
            let domain = keys.domain().as_str().to_owned();
            for shard in 0..keys.shards() {
                let stream = keys.shard_stream(shard);
                if let Ok(st) = s.data.group_stats(&stream, &group).await {
                    let l = ShardLabels {
                        domain: domain.clone(),
                        shard: shard.to_string(),
                    };
                    self.pending.get_or_create(&l).set(gauge_value(st.pending));
                    if let Some(lag) = st.lag {
                        self.lag.get_or_create(&l).set(gauge_value(lag));
                    }
                }
            }
            let mut dead = Some(0u64);
            for dlq in keys.dlq_streams() {
                dead = match (dead, s.data.stream_len(&dlq).await) {
                    (Some(sum), Ok(n)) => Some(sum + n),
                    _ => None,
                };
            }
            if let Some(n) = dead {
                self.dlq
                    .get_or_create(&DomainLabels { domain })
                    .set(gauge_value(n));
            }
        }
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn metrics(
    Extension(x): Extension<Arc<Exposition>>,
    State(s): State<ServerState>,
) -> impl IntoResponse {
    x.refresh(&s).await;
    let mut body = String::new();
    if encode(&mut body, &x.registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "metrics encoding failed".to_owned(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
