//! The router engine: shard streams in, per-job state, history and live
//! publishes out.
//!
//! Each shard has one owner in a group of routers at a time
//! ([`Coordination`](crate::backend::Coordination) leases; shard `s` goes to
//! the `s mod n`-th of the `n` live routers, sorted by name), so a job's
//! events are applied in stream order. Per owned shard, a reader task runs
//! the consumer-group loop:
//! 1. on taking the shard, route every entry earlier owners left pending
//!    (claimed whatever their idle time, oldest first), then new ones (`>`),
//!    in batches of [`RouterConfig::batch`], renewing the lease as it goes;
//! 2. decode every entry; one that cannot be decoded goes to the dead-letter
//!    stream with the reason (and is acked there) — nothing blocks a shard (G5);
//! 3. apply the whole batch in one round trip ([`Backend::apply`], atomic per
//!    job, idempotent per (job, seq): G3);
//! 4. publish (inside the apply when data and pub/sub share a server,
//!    otherwise pipelined to the pub/sub server right after);
//! 5. ack the batch with one XACK — only after apply and publish succeeded, so
//!    a crash at any point leaves the entries pending and they are re-applied
//!    (a no-op) and re-published (gateways dedupe by offset): G1.
//!
//! A janitor task claims entries idle longer than [`RouterConfig::claim_idle`]
//! from any consumer (dead routers included), dead-letters those delivered
//! more than [`RouterConfig::max_deliveries`] times, routes the rest, and
//! removes consumers that have been idle long with nothing pending.
//!
//! Transient backend errors are retried with exponential backoff; the router
//! never exits on them, and [`RouterMetrics::connected`] reports the state for
//! `/readyz`.
//!
//! One concept per file: this module is the configuration, the [`Router`]
//! and its tasks; `ownership` decides which shards this router should own,
//! `shard` runs one shard's reader (lease, take-over, pipelined reads),
//! `batch` routes one batch (steps 2–5), `janitor` claims what dead or stuck
//! consumers left pending; `backoff` and `metrics` serve them all.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::backend::{ApplyOptions, Backend, DeadLetterLimits};
use crate::error::BackendError;
use crate::keys::KeySpace;

mod backoff;
mod batch;
mod janitor;
mod metrics;
mod ownership;
mod shard;

pub use metrics::{RouterMetrics, BATCH_LATENCY_BOUNDS, BATCH_SIZE_BOUNDS};
use ownership::Ownership;

/// Router settings (see the `relay-router` flags for their meaning).
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Key space (profile, domain, shard count).
    pub keys: KeySpace,
    /// Consumer group.
    pub group: String,
    /// This consumer's name (unique per router process).
    pub consumer: String,
    /// Shards this router reads (default: all).
    pub shards: Option<Vec<u32>>,
    /// Entries per read.
    pub batch: usize,
    /// XREADGROUP BLOCK.
    pub block: Duration,
    /// After a read that returned fewer than `batch` entries, wait this
    /// long before the next read, so that entries arriving meanwhile are
    /// read and applied together (zero: read again at once). Trades
    /// publish → client latency (up to this much more) for fewer round
    /// trips and script calls per event at rates well below saturation;
    /// at saturation reads come back full and never wait.
    pub linger: Duration,
    /// Pending entries idle this long are claimed by the janitor.
    pub claim_idle: Duration,
    /// Deliveries after which an entry is dead-lettered.
    pub max_deliveries: u64,
    /// How often the janitor runs.
    pub janitor_interval: Duration,
    /// Consumers idle this long with nothing pending are removed.
    pub consumer_gc_idle: Duration,
    /// Lifetime of a shard lease and of a router's membership heartbeat:
    /// a router that stops renewing loses its shards after this long, and
    /// another router of the group takes them over.
    pub lease: Duration,
    /// State/history bounds and TTLs (`publish` is set by the router).
    pub apply: ApplyOptions,
    /// eco2: also publish routed JSON to `sse:events:{shard}` (for the
    /// Python gateways).
    pub eco2_shard_channel: bool,
    /// Entries larger than this (all field names and values) are
    /// dead-lettered instead of routed.
    pub max_entry_bytes: usize,
    /// Bounds of the dead-letter stream.
    pub dead_letter: DeadLetterLimits,
}

impl RouterConfig {
    /// Defaults for a key space: group per profile, consumer from the host
    /// name and process id.
    pub fn new(keys: KeySpace) -> Self {
        let group = keys.default_group().to_owned();
        Self {
            keys,
            group,
            consumer: default_consumer_name(),
            shards: None,
            batch: 256,
            block: Duration::from_millis(1000),
            linger: Duration::ZERO,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            janitor_interval: Duration::from_secs(5),
            consumer_gc_idle: Duration::from_secs(3600),
            lease: Duration::from_secs(10),
            apply: ApplyOptions::default(),
            eco2_shard_channel: true,
            max_entry_bytes: 1024 * 1024,
            dead_letter: DeadLetterLimits::default(),
        }
    }
}

/// `POD_NAME` (as the eco2 deployment sets it), else `HOSTNAME`, else
/// `router`, plus the process id.
pub fn default_consumer_name() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "router".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The router engine. See the module docs.
///
/// ```
/// use std::sync::Arc;
/// use relay_core::{Router, RouterConfig, KeySpace, Profile, Domain};
/// use relay_core::backend::memory::MemoryBackend;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let keys = KeySpace::new(Profile::Native, Domain::new("scan").unwrap(), 4);
/// let router = Router::new(Arc::new(MemoryBackend::new()), RouterConfig::new(keys));
/// let handle = router.spawn();
/// handle.shutdown().await; // drains in-flight batches, then returns
/// # });
/// ```
#[derive(Clone)]
pub struct Router {
    data: Arc<dyn Backend>,
    pubsub: Option<Arc<dyn Backend>>,
    config: Arc<RouterConfig>,
    metrics: Arc<RouterMetrics>,
    ownership: Arc<Ownership>,
}

/// A running router (from [`Router::spawn`]).
#[derive(Debug)]
pub struct RouterHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: Arc<RouterMetrics>,
}

impl RouterHandle {
    /// The router's metrics.
    pub fn metrics(&self) -> &Arc<RouterMetrics> {
        &self.metrics
    }

    /// Stops reading, finishes and acks in-flight batches, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

impl Router {
    /// A router reading and writing `data`, publishing inside the apply step.
    pub fn new(data: Arc<dyn Backend>, config: RouterConfig) -> Self {
        let ownership = Arc::new(Ownership::new(config.keys.shards()));
        Self {
            data,
            pubsub: None,
            config: Arc::new(config),
            metrics: Arc::new(RouterMetrics::default()),
            ownership,
        }
    }

    /// Publishes through a separate pub/sub server (the eco2 deployment runs
    /// streams and pub/sub on different Redis instances).
    pub fn with_pubsub(mut self, pubsub: Arc<dyn Backend>) -> Self {
        self.pubsub = Some(pubsub);
        self
    }

    /// The router's metrics.
    pub fn metrics(&self) -> &Arc<RouterMetrics> {
        &self.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    fn shards(&self) -> Vec<u32> {
        self.config
            .shards
            .clone()
            .unwrap_or_else(|| (0..self.config.keys.shards()).collect())
    }

    /// Runs until `shutdown` resolves, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let handle = self.spawn();
        shutdown.await;
        handle.shutdown().await;
    }

    /// Starts the shard readers and the janitor.
    pub fn spawn(self) -> RouterHandle {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for shard in self.shards() {
            let r = self.clone();
            let rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move { r.shard_loop(shard, rx).await }));
        }
        let r = self.clone();
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move { r.membership_loop(rx).await }));
        let r = self.clone();
        tasks.push(tokio::spawn(async move { r.janitor_loop(stop_rx).await }));
        info!(
            consumer = %self.config.consumer,
            group = %self.config.group,
            shards = self.config.keys.shards(),
            profile = %self.config.keys.profile(),
            "router started"
        );
        RouterHandle {
            stop,
            tasks,
            metrics: self.metrics.clone(),
        }
    }

    /// A failed publish to the separate Pub/Sub server: not ready until a
    /// publish succeeds again.
    fn on_publish_error(&self, e: &BackendError) {
        self.metrics.errors.inc();
        self.metrics.pubsub_failing.store(true, Ordering::Relaxed);
        warn!(error = %e, op = "publish", "pub/sub server error, retrying");
    }

    fn on_error(&self, what: &str, e: &BackendError) {
        self.metrics.errors.inc();
        if e.is_transient() {
            self.metrics.set_connected(false);
        }
        warn!(error = %e, op = what, "backend error, retrying");
    }
}
