//! The relay side of `benches/peers/celery.sh`: a chain of **4 no-op
//! stages** on the generic typed pipeline over RabbitMQ, with its progress
//! events on (appended to relay's Redis shard streams, routed by a running
//! `relay-router`), and a closed-loop driver that times each job from submit
//! to its terminal `done` event as relay delivers it.
//!
//! ```text
//! cargo build --release -p pipeline-scan --example noop_chain
//! # the stage worker (Ctrl-C stops it after the running steps finish)
//! target/release/examples/noop_chain --queue-prefix bench1 worker --prefetch 256
//! # 100 jobs in flight: 3 s warm-up, 15 s measured; prints one JSON object
//! target/release/examples/noop_chain --queue-prefix bench1 drive --concurrency 100
//! # delete the run's queues
//! target/release/examples/noop_chain --queue-prefix bench1 cleanup
//! ```
//!
//! The stages are `stage_fn`s that return their input (`()`) at once, so
//! what is measured is the pipeline itself: per step the engine's job
//! records (terminal marker and stage record in Redis), its `started` and
//! `completed` events (appended with dedupe markers), and the confirmed
//! AMQP publish of the next hop before the ack; per job the `queued` event
//! and the `done` event.
//!
//! The driver observes a job as a relay client does: before submitting it
//! subscribes to the job's live channel (`relay:<domain>:{<job>}:live`, what
//! relay-sse subscribes to for a browser), then emits the `queued` event and
//! publishes the first step (as the pipeline's API does), and the job is
//! done when the router publishes its terminal event there. The clock runs
//! from before the subscription to the moment the driver reads that
//! message. Each of N tasks submits its next job as soon as its previous
//! one is done (closed loop); only completions inside the measured window
//! count, and after it the driver waits for the jobs still in flight, so
//! the queues are empty when it exits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use pipeline_scan::metrics::Metrics;
use pipeline_scan::pipeline::{
    stage_fn, Engine, EngineConfig, Envelope, Pipeline, PlainHooks, RetryPolicy, Stage,
};
use pipeline_scan::transport::amqp::{AmqpConfig, AmqpProducer, AmqpWorker, Topology};
use pipeline_scan::transport::inprocess::{InProcess, InProcessConfig};
use pipeline_scan::transport::Transport;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::{PubSub, SubscriberHandle};
use relay_core::{Domain, JobId, KeySpace, LiveEnvelope, Profile, Publisher};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The four stage names, in order (also the queue suffixes).
const STAGES: [&str; 4] = ["noop1", "noop2", "noop3", "noop4"];

/// 4 no-op stages over AMQP with relay progress events: worker, driver, cleanup.
#[derive(Debug, Parser)]
#[command(name = "noop_chain")]
struct Args {
    /// relay's Redis (events, the engine's records, the live channels).
    #[arg(
        long,
        env = "RELAY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// The broker.
    #[arg(
        long,
        env = "RELAY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Queue name prefix (`{prefix}.noop1` … `{prefix}.noop4`, their delay
    /// queues, `{prefix}.dlq`): make it unique to the run.
    #[arg(long, env = "RELAY_QUEUE_PREFIX", default_value = "noopbench")]
    queue_prefix: String,
    /// Event domain (relay-router's `--domain`).
    #[arg(long, env = "RELAY_DOMAIN", default_value = "bench")]
    domain: String,
    /// Shard streams per domain (relay-router's `--shards`).
    #[arg(long, env = "RELAY_SHARDS", default_value_t = 4)]
    shards: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the four stage queues and run the steps until Ctrl-C / SIGTERM.
    Worker {
        /// Prefetch (= concurrent steps) of each stage's consumer.
        #[arg(long, env = "RELAY_PREFETCH", default_value_t = 256)]
        prefetch: u16,
    },
    /// Keep N jobs in flight; print jobs/s and latency percentiles as JSON.
    Drive {
        /// Jobs in flight.
        #[arg(long, env = "RELAY_BENCH_CONCURRENCY")]
        concurrency: usize,
        /// Seconds before the measured window.
        #[arg(long, env = "RELAY_BENCH_WARMUP", default_value_t = 3.0)]
        warmup: f64,
        /// Measured seconds.
        #[arg(long, env = "RELAY_BENCH_DURATION", default_value_t = 15.0)]
        duration: f64,
        /// Longest wait for one job's terminal event (after the window too).
        #[arg(long, env = "RELAY_BENCH_JOB_TIMEOUT", default_value_t = 120.0)]
        job_timeout: f64,
        /// Profiling aid: run the stages in this process on the in-process
        /// transport (`--prefetch` workers per stage) instead of submitting
        /// to the broker, so the difference to an AMQP run is what the
        /// broker hops cost. Events, records and the router are unchanged.
        #[arg(long, env = "RELAY_BENCH_IN_PROCESS")]
        in_process: bool,
        /// Workers per stage with `--in-process`.
        #[arg(long, env = "RELAY_PREFETCH", default_value_t = 256)]
        prefetch: u16,
    },
    /// Delete every queue of the topology.
    Cleanup,
}

/// A no-op stage: returns its input at once.
fn noop(name: &'static str) -> impl Stage<Input = (), Output = ()> {
    stage_fn(name, |_ctx, (): ()| async move { Ok(()) })
}

fn keys(args: &Args) -> anyhow::Result<KeySpace> {
    Ok(KeySpace::new(
        Profile::Native,
        Domain::new(args.domain.clone())?,
        args.shards.max(1),
    ))
}

fn amqp(args: &Args, role: &str) -> AmqpConfig {
    AmqpConfig {
        prefix: args.queue_prefix.clone(),
        connection_name: format!("noop-chain-{role}"),
        ..AmqpConfig::new(args.amqp_url.clone())
    }
}

/// The engine of the 4-stage no-op pipeline, publishing to relay's shard
/// streams and keeping its records on the same Redis.
fn engine(args: &Args, backend: Arc<RedisBackend>) -> anyhow::Result<Engine> {
    let keys = keys(args)?;
    let publisher = Publisher::new(
        backend.clone(),
        keys.clone(),
        pipeline_scan::pipeline::publisher_config(),
    );
    let pipeline: Pipeline<(), ()> = Pipeline::new(noop(STAGES[0]))
        .then(noop(STAGES[1]))
        .then(noop(STAGES[2]))
        .then(noop(STAGES[3]));
    Ok(Engine::new(
        pipeline,
        publisher,
        backend,
        Arc::new(PlainHooks),
        EngineConfig::new(keys.domain().clone()),
    ))
}

async fn worker(args: &Args, prefetch: u16) -> anyhow::Result<()> {
    let backend = Arc::new(RedisBackend::connect(&args.redis_url).await?);
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(engine(args, backend)?.with_metrics(metrics.clone()));
    let config = AmqpConfig {
        prefetch,
        ..amqp(args, "worker")
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("noop_chain worker: no SIGTERM handler: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    stop.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    eprintln!(
        "noop_chain worker: consuming {}.{{{}}} (prefetch {prefetch}), events to {} domain {}",
        args.queue_prefix,
        STAGES.join(","),
        args.redis_url,
        args.domain
    );
    AmqpWorker::new(engine, config)
        .with_metrics(metrics)
        .run(shutdown)
        .await;
    Ok(())
}

/// Jobs waiting for their terminal event, by live channel.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// What one driver task saw.
#[derive(Default)]
struct TaskReport {
    latencies: Vec<Duration>,
    submitted: u64,
    completed: u64,
    lost: u64,
}

#[derive(Clone)]
struct Driver {
    engine: Arc<Engine>,
    producer: Arc<dyn Transport>,
    subs: Arc<dyn SubscriberHandle>,
    waiters: Waiters,
    keys: KeySpace,
    run: String,
    measure_start: Instant,
    measure_end: Instant,
    job_timeout: Duration,
}

impl Driver {
    /// One closed-loop slot: a job, wait for its `done`, the next job, …
    async fn slot(self, slot: usize) -> anyhow::Result<TaskReport> {
        let mut report = TaskReport::default();
        for i in 0u64.. {
            let job = JobId::new(format!("{}-{slot}-{i}", self.run))?;
            let channel = self.keys.job(&job).live;
            let (tx, rx) = oneshot::channel();
            self.lock().insert(channel.clone(), tx);
            let t0 = Instant::now();
            self.subs.subscribe(std::slice::from_ref(&channel)).await?;
            self.engine
                .control()
                .queued(&job, Value::Null)
                .await
                .context("queued event")?;
            self.producer
                .submit(Envelope::first(job.clone(), "bench", Value::Null))
                .await
                .context("submit")?;
            report.submitted += 1;
            let seen = tokio::time::timeout(self.job_timeout, rx).await;
            self.subs
                .unsubscribe(std::slice::from_ref(&channel))
                .await?;
            let seen = match seen {
                Ok(Ok(seen)) => seen,
                Ok(Err(_)) => bail!("the live subscription ended (Redis connection lost)"),
                Err(_) => {
                    self.lock().remove(&channel);
                    report.lost += 1;
                    eprintln!("noop_chain drive: job {job} not done within the timeout");
                    break;
                }
            };
            report.completed += 1;
            if seen >= self.measure_start && seen <= self.measure_end {
                report.latencies.push(seen - t0);
            }
            if seen >= self.measure_end {
                break;
            }
        }
        Ok(report)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Instant>>> {
        // A poisoned map only means a task panicked; the map is still whole.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Nearest-rank quantile of ascending `sorted` (as `benches/peers/celery/stats.py`).
fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64 + 0.5 - 1e-9).round() as usize).max(1);
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// How the driver runs: one concurrency point.
#[derive(Clone, Copy, Debug)]
struct Point {
    concurrency: usize,
    warmup: f64,
    duration: f64,
    job_timeout: f64,
    /// `Some(workers per stage)`: the in-process transport instead of AMQP.
    in_process: Option<usize>,
}

async fn drive(args: &Args, point: Point) -> anyhow::Result<()> {
    let Point {
        concurrency,
        warmup,
        duration,
        job_timeout,
        in_process,
    } = point;
    let backend = Arc::new(RedisBackend::connect(&args.redis_url).await?);
    let engine = Arc::new(engine(args, backend.clone())?);
    let (mut local, mut broker) = (None, None);
    let producer: Arc<dyn Transport> = match in_process {
        Some(workers) => {
            let transport = Arc::new(InProcess::start(
                engine.clone(),
                InProcessConfig {
                    concurrency: workers.max(1),
                    ..InProcessConfig::default()
                },
            ));
            local = Some(transport.clone());
            transport
        }
        None => {
            let producer = AmqpProducer::new(
                amqp(args, "producer"),
                Topology::for_engine(&args.queue_prefix, &engine),
            );
            // Connected (and the topology declared) before the clock starts.
            producer.connect().await.context("broker")?;
            let producer = Arc::new(producer);
            broker = Some(producer.clone());
            producer
        }
    };
    let subscriber = backend.subscriber().await.context("live subscriber")?;
    let subs: Arc<dyn SubscriberHandle> = Arc::from(subscriber.handle);
    let waiters: Waiters = Arc::default();

    // The terminal event of a job wakes its slot with the time it was read.
    let dispatcher = {
        let waiters = waiters.clone();
        let mut messages = subscriber.messages;
        tokio::spawn(async move {
            while let Some(msg) = messages.recv().await {
                let seen = Instant::now();
                let terminal = LiveEnvelope::decode(&msg.payload)
                    .and_then(|live| live.record.payload.decode())
                    .map(|d| d.is_terminal());
                match terminal {
                    Ok(true) => {
                        let tx = waiters
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&msg.channel);
                        if let Some(tx) = tx {
                            let _ = tx.send(seen);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => eprintln!("noop_chain drive: undecodable live message: {e}"),
                }
            }
            // The subscription ended: wake every waiter with an error.
            waiters.lock().unwrap_or_else(|p| p.into_inner()).clear();
        })
    };

    let start = Instant::now();
    let measure_start = start + Duration::from_secs_f64(warmup.max(0.0));
    let measure_end = measure_start + Duration::from_secs_f64(duration.max(0.001));
    let driver = Driver {
        engine,
        producer: producer.clone(),
        subs,
        waiters,
        keys: keys(args)?,
        run: format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        measure_start,
        measure_end,
        job_timeout: Duration::from_secs_f64(job_timeout.max(1.0)),
    };
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..concurrency.max(1) {
        slots.spawn(driver.clone().slot(slot));
    }
    let mut all = TaskReport::default();
    while let Some(done) = slots.join_next().await {
        let r = done.context("driver task")??;
        all.latencies.extend(r.latencies);
        all.submitted += r.submitted;
        all.completed += r.completed;
        all.lost += r.lost;
    }
    dispatcher.abort();
    if let Some(local) = local {
        local.shutdown().await;
    }
    if let Some(broker) = broker {
        broker.close().await;
    }

    all.latencies.sort();
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
    let n = all.latencies.len();
    let mean = (n > 0).then(|| all.latencies.iter().sum::<Duration>() / n as u32);
    let out = json!({
        "side": if in_process.is_some() { "relay-in-process" } else { "relay" },
        "concurrency": concurrency,
        "window_s": duration,
        "measured_jobs": n,
        "jobs_per_s": ((n as f64 / duration) * 100.0).round() / 100.0,
        "p50_ms": ms(percentile(&all.latencies, 0.50)),
        "p99_ms": ms(percentile(&all.latencies, 0.99)),
        "max_ms": ms(all.latencies.last().copied()),
        "mean_ms": ms(mean),
        "total_submitted": all.submitted,
        "total_completed": all.completed,
        "lost": all.lost,
    });
    println!("{out}");
    Ok(())
}

async fn cleanup(args: &Args) -> anyhow::Result<()> {
    let topology = Topology::new(&args.queue_prefix, &STAGES, &RetryPolicy::default());
    topology
        .delete_all(&amqp(args, "cleanup"))
        .await
        .context("deleting the queues")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Command::Worker { prefetch } => worker(&args, *prefetch).await,
        Command::Drive {
            concurrency,
            warmup,
            duration,
            job_timeout,
            in_process,
            prefetch,
        } => {
            let point = Point {
                concurrency: *concurrency,
                warmup: *warmup,
                duration: *duration,
                job_timeout: *job_timeout,
                in_process: in_process.then_some(usize::from(*prefetch)),
            };
            drive(&args, point).await
        }
        Command::Cleanup => cleanup(&args).await,
    }
}
