//! The router's HTTP side: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Extension;
use relay_core::backend::Backend;
use relay_core::cli::PromText;
use relay_core::http_serve::{self, ServeConfig, ServeMetrics};
use relay_core::router::{RouterMetrics, BATCH_LATENCY_BOUNDS, BATCH_SIZE_BOUNDS};
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

/// Binds and serves until stopped, with `limits` on the listener
/// ([`relay_core::http_serve`]: idle/head/body timeouts, connection cap;
/// its counters are `/metrics`' `relay_router_http_*`).
pub async fn spawn(
    addr: SocketAddr,
    state: ServerState,
    limits: ServeConfig,
) -> std::io::Result<ServerHandle> {
    let http = ServeMetrics::new();
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(Extension(http.clone()))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
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

async fn metrics(
    State(s): State<ServerState>,
    Extension(http): Extension<ServeMetrics>,
) -> impl IntoResponse {
    let mut p = PromText::new();
    http.write_prom(&mut p, "relay_router");
    type Counter = fn(&RouterMetrics) -> u64;
    let counters: [(&str, &str, Counter); 11] = [
        (
            "relay_router_events_applied_total",
            "Events applied for the first time.",
            |m| m.applied.load(Ordering::Relaxed),
        ),
        (
            "relay_router_duplicates_total",
            "Entries whose (job, seq) was already applied.",
            |m| m.duplicates.load(Ordering::Relaxed),
        ),
        (
            "relay_router_published_total",
            "Live messages published.",
            |m| m.published.load(Ordering::Relaxed),
        ),
        (
            "relay_router_acked_total",
            "Stream entries acknowledged.",
            |m| m.acked.load(Ordering::Relaxed),
        ),
        (
            "relay_router_dead_lettered_total",
            "Entries moved to the dead-letter stream.",
            |m| m.dead_lettered.load(Ordering::Relaxed),
        ),
        (
            "relay_router_dlq_truncated_total",
            "Dead-lettered entries stored cut to --dlq-max-field-bytes.",
            |m| m.dlq_truncated.load(Ordering::Relaxed),
        ),
        (
            "relay_router_apply_failed_total",
            "Entry applies that failed for the entry's own reason (left pending, dead-lettered after --max-deliveries).",
            |m| m.apply_failed.load(Ordering::Relaxed),
        ),
        (
            "relay_router_trimmed_total",
            "Pending entries trimmed from the stream before routing.",
            |m| m.lost_trimmed.load(Ordering::Relaxed),
        ),
        (
            "relay_router_claimed_total",
            "Entries claimed from idle consumers.",
            |m| m.claimed.load(Ordering::Relaxed),
        ),
        ("relay_router_batches_total", "Batches processed.", |m| {
            m.batches.load(Ordering::Relaxed)
        }),
        (
            "relay_router_backend_errors_total",
            "Backend errors (each retried).",
            |m| m.errors.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        p.header(name, "counter", help);
        for (keys, m) in &s.routers {
            p.sample(name, &[("domain", keys.domain().as_str())], get(m) as f64);
        }
    }
    p.header(
        "relay_router_connected",
        "gauge",
        "1 while the router's last backend call succeeded.",
    );
    for (keys, m) in &s.routers {
        let up = if m.connected.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        };
        p.sample(
            "relay_router_connected",
            &[("domain", keys.domain().as_str())],
            up,
        );
    }
    for (keys, m) in &s.routers {
        let d = [("domain", keys.domain().as_str())];
        let sizes: Vec<u64> = m
            .batch_size_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let lat: Vec<u64> = m
            .batch_latency_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        p.histogram(
            "relay_router_batch_size",
            "Entries per routed batch.",
            &d,
            &BATCH_SIZE_BOUNDS,
            &sizes,
            m.batch_entries.load(Ordering::Relaxed) as f64,
        );
        p.histogram(
            "relay_router_batch_seconds",
            "Apply + publish + ack latency per batch.",
            &d,
            &BATCH_LATENCY_BOUNDS,
            &lat,
            m.batch_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
    }
    p.header(
        "relay_router_pending",
        "gauge",
        "Entries delivered and not yet acked, per shard.",
    );
    let mut lags = Vec::new();
    for (keys, _) in &s.routers {
        let group = s
            .group
            .clone()
            .unwrap_or_else(|| keys.default_group().to_owned());
        for shard in 0..keys.shards() {
            let stream = keys.shard_stream(shard);
            if let Ok(st) = s.data.group_stats(&stream, &group).await {
                let shard_s = shard.to_string();
                let l = [
                    ("domain", keys.domain().as_str()),
                    ("shard", shard_s.as_str()),
                ];
                p.sample("relay_router_pending", &l, st.pending as f64);
                lags.push((keys.domain().to_string(), shard_s, st.lag));
            }
        }
    }
    p.header(
        "relay_router_consumer_lag",
        "gauge",
        "Entries not yet delivered to the group, per shard.",
    );
    for (domain, shard, lag) in &lags {
        if let Some(lag) = lag {
            p.sample(
                "relay_router_consumer_lag",
                &[("domain", domain), ("shard", shard)],
                *lag as f64,
            );
        }
    }
    p.header(
        "relay_router_dlq_length",
        "gauge",
        "Entries in the dead-letter stream.",
    );
    for (keys, _) in &s.routers {
        if let Ok(n) = s.data.stream_len(&keys.dlq_stream()).await {
            p.sample(
                "relay_router_dlq_length",
                &[("domain", keys.domain().as_str())],
                n as f64,
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        p.finish(),
    )
}
