//! Shared test helpers: backends, publishers, event readers, waiting.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pipeline_scan::pipeline::{JobStore, Stage, StageContext, StageError};
use relay_core::backend::memory::MemoryBackend;
use relay_core::codec::parse_native;
use relay_core::eco2::Eco2Entry;
use relay_core::{Backend, Domain, Event, JobId, KeySpace, Profile, Publisher};
use serde::{Deserialize, Serialize};

/// An in-process backend: the relay's (through a [`publisher`]) and the
/// engine's key-value store at once.
pub fn memory() -> Arc<MemoryBackend> {
    Arc::new(MemoryBackend::new())
}

pub fn keys(profile: Profile) -> KeySpace {
    KeySpace::new(profile, Domain::new("scan").unwrap(), 4)
}

pub fn publisher(backend: Arc<dyn Backend>, profile: Profile) -> Publisher {
    Publisher::new(
        backend,
        keys(profile),
        pipeline_scan::pipeline::publisher_config(),
    )
}

/// Every event of `job` appended to its shard stream, in append order.
pub async fn events<B: Backend + ?Sized>(
    backend: &Arc<B>,
    ks: &KeySpace,
    job: &JobId,
) -> Vec<Event> {
    let stream = ks.shard_stream(ks.shard_of(job));
    let entries = backend.range(&stream, None, 100_000).await.unwrap();
    entries
        .into_iter()
        .filter_map(|e| match ks.profile() {
            Profile::Native => parse_native(&e.fields).ok().map(|n| n.event),
            Profile::Eco2 => Eco2Entry::parse(&e.fields)
                .ok()
                .and_then(|x| x.to_event("scan").ok()),
        })
        .filter(|e| &e.job_id == job)
        .collect()
}

/// `(stage, status)` pairs of events.
pub fn steps(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.stage.to_string(), e.status.to_string()))
        .collect()
}

pub fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The expected events of a successful 4-stage scan.
pub fn full_scan_steps() -> Vec<(String, String)> {
    pairs(&[
        ("queued", "started"),
        ("vision", "started"),
        ("vision", "completed"),
        ("rule", "started"),
        ("rule", "completed"),
        ("answer", "started"),
        ("answer", "completed"),
        ("reward", "started"),
        ("reward", "completed"),
        ("done", "completed"),
    ])
}

/// The events of a successful `AddOne → Flaky → Shout` job, led by
/// `queued` when the job was queued through its control.
pub fn add_flaky_shout_steps(queued: bool) -> Vec<(String, String)> {
    let lead: &[(&str, &str)] = if queued {
        &[("queued", "started")]
    } else {
        &[]
    };
    let mut steps = pairs(lead);
    steps.extend(pairs(&[
        ("add", "started"),
        ("add", "completed"),
        ("flaky", "started"),
        ("flaky", "completed"),
        ("shout", "started"),
        ("shout", "completed"),
        ("done", "completed"),
    ]));
    steps
}

/// Waits (bounded, generous) until the job has a terminal marker; returns
/// `Some(true)` for done, `Some(false)` for failed.
pub async fn wait_terminal(store: &JobStore, job: &JobId, within: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(t)) = store.terminal(job).await {
            // The terminal event follows the marker; give it a moment to land.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Some(t);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the job's stream has an event at stage `done`.
pub async fn wait_done_event<B: Backend + ?Sized>(
    backend: &Arc<B>,
    ks: &KeySpace,
    job: &JobId,
    within: Duration,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let evs = events(backend, ks, job).await;
        if evs.iter().any(|e| e.is_terminal()) || tokio::time::Instant::now() > deadline {
            return evs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- toy stages for generic pipeline tests ----

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Num(pub u64);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Text(pub String);

/// Adds one.
pub struct AddOne {
    pub runs: Arc<AtomicU32>,
}

#[async_trait]
impl Stage for AddOne {
    type Input = Num;
    type Output = Num;
    const NAME: &'static str = "add";
    async fn run(&self, _ctx: &StageContext, input: Num) -> Result<Num, StageError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Num(input.0 + 1))
    }
}

/// Fails `fail_times` times (retryable, or fatal), then renders the number.
pub struct Flaky {
    pub fail_times: u32,
    pub fatal: bool,
    pub runs: Arc<AtomicU32>,
    pub attempts_seen: Arc<std::sync::Mutex<Vec<u32>>>,
}

impl Flaky {
    pub fn new(fail_times: u32, fatal: bool) -> Self {
        Self {
            fail_times,
            fatal,
            runs: Arc::default(),
            attempts_seen: Arc::default(),
        }
    }
}

#[async_trait]
impl Stage for Flaky {
    type Input = Num;
    type Output = Text;
    const NAME: &'static str = "flaky";
    async fn run(&self, ctx: &StageContext, input: Num) -> Result<Text, StageError> {
        self.attempts_seen.lock().unwrap().push(ctx.attempt);
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_times {
            return Err(if self.fatal {
                StageError::fatal("boom")
            } else {
                StageError::retryable(format!("transient {n}"))
            });
        }
        Ok(Text(format!("n={}", input.0)))
    }
}

/// Appends `!`.
pub struct Shout;

#[async_trait]
impl Stage for Shout {
    type Input = Text;
    type Output = Text;
    const NAME: &'static str = "shout";
    async fn run(&self, _ctx: &StageContext, input: Text) -> Result<Text, StageError> {
        Ok(Text(format!("{}!", input.0)))
    }
}

/// Sleeps longer than any test timeout.
pub struct Sleepy;

#[async_trait]
impl Stage for Sleepy {
    type Input = Num;
    type Output = Num;
    const NAME: &'static str = "sleepy";
    async fn run(&self, _ctx: &StageContext, input: Num) -> Result<Num, StageError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(input)
    }
}

pub fn job(name: &str) -> JobId {
    JobId::new(format!("{name}-{}", uuid::Uuid::new_v4())).unwrap()
}

/// Sleeps `ms` then adds one.
pub struct Slow {
    pub ms: u64,
    pub runs: Arc<AtomicU32>,
}

#[async_trait]
impl Stage for Slow {
    type Input = Num;
    type Output = Num;
    const NAME: &'static str = "slow";
    async fn run(&self, _ctx: &StageContext, input: Num) -> Result<Num, StageError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Num(input.0 + 1))
    }
}

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A unique queue prefix per test.
pub fn queue_prefix(name: &str) -> String {
    format!(
        "test.{name}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Deletes the queues of a topology.
pub async fn delete_queues(queues: &[String]) {
    let Ok(conn) =
        lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in queues {
            let _ = ch
                .queue_delete(
                    q.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
    }
    let _ = conn.close(200, "cleanup".into()).await;
}
