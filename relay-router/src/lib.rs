//! # relay-router
//!
//! The operations runner around [`relay_core::Router`]: configuration from
//! flags and `RELAY_*` environment variables, connection retry, Prometheus
//! `/metrics`, `/healthz` and `/readyz`, and graceful shutdown on
//! SIGTERM/SIGINT (stop reading, finish and ack in-flight batches, exit 0).
//! [`ctl`] implements the `relayctl` operations CLI.
//!
//! The binary's `main` only parses [`RouterArgs`] and calls [`run`], so tests
//! drive the same code in-process:
//!
//! ```no_run
//! use clap::Parser;
//! # async fn demo() -> anyhow::Result<()> {
//! let args = relay_router::RouterArgs::parse_from(["relay-router", "--redis-url", "redis://127.0.0.1:6379"]);
//! relay_router::run(args, relay_core::cli::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod ctl;
pub mod server;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use relay_core::router::RouterMetrics;
use relay_core::Router;
use tracing::info;

pub use config::RouterArgs;

/// Everything one router process runs: a [`Router`] per domain.
pub struct Running {
    /// Per domain: key space and metrics.
    pub routers: Vec<(relay_core::KeySpace, Arc<RouterMetrics>)>,
}

/// Runs the router until `shutdown` resolves, then drains and returns.
pub async fn run(mut args: RouterArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // The router's work follows the shard streams: say where they are.
    args.conn.log_placement = true;
    // Connecting is retried for a long time: an orchestrator usually starts
    // the router and Redis together.
    // Bind first: a clashing metrics port is reported at once, naming the
    // address, and not after the streams and groups were created.
    let listener = relay_core::http_serve::bind(args.metrics_addr).await?;
    let give_up = Duration::from_secs(args.connect_timeout_secs);
    let data = args.conn.connect_with_retry(give_up).await?;
    let pubsub = args.conn.connect_pubsub_with_retry(give_up).await?;
    let mut handles = Vec::new();
    let mut state = Vec::new();
    for keys in args.conn.key_spaces() {
        let mut router = Router::new(data.clone(), args.router_config(keys.clone()));
        if let Some(p) = &pubsub {
            router = router.with_pubsub(p.clone());
        }
        state.push((keys, router.metrics().clone()));
        handles.push(router.spawn());
    }
    let server = server::spawn(
        listener,
        server::ServerState {
            data: data.clone(),
            group: args.group.clone(),
            routers: state,
        },
        args.http.config(),
    )
    .await?;
    info!(addr = %server.local_addr, "metrics server listening");
    shutdown.await;
    info!("draining in-flight batches");
    for h in handles {
        h.shutdown().await;
    }
    server.stop().await;
    info!("router stopped");
    Ok(())
}
