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

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backend::{AckRequest, ApplyResult, DeadLetter, DeadLetterLimits, ReadFrom, StreamId};
use crate::backend::{ApplyEvent, ApplyJob, ApplyOptions, Backend, StreamEntry};
use crate::codec::{parse_native, LiveEnvelope, Payload, Record};
use crate::eco2::Eco2Entry;
use crate::error::BackendError;
use crate::event::{Epoch, JobId};
use crate::keys::{KeySpace, Profile};

mod backoff;
mod janitor;
mod metrics;
mod ownership;

use backoff::Backoff;
pub use metrics::{RouterMetrics, BATCH_LATENCY_BOUNDS, BATCH_SIZE_BOUNDS};
use ownership::{Ended, Ownership};

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

/// How far applying a batch got.
enum Routed {
    /// Applied, published and acked.
    Acked,
    /// Applied and published; the caller acks all but `failed`: entries
    /// whose apply failed for their own reason stay pending, to be claimed
    /// again and dead-lettered only after `max_deliveries`.
    Applied {
        /// Entries left pending.
        failed: Vec<StreamId>,
    },
    /// Gave up because of shutdown (entries stay pending).
    Stopped,
}

/// A decoded entry ready to apply.
struct Routable {
    entry: StreamEntry,
    job: JobId,
    seq: u64,
    payload: Payload,
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

    async fn ensure_group(&self, stream: &str, stop: &watch::Receiver<bool>) -> bool {
        let mut backoff = Backoff::new();
        loop {
            if *stop.borrow() {
                return false;
            }
            match self.data.ensure_group(stream, &self.config.group).await {
                Ok(()) => {
                    self.metrics.set_connected(true);
                    return true;
                }
                Err(e) => {
                    self.on_error("ensure_group", &e);
                    backoff.wait().await;
                }
            }
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

    /// One shard: wait until this router should and may own it (its lease),
    /// route what earlier owners left pending, then read new entries in a
    /// pipeline (the next read is in flight while the previous batch is
    /// applied) until shutdown, an error, the lease lost, or the shard
    /// assigned to another router (then it is handed over).
    async fn shard_loop(self, shard: u32, mut stop: watch::Receiver<bool>) {
        let stream = self.config.keys.shard_stream(shard);
        if !self.ensure_group(&stream, &stop).await {
            return;
        }
        let lease = self.config.keys.shard_lease(&self.config.group, shard);
        let mut backoff = Backoff::new();
        while !*stop.borrow() {
            match self.acquire(shard, &lease, &mut stop).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.on_error("lease", &e);
                    backoff.wait().await;
                    continue;
                }
            }
            self.ownership.set_holding(shard, true);
            self.metrics.shards_owned.inc();
            info!(shard, consumer = %self.config.consumer, "shard taken");
            let ended = match self.take_over(shard, &stream, &stop).await {
                Ok(true) => {
                    // Reads work again: the next failure starts from the
                    // shortest delay.
                    backoff.reset();
                    self.pipelined_new(shard, &stream, &lease, &stop).await
                }
                Ok(false) => Ok(Ended::Stopped),
                Err(e) => Err(e),
            };
            self.ownership.set_holding(shard, false);
            self.metrics.shards_owned.dec();
            match ended {
                Ok(Ended::Stopped) => break,
                Ok(Ended::Reassigned) => {
                    info!(shard, "shard handed over to another router");
                    if let Err(e) = self.data.release_lease(&lease, &self.config.consumer).await {
                        self.on_error("lease", &e);
                    }
                }
                Ok(Ended::LeaseLost) => {
                    warn!(
                        shard,
                        "shard lease lost (renewal came too late); taking it again if free"
                    );
                }
                Err(BackendError::NoGroup { .. }) => {
                    // The stream or group was deleted (e.g. FLUSHALL or a
                    // restart without persistence): recreate and re-read.
                    if !self.ensure_group(&stream, &stop).await {
                        break;
                    }
                }
                Err(e) => {
                    self.on_error("read_group", &e);
                    backoff.wait().await;
                }
            }
        }
        // Hand the shard over at once instead of after the lease expires.
        let _ = self.data.release_lease(&lease, &self.config.consumer).await;
        debug!(shard, "shard reader stopped");
    }

    /// Waits until this router is assigned `shard` and holds its lease.
    /// `Ok(false)`: stopped by shutdown.
    async fn acquire(
        &self,
        shard: u32,
        lease: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, BackendError> {
        let mut assigned = self.ownership.subscribe();
        loop {
            if *stop.borrow() {
                return Ok(false);
            }
            if self.ownership.assigned(shard)
                && self
                    .data
                    .try_lease(lease, &self.config.consumer, self.config.lease)
                    .await?
            {
                return Ok(true);
            }
            // The previous owner may still hold the lease (it hands over
            // or it expires): look again soon, or when the assignment
            // changes.
            tokio::select! {
                _ = tokio::time::sleep(self.config.lease / 8) => {}
                _ = assigned.changed() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Routes every entry pending in `stream`'s group, whoever it was
    /// delivered to, oldest first: what the previous owners read and did
    /// not finish goes before anything newer of the same jobs.
    /// `Ok(false)`: stopped by shutdown.
    async fn take_over(
        &self,
        shard: u32,
        stream: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<bool, BackendError> {
        let done = self
            .claim_and_route(shard, stream, Duration::ZERO, stop)
            .await?;
        self.metrics.set_connected(true);
        Ok(done && !*stop.borrow())
    }

    /// Reads new entries while a separate task routes the previous batch,
    /// renewing the shard's lease every third of its lifetime. Ends on
    /// shutdown, on a read or renewal error, when the lease turns out lost,
    /// or when the shard is assigned to another router — in each case
    /// after the routing task has finished what it was given.
    async fn pipelined_new(
        &self,
        shard: u32,
        stream: &str,
        lease: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<Ended, BackendError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<StreamEntry>>(1);
        let worker = {
            let router = self.clone();
            let stream = stream.to_owned();
            let stop = stop.clone();
            tokio::spawn(async move {
                while let Some(entries) = rx.recv().await {
                    if !router.process(shard, &stream, entries, &stop).await {
                        break;
                    }
                }
            })
        };
        let renew_every = self.config.lease / 3;
        let mut renewed = Instant::now();
        let result = loop {
            if *stop.borrow() {
                break Ok(Ended::Stopped);
            }
            if !self.ownership.assigned(shard) {
                break Ok(Ended::Reassigned);
            }
            if renewed.elapsed() >= renew_every {
                match self
                    .data
                    .try_lease(lease, &self.config.consumer, self.config.lease)
                    .await
                {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break Ok(Ended::LeaseLost),
                    Err(e) => break Err(e),
                }
            }
            let read = self
                .data
                .read_group(
                    stream,
                    &self.config.group,
                    &self.config.consumer,
                    ReadFrom::New,
                    self.config.batch,
                    Some(self.config.block.min(renew_every)),
                )
                .await;
            match read {
                Ok(entries) => {
                    self.metrics.set_connected(true);
                    if !entries.is_empty() && tx.send(entries).await.is_err() {
                        break Ok(Ended::Stopped); // the routing task stopped (shutdown)
                    }
                }
                Err(e) => break Err(e),
            }
        };
        drop(tx);
        let _ = worker.await;
        result
    }

    /// Routes one batch: decode, dead-letter poison, apply, publish, ack.
    /// Returns false only if it gave up because of shutdown (entries stay
    /// pending and are re-read on restart).
    async fn process(
        &self,
        shard: u32,
        stream: &str,
        entries: Vec<StreamEntry>,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let started = Instant::now();
        let n = entries.len();
        let mut ok = Vec::with_capacity(n);
        let mut to_ack = Vec::with_capacity(n);
        for entry in entries {
            if entry.is_deleted() {
                self.metrics.lost_trimmed.inc();
                warn!(id = %entry.id, stream, "pending entry was trimmed before it was routed");
                to_ack.push(entry.id);
                continue;
            }
            match self.decode(&entry) {
                Ok((job, seq, payload)) => ok.push(Routable {
                    entry,
                    job,
                    seq,
                    payload,
                }),
                Err(reason) => {
                    if !self.dead_letter(stream, &entry, &reason, 1, stop).await {
                        return false;
                    }
                }
            }
        }
        to_ack.extend(ok.iter().map(|r| r.entry.id));
        if !ok.is_empty() {
            match self
                .apply_and_publish(shard, stream, &ok, &to_ack, stop)
                .await
            {
                Routed::Stopped => return false,
                Routed::Acked => {
                    self.metrics.acked.inc_by(to_ack.len() as u64);
                    to_ack.clear();
                }
                Routed::Applied { failed } => {
                    if !failed.is_empty() {
                        to_ack.retain(|id| !failed.contains(id));
                    }
                }
            }
        }
        let mut backoff = Backoff::new();
        while !to_ack.is_empty() {
            match self.data.ack(stream, &self.config.group, &to_ack).await {
                Ok(_) => {
                    self.metrics.acked.inc_by(to_ack.len() as u64);
                    break;
                }
                Err(e) => {
                    self.on_error("ack", &e);
                    if *stop.borrow() {
                        // Applied and published; left pending it is re-applied
                        // as a no-op on restart.
                        return false;
                    }
                    backoff.wait().await;
                }
            }
        }
        self.metrics.observe_batch(n, started.elapsed());
        true
    }

    fn decode(&self, entry: &StreamEntry) -> Result<(JobId, u64, Payload), String> {
        let size = crate::codec::fields_size(&entry.fields);
        if size > self.config.max_entry_bytes {
            return Err(format!(
                "entry is {size} bytes, over the {}-byte limit",
                self.config.max_entry_bytes
            ));
        }
        match self.config.keys.profile() {
            Profile::Native => {
                let e = parse_native(&entry.fields).map_err(|e| e.to_string())?;
                let payload = e.payload();
                if e.event.domain != *self.config.keys.domain() {
                    return Err(format!(
                        "event domain {:?} does not match router domain {:?}",
                        e.event.domain.as_str(),
                        self.config.keys.domain().as_str()
                    ));
                }
                Ok((e.event.job_id, e.event.seq, payload))
            }
            Profile::Eco2 => {
                let e = Eco2Entry::parse(&entry.fields).map_err(|e| e.to_string())?;
                let json = e.routed_json(&entry.id.to_string());
                Ok((e.job_id, e.seq, Payload(Bytes::from(json))))
            }
        }
    }

    async fn dead_letter(
        &self,
        stream: &str,
        entry: &StreamEntry,
        reason: &str,
        deliveries: u64,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let dlq = self.config.keys.dlq_stream();
        let dl = DeadLetter {
            dlq: &dlq,
            source: stream,
            group: &self.config.group,
            entry,
            reason,
            deliveries,
            limits: self.config.dead_letter,
        };
        let mut backoff = Backoff::new();
        loop {
            match self.data.dead_letter(dl).await {
                Ok(_) => {
                    self.metrics.dead_lettered.inc();
                    if dl.truncates() {
                        self.metrics.dlq_truncated.inc();
                    }
                    warn!(id = %entry.id, stream, reason, "entry dead-lettered");
                    return true;
                }
                Err(e) => {
                    self.on_error("dead_letter", &e);
                    if *stop.borrow() {
                        return false;
                    }
                    backoff.wait().await;
                }
            }
        }
    }

    /// Groups a batch by job, keeping each job's events in stream order.
    fn build_jobs(&self, shard: u32, batch: &[Routable]) -> Vec<ApplyJob> {
        let mut jobs: Vec<ApplyJob> = Vec::new();
        let mut index: HashMap<&JobId, usize> = HashMap::new();
        let extra = (self.config.keys.profile() == Profile::Eco2 && self.config.eco2_shard_channel)
            .then(|| self.config.keys.eco2_shard_channel(shard));
        for r in batch {
            let j = *index.entry(&r.job).or_insert_with(|| {
                jobs.push(ApplyJob {
                    keys: self.config.keys.job(&r.job),
                    epoch: Epoch::random(),
                    events: Vec::new(),
                    extra_channel: extra.clone(),
                });
                jobs.len() - 1
            });
            jobs[j].events.push(ApplyEvent {
                seq: r.seq,
                payload: r.payload.clone(),
            });
        }
        jobs
    }

    /// Applies and publishes `batch`. When the data server also publishes
    /// (no `--pubsub-url`), the apply acks `to_ack` in the same step:
    /// apply, publish and ack are then one script call, in that order.
    /// With a separate Pub/Sub server the ack must wait for the publish.
    async fn apply_and_publish(
        &self,
        shard: u32,
        stream: &str,
        batch: &[Routable],
        to_ack: &[StreamId],
        stop: &watch::Receiver<bool>,
    ) -> Routed {
        let jobs = self.build_jobs(shard, batch);
        let mut opts = self.config.apply.clone();
        opts.publish = self.pubsub.is_none();
        let fold_ack = self.pubsub.is_none();
        let ack = AckRequest {
            stream,
            group: &self.config.group,
            ids: to_ack,
        };
        let mut backoff = Backoff::new();
        let results = loop {
            let r = if fold_ack {
                self.data.apply_and_ack(jobs.clone(), &opts, ack).await
            } else {
                self.data.apply(jobs.clone(), &opts).await
            };
            match r {
                Ok(r) => break r,
                Err(e) if e.is_transient() => {
                    self.on_error("apply", &e);
                    if *stop.borrow() {
                        return Routed::Stopped;
                    }
                    backoff.wait().await;
                }
                Err(e) => {
                    // A server-side error (e.g. a script error) must not
                    // block the shard: apply job by job and dead-letter the
                    // entries of the job that keeps failing.
                    warn!(error = %e, "batch apply failed; isolating per job");
                    return match self.apply_isolated(shard, batch, &opts).await {
                        Some(failed) => Routed::Applied { failed },
                        None => Routed::Stopped,
                    };
                }
            }
        };
        self.account(&jobs, &results);
        if let Some(pubsub) = &self.pubsub {
            let messages = self.live_messages(&jobs, &results);
            let count = messages.len() as u64;
            let mut backoff = Backoff::new();
            loop {
                match pubsub.publish_batch(messages.clone()).await {
                    Ok(()) => {
                        self.metrics.published.inc_by(count);
                        self.metrics.pubsub_failing.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        self.on_publish_error(&e);
                        if *stop.borrow() {
                            return Routed::Stopped;
                        }
                        backoff.wait().await;
                    }
                }
            }
        }
        if fold_ack {
            Routed::Acked
        } else {
            Routed::Applied { failed: Vec::new() }
        }
    }

    /// Applies `batch` entry by entry after a batch apply failed with a
    /// non-transient error. An entry that fails again is left pending (not
    /// acked): the janitor claims it after `claim_idle` and tries again, and
    /// dead-letters it once its delivery count passes `max_deliveries`, so
    /// a valid event is never dead-lettered on one failure.
    /// Returns the entries left pending; `None` when it gave up on a
    /// transient error (everything stays pending and is re-read).
    async fn apply_isolated(
        &self,
        shard: u32,
        batch: &[Routable],
        opts: &ApplyOptions,
    ) -> Option<Vec<StreamId>> {
        let mut failed = Vec::new();
        for r in batch {
            let one = std::slice::from_ref(r);
            let jobs = self.build_jobs(shard, one);
            match self.data.apply(jobs.clone(), opts).await {
                Ok(results) => {
                    self.account(&jobs, &results);
                    if let Some(pubsub) = &self.pubsub {
                        let msgs = self.live_messages(&jobs, &results);
                        if let Err(e) = pubsub.publish_batch(msgs).await {
                            self.on_publish_error(&e);
                            return None;
                        }
                        self.metrics.pubsub_failing.store(false, Ordering::Relaxed);
                    }
                }
                Err(e) if e.is_transient() => {
                    self.on_error("apply", &e);
                    return None;
                }
                Err(e) => {
                    self.metrics.apply_failed.inc();
                    warn!(
                        id = %r.entry.id,
                        job = %r.job,
                        error = %e,
                        "apply failed; left pending for a later delivery"
                    );
                    failed.push(r.entry.id);
                }
            }
        }
        Some(failed)
    }

    fn account(&self, jobs: &[ApplyJob], results: &[ApplyResult]) {
        let mut new = 0;
        let mut dup = 0;
        for res in results {
            for a in &res.applied {
                if a.new {
                    new += 1;
                } else {
                    dup += 1;
                }
            }
        }
        self.metrics.applied.inc_by(new);
        self.metrics.duplicates.inc_by(dup);
        if self.pubsub.is_none() {
            let per_event = if jobs.iter().any(|j| j.extra_channel.is_some()) {
                2
            } else {
                1
            };
            self.metrics.published.inc_by((new + dup) * per_event);
        }
    }

    fn live_messages(&self, jobs: &[ApplyJob], results: &[ApplyResult]) -> Vec<(String, Bytes)> {
        let mut out = Vec::new();
        for (job, res) in jobs.iter().zip(results) {
            for (ev, a) in job.events.iter().zip(&res.applied) {
                let env = LiveEnvelope {
                    epoch: res.epoch,
                    record: Record {
                        offset: a.offset,
                        payload: ev.payload.clone(),
                    },
                };
                out.push((job.keys.live.clone(), env.encode()));
                if let Some(extra) = &job.extra_channel {
                    out.push((extra.clone(), ev.payload.0.clone()));
                }
            }
        }
        out
    }
}
