//! The [`Gateway`] value: the backend, the live subscription hub, the
//! publisher of the publish route, the metrics and the options every route
//! and both serving paths share, and the count of open SSE connections
//! behind `--max-connections`.
//!
//! Routes (`routes.rs`), handlers and the serving paths (`front.rs`,
//! `server.rs`) are built on top of it; nothing here imports them, so the
//! shared state can be read without the request handling around it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay_core::backend::Backend;
use relay_core::{DedupeAt, Domain, Epoch, KeySpace, Publisher, PublisherConfig};
use tokio::sync::watch;

use crate::hub::{Hub, HubOptions};
use crate::metrics::Metrics;
use crate::options::GatewayOptions;

/// Errors building or running the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is invalid: the domain is not a valid relay name.
    #[error("invalid configuration: {0}")]
    Config(#[source] relay_core::ValidationError),
    /// The backend could not be reached at start.
    #[error("backend: {0}")]
    Backend(#[from] relay_core::BackendError),
    /// Binding or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// What every clone of a [`Gateway`] shares.
pub(crate) struct Inner {
    /// State and history reads.
    pub(crate) backend: Arc<dyn Backend>,
    /// The live subscription.
    pub(crate) hub: Arc<Hub>,
    /// The gateway's metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// The options it was built with.
    pub(crate) opts: GatewayOptions,
    /// Keys of the native routes and `/api/v1/stream` (`opts.domain`).
    pub(crate) default_keys: KeySpace,
    /// Appends what `POST /v1/jobs/{job_id}/events` receives to the
    /// default key space's shard streams (deduplicated at append).
    pub(crate) publisher: Publisher,
    /// Keys of `/api/v1/scan/{job_id}/events`.
    pub(crate) scan_keys: KeySpace,
    /// Keys of `/api/v1/chat/{job_id}/events`.
    pub(crate) chat_keys: KeySpace,
    /// Open SSE connections (see [`Gateway::admit`]).
    active: AtomicUsize,
    /// Raised once by [`Gateway::shutdown`]: every stream ends.
    pub(crate) shutdown: watch::Sender<bool>,
}

/// The SSE gateway. Cheap to clone; build its routes with [`Gateway::router`].
#[derive(Clone)]
pub struct Gateway {
    /// The shared state.
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("backend", &self.inner.backend.name())
            .field("active", &self.active_connections())
            .finish_non_exhaustive()
    }
}

/// One open SSE connection, counted against `max_connections`; dropping
/// it uncounts.
pub(crate) struct ConnGuard(Arc<Inner>);

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
        let domain = Domain::new(opts.domain.clone()).map_err(GatewayError::Config)?;
        let ks = |d: Domain| KeySpace::new(opts.profile, d, opts.shards);
        let scan = Domain::new("scan").map_err(GatewayError::Config)?;
        let chat = Domain::new("chat").map_err(GatewayError::Config)?;
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
        // A producer retrying after a timeout must learn that its first
        // attempt landed (`duplicate`), as with `relayctl publish`.
        let publisher = Publisher::new(
            backend.clone(),
            default_keys.clone(),
            PublisherConfig {
                dedupe: DedupeAt::Append,
                max_event_bytes: opts.max_publish_bytes,
                ..PublisherConfig::default()
            },
        );
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                publisher,
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

    /// Counts one more SSE connection, unless `max_connections` are open
    /// already (`None`: the caller refuses the request).
    pub(crate) fn admit(&self) -> Option<ConnGuard> {
        let inner = &self.inner;
        if inner.active.fetch_add(1, Ordering::AcqRel) >= inner.opts.max_connections {
            inner.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        inner.metrics.active.inc();
        Some(ConnGuard(inner.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use relay_core::backend::memory::MemoryBackend;

    use super::*;

    #[test]
    fn an_invalid_domain_is_a_config_error_with_the_validation_as_source() {
        let opts = GatewayOptions {
            domain: "not a domain".into(),
            ..GatewayOptions::default()
        };
        let err = Gateway::new(Arc::new(MemoryBackend::new()), opts).unwrap_err();
        assert!(matches!(err, GatewayError::Config(_)), "{err:?}");
        assert!(err
            .to_string()
            .starts_with("invalid configuration: invalid domain"));
        let source = err.source().expect("source kept");
        assert!(source
            .downcast_ref::<relay_core::ValidationError>()
            .is_some());
    }
}
