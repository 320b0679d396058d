//! The `chaos` scenario: a full-stack soak under faults, bounded in time,
//! with an exact checker.
//!
//! Deployment (all on loopback, all spawned here, all removed at the end):
//! redis-server with AOF (`appendfsync always` by default), `pipeline-scan
//! api`, two `pipeline-scan worker`s on a private queue prefix (its queues are
//! deleted at the end), two `relay-router`s in one consumer group (distinct
//! consumer names, a short `--claim-idle-ms`) and two `relay-sse` gateways.
//!
//! Load: scans are submitted at `--rate` per second with an
//! `X-Idempotency-Key` each, retried with the same key on any error, so a
//! scan is *accepted* once the API answered 2xx with its `job_id`. Each
//! accepted job is followed by an SSE client that alternates between the two
//! gateways and resumes with `Last-Event-ID` after every disconnect, until it
//! has seen the terminal event.
//!
//! Faults during `--secs`: `kill -9` of a random process (api, worker,
//! router, gateway) and restart with the same arguments; Redis `CLIENT KILL
//! TYPE normal` / `TYPE pubsub`, write refusals (`maxmemory 1` with
//! `noeviction`, `min-replicas-to-write 1`), `CLIENT PAUSE 1500 WRITE`,
//! redis-server `kill -9` and restart on the same port and directory (AOF
//! reload); RabbitMQ connections of this run's processes closed with
//! `rabbitmqctl close_connection` (found by matching the broker's
//! `peer_port` with the sockets the spawned processes own).
//!
//! Checker, after a drain period without faults: every accepted job has
//! exactly one terminal event in its history (read from Redis), at most one
//! reward `completed` event (and its grant is recorded for this job), a
//! gap-free history with nothing after the terminal; every client received
//! every history event exactly once, in order, with the stored content, and
//! no `snapshot` (reported separately: a resume that could not be exact).
//! Any violation makes the command exit non-zero.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::{JobLog, KvStore};
use relay_core::testing::{RedisServer, RedisServerOptions, WriteRefusal};
use relay_core::{Domain, Event, JobId, KeySpace, Offset, Position, Profile, Status};
use relay_sse::client::{SseEvent, SseItem, SseReader};
use relay_suite::procs::{free_port, wait_port, Proc};
use serde::Serialize;

use crate::report::Report;
use crate::stats::{round3, Lat, Timeline};

/// Redis AOF fsync policy of the spawned server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Every write is on disk before Redis answers: a `kill -9` loses
    /// nothing acknowledged, so the checker can be exact.
    Always,
    /// fsync once a second: a `kill -9` may lose the last second of
    /// acknowledged writes (expect violations after Redis restarts).
    Everysec,
}

/// `chaos` flags.
#[derive(Clone, Debug, Args)]
pub struct ChaosArgs {
    /// Length of the fault phase, seconds (scans are submitted meanwhile).
    #[arg(long, env = "RELAY_LOAD_CHAOS_SECS", default_value_t = 600)]
    pub secs: u64,
    /// Scans submitted per second during the fault phase.
    #[arg(long, env = "RELAY_LOAD_CHAOS_RATE", default_value_t = 5.0)]
    pub rate: f64,
    /// After the fault phase, how long jobs may still finish, seconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_DRAIN_SECS", default_value_t = 180)]
    pub drain_secs: u64,
    /// How long a scan's submission is retried (same idempotency key), seconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_SUBMIT_SECS", default_value_t = 60)]
    pub submit_secs: u64,
    /// `relay-router` processes (one consumer group, distinct consumers).
    #[arg(long, env = "RELAY_LOAD_CHAOS_ROUTERS", default_value_t = 2)]
    pub routers: usize,
    /// `relay-sse` gateways (clients alternate between them).
    #[arg(long, env = "RELAY_LOAD_CHAOS_GATEWAYS", default_value_t = 2)]
    pub gateways: usize,
    /// `pipeline-scan worker` processes.
    #[arg(long, env = "RELAY_LOAD_CHAOS_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Mean seconds between process kills (each interval ±50 %; 0: none).
    #[arg(long, env = "RELAY_LOAD_CHAOS_KILL_EVERY_SECS", default_value_t = 5.0)]
    pub kill_every_secs: f64,
    /// Longest pause between a kill and the restart, milliseconds.
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_RESTART_DELAY_MS",
        default_value_t = 1500
    )]
    pub restart_delay_ms: u64,
    /// Mean seconds between Redis faults (client kills, write refusals,
    /// pauses), each interval ±50 % (0: none; restarts still happen).
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_REDIS_FAULT_EVERY_SECS",
        default_value_t = 8.0
    )]
    pub redis_fault_every_secs: f64,
    /// redis-server `kill -9` + restarts, spread evenly over the fault phase.
    #[arg(long, env = "RELAY_LOAD_CHAOS_REDIS_RESTARTS", default_value_t = 4)]
    pub redis_restarts: u32,
    /// Longest time redis-server stays down during a restart, milliseconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_REDIS_DOWN_MS", default_value_t = 2000)]
    pub redis_down_ms: u64,
    /// Mean seconds between RabbitMQ connection closes (0: none).
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_AMQP_CLOSE_EVERY_SECS",
        default_value_t = 30.0
    )]
    pub amqp_close_every_secs: f64,
    /// AOF fsync policy of the spawned redis-server.
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_APPENDFSYNC",
        value_enum,
        default_value = "always"
    )]
    pub appendfsync: Fsync,
    /// The routers' `--claim-idle-ms` (how soon a killed router's pending
    /// entries are claimed by the other).
    #[arg(long, env = "RELAY_LOAD_CHAOS_CLAIM_IDLE_MS", default_value_t = 2000)]
    pub claim_idle_ms: u64,
    /// The workers' vision simulator latency, `MS±JITTER`.
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_SIM_LATENCY_MS",
        default_value = "300±150"
    )]
    pub sim_latency_ms: String,
    /// The workers' extra latency per stage.
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_SIM_STAGE_LATENCY_MS",
        default_value = "rule=30±10,answer=400±200,reward=30±10"
    )]
    pub sim_stage_latency_ms: String,
    /// Attempts per stage before a job fails (pipeline-scan `--max-attempts`).
    #[arg(long, env = "RELAY_LOAD_CHAOS_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// First stage retry delay, ms (pipeline-scan `--backoff-ms`).
    #[arg(long, env = "RELAY_LOAD_CHAOS_BACKOFF_MS", default_value_t = 500)]
    pub backoff_ms: u64,
    /// Longest stage retry delay, ms (pipeline-scan `--max-backoff-ms`).
    #[arg(long, env = "RELAY_LOAD_CHAOS_MAX_BACKOFF_MS", default_value_t = 4000)]
    pub max_backoff_ms: u64,
    /// The gateways' heartbeat interval, seconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_HEARTBEAT_SECS", default_value_t = 2.0)]
    pub heartbeat_secs: f64,
    /// A client that reads nothing (not even a heartbeat) this long
    /// reconnects (counted as an idle reconnect), seconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_IDLE_SECS", default_value_t = 15.0)]
    pub idle_secs: f64,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "RELAY_LOAD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Seed of the fault schedule (random when absent; printed either way).
    #[arg(long, env = "RELAY_LOAD_CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Keep the processes' logs, the fault log and the findings here
    /// (default: a temporary directory, removed when the run passes).
    #[arg(long, env = "RELAY_LOAD_CHAOS_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// Deployment

/// A relay process role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `pipeline-scan api`.
    Api,
    /// `pipeline-scan worker`.
    Worker,
    /// `relay-router`.
    Router,
    /// `relay-sse`.
    Gateway,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Api, Kind::Worker, Kind::Router, Kind::Gateway];

    /// Report name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Api => "api",
            Kind::Worker => "worker",
            Kind::Router => "router",
            Kind::Gateway => "gateway",
        }
    }
}

struct Member {
    kind: Kind,
    name: String,
    proc: Proc,
}

/// The spawned relay processes, shared by the fault tasks and the supervisor.
struct Cluster {
    members: Mutex<Vec<Member>>,
    /// Exits nobody asked for (a process died by itself), for the report.
    exits: Mutex<Vec<String>>,
}

impl Cluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Running members of `kind`: (index, name).
    fn running(&self, kind: Kind) -> Vec<(usize, String)> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.kind == kind && m.proc.pid().is_some())
            .map(|(i, m)| (i, m.name.clone()))
            .collect()
    }

    fn pids(&self, kinds: &[Kind]) -> Vec<u32> {
        self.lock()
            .iter()
            .filter(|m| kinds.contains(&m.kind))
            .filter_map(|m| m.proc.pid())
            .collect()
    }

    fn kill(&self, idx: usize) {
        if let Some(m) = self.lock().get_mut(idx) {
            m.proc.kill9();
        }
    }

    fn start(&self, idx: usize) {
        if let Some(m) = self.lock().get_mut(idx) {
            if m.proc.pid().is_none() {
                m.proc.restart();
            }
        }
    }

    /// Restarts members that exited by themselves; returns their names.
    fn supervise(&self, t: f64) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.lock().iter_mut() {
            if let Some(status) = m.proc.try_exited() {
                out.push(format!("t={t:.1}s {} exited by itself ({status})", m.name));
                m.proc.restart();
            }
        }
        if !out.is_empty() {
            self.exits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(out.iter().cloned());
        }
        out
    }

    /// Starts every member that is not running.
    fn ensure_all_running(&self) {
        for m in self.lock().iter_mut() {
            if m.proc.pid().is_none() {
                m.proc.restart();
            }
        }
    }

    fn kill_all(&self) {
        for m in self.lock().iter_mut() {
            m.proc.kill9();
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn topology(prefix: &str, args: &ChaosArgs) -> pipeline_scan::transport::amqp::Topology {
    let retry = pipeline_scan::pipeline::RetryPolicy {
        max_attempts: args.max_attempts.max(1),
        base_delay: Duration::from_millis(args.backoff_ms.max(1)),
        max_delay: Duration::from_millis(args.max_backoff_ms.max(args.backoff_ms).max(1)),
    };
    pipeline_scan::transport::amqp::Topology::new(prefix, &pipeline_scan::scan::STAGE_NAMES, &retry)
}

struct Deployed {
    cluster: Arc<Cluster>,
    api_url: String,
    gateways: Vec<String>,
    prefix: String,
}

/// Spawns api, workers, routers and gateways against `redis_url` and waits
/// until each listens.
async fn deploy(
    redis_url: &str,
    shards: u32,
    batch: u32,
    args: &ChaosArgs,
    logs: &Path,
) -> anyhow::Result<Deployed> {
    let prefix = format!("chaos{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let shards = shards.to_string();
    let batch = batch.to_string();
    let common = vec![
        "--redis-url".to_owned(),
        redis_url.to_owned(),
        "--shards".to_owned(),
        shards,
    ];
    let pipeline = {
        let mut v = common.clone();
        v.extend([
            "--amqp-url".to_owned(),
            args.amqp_url.clone(),
            "--queue-prefix".to_owned(),
            prefix.clone(),
            "--max-attempts".to_owned(),
            args.max_attempts.to_string(),
            "--backoff-ms".to_owned(),
            args.backoff_ms.to_string(),
            "--max-backoff-ms".to_owned(),
            args.max_backoff_ms.to_string(),
        ]);
        v
    };
    let mut members = Vec::new();
    let mut waits = Vec::new();
    let mut spawn = |kind: Kind, name: String, bin: &str, argv: Vec<String>| {
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = logs.join(format!("{}.log", name.replace(' ', "-")));
        members.push(Member {
            kind,
            name,
            proc: Proc::spawn_logged(bin, &refs, &[("NO_COLOR", "1")], &log),
        });
    };
    let claim = args.claim_idle_ms.to_string();
    for i in 0..args.routers.max(1) {
        let metrics = addr(free_port());
        let (consumer, metrics_s) = (format!("chaos-router-{i}"), metrics.to_string());
        let mut a = common.clone();
        a.extend(strings(&[
            "--group",
            "relay-router",
            "--consumer",
            &consumer,
            "--metrics-addr",
            &metrics_s,
            "--batch",
            &batch,
            "--block-ms",
            "1000",
            "--claim-idle-ms",
            &claim,
            "--connect-timeout-secs",
            "3600",
        ]));
        spawn(Kind::Router, format!("router {i}"), "relay-router", a);
        waits.push(metrics);
    }
    let mut gateways = Vec::new();
    let heartbeat = args.heartbeat_secs.to_string();
    for i in 0..args.gateways.max(1) {
        let listen = addr(free_port());
        let listen_s = listen.to_string();
        let mut a = common.clone();
        a.extend(strings(&[
            "--listen",
            &listen_s,
            "--heartbeat-secs",
            &heartbeat,
            "--pending-job-secs",
            "30",
            "--max-connections",
            "20000",
        ]));
        spawn(Kind::Gateway, format!("gateway {i}"), "relay-sse", a);
        waits.push(listen);
        gateways.push(format!("http://{listen}"));
    }
    for i in 0..args.workers.max(1) {
        let metrics_s = addr(free_port()).to_string();
        let mut a = pipeline.clone();
        a.extend(strings(&[
            "worker",
            "--metrics-addr",
            &metrics_s,
            "--sim-latency-ms",
            &args.sim_latency_ms,
        ]));
        if !args.sim_stage_latency_ms.is_empty() {
            a.extend([
                "--sim-stage-latency-ms".to_owned(),
                args.sim_stage_latency_ms.clone(),
            ]);
        }
        spawn(Kind::Worker, format!("worker {i}"), "pipeline-scan", a);
    }
    let api = addr(free_port());
    let api_s = api.to_string();
    let mut a = pipeline.clone();
    a.extend(strings(&["api", "--listen", &api_s]));
    spawn(Kind::Api, "api".to_owned(), "pipeline-scan", a);
    waits.push(api);
    let cluster = Arc::new(Cluster {
        members: Mutex::new(members),
        exits: Mutex::new(Vec::new()),
    });
    for w in waits {
        wait_port(w, Duration::from_secs(60)).await;
    }
    Ok(Deployed {
        cluster,
        api_url: format!("http://{api}"),
        gateways,
        prefix,
    })
}

// ---------------------------------------------------------------------------
// Fault injection

/// Fault counters.
#[derive(Debug, Default)]
struct FaultCounts {
    kills: Mutex<BTreeMap<Kind, u64>>,
    redis_restarts: AtomicU64,
    kill_normal: AtomicU64,
    kill_pubsub: AtomicU64,
    clients_killed: AtomicU64,
    refusals_oom: AtomicU64,
    refusals_noreplicas: AtomicU64,
    pauses: AtomicU64,
    redis_fault_errors: AtomicU64,
    amqp_rounds: AtomicU64,
    amqp_closed: AtomicU64,
    amqp_errors: AtomicU64,
}

/// The time-stamped fault log (also written to `faults.log`).
#[derive(Debug)]
struct FaultLog {
    t0: Instant,
    lines: Mutex<Vec<String>>,
    verbose: bool,
}

impl FaultLog {
    fn t(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn note(&self, what: impl Into<String>) {
        let line = format!("t={:7.2}s {} {}", self.t(), utc_now(), what.into());
        if self.verbose {
            eprintln!("chaos: {line}");
        }
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }
}

/// `HH:MM:SS.mmmZ` of now, to match the processes' log lines.
fn utc_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn jitter(rng: &mut StdRng, mean_secs: f64) -> Duration {
    let mean = mean_secs.max(0.05);
    Duration::from_secs_f64(rng.random_range(mean * 0.5..=mean * 1.5))
}

/// Sleeps until `until`, in short steps so `stop` is honoured; false when
/// stopped early.
async fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(200))).await;
    }
}

/// Kills a random process every `kill_every_secs` and restarts it after up
/// to `restart_delay_ms` (restarts run concurrently, so downtimes overlap).
async fn kill_loop(
    cluster: Arc<Cluster>,
    args: ChaosArgs,
    end: Instant,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
    counts: Arc<FaultCounts>,
    log: Arc<FaultLog>,
) {
    let mut restarts = Vec::new();
    if args.kill_every_secs <= 0.0 {
        return;
    }
    loop {
        let next = (Instant::now() + jitter(&mut rng, args.kill_every_secs)).min(end);
        if !sleep_until(next, &stop).await || Instant::now() >= end {
            break;
        }
        let kind = Kind::ALL[rng.random_range(0..Kind::ALL.len())];
        let candidates = cluster.running(kind);
        if candidates.is_empty() {
            continue;
        }
        let (idx, name) = candidates[rng.random_range(0..candidates.len())].clone();
        cluster.kill(idx);
        *counts
            .kills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        let delay = Duration::from_millis(rng.random_range(0..=args.restart_delay_ms));
        log.note(format!(
            "kill -9 {name}; restart in {} ms",
            delay.as_millis()
        ));
        let cluster = cluster.clone();
        restarts.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            cluster.start(idx);
        }));
    }
    for r in restarts {
        let _ = r.await;
    }
}

#[derive(Clone, Copy, Debug)]
enum RedisFault {
    KillNormal,
    KillPubsub,
    Oom,
    NoReplicas,
    Pause,
}

async fn allow_writes(redis: &RedisServer) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..50 {
        match redis.allow_writes().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

async fn redis_fault(
    redis: &RedisServer,
    fault: RedisFault,
    hold: Duration,
    counts: &FaultCounts,
    log: &FaultLog,
) -> Result<(), String> {
    match fault {
        RedisFault::KillNormal | RedisFault::KillPubsub => {
            let ty = if matches!(fault, RedisFault::KillNormal) {
                "normal"
            } else {
                "pubsub"
            };
            let n = redis
                .client_kill(&["TYPE", ty])
                .await
                .map_err(|e| e.to_string())?;
            match fault {
                RedisFault::KillNormal => counts.kill_normal.fetch_add(1, Ordering::Relaxed),
                _ => counts.kill_pubsub.fetch_add(1, Ordering::Relaxed),
            };
            counts.clients_killed.fetch_add(n, Ordering::Relaxed);
            log.note(format!("redis CLIENT KILL TYPE {ty}: {n} connections"));
        }
        RedisFault::Oom | RedisFault::NoReplicas => {
            let (refusal, what, counter) = match fault {
                RedisFault::Oom => (
                    WriteRefusal::Oom,
                    "maxmemory 1 (noeviction)",
                    &counts.refusals_oom,
                ),
                _ => (
                    WriteRefusal::NoReplicas,
                    "min-replicas-to-write 1",
                    &counts.refusals_noreplicas,
                ),
            };
            log.note(format!(
                "redis refuses writes: {what} for {} ms",
                hold.as_millis()
            ));
            let set = redis
                .refuse_writes(refusal)
                .await
                .map_err(|e| e.to_string());
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(hold).await;
            allow_writes(redis).await?;
            log.note("redis accepts writes again");
            set?;
        }
        RedisFault::Pause => {
            redis
                .command(&["CLIENT", "PAUSE", "1500", "WRITE"])
                .await
                .map_err(|e| e.to_string())?;
            counts.pauses.fetch_add(1, Ordering::Relaxed);
            log.note("redis CLIENT PAUSE 1500 WRITE");
        }
    }
    Ok(())
}

/// Redis faults every `redis_fault_every_secs`, and `redis_restarts`
/// restarts spread evenly over the phase. A restart that does not come back
/// is fatal (returned as an error).
#[allow(clippy::too_many_arguments)]
async fn redis_loop(
    redis: Arc<RedisServer>,
    args: ChaosArgs,
    start: Instant,
    end: Instant,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
    counts: Arc<FaultCounts>,
    log: Arc<FaultLog>,
) -> Result<(), String> {
    let phase = end.saturating_duration_since(start);
    let mut restarts: Vec<Instant> = (0..args.redis_restarts)
        .map(|i| start + phase.mul_f64((f64::from(i) + 0.5) / f64::from(args.redis_restarts)))
        .collect();
    restarts.reverse();
    let mut next_fault = Instant::now() + jitter(&mut rng, args.redis_fault_every_secs);
    loop {
        let next_restart = restarts.last().copied();
        if args.redis_fault_every_secs <= 0.0 {
            next_fault = end;
        }
        let wake = next_restart
            .map_or(next_fault, |r| r.min(next_fault))
            .min(end);
        if !sleep_until(wake, &stop).await || Instant::now() >= end {
            break;
        }
        if next_restart.is_some_and(|r| Instant::now() >= r) {
            restarts.pop();
            let down = Duration::from_millis(rng.random_range(200..=args.redis_down_ms.max(200)));
            log.note(format!(
                "kill -9 redis-server; restart in {} ms (AOF reload)",
                down.as_millis()
            ));
            let r = redis.clone();
            let _ = tokio::task::spawn_blocking(move || r.stop()).await;
            tokio::time::sleep(down).await;
            let r = redis.clone();
            let t = Instant::now();
            tokio::task::spawn_blocking(move || r.restart())
                .await
                .map_err(|e| format!("redis-server did not restart: {e}"))?;
            counts.redis_restarts.fetch_add(1, Ordering::Relaxed);
            log.note(format!(
                "redis-server back (loaded in {} ms)",
                t.elapsed().as_millis()
            ));
            continue;
        }
        if Instant::now() < next_fault {
            continue;
        }
        next_fault = Instant::now() + jitter(&mut rng, args.redis_fault_every_secs);
        let fault = match rng.random_range(0..5) {
            0 => RedisFault::KillNormal,
            1 => RedisFault::KillPubsub,
            2 => RedisFault::Oom,
            3 => RedisFault::NoReplicas,
            _ => RedisFault::Pause,
        };
        let hold = Duration::from_millis(rng.random_range(1000..=2000));
        if let Err(e) = redis_fault(&redis, fault, hold, &counts, &log).await {
            counts.redis_fault_errors.fetch_add(1, Ordering::Relaxed);
            log.note(format!("redis fault {fault:?} failed: {e}"));
        }
    }
    allow_writes(&redis)
        .await
        .map_err(|e| format!("cannot lift the write refusal: {e}"))
}

/// The port of an `amqp://` URL (5672 by default).
pub fn amqp_port(url: &str) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5672)
}

/// Local ports of the TCP connections to `remote_port` owned by `pids`
/// (from `/proc/<pid>/fd` and `/proc/net/tcp{,6}`).
fn owned_connection_ports(pids: &[u32], remote_port: u16) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in dir.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    inodes.insert(inode);
                }
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = |a: &str| {
                a.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let inode = f[9].parse::<u64>().ok();
            if port(f[2]) == Some(remote_port) && inode.is_some_and(|i| inodes.contains(&i)) {
                if let Some(p) = port(f[1]) {
                    ports.insert(p);
                }
            }
        }
    }
    ports
}

async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("rabbitmqctl {args:?}: timed out"))?
    .map_err(|e| format!("rabbitmqctl {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Closes the broker connections of this run's api and workers; returns how
/// many were closed.
async fn close_amqp(cluster: &Cluster, port: u16) -> Result<u64, String> {
    let listing = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "peer_port",
    ])
    .await?;
    let ours = owned_connection_ports(&cluster.pids(&[Kind::Api, Kind::Worker]), port);
    let mut closes = Vec::new();
    for line in listing.lines() {
        let mut f = line.split_whitespace();
        let (Some(pid), Some(peer)) = (f.next(), f.next()) else {
            continue;
        };
        if peer.parse::<u16>().is_ok_and(|p| ours.contains(&p)) {
            let pid = pid.to_owned();
            closes.push(async move { rabbitmqctl(&["close_connection", &pid, "chaos"]).await });
        }
    }
    let mut closed = 0;
    let mut last_err = None;
    for r in futures::future::join_all(closes).await {
        match r {
            Ok(_) => closed += 1,
            Err(e) => last_err = Some(e),
        }
    }
    match (closed, last_err) {
        (0, Some(e)) => Err(e),
        _ => Ok(closed),
    }
}

async fn amqp_loop(
    cluster: Arc<Cluster>,
    args: ChaosArgs,
    end: Instant,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
    counts: Arc<FaultCounts>,
    log: Arc<FaultLog>,
) {
    if args.amqp_close_every_secs <= 0.0 {
        return;
    }
    let port = amqp_port(&args.amqp_url);
    loop {
        let next = (Instant::now() + jitter(&mut rng, args.amqp_close_every_secs)).min(end);
        if !sleep_until(next, &stop).await || Instant::now() >= end {
            break;
        }
        counts.amqp_rounds.fetch_add(1, Ordering::Relaxed);
        match close_amqp(&cluster, port).await {
            Ok(n) => {
                counts.amqp_closed.fetch_add(n, Ordering::Relaxed);
                log.note(format!("rabbitmqctl close_connection: {n} connections"));
            }
            Err(e) => {
                counts.amqp_errors.fetch_add(1, Ordering::Relaxed);
                log.note(format!("closing RabbitMQ connections failed: {e}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Load: submit and follow

/// One SSE event as a client received it.
#[derive(Clone, Debug, Serialize)]
pub struct Got {
    /// Seconds since the run started.
    pub t: f64,
    /// Gateway index.
    pub gw: u8,
    /// Connection number of this client (1-based).
    pub conn: u32,
    /// `id:` field.
    pub id: Option<String>,
    /// `event:` name.
    pub event: String,
    /// `data:`.
    pub data: String,
}

/// A client's view of one job.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Follow {
    /// Everything received, in order, across connections.
    pub got: Vec<Got>,
    /// Connections opened.
    pub connections: u32,
    /// Reconnects (connections − 1).
    pub reconnects: u32,
    /// Reconnects because nothing was read for `--idle-secs`.
    pub idle_reconnects: u32,
    /// Why connections ended or failed, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Submit start → terminal event received.
    pub e2e: Option<Duration>,
}

/// How a submission ended.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Submit {
    /// 2xx with this job id.
    Accepted(String),
    /// A 4xx answer (never retried).
    Rejected(String),
    /// Not accepted within `--submit-secs`.
    GaveUp,
}

/// One scan of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Scan {
    /// Sequence number.
    pub n: u64,
    /// `X-User-ID` (unique per scan, so a reward is never already owned).
    pub user: String,
    /// Seconds since the run started, at the first submit attempt.
    pub t: f64,
    /// Submit attempts.
    pub attempts: u32,
    /// Failed attempts by reason.
    pub submit_errors: BTreeMap<String, u64>,
    /// Outcome.
    pub submit: Submit,
    /// The client, for accepted scans.
    pub follow: Option<Follow>,
}

struct Ctx {
    http: reqwest::Client,
    sse: reqwest::Client,
    api_url: String,
    gateways: Vec<String>,
    run_id: String,
    idle: Duration,
    submit_for: Duration,
    t0: Instant,
    /// End of everything (drain included): clients give up.
    deadline: Instant,
    stop: Arc<AtomicBool>,
    accepted: AtomicU64,
    terminal: AtomicU64,
}

impl Ctx {
    fn t(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

fn reqwest_reason(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connect error"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request error"
    }
}

async fn submit(ctx: &Ctx, scan: &mut Scan) {
    let key = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "image_url": format!("https://images.example.com/chaos/{}-{}.jpg", ctx.run_id, scan.n)
    });
    let until = (Instant::now() + ctx.submit_for).min(ctx.deadline);
    loop {
        scan.attempts += 1;
        let r = ctx
            .http
            .post(format!("{}/api/v1/scan", ctx.api_url))
            .header("X-User-ID", &scan.user)
            .header("X-Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        let reason = match r {
            Ok(resp) if resp.status().is_success() => {
                match resp.json::<serde_json::Value>().await {
                    Ok(v) => match v.get("job_id").and_then(|j| j.as_str()) {
                        Some(job) => {
                            scan.submit = Submit::Accepted(job.to_owned());
                            ctx.accepted.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        None => "2xx without job_id".to_owned(),
                    },
                    Err(e) => format!("2xx {}", reqwest_reason(&e)),
                }
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let code = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                if status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    scan.submit = Submit::Rejected(format!(
                        "HTTP {status} {}",
                        text.chars().take(300).collect::<String>()
                    ));
                    return;
                }
                format!("HTTP {} {code}", status.as_u16())
            }
            Err(e) => reqwest_reason(&e).to_owned(),
        };
        *scan.submit_errors.entry(reason).or_default() += 1;
        if Instant::now() >= until || ctx.stopped() {
            scan.submit = Submit::GaveUp;
            return;
        }
        let pause = rand::rng().random_range(200..500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Whether a received frame ends the stream: a terminal event, or a
/// snapshot whose state is terminal.
pub fn frame_is_terminal(ev: &SseEvent) -> bool {
    if ev.event == "snapshot" {
        return serde_json::from_str::<serde_json::Value>(&ev.data)
            .ok()
            .and_then(|v| {
                v.get("state")
                    .and_then(|s| s.get("stage"))
                    .and_then(|s| s.as_str())
                    .map(|s| s == relay_core::event::DONE_STAGE)
            })
            .unwrap_or(false);
    }
    serde_json::from_str::<Event>(&ev.data).is_ok_and(|e| e.is_terminal())
}

async fn follow(ctx: &Ctx, job: &str, first_gw: usize, start: Instant) -> Follow {
    let mut f = Follow::default();
    let mut last_id = String::new();
    let mut gw = first_gw % ctx.gateways.len();
    while !ctx.stopped() {
        if f.connections > 0 {
            f.reconnects += 1;
            gw = (gw + 1) % ctx.gateways.len();
            let pause = rand::rng().random_range(50..300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        f.connections += 1;
        let url = format!("{}/v1/jobs/{job}/events", ctx.gateways[gw]);
        let mut req = ctx.sse.get(&url).header("Accept", "text/event-stream");
        if !last_id.is_empty() {
            req = req.header("Last-Event-ID", last_id.as_str());
        }
        let resp = match tokio::time::timeout(Duration::from_secs(10), req.send()).await {
            Err(_) => {
                *f.errors.entry("connect timeout".into()).or_default() += 1;
                continue;
            }
            Ok(Err(e)) => {
                *f.errors.entry(reqwest_reason(&e).into()).or_default() += 1;
                continue;
            }
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            *f.errors
                .entry(format!("HTTP {}", resp.status().as_u16()))
                .or_default() += 1;
            continue;
        }
        let mut reader = SseReader::new(resp.bytes_stream());
        loop {
            if ctx.stopped() {
                break;
            }
            let item = match tokio::time::timeout(ctx.idle, reader.next_item()).await {
                Err(_) => {
                    f.idle_reconnects += 1;
                    *f.errors.entry("idle".into()).or_default() += 1;
                    break;
                }
                Ok(None) => {
                    *f.errors.entry("stream ended".into()).or_default() += 1;
                    break;
                }
                Ok(Some(Err(e))) => {
                    *f.errors
                        .entry(format!("stream {}", reqwest_reason(&e)))
                        .or_default() += 1;
                    break;
                }
                Ok(Some(Ok(i))) => i,
            };
            let SseItem::Event(ev) = item else { continue };
            if !reader.last_event_id().is_empty() {
                last_id = reader.last_event_id().to_owned();
            }
            let terminal = frame_is_terminal(&ev);
            f.got.push(Got {
                t: round3(ctx.t()),
                gw: gw as u8,
                conn: f.connections,
                id: ev.id,
                event: ev.event,
                data: ev.data,
            });
            if terminal {
                f.e2e = Some(start.elapsed());
                ctx.terminal.fetch_add(1, Ordering::Relaxed);
                return f;
            }
        }
    }
    f
}

async fn one_scan(ctx: Arc<Ctx>, n: u64) -> Scan {
    let start = Instant::now();
    let mut s = Scan {
        n,
        user: format!("chaos-{}-{n}", ctx.run_id),
        t: round3(ctx.t()),
        attempts: 0,
        submit_errors: BTreeMap::new(),
        submit: Submit::GaveUp,
        follow: None,
    };
    submit(&ctx, &mut s).await;
    if let Submit::Accepted(job) = &s.submit {
        let job = job.clone();
        s.follow = Some(follow(&ctx, &job, n as usize, start).await);
    }
    s
}

// ---------------------------------------------------------------------------
// The checker

/// A job's history as read from Redis.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// History identity (`None`: no history).
    pub epoch: Option<u64>,
    /// Highest offset assigned.
    pub top: u64,
    /// First retained offset.
    pub first: Option<u64>,
    /// (offset, decoded native event; `None` when undecodable), ascending.
    pub records: Vec<(u64, Option<Event>)>,
}

impl History {
    /// The job's terminal record (offset, event), the first if several.
    pub fn terminal(&self) -> Option<(u64, &Event)> {
        self.records
            .iter()
            .find_map(|(o, e)| e.as_ref().filter(|e| e.is_terminal()).map(|e| (*o, e)))
    }

    /// The last event (for reports on stuck jobs).
    pub fn last(&self) -> Option<&Event> {
        self.records.last().and_then(|(_, e)| e.as_ref())
    }
}

/// What the checker found for one job (all zero / `terminals == 1` /
/// `client_terminals == 1`: clean).
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobFindings {
    /// Terminal events in the history.
    pub terminals: u32,
    /// Reward `completed` events in the history.
    pub reward_completed: u32,
    /// Offsets missing from the history (`1..=top` must all be there).
    pub history_gaps: u64,
    /// History events after the terminal one.
    pub after_terminal: u64,
    /// History events (up to the terminal) stored after an event with a
    /// higher seq: the apply order differs from the producer's order.
    pub seq_inversions: u64,
    /// History records that do not decode as native events.
    pub undecodable: u64,
    /// Events the client received (snapshots excluded).
    pub delivered: u64,
    /// History events the client never received (and no snapshot covered).
    pub lost: u64,
    /// Events received more than once.
    pub duplicated: u64,
    /// Events received after a later offset.
    pub out_of_order: u64,
    /// Received events whose id or content differ from the history's.
    pub mismatched: u64,
    /// Received events of another epoch than the history's.
    pub foreign_epoch: u64,
    /// `snapshot` events received (resume failures).
    pub snapshots: u64,
    /// History events not received because a snapshot skipped them.
    pub skipped_by_snapshot: u64,
    /// Terminal frames the client received.
    pub client_terminals: u32,
    /// Details of each finding (offsets, times, gateways).
    pub notes: Vec<String>,
}

impl JobFindings {
    /// Number of violated checks (0: the job is clean).
    pub fn violations(&self) -> u64 {
        u64::from(self.terminals != 1)
            + u64::from(self.reward_completed > 1)
            + self.history_gaps
            + self.after_terminal
            + self.seq_inversions
            + self.undecodable
            + self.lost
            + self.duplicated
            + self.out_of_order
            + self.mismatched
            + self.foreign_epoch
            + self.snapshots
            + self.skipped_by_snapshot
            + u64::from(self.client_terminals != 1)
    }
}

fn describe(e: Option<&Event>) -> String {
    e.map(|e| format!("seq {} {} {}", e.seq, e.stage.as_str(), e.status.as_str()))
        .unwrap_or_else(|| "undecodable".into())
}

/// Compares what a client received with the job's final history.
pub fn check_job(h: &History, got: &[Got]) -> JobFindings {
    let mut f = JobFindings::default();
    // The history itself.
    let offsets: HashSet<u64> = h.records.iter().map(|(o, _)| *o).collect();
    if h.epoch.is_some() {
        if h.first != Some(1) {
            f.notes
                .push(format!("history starts at {:?}, not 1", h.first));
        }
        for o in 1..=h.top {
            if !offsets.contains(&o) {
                f.history_gaps += 1;
                f.notes
                    .push(format!("history lacks offset {o} (top {})", h.top));
            }
        }
    }
    let terminal_at = h.terminal().map(|(o, _)| o);
    let mut max_seq: Option<(u64, u64)> = None;
    for (o, e) in &h.records {
        match e {
            None => {
                f.undecodable += 1;
                f.notes.push(format!("history offset {o} does not decode"));
            }
            Some(e) => {
                if e.is_terminal() {
                    f.terminals += 1;
                }
                if e.stage.as_str() == "reward" && e.status == Status::Completed {
                    f.reward_completed += 1;
                }
                match max_seq {
                    Some((seq, at)) if e.seq < seq && terminal_at.is_none_or(|t| *o <= t) => {
                        f.seq_inversions += 1;
                        f.notes.push(format!(
                            "history offset {o} ({}) stored after seq {seq} (offset {at})",
                            describe(Some(e))
                        ));
                    }
                    Some((seq, _)) if e.seq <= seq => {}
                    _ => max_seq = Some((e.seq, *o)),
                }
                if terminal_at.is_some_and(|t| *o > t) {
                    f.after_terminal += 1;
                    f.notes.push(format!(
                        "history offset {o} ({}) after the terminal at {}",
                        describe(Some(e)),
                        terminal_at.unwrap_or(0)
                    ));
                }
            }
        }
    }
    if f.terminals > 1 {
        f.notes
            .push(format!("{} terminal events in the history", f.terminals));
    }
    if f.reward_completed > 1 {
        f.notes.push(format!(
            "{} reward completed events in the history",
            f.reward_completed
        ));
    }
    // The client's sequence.
    let by_offset: BTreeMap<u64, Option<&Event>> =
        h.records.iter().map(|(o, e)| (*o, e.as_ref())).collect();
    let mut first_seen: BTreeMap<u64, &Got> = BTreeMap::new();
    let mut max_seen = 0u64;
    let mut covered = 0u64;
    for g in got {
        if frame_is_terminal(&SseEvent {
            id: g.id.clone(),
            event: g.event.clone(),
            data: g.data.clone(),
        }) {
            f.client_terminals += 1;
        }
        let pos = g.id.as_deref().and_then(|i| i.parse::<Position>().ok());
        if g.event == "snapshot" {
            f.snapshots += 1;
            f.notes.push(format!(
                "snapshot at t={} gw{} conn {} id {:?}: {}",
                g.t,
                g.gw,
                g.conn,
                g.id,
                g.data.chars().take(200).collect::<String>()
            ));
            if let Some(p) = pos {
                covered = covered.max(p.offset.0);
                max_seen = max_seen.max(p.offset.0);
            }
            continue;
        }
        f.delivered += 1;
        let Some(pos) = pos else {
            f.mismatched += 1;
            f.notes
                .push(format!("event without a valid id at t={}: {:?}", g.t, g.id));
            continue;
        };
        let off = pos.offset.0;
        if h.epoch.is_some_and(|e| e != pos.epoch.0) {
            f.foreign_epoch += 1;
            f.notes.push(format!(
                "event {} at t={} gw{} is not of the history's epoch {:?}",
                pos, g.t, g.gw, h.epoch
            ));
        }
        if let Some(prev) = first_seen.get(&off) {
            f.duplicated += 1;
            f.notes.push(format!(
                "offset {off} received again at t={} gw{} conn {} (first at t={} gw{} conn {})",
                g.t, g.gw, g.conn, prev.t, prev.gw, prev.conn
            ));
            continue;
        }
        if off < max_seen {
            f.out_of_order += 1;
            f.notes.push(format!(
                "offset {off} received at t={} gw{} conn {} after offset {max_seen}",
                g.t, g.gw, g.conn
            ));
        }
        first_seen.insert(off, g);
        max_seen = max_seen.max(off);
        let received = serde_json::from_str::<Event>(&g.data).ok();
        match by_offset.get(&off) {
            Some(Some(stored)) if received.as_ref() == Some(*stored) => {}
            stored => {
                f.mismatched += 1;
                f.notes.push(format!(
                    "offset {off} at t={} gw{}: received {}, history has {}",
                    g.t,
                    g.gw,
                    describe(received.as_ref()),
                    match stored {
                        Some(e) => describe(*e),
                        None => "nothing".into(),
                    }
                ));
            }
        }
    }
    // History events the client never got (up to the terminal: after it
    // the client stops, and events there are a history violation already).
    let until = terminal_at.unwrap_or(h.top);
    for (o, e) in &h.records {
        if *o > until || first_seen.contains_key(o) {
            continue;
        }
        if *o <= covered {
            f.skipped_by_snapshot += 1;
        } else {
            f.lost += 1;
            f.notes.push(format!(
                "offset {o} ({}) never received",
                describe(e.as_ref())
            ));
        }
    }
    if f.client_terminals == 0 {
        f.notes.push(format!(
            "the client saw no terminal event (received {} events, last {:?})",
            got.len(),
            got.last().map(|g| (g.t, g.id.clone(), g.event.clone()))
        ));
    }
    f
}

/// The reward grant of a history: (user's reward key, character) when the
/// reward `completed` event granted one.
fn granted_reward(h: &History) -> Option<(String, bool)> {
    h.records.iter().find_map(|(_, e)| {
        let e = e.as_ref()?;
        if e.stage.as_str() != "reward" || e.status != Status::Completed {
            return None;
        }
        let r = e.data.get("reward")?;
        let id = r.get("character_id")?.as_str()?.to_owned();
        let owned = r
            .get("already_owned")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Some((id, owned))
    })
}

async fn read_history(
    backend: &RedisBackend,
    keys: &KeySpace,
    job: &str,
) -> anyhow::Result<History> {
    let job = JobId::new(job)?;
    let page = backend
        .read_history(&keys.job(&job), Offset(0), 100_000)
        .await?;
    Ok(History {
        epoch: page.epoch.map(|e| e.0),
        top: page.top.0,
        first: page.first.map(|o| o.0),
        records: page
            .records
            .iter()
            .map(|r| {
                let e = match r.payload.decode() {
                    Ok(relay_core::Decoded::Native(e)) => Some(e),
                    _ => None,
                };
                (r.offset.0, e)
            })
            .collect(),
    })
}

// ---------------------------------------------------------------------------
// The run

/// The run's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChaosFigures {
    /// Fault phase, s.
    pub secs: u64,
    /// Submit rate, scans/s.
    pub rate: f64,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Redis AOF fsync policy.
    pub appendfsync: String,
    /// Scans submitted (first attempts).
    pub submitted: u64,
    /// Scans accepted (2xx with a job id).
    pub accepted: u64,
    /// Scans answered 4xx (violations).
    pub rejected: u64,
    /// Scans not accepted within `--submit-secs`.
    pub gave_up: u64,
    /// Submit attempts beyond the first.
    pub submit_retries: u64,
    /// Accepted jobs whose history ends `done completed`.
    pub completed: u64,
    /// Accepted jobs whose history ends `done failed`.
    pub failed: u64,
    /// Accepted jobs with a terminal event in Redis.
    pub terminal: u64,
    /// Accepted jobs without one at the end.
    pub not_terminal: u64,
    /// … of which had no history at all (never queued).
    pub never_queued: u64,
    /// … of which have only their `queued` event (never reached a worker).
    pub only_queued: u64,
    /// Events delivered to clients (snapshots excluded).
    pub events_delivered: u64,
    /// Client reconnects.
    pub reconnects: u64,
    /// … of which after `--idle-secs` of silence.
    pub idle_reconnects: u64,
    /// Kills by process kind.
    pub kills: BTreeMap<String, u64>,
    /// Kills in total.
    pub kills_total: u64,
    /// Processes that exited by themselves (restarted by the supervisor).
    pub unexpected_exits: u64,
    /// redis-server kill -9 + restarts.
    pub redis_restarts: u64,
    /// `CLIENT KILL TYPE normal` commands.
    pub client_kill_normal: u64,
    /// `CLIENT KILL TYPE pubsub` commands.
    pub client_kill_pubsub: u64,
    /// Connections those commands killed.
    pub clients_killed: u64,
    /// `maxmemory 1` refusals.
    pub refusals_oom: u64,
    /// `min-replicas-to-write 1` refusals.
    pub refusals_noreplicas: u64,
    /// `CLIENT PAUSE 1500 WRITE`.
    pub pauses: u64,
    /// Redis faults that could not be injected (e.g. during a restart).
    pub redis_fault_errors: u64,
    /// RabbitMQ close rounds.
    pub amqp_rounds: u64,
    /// RabbitMQ connections closed.
    pub amqp_connections_closed: u64,
    /// Lost events (never delivered).
    pub lost: u64,
    /// Duplicated deliveries.
    pub duplicated: u64,
    /// Out-of-order deliveries.
    pub out_of_order: u64,
    /// Deliveries whose id or content differ from the history.
    pub mismatched: u64,
    /// Deliveries of another epoch.
    pub foreign_epoch: u64,
    /// Snapshot events (resume failures).
    pub snapshots: u64,
    /// Events skipped by snapshots.
    pub skipped_by_snapshot: u64,
    /// Jobs with more than one terminal event in the history.
    pub multiple_terminals: u64,
    /// Jobs with more than one reward completed event, or whose reward grant
    /// is not recorded for them.
    pub reward_violations: u64,
    /// Offsets missing from histories.
    pub history_gaps: u64,
    /// History events after a terminal.
    pub events_after_terminal: u64,
    /// History events stored out of producer (seq) order before the terminal.
    pub seq_inversions: u64,
    /// Clients that did not see exactly one terminal frame.
    pub client_terminal_violations: u64,
    /// Violations in total (0: the run passed).
    pub violations: u64,
    /// Submit → terminal received, ms.
    pub e2e: crate::stats::LatSummary,
    /// Failed submit attempts by reason.
    pub submit_errors: BTreeMap<String, u64>,
    /// Client connection ends by reason.
    pub stream_errors: BTreeMap<String, u64>,
    /// Where the logs are.
    pub log_dir: String,
}

fn summary_rows(f: &ChaosFigures) -> Vec<(String, String)> {
    let kills = f
        .kills
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        (
            "fault phase / rate".into(),
            format!("{} s / {} scans/s", f.secs, f.rate),
        ),
        (
            "seed / appendfsync".into(),
            format!("{} / {}", f.seed, f.appendfsync),
        ),
        (
            "jobs submitted / accepted / terminal".into(),
            format!("{} / {} / {}", f.submitted, f.accepted, f.terminal),
        ),
        (
            "terminal: completed / failed".into(),
            format!("{} / {}", f.completed, f.failed),
        ),
        (
            "rejected (4xx) / not accepted in time".into(),
            format!("{} / {}", f.rejected, f.gave_up),
        ),
        (
            "not terminal at the end (no event / only queued)".into(),
            format!(
                "{} ({} / {})",
                f.not_terminal, f.never_queued, f.only_queued
            ),
        ),
        ("submit retries".into(), f.submit_retries.to_string()),
        ("events delivered".into(), f.events_delivered.to_string()),
        (
            "client reconnects (idle)".into(),
            format!("{} ({})", f.reconnects, f.idle_reconnects),
        ),
        ("kills".into(), format!("{} ({kills})", f.kills_total)),
        (
            "unexpected process exits".into(),
            f.unexpected_exits.to_string(),
        ),
        ("redis restarts".into(), f.redis_restarts.to_string()),
        (
            "redis client kills normal / pubsub (connections)".into(),
            format!(
                "{} / {} ({})",
                f.client_kill_normal, f.client_kill_pubsub, f.clients_killed
            ),
        ),
        (
            "redis write refusals OOM / NOREPLICAS".into(),
            format!("{} / {}", f.refusals_oom, f.refusals_noreplicas),
        ),
        ("redis CLIENT PAUSE WRITE".into(), f.pauses.to_string()),
        (
            "redis faults not injected".into(),
            f.redis_fault_errors.to_string(),
        ),
        (
            "rabbitmq close rounds (connections)".into(),
            format!("{} ({})", f.amqp_rounds, f.amqp_connections_closed),
        ),
        (
            "E2E submit → terminal p50 / p99 / max".into(),
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                f.e2e.p50_ms, f.e2e.p99_ms, f.e2e.max_ms
            ),
        ),
        ("lost".into(), f.lost.to_string()),
        ("duplicated".into(), f.duplicated.to_string()),
        ("out of order".into(), f.out_of_order.to_string()),
        ("content / id mismatches".into(), f.mismatched.to_string()),
        ("foreign epoch".into(), f.foreign_epoch.to_string()),
        (
            "snapshots (events skipped)".into(),
            format!("{} ({})", f.snapshots, f.skipped_by_snapshot),
        ),
        (
            "multiple terminals".into(),
            f.multiple_terminals.to_string(),
        ),
        ("reward violations".into(), f.reward_violations.to_string()),
        (
            "history gaps / events after terminal".into(),
            format!("{} / {}", f.history_gaps, f.events_after_terminal),
        ),
        (
            "history out of seq order (before the terminal)".into(),
            f.seq_inversions.to_string(),
        ),
        (
            "clients without exactly one terminal".into(),
            f.client_terminal_violations.to_string(),
        ),
        ("VIOLATIONS".into(), f.violations.to_string()),
        ("logs".into(), f.log_dir.clone()),
    ]
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("chaos: cannot write {}: {e}", path.display());
    }
}

/// Runs the chaos scenario; returns the report and the number of violations.
pub async fn run(common: &crate::Common, args: &ChaosArgs) -> anyhow::Result<(Report, u64)> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (log_dir, keep_logs) = match &args.log_dir {
        Some(d) => (d.clone(), true),
        None => (
            std::env::temp_dir().join(format!("relay-chaos-{run_id}")),
            false,
        ),
    };
    std::fs::create_dir_all(&log_dir)?;
    eprintln!(
        "chaos: seed {seed}, logs in {}, {} s of faults at {} scans/s then up to {} s of drain",
        log_dir.display(),
        args.secs,
        args.rate,
        args.drain_secs
    );

    // Redis with AOF, then the relay processes.
    let mut opts = RedisServerOptions::with_aof();
    if args.appendfsync == Fsync::Everysec {
        opts = opts.args(["--appendfsync", "everysec"]);
    }
    let redis = Arc::new(tokio::task::spawn_blocking(move || RedisServer::start_with(opts)).await?);
    let redis_url = redis.url();
    let dep = deploy(
        &redis_url,
        common.shards,
        common.router_batch,
        args,
        &log_dir,
    )
    .await?;
    let topo = topology(&dep.prefix, args);
    let amqp = pipeline_scan::transport::amqp::AmqpConfig {
        prefix: dep.prefix.clone(),
        ..pipeline_scan::transport::amqp::AmqpConfig::new(args.amqp_url.clone())
    };

    let result = soak(common, args, seed, &run_id, &redis, &dep, &log_dir).await;

    // Cleanup, whatever happened: processes, queues, then Redis.
    dep.cluster.kill_all();
    if let Err(e) = topo.delete_all(&amqp).await {
        eprintln!(
            "chaos: deleting the queues of prefix {} failed: {e}",
            dep.prefix
        );
    }
    let _ = std::fs::copy(redis.dir().join("redis.log"), log_dir.join("redis.log"));
    drop(dep);
    drop(redis);

    let (mut report, mut figures, notes) = result?;
    if figures.violations == 0 && !keep_logs {
        let _ = std::fs::remove_dir_all(&log_dir);
        figures.log_dir = "(removed: the run passed)".into();
    } else {
        write_lines(&log_dir.join("findings.txt"), &notes);
        figures.log_dir = log_dir.display().to_string();
    }
    report.summary = summary_rows(&figures);
    report.figures = serde_json::to_value(&figures)?;
    if !notes.is_empty() {
        eprintln!("chaos: findings (first 40 of {}):", notes.len());
        for n in notes.iter().take(40) {
            eprintln!("  {n}");
        }
    }
    Ok((report, figures.violations))
}

/// Load, faults, drain and check; the deployment is cleaned up by the caller.
#[allow(clippy::too_many_arguments)]
async fn soak(
    common: &crate::Common,
    args: &ChaosArgs,
    seed: u64,
    run_id: &str,
    redis: &Arc<RedisServer>,
    dep: &Deployed,
    log_dir: &Path,
) -> anyhow::Result<(Report, ChaosFigures, Vec<String>)> {
    let t0 = Instant::now();
    let phase_end = t0 + Duration::from_secs(args.secs);
    let deadline = phase_end + Duration::from_secs(args.drain_secs);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("chaos: interrupted; stopping, checking and cleaning up");
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let verbose = !common.quiet;
    let log = Arc::new(FaultLog {
        t0,
        lines: Mutex::new(Vec::new()),
        verbose,
    });
    let counts = Arc::new(FaultCounts::default());
    let mut master = StdRng::seed_from_u64(seed);

    // Supervisor: restarts processes that die by themselves.
    let supervising = Arc::new(AtomicBool::new(true));
    let supervisor = {
        let (cluster, log, on) = (dep.cluster.clone(), log.clone(), supervising.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                for line in cluster.supervise(log.t()) {
                    log.note(line);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let killer = tokio::spawn(kill_loop(
        dep.cluster.clone(),
        args.clone(),
        phase_end,
        stop.clone(),
        StdRng::seed_from_u64(master.random()),
        counts.clone(),
        log.clone(),
    ));
    let redis_faults = tokio::spawn(redis_loop(
        redis.clone(),
        args.clone(),
        t0,
        phase_end,
        stop.clone(),
        StdRng::seed_from_u64(master.random()),
        counts.clone(),
        log.clone(),
    ));
    let amqp_faults = tokio::spawn(amqp_loop(
        dep.cluster.clone(),
        args.clone(),
        phase_end,
        stop.clone(),
        StdRng::seed_from_u64(master.random()),
        counts.clone(),
        log.clone(),
    ));

    // Load.
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .build()?,
        sse: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()?,
        api_url: dep.api_url.clone(),
        gateways: dep.gateways.clone(),
        run_id: run_id.to_owned(),
        idle: Duration::from_secs_f64(args.idle_secs.max(1.0)),
        submit_for: Duration::from_secs(args.submit_secs),
        t0,
        deadline,
        stop: stop.clone(),
        accepted: AtomicU64::new(0),
        terminal: AtomicU64::new(0),
    });
    let mut handles = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_status = Instant::now() + Duration::from_secs(10);
    let status = |ctx: &Ctx, submitted: usize, counts: &FaultCounts, phase: &str| {
        let kills: u64 = counts
            .kills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        eprintln!(
            "chaos: t={:.0}s {phase}: submitted {submitted}, accepted {}, terminal seen {}, kills {kills}, redis restarts {}",
            ctx.t(),
            ctx.accepted.load(Ordering::Relaxed),
            ctx.terminal.load(Ordering::Relaxed),
            counts.redis_restarts.load(Ordering::Relaxed),
        );
    };
    while Instant::now() < phase_end && !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let n = handles.len() as u64;
        handles.push(tokio::spawn(one_scan(ctx.clone(), n)));
        if verbose && Instant::now() >= next_status {
            status(&ctx, handles.len(), &counts, "faults");
            next_status += Duration::from_secs(10);
        }
    }
    let _ = killer.await;
    let redis_result = redis_faults.await;
    amqp_faults.abort();
    let _ = amqp_faults.await;
    let fatal = match redis_result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(format!("redis fault task: {e}")),
    };
    if let Some(e) = &fatal {
        log.note(format!("FATAL: {e}"));
        stop.store(true, Ordering::Relaxed);
    } else {
        // Nothing is down any more: the drain runs without faults.
        dep.cluster.ensure_all_running();
        log.note("faults stopped; draining");
    }
    while !handles.iter().all(|h| h.is_finished())
        && Instant::now() < deadline
        && !stop.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if verbose && Instant::now() >= next_status {
            status(&ctx, handles.len(), &counts, "drain");
            next_status += Duration::from_secs(10);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut scans = Vec::with_capacity(handles.len());
    for h in handles {
        scans.push(h.await?);
    }
    log.note(format!("load ended; checking {} scans", scans.len()));
    supervising.store(false, Ordering::Relaxed);
    let _ = supervisor.await;
    if let Some(e) = fatal {
        write_lines(
            &log_dir.join("faults.log"),
            &log.lines.lock().unwrap_or_else(|p| p.into_inner()),
        );
        anyhow::bail!("chaos run aborted: {e}");
    }

    // Check.
    let backend = RedisBackend::connect(&redis.url()).await?;
    let keys = KeySpace::new(Profile::Native, Domain::new("scan")?, common.shards);
    let mut fig = ChaosFigures {
        secs: args.secs,
        rate: args.rate,
        seed,
        appendfsync: format!("{:?}", args.appendfsync).to_lowercase(),
        ..Default::default()
    };
    let mut notes = Vec::new();
    let mut e2e = Lat::new();
    let mut tl = Timeline::new(10.0);
    for s in &scans {
        fig.submitted += 1;
        fig.submit_retries += u64::from(s.attempts.saturating_sub(1));
        for (k, v) in &s.submit_errors {
            *fig.submit_errors.entry(k.clone()).or_default() += v;
        }
        let job = match &s.submit {
            Submit::Accepted(job) => job,
            Submit::Rejected(why) => {
                fig.rejected += 1;
                notes.push(format!("scan {} rejected: {why}", s.n));
                continue;
            }
            Submit::GaveUp => {
                fig.gave_up += 1;
                continue;
            }
        };
        fig.accepted += 1;
        let follow = s.follow.clone().unwrap_or_default();
        fig.reconnects += u64::from(follow.reconnects);
        fig.idle_reconnects += u64::from(follow.idle_reconnects);
        for (k, v) in &follow.errors {
            *fig.stream_errors.entry(k.clone()).or_default() += v;
        }
        if let Some(d) = follow.e2e {
            e2e.record(d);
            tl.record(s.t + d.as_secs_f64(), d.as_micros() as u64);
        }
        let h = read_history(&backend, &keys, job).await?;
        let mut f = check_job(&h, &follow.got);
        match h.terminal() {
            Some((_, e)) => {
                fig.terminal += 1;
                if e.status == Status::Completed {
                    fig.completed += 1;
                } else {
                    fig.failed += 1;
                }
            }
            None => {
                fig.not_terminal += 1;
                if h.epoch.is_none() {
                    fig.never_queued += 1;
                    f.notes
                        .push("no history at all: the job was never queued".into());
                } else {
                    if h.records.len() == 1
                        && h.last().is_some_and(|e| {
                            e.stage.as_str() == pipeline_scan::pipeline::QUEUED_STAGE
                        })
                    {
                        fig.only_queued += 1;
                    }
                    f.notes.push(format!(
                        "not terminal; last history event {}",
                        describe(h.last())
                    ));
                }
            }
        }
        let mut reward_bad = f.reward_completed > 1;
        if let Some((character, already_owned)) = granted_reward(&h) {
            let key = pipeline_scan::scan::reward::reward_key(&s.user, &character);
            let owner = backend.get(&key).await?;
            if already_owned || owner.as_deref() != Some(job.as_bytes()) {
                reward_bad = true;
                f.notes.push(format!(
                    "reward {character}: already_owned {already_owned}, {key} holds {:?}",
                    owner.map(|o| String::from_utf8_lossy(&o).into_owned())
                ));
            }
        }
        fig.events_delivered += f.delivered;
        fig.lost += f.lost;
        fig.duplicated += f.duplicated;
        fig.out_of_order += f.out_of_order;
        fig.mismatched += f.mismatched + f.undecodable;
        fig.foreign_epoch += f.foreign_epoch;
        fig.snapshots += f.snapshots;
        fig.skipped_by_snapshot += f.skipped_by_snapshot;
        fig.multiple_terminals += u64::from(f.terminals > 1);
        fig.reward_violations += u64::from(reward_bad);
        fig.history_gaps += f.history_gaps;
        fig.events_after_terminal += f.after_terminal;
        fig.seq_inversions += f.seq_inversions;
        fig.client_terminal_violations += u64::from(f.client_terminals != 1);
        let v = f.violations() + u64::from(reward_bad && f.reward_completed <= 1);
        if v > 0 {
            for n in &f.notes {
                notes.push(format!("job {job} (scan {} at t={}): {n}", s.n, s.t));
            }
        }
    }
    fig.violations = fig.rejected
        + fig.lost
        + fig.duplicated
        + fig.out_of_order
        + fig.mismatched
        + fig.foreign_epoch
        + fig.snapshots
        + fig.skipped_by_snapshot
        + fig.multiple_terminals
        + fig.reward_violations
        + fig.history_gaps
        + fig.events_after_terminal
        + fig.seq_inversions
        + fig.not_terminal
        + fig.client_terminal_violations;
    {
        let kills = counts.kills.lock().unwrap_or_else(|p| p.into_inner());
        fig.kills = kills
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), *v))
            .collect();
        fig.kills_total = kills.values().sum();
    }
    let exits = dep
        .cluster
        .exits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    fig.unexpected_exits = exits.len() as u64;
    fig.redis_restarts = counts.redis_restarts.load(Ordering::Relaxed);
    fig.client_kill_normal = counts.kill_normal.load(Ordering::Relaxed);
    fig.client_kill_pubsub = counts.kill_pubsub.load(Ordering::Relaxed);
    fig.clients_killed = counts.clients_killed.load(Ordering::Relaxed);
    fig.refusals_oom = counts.refusals_oom.load(Ordering::Relaxed);
    fig.refusals_noreplicas = counts.refusals_noreplicas.load(Ordering::Relaxed);
    fig.pauses = counts.pauses.load(Ordering::Relaxed);
    fig.redis_fault_errors = counts.redis_fault_errors.load(Ordering::Relaxed);
    fig.amqp_rounds = counts.amqp_rounds.load(Ordering::Relaxed);
    fig.amqp_connections_closed = counts.amqp_closed.load(Ordering::Relaxed);
    fig.e2e = e2e.summary();
    notes.extend(exits.iter().map(|e| format!("process: {e}")));

    write_lines(
        &log_dir.join("faults.log"),
        &log.lines.lock().unwrap_or_else(|p| p.into_inner()),
    );
    if let Ok(json) = serde_json::to_vec(&scans) {
        let _ = std::fs::write(log_dir.join("scans.json"), json);
    }

    let mut env = crate::spawn::versions();
    env.push(("redis url".into(), redis.url()));
    env.push(("api url".into(), dep.api_url.clone()));
    env.push(("gateways".into(), dep.gateways.join(", ")));
    env.push(("queue prefix".into(), dep.prefix.clone()));
    let report = Report {
        scenario: "chaos".into(),
        title: format!(
            "relay-load chaos: {} s of faults, {} scans/s",
            args.secs, args.rate
        ),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix: relay_core::auth::now_unix(),
        environment: env,
        summary: Vec::new(),
        figures: serde_json::Value::Null,
        latency_label: "submit → terminal".into(),
        level_label: "".into(),
        latency: fig.e2e.clone(),
        timeline: tl.windows(),
        histogram: e2e.buckets(40),
    };
    Ok((report, fig, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, stage: &str, status: Status) -> Event {
        let mut e = Event::new("scan", "job-1", seq, stage, status).unwrap();
        e.ts = 1_700_000_000_000 + seq;
        e
    }

    fn history() -> History {
        let evs = [
            ev(1, "queued", Status::Started),
            ev(10, "vision", Status::Started),
            ev(11, "vision", Status::Completed),
            ev(51, "done", Status::Completed),
        ];
        History {
            epoch: Some(7),
            top: 4,
            first: Some(1),
            records: evs
                .into_iter()
                .enumerate()
                .map(|(i, e)| (i as u64 + 1, Some(e)))
                .collect(),
        }
    }

    fn got(h: &History, offsets: &[u64]) -> Vec<Got> {
        offsets
            .iter()
            .map(|o| {
                let e = h.records[*o as usize - 1].1.clone().unwrap();
                Got {
                    t: 0.0,
                    gw: 0,
                    conn: 1,
                    id: Some(format!("7:{o}")),
                    event: e.stage.as_str().to_owned(),
                    data: serde_json::to_string(&e).unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn checker_accepts_an_exact_delivery() {
        let h = history();
        let f = check_job(&h, &got(&h, &[1, 2, 3, 4]));
        assert_eq!(f.violations(), 0, "{:?}", f.notes);
        assert_eq!(f.delivered, 4);
    }

    #[test]
    fn checker_counts_lost_duplicated_and_out_of_order() {
        let h = history();
        let f = check_job(&h, &got(&h, &[1, 3, 3, 2, 4]));
        assert_eq!((f.lost, f.duplicated, f.out_of_order), (0, 1, 1));
        let f = check_job(&h, &got(&h, &[1, 2, 4]));
        assert_eq!((f.lost, f.duplicated, f.out_of_order), (1, 0, 0));
        assert_eq!(f.violations(), 1);
    }

    #[test]
    fn checker_reports_snapshots_and_what_they_skipped() {
        let h = history();
        let mut g = got(&h, &[1]);
        g.push(Got {
            t: 0.0,
            gw: 1,
            conn: 2,
            id: Some("7:3".into()),
            event: "snapshot".into(),
            data: r#"{"reason":"trimmed","state":{"stage":"vision"}}"#.into(),
        });
        g.extend(got(&h, &[4]));
        let f = check_job(&h, &g);
        assert_eq!((f.snapshots, f.skipped_by_snapshot, f.lost), (1, 2, 0));
        assert!(f.violations() >= 3);
    }

    #[test]
    fn checker_flags_wrong_content_epoch_and_missing_terminal() {
        let h = history();
        let mut g = got(&h, &[1, 2, 3, 4]);
        g[1].data = serde_json::to_string(&ev(99, "vision", Status::Started)).unwrap();
        g[2].id = Some("8:3".into());
        let f = check_job(&h, &g);
        assert_eq!((f.mismatched, f.foreign_epoch), (1, 1));
        let f = check_job(&h, &got(&h, &[1, 2, 3]));
        assert_eq!(f.client_terminals, 0);
        assert!(f.violations() > 0);
    }

    #[test]
    fn checker_flags_a_bad_history() {
        let mut h = history();
        h.records.push((5, Some(ev(59, "done", Status::Failed))));
        h.records.remove(1);
        h.top = 5;
        let f = check_job(&h, &[]);
        assert_eq!((f.terminals, f.after_terminal, f.history_gaps), (2, 1, 1));

        let swap = |h: &mut History, i: usize, j: usize| {
            let e = h.records[i].1.take();
            h.records[i].1 = h.records[j].1.take();
            h.records[j].1 = e;
        };
        let mut h = history();
        swap(&mut h, 1, 2);
        let f = check_job(&h, &[]);
        assert_eq!(f.seq_inversions, 1, "{:?}", f.notes);
        let mut h = history();
        swap(&mut h, 2, 3);
        let f = check_job(&h, &[]);
        assert_eq!(
            (f.seq_inversions, f.after_terminal),
            (0, 1),
            "{:?}",
            f.notes
        );
    }

    #[test]
    fn amqp_ports_from_urls() {
        assert_eq!(amqp_port("amqp://guest:guest@127.0.0.1:5672/%2f"), 5672);
        assert_eq!(amqp_port("amqp://u:p@host:5673/vh"), 5673);
        assert_eq!(amqp_port("amqp://host/vh"), 5672);
    }
}
