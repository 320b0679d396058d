//! A **worker process publishing progress** to relay: an embedder's typed
//! pipeline (Fetch → Thumbnail) consumed from RabbitMQ by an
//! [`AmqpWorker`], its progress events appended to relay's Redis shard
//! streams, where `relay-router` applies them and `relay-sse` streams them
//! to browsers. Only the generic pipeline is used (`default-features =
//! false`).
//!
//! ```text
//! # terminal 1: the worker (Ctrl-C stops it after the running steps finish)
//! cargo run -p pipeline-scan --no-default-features --example progress_worker -- worker
//! # terminal 2: submit jobs (each gets its `queued` event, then is enqueued)
//! cargo run -p pipeline-scan --no-default-features --example progress_worker -- submit 3
//! # relay: relay-router --domain media & relay-sse --domain media, then
//! #   curl -N http://127.0.0.1:8080/v1/jobs/<job>/events
//! # or everything at once — worker, one job, its events read back from Redis:
//! cargo run -p pipeline-scan --no-default-features --example progress_worker -- demo
//! ```
//!
//! Settings from the environment: `RELAY_REDIS_URL`
//! (`redis://127.0.0.1:6379`), `RELAY_AMQP_URL`
//! (`amqp://guest:guest@127.0.0.1:5672/%2f`), `RELAY_QUEUE_PREFIX` (`media`),
//! `RELAY_SHARDS` (4, as relay-router's default).
//!
//! Delivery is at least once (the worker acks a message only after the next
//! hop is confirmed) and the engine makes redelivery idempotent, so a
//! worker killed mid-job and restarted finishes the job with each event
//! published once. `tests/examples.rs` runs [`demo`] against a private
//! redis-server and the local broker.

mod common;

use std::sync::Arc;
use std::time::Duration;

use pipeline_scan::metrics::Metrics;
use pipeline_scan::pipeline::{
    stage_fn, Engine, EngineConfig, Envelope, Pipeline, PlainHooks, Stage, StageError,
};
use pipeline_scan::transport::amqp::{AmqpConfig, AmqpProducer, AmqpWorker, Topology};
use pipeline_scan::transport::Transport;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::StreamLog;
use relay_core::codec::parse_native;
use relay_core::{Domain, Event, JobId, KeySpace, Profile, Publisher};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::format_event;
pub use common::AnyError;

/// A picture to process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Picture {
    /// Where it is.
    pub url: String,
}

/// Fetch's output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fetched {
    /// The picture.
    pub url: String,
    /// Its size in bytes.
    pub bytes: usize,
}

/// Thumbnail's output (the job's result).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Thumbnail {
    /// Where the thumbnail is.
    pub url: String,
    /// Its edge in pixels.
    pub edge: u32,
}

/// Downloads the picture.
pub fn fetch() -> impl Stage<Input = Picture, Output = Fetched> {
    stage_fn("fetch", |_ctx, p: Picture| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(Fetched {
            bytes: p.url.len() * 1000,
            url: p.url,
        })
    })
    .with_event_data(|out| json!({ "bytes": out.bytes }))
}

/// Renders the thumbnail (its `completed` data is the whole output).
pub fn thumbnail() -> impl Stage<Input = Fetched, Output = Thumbnail> {
    stage_fn("thumbnail", |ctx, f: Fetched| async move {
        if f.bytes == 0 {
            return Err(StageError::fatal("empty picture"));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(Thumbnail {
            url: format!("https://cdn.example.com/thumbs/{}.png", ctx.job_id),
            edge: 128,
        })
    })
}

/// Where the worker talks to.
#[derive(Clone, Debug)]
pub struct Settings {
    /// relay's Redis.
    pub redis_url: String,
    /// The broker.
    pub amqp_url: String,
    /// Queue name prefix (`media` → `media.fetch`, `media.thumbnail`, `media.dlq`).
    pub queue_prefix: String,
    /// Shard streams per domain (relay-router's `--shards`).
    pub shards: u32,
}

impl Settings {
    /// From `RELAY_*` environment variables, with local defaults.
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Self {
            redis_url: var("RELAY_REDIS_URL", "redis://127.0.0.1:6379"),
            amqp_url: var("RELAY_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            queue_prefix: var("RELAY_QUEUE_PREFIX", "media"),
            shards: var("RELAY_SHARDS", "4").parse().unwrap_or(4),
        }
    }

    fn keys(&self) -> Result<KeySpace, AnyError> {
        Ok(KeySpace::new(
            Profile::Native,
            Domain::new("media")?,
            self.shards.max(1),
        ))
    }

    fn amqp(&self) -> AmqpConfig {
        AmqpConfig {
            prefix: self.queue_prefix.clone(),
            connection_name: "progress-worker".into(),
            ..AmqpConfig::new(self.amqp_url.clone())
        }
    }
}

/// The engine: the typed pipeline, publishing to relay's shard streams and
/// keeping its records on the same Redis.
pub fn engine(settings: &Settings, backend: Arc<RedisBackend>) -> Result<Engine, AnyError> {
    let keys = settings.keys()?;
    let publisher = Publisher::new(
        backend.clone(),
        keys.clone(),
        pipeline_scan::pipeline::publisher_config(),
    );
    Ok(Engine::new(
        Pipeline::new(fetch()).then(thumbnail()),
        publisher,
        backend,
        Arc::new(PlainHooks),
        EngineConfig::new(keys.domain().clone()),
    ))
}

/// Runs the worker until `shutdown`: consumes every stage queue, runs the
/// steps, publishes their progress, forwards to the next stage.
pub async fn worker(
    settings: &Settings,
    backend: Arc<RedisBackend>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), AnyError> {
    let engine = Arc::new(engine(settings, backend)?.with_metrics(metrics.clone()));
    AmqpWorker::new(engine, settings.amqp())
        .with_metrics(metrics)
        .run(shutdown)
        .await;
    Ok(())
}

/// Submits `urls` as jobs (a `queued` event each, then the first step on
/// the broker); returns their ids.
pub async fn submit(
    settings: &Settings,
    backend: Arc<RedisBackend>,
    urls: &[String],
) -> Result<Vec<JobId>, AnyError> {
    let engine = engine(settings, backend)?;
    let producer = AmqpProducer::new(
        settings.amqp(),
        Topology::for_engine(&settings.queue_prefix, &engine),
    );
    let mut jobs = Vec::new();
    for url in urls {
        let job = JobId::new(format!("thumb-{}", uuid::Uuid::new_v4()))?;
        engine.control().queued(&job, json!({ "url": url })).await?;
        let input = serde_json::to_value(Picture { url: url.clone() })?;
        producer
            .submit(Envelope::first(job.clone(), "example", input))
            .await?;
        jobs.push(job);
    }
    producer.close().await;
    Ok(jobs)
}

/// Worker and one job in one process: returns the job's events, read back
/// from its relay shard stream (polled, bounded) until the terminal one,
/// and calls `on_event` for each as it is found. The broker queues are
/// deleted afterwards.
pub async fn demo(
    settings: &Settings,
    mut on_event: impl FnMut(&Event),
) -> Result<Vec<Event>, AnyError> {
    let backend = Arc::new(RedisBackend::connect(&settings.redis_url).await?);
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let worker_task = {
        let (settings, backend, metrics) = (settings.clone(), backend.clone(), metrics.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move { worker(&settings, backend, metrics, stop).await })
    };
    let result = async {
        let job = submit(
            settings,
            backend.clone(),
            &["https://pics.example.com/cat.jpg".to_owned()],
        )
        .await?
        .remove(0);
        let keys = settings.keys()?;
        let stream = keys.shard_stream(keys.shard_of(&job));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut after = None;
        let mut events = Vec::new();
        loop {
            for entry in backend.range(&stream, after, 100).await? {
                after = Some(entry.id);
                let event = parse_native(&entry.fields)?.event;
                if event.job_id == job {
                    on_event(&event);
                    events.push(event);
                }
            }
            if events.last().is_some_and(Event::is_terminal) {
                return Ok::<_, AnyError>(events);
            }
            if tokio::time::Instant::now() > deadline {
                return Err("no terminal event within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    shutdown.cancel();
    let _ = worker_task.await;
    let engine = engine(settings, backend)?;
    let _ = Topology::for_engine(&settings.queue_prefix, &engine)
        .delete_all(&settings.amqp())
        .await;
    result
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let settings = Settings::from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str).unwrap_or("demo") {
        "worker" => {
            let backend = Arc::new(RedisBackend::connect(&settings.redis_url).await?);
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            println!(
                "worker: consuming {}.* on {}, publishing to {} (domain media)",
                settings.queue_prefix, settings.amqp_url, settings.redis_url
            );
            worker(&settings, backend, Arc::new(Metrics::new()), shutdown).await
        }
        "submit" => {
            let n: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
            let backend = Arc::new(RedisBackend::connect(&settings.redis_url).await?);
            let urls: Vec<String> = (0..n)
                .map(|i| format!("https://pics.example.com/{i}.jpg"))
                .collect();
            for job in submit(&settings, backend, &urls).await? {
                println!("{job}  → GET /v1/jobs/{job}/events on relay-sse");
            }
            Ok(())
        }
        "demo" => {
            let settings = Settings {
                queue_prefix: format!("{}.demo", settings.queue_prefix),
                ..settings
            };
            demo(&settings, |e| println!("{}", format_event(e))).await?;
            Ok(())
        }
        other => Err(format!("unknown command {other:?}: worker | submit [N] | demo").into()),
    }
}
