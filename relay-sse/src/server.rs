//! The `relay-sse` binary's server: backends from the configuration, the
//! optional metrics listener, the main listener through the front, and a
//! graceful end on SIGINT/SIGTERM.

use std::sync::Arc;

use axum::http::header;
use axum::routing::get;
use axum::Router;
use relay_core::backend::Backend;
use relay_core::http_serve::bind;

use crate::config::{BackendKind, Config};
use crate::gateway::{Gateway, GatewayError};
use crate::options::GatewayOptions;
use crate::routes::METRICS_PATH;

/// Runs the gateway described by `config` until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), GatewayError> {
    let opts = GatewayOptions::from(&config);
    if opts.auth_secret.is_none() {
        tracing::warn!(
            "no --auth-secret: the gateway is OPEN, any client can read any job's events"
        );
    }
    if opts.publisher_keys.is_enabled() {
        tracing::info!(
            keys = opts.publisher_keys.len(),
            "publishing enabled: POST /v1/jobs/{{job_id}}/events"
        );
    }
    // Bind before connecting: a clashing port is reported at once, naming
    // the address, not after Redis answered.
    let listener = bind(config.listen).await?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
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
    if let Some(metrics_listener) = metrics_listener {
        use relay_core::http_serve::{serve, ServeMetrics};
        let addr = metrics_listener.local_addr()?;
        // Bounded like every other listener (idle/head/body timeouts,
        // connection cap); `/metrics` adds its `relay_sse_http_*` counters.
        let http = ServeMetrics::new();
        let app = {
            let (gw, http) = (gateway.clone(), http.clone());
            Router::new().route(
                METRICS_PATH,
                get(move || async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        http.append_to(gw.metrics().render(), "relay_sse"),
                    )
                }),
            )
        };
        tracing::info!(%addr, "metrics listening");
        tokio::spawn(serve(
            metrics_listener,
            app,
            config.http.config(),
            http,
            std::future::pending(),
        ));
    }
    tracing::info!(addr = %listener.local_addr()?, profile = %config.conn.profile, "relay-sse listening");
    gateway
        .serve(listener, async {
            relay_core::cli::shutdown_signal().await;
            tracing::info!("shutting down: closing streams");
        })
        .await
}
