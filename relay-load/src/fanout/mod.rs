//! The `fanout` scenario: SSE fan-out of relay side by side with nginx +
//! the Nchan module (messages in its shared memory, or in Redis), on the
//! same machine, with the same subscriber code, in the same run.
//!
//! Every target runs every case on a fresh private server:
//!
//! | case          | what                                                      |
//! |---------------|-----------------------------------------------------------|
//! | `a-1k`        | `--conns` subscribers, one channel each, 1 event/s each    |
//! | `b-10k`       | `--many-conns` subscribers, one channel each, 1 event/s    |
//! | `c-hot`       | one channel, `--hot-subscribers` subscribers, `--hot-rate` |
//! | `d-reconnect` | as `a-1k`; mid-run every subscriber drops its connection and reconnects with `Last-Event-ID` |
//! | `e-restart`   | as `d-reconnect`, and halfway through the reconnects the gateway (relay-sse, or nginx) is SIGKILLed and started again while publishing goes on: subscribers still away when it died can only get what they missed from the store |
//!
//! relay: a private redis-server, `relay-router` and `relay-sse`
//! ([`Deployment`]); events go in by the producer path (`Publisher`,
//! XADD into the shard streams). Nchan: a private nginx
//! ([`nchan::Nginx`]) and, for `nchan-redis`, its own redis-server;
//! events go in by `POST /pub/<channel>`. Each event's data carries its
//! publish time (`t_us`), so subscribers measure publish→client latency.
//!
//! Per run: events delivered/s, server CPU µs per delivered event (every
//! server process: router + gateway + Redis for relay, nginx master and
//! workers (+ Redis) for Nchan), idle RSS and PSS per connection (server
//! memory after the subscribers connected, minus before, over the
//! connections), publish→client p50/p99, lost and duplicate events.

pub mod client;
pub mod meter;
pub mod nchan;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use relay_core::ValidationError;
use relay_testkit::redis::RedisServer;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use crate::produce::Produce;
use crate::produce::Sink;
use crate::relay::RelaySink;
use crate::report::Report;
use crate::spawn::{Deployment, Topology};
use crate::stats::{round3, unix_us, Lat, LatSummary, Timeline};
use crate::Common;

use self::client::{Control, Follow, Live, Tally};
use self::meter::Mem;
use self::nchan::{NchanSink, Nginx, NginxSpec};

/// What serves the subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// redis-server + relay-router + relay-sse.
    Relay,
    /// nginx + Nchan, messages in its shared memory.
    NchanMemory,
    /// nginx + Nchan, messages in its own redis-server.
    NchanRedis,
    /// All three.
    All,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::NchanMemory => "nchan-memory",
            Self::NchanRedis => "nchan-redis",
            Self::All => "all",
        }
    }
}

/// The measured cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Case {
    /// `--conns` subscribers, a channel each, `--channel-rate` events/s each.
    #[value(name = "a-1k")]
    #[serde(rename = "a-1k")]
    A1k,
    /// `--many-conns` subscribers, a channel each.
    #[value(name = "b-10k")]
    #[serde(rename = "b-10k")]
    B10k,
    /// One channel with `--hot-subscribers` subscribers at `--hot-rate`.
    #[value(name = "c-hot")]
    #[serde(rename = "c-hot")]
    CHot,
    /// As a-1k, and every subscriber drops and resumes mid-run.
    #[value(name = "d-reconnect")]
    #[serde(rename = "d-reconnect")]
    DReconnect,
    /// As d-reconnect, and halfway through the reconnects the gateway is
    /// killed and restarted.
    #[value(name = "e-restart")]
    #[serde(rename = "e-restart")]
    ERestart,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Self::A1k => "a-1k",
            Self::B10k => "b-10k",
            Self::CHot => "c-hot",
            Self::DReconnect => "d-reconnect",
            Self::ERestart => "e-restart",
        }
    }

    const ALL: [Case; 5] = [
        Case::A1k,
        Case::B10k,
        Case::CHot,
        Case::DReconnect,
        Case::ERestart,
    ];
}

/// `fanout` flags.
#[derive(Clone, Debug, Args)]
pub struct FanoutArgs {
    /// Targets (comma-separated): relay, nchan-memory, nchan-redis, all.
    #[arg(
        long,
        env = "RELAY_LOAD_FANOUT_TARGET",
        value_enum,
        value_delimiter = ',',
        default_value = "all"
    )]
    pub target: Vec<Target>,
    /// Cases (comma-separated; default all): a-1k, b-10k, c-hot,
    /// d-reconnect, e-restart.
    #[arg(
        long,
        env = "RELAY_LOAD_FANOUT_CASES",
        value_enum,
        value_delimiter = ','
    )]
    pub cases: Vec<Case>,
    /// Publishing time per run, seconds.
    #[arg(long, env = "RELAY_LOAD_FANOUT_DURATION_SECS", default_value_t = 15.0)]
    pub duration_secs: f64,
    /// Subscribers (one channel each) of a-1k, d-reconnect, e-restart.
    #[arg(long, env = "RELAY_LOAD_FANOUT_CONNS", default_value_t = 1_000)]
    pub conns: usize,
    /// Subscribers (one channel each) of b-10k.
    #[arg(long, env = "RELAY_LOAD_FANOUT_MANY_CONNS", default_value_t = 10_000)]
    pub many_conns: usize,
    /// Events/s per channel in the one-channel-per-subscriber cases.
    #[arg(long, env = "RELAY_LOAD_FANOUT_CHANNEL_RATE", default_value_t = 1.0)]
    pub channel_rate: f64,
    /// Subscribers of the one hot channel (c-hot).
    #[arg(
        long,
        env = "RELAY_LOAD_FANOUT_HOT_SUBSCRIBERS",
        default_value_t = 1_000
    )]
    pub hot_subscribers: usize,
    /// Events/s on the hot channel.
    #[arg(long, env = "RELAY_LOAD_FANOUT_HOT_RATE", default_value_t = 10.0)]
    pub hot_rate: f64,
    /// Latencies of events published in the first seconds are not recorded.
    #[arg(long, env = "RELAY_LOAD_FANOUT_WARMUP_SECS", default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// How long subscribers may take to receive the terminal events after
    /// publishing stops, seconds.
    #[arg(long, env = "RELAY_LOAD_FANOUT_DRAIN_SECS", default_value_t = 10.0)]
    pub drain_secs: f64,
    /// Pause before each memory reading (idle server), seconds.
    #[arg(long, env = "RELAY_LOAD_FANOUT_SETTLE_SECS", default_value_t = 1.0)]
    pub settle_secs: f64,
    /// Producer tasks (channels are split between them).
    #[arg(long, env = "RELAY_LOAD_FANOUT_PRODUCERS", default_value_t = 4)]
    pub producers: usize,
    /// Most events per publish call (relay batches them; Nchan sends one
    /// POST per event, concurrently across channels).
    #[arg(long, env = "RELAY_LOAD_FANOUT_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// Padding bytes in each event's data.
    #[arg(long, env = "RELAY_LOAD_FANOUT_PAYLOAD_BYTES", default_value_t = 64)]
    pub payload_bytes: usize,
    /// Event domain (relay's gateway serves `scan`).
    #[arg(long, env = "RELAY_LOAD_FANOUT_DOMAIN", default_value = "scan")]
    pub domain: String,
    /// Subscribers opening their first connection at once.
    #[arg(
        long,
        env = "RELAY_LOAD_FANOUT_CONNECT_CONCURRENCY",
        default_value_t = 256
    )]
    pub connect_concurrency: usize,
    /// Reconnects after a drop or restart are spread over this window, ms.
    #[arg(
        long,
        env = "RELAY_LOAD_FANOUT_RECONNECT_JITTER_MS",
        default_value_t = 500
    )]
    pub reconnect_jitter_ms: u64,
    /// Nchan POSTs in flight at once (HTTP has no batch; the publisher
    /// pipelines instead).
    #[arg(long, env = "RELAY_LOAD_FANOUT_NCHAN_IN_FLIGHT", default_value_t = 512)]
    pub nchan_in_flight: u32,
    /// The nginx binary.
    #[arg(long, env = "RELAY_LOAD_FANOUT_NGINX", default_value = "nginx")]
    pub nginx: PathBuf,
    /// The Nchan module nginx loads.
    #[arg(
        long,
        env = "RELAY_LOAD_FANOUT_NCHAN_MODULE",
        default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so"
    )]
    pub nchan_module: PathBuf,
    /// nginx `worker_processes` (default: the machine's cores, as
    /// `worker_processes auto`).
    #[arg(long, env = "RELAY_LOAD_FANOUT_NGINX_WORKERS")]
    pub nginx_workers: Option<usize>,
    /// nginx `worker_rlimit_nofile` (worker_connections is 256 less).
    #[arg(long, env = "RELAY_LOAD_FANOUT_NGINX_NOFILE", default_value_t = 20_000)]
    pub nginx_nofile: u32,
    /// `nchan_message_buffer_length`: messages Nchan keeps per channel.
    #[arg(long, env = "RELAY_LOAD_FANOUT_NCHAN_BUFFER", default_value_t = 64)]
    pub nchan_buffer: u32,
    /// `nchan_shared_memory_size`, MiB.
    #[arg(long, env = "RELAY_LOAD_FANOUT_NCHAN_SHM_MIB", default_value_t = 256)]
    pub nchan_shm_mib: u32,
    /// Where nginx's generated configuration and logs go (a fresh
    /// directory per server, removed after; default: the temp dir).
    #[arg(long, env = "RELAY_LOAD_FANOUT_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
}

/// What one (target, case) run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunFigures {
    /// relay, nchan-memory or nchan-redis.
    pub target: String,
    /// The case.
    pub case: String,
    /// Subscribers started.
    pub connections: usize,
    /// Subscribers whose first request was answered.
    pub connected: u64,
    /// Seconds until they all were (or the wait gave up).
    pub connect_secs: f64,
    /// Channels (jobs).
    pub channels: usize,
    /// Target publish rate, events/s over all channels.
    pub rate: f64,
    /// Events published (terminal events excluded).
    pub published: u64,
    /// Publish calls retried (refused or failed).
    pub publish_retries: u64,
    /// Events the publisher gave up on (Nchan POSTs refused for 30 s);
    /// they still count as published and as due.
    pub publish_failed: u64,
    /// First deliveries, all subscribers.
    pub delivered: u64,
    /// Delivered per second (publishing start → last delivery).
    pub delivered_per_s: f64,
    /// Deliveries due (each subscriber, every event of its channel).
    pub expected: u64,
    /// Due deliveries that never happened.
    pub lost: u64,
    /// Events delivered again to the same subscriber.
    pub duplicates: u64,
    /// relay `snapshot` events (exact resume impossible, said so).
    pub snapshots: u64,
    /// Events those snapshots stood in for (not counted as lost).
    pub skipped_by_snapshot: u64,
    /// Subscribers that never saw their channel's terminal event.
    pub unterminated: u64,
    /// Reconnections, all subscribers.
    pub reconnects: u64,
    /// Failed connection attempts, all subscribers.
    pub connect_failures: u64,
    /// The mid-run event (none, drop, or restart with its downtime).
    pub mid_run: String,
    /// Publish → client latency.
    pub latency: LatSummary,
    /// Server CPU seconds per process over publishing + drain.
    pub cpu_s: Vec<(String, f64)>,
    /// Server CPU µs per delivered event, per process.
    pub cpu_us_per_event: Vec<(String, f64)>,
    /// All server processes' CPU µs per delivered event (not given for
    /// a restart, whose killed processes' time is gone).
    pub server_cpu_us_per_event: Option<f64>,
    /// The target's Redis, by command: (command, calls, µs per delivered
    /// event), most expensive first.
    pub redis_commandstats: Vec<(String, u64, f64)>,
    /// The load tool's own CPU seconds (publisher + subscribers).
    pub load_tool_cpu_s: f64,
    /// Server RSS before the subscribers connected, KiB.
    pub rss_before_kib: u64,
    /// Server RSS with every subscriber connected and idle, KiB.
    pub rss_idle_kib: u64,
    /// (idle − before) RSS per connection, bytes.
    pub rss_per_conn_bytes: f64,
    /// Server PSS before, KiB.
    pub pss_before_kib: u64,
    /// Server PSS idle, KiB.
    pub pss_idle_kib: u64,
    /// (idle − before) PSS per connection, bytes.
    pub pss_per_conn_bytes: f64,
    /// Load average (1/5/15 min) at start and at end.
    pub load: (String, String),
    /// First client errors.
    pub errors: Vec<String>,
}

/// A target's servers, started fresh for each run.
enum Server {
    Relay(Deployment),
    Nchan {
        nginx: Nginx,
        redis: Option<RedisServer>,
    },
}

impl Server {
    async fn start(target: Target, common: &Common, args: &FanoutArgs) -> anyhow::Result<Self> {
        match target {
            Target::Relay => {
                let (client, shards, batch) =
                    (common.redis_client, common.shards, common.router_batch);
                let dep = tokio::task::spawn_blocking(move || {
                    Deployment::spawn(client, shards, batch, Topology::Standalone, None)
                })
                .await??;
                Ok(Self::Relay(dep))
            }
            Target::NchanMemory | Target::NchanRedis => {
                let redis = if target == Target::NchanRedis {
                    Some(tokio::task::spawn_blocking(RedisServer::start).await?)
                } else {
                    None
                };
                let spec = NginxSpec {
                    bin: args.nginx.clone(),
                    module: args.nchan_module.clone(),
                    workers: args.nginx_workers.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    }),
                    nofile: args.nginx_nofile,
                    buffer_length: args.nchan_buffer,
                    shm_mib: args.nchan_shm_mib,
                    redis_url: redis.as_ref().map(RedisServer::url),
                };
                let dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
                let nginx = Nginx::start(spec, &dir).await?;
                Ok(Self::Nchan { nginx, redis })
            }
            Target::All => anyhow::bail!("`all` is not one target"),
        }
    }

    /// (role, pid) of every server process.
    fn procs(&self) -> Vec<(String, u32)> {
        let (mut out, redis) = match self {
            Self::Relay(dep) => (dep.pids(), dep.redis.as_ref()),
            Self::Nchan { nginx, redis } => (nginx.pids(), redis.as_ref()),
        };
        if let Some(pid) = redis.and_then(RedisServer::pid) {
            out.push(("redis-server".into(), pid));
        }
        out
    }

    /// The target's redis-server, if it has one.
    fn redis(&self) -> Option<&RedisServer> {
        match self {
            Self::Relay(dep) => dep.redis.as_ref(),
            Self::Nchan { redis, .. } => redis.as_ref(),
        }
    }

    /// The port subscribers connect to.
    fn port(&self) -> u16 {
        match self {
            Self::Relay(dep) => dep
                .sse_url
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            Self::Nchan { nginx, .. } => nginx.port(),
        }
    }

    fn sub_url(&self, job: &str) -> String {
        match self {
            Self::Relay(dep) => format!("{}/v1/jobs/{job}/events", dep.sse_url),
            Self::Nchan { nginx, .. } => format!("{}/sub/{job}", nginx.base_url()),
        }
    }

    async fn sink(
        &self,
        common: &Common,
        args: &FanoutArgs,
        retries: Arc<AtomicU64>,
        failed: Arc<AtomicU64>,
    ) -> anyhow::Result<Arc<dyn Sink>> {
        Ok(match self {
            Self::Relay(dep) => {
                let keys = crate::relay::key_space(&args.domain, common.shards)?;
                let p = crate::relay::publisher(common.redis_client, &dep.redis_url, keys).await?;
                Arc::new(RelaySink(p))
            }
            Self::Nchan { nginx, .. } => Arc::new(NchanSink::new(
                reqwest::Client::builder()
                    .pool_max_idle_per_host(args.nchan_in_flight as usize)
                    .tcp_nodelay(true)
                    .build()?,
                nginx.base_url(),
                args.nchan_in_flight,
                retries,
                failed,
            )),
        })
    }

    /// Kills the gateway (relay-sse, or nginx) and starts it again;
    /// returns how long it did not accept connections.
    async fn restart_gateway(&mut self) -> anyhow::Result<Duration> {
        let port = self.port();
        match self {
            Self::Relay(dep) => {
                let t = Instant::now();
                let (_, sse) = dep
                    .procs
                    .iter_mut()
                    .find(|(n, _)| n == "relay-sse")
                    .ok_or_else(|| anyhow::anyhow!("no relay-sse process"))?;
                sse.restart();
                let deadline = Instant::now() + Duration::from_secs(20);
                while tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                {
                    anyhow::ensure!(Instant::now() < deadline, "relay-sse did not come back");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(t.elapsed())
            }
            Self::Nchan { nginx, .. } => nginx.restart().await,
        }
    }
}

/// The case's shape: subscribers, channels, publish rate.
fn shape(case: Case, args: &FanoutArgs) -> (usize, usize, f64) {
    match case {
        Case::A1k | Case::DReconnect | Case::ERestart => (
            args.conns,
            args.conns,
            args.conns as f64 * args.channel_rate,
        ),
        Case::B10k => (
            args.many_conns,
            args.many_conns,
            args.many_conns as f64 * args.channel_rate,
        ),
        Case::CHot => (args.hot_subscribers, 1, args.hot_rate),
    }
}

fn job_name(run: &str, j: usize) -> String {
    format!("fo-{run}-{j}")
}

fn say(quiet: bool, msg: String) {
    if !quiet {
        eprintln!("fanout: {msg}");
    }
}

/// One target, one case, on fresh servers.
async fn run_one(
    common: &Common,
    args: &FanoutArgs,
    target: Target,
    case: Case,
) -> anyhow::Result<(RunFigures, Lat, Timeline)> {
    let tag = format!("[{} {}]", case.name(), target.name());
    let load_start = crate::loadavg();
    let mut server = Server::start(target, common, args).await?;
    let (conns, channels, rate) = shape(case, args);
    let settle = Duration::from_secs_f64(args.settle_secs);
    tokio::time::sleep(settle).await;
    let pids = |s: &Server| s.procs().into_iter().map(|(_, p)| p).collect::<Vec<_>>();
    let mem_before = meter::mem_of(&pids(&server));

    // Subscribers.
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .tcp_nodelay(true)
        .build()?;
    let live = Arc::new(Live::default());
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (drop_tx, drop_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let active = Arc::new(AtomicU64::new(conns as u64));
    let warm = Arc::new(AtomicU64::new(u64::MAX));
    let t0 = Instant::now();
    say(
        common.quiet,
        format!("{tag} connecting {conns} subscribers"),
    );
    let mut handles = Vec::with_capacity(conns);
    for i in 0..conns {
        let job = i % channels;
        let f = Follow {
            url: server.sub_url(&job_name(&run, job)),
            job,
            index: i,
            jitter: Duration::from_millis(args.reconnect_jitter_ms),
            warm_until_us: warm.clone(),
            t0,
        };
        let ctl = Control {
            drop_gen: drop_rx.clone(),
            stop: stop_rx.clone(),
        };
        let (http, live, gate, active) = (http.clone(), live.clone(), gate.clone(), active.clone());
        handles.push(tokio::spawn(async move {
            let t = client::follow(http, f, ctl, live, gate).await;
            active.fetch_sub(1, Ordering::Relaxed);
            t
        }));
    }
    let port = server.port();
    let connected_now =
        || (live.connected.load(Ordering::Relaxed) as usize).max(meter::established(port));
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    let mut connected = 0;
    while connected < conns && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        connected = connected.max(connected_now());
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = connected.min(conns) as u64;
    tokio::time::sleep(settle).await;
    let procs = server.procs();
    let mem_idle = meter::mem_of(&pids(&server));
    say(
        common.quiet,
        format!(
            "{tag} {connected}/{conns} connected in {connect_secs:.1} s; publishing {rate} ev/s for {} s",
            args.duration_secs
        ),
    );

    // Publishing, with the mid-run event.
    let retries = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let sink = server
        .sink(common, args, retries.clone(), failed.clone())
        .await?;
    if let Some(r) = server.redis() {
        let _ = r.reset_stats().await;
    }
    let cpu_before = meter::cpu_of(&procs);
    let own_before = relay_testkit::bench::process_cpu();
    let start = Instant::now();
    warm.store(
        unix_us() + (args.warmup_secs * 1e6) as u64,
        Ordering::Relaxed,
    );
    let dur = Duration::from_secs_f64(args.duration_secs);
    let published = Arc::new(AtomicU64::new(0));
    let nprod = args.producers.max(1);
    let pad = "x".repeat(args.payload_bytes);
    let mut producers = Vec::new();
    for p in 0..nprod {
        let mine: Vec<(usize, String)> = (0..channels)
            .filter(|j| j % nprod == p)
            .map(|j| (j, job_name(&run, j)))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let my_rate = rate * mine.len() as f64 / channels as f64;
        let (sink, domain, pad, batch) =
            (sink.clone(), args.domain.clone(), pad.clone(), args.batch);
        let published = published.clone();
        let (indices, names): (Vec<usize>, Vec<String>) = mine.into_iter().unzip();
        producers.push(tokio::spawn(async move {
            let seqs = Produce {
                sink,
                jobs: names,
                domain,
                pad,
                rate: my_rate,
                batch,
                start,
                dur,
                published,
                backlog: None,
            }
            .run()
            .await?;
            Ok::<_, ValidationError>(indices.into_iter().zip(seqs).collect::<Vec<_>>())
        }));
    }
    tokio::time::sleep(dur / 2).await;
    let mid_run = match case {
        Case::DReconnect => {
            let _ = drop_tx.send(1);
            say(
                common.quiet,
                format!("{tag} every subscriber drops and resumes"),
            );
            format!(
                "all {conns} subscribers reconnect with Last-Event-ID (spread over {} ms)",
                args.reconnect_jitter_ms
            )
        }
        Case::ERestart => {
            // Subscribers that are between connections when the gateway
            // dies are the ones whose missed events only the store can
            // give back: every subscriber drops, and halfway through
            // their reconnects the gateway is killed and restarted.
            let _ = drop_tx.send(1);
            tokio::time::sleep(Duration::from_millis(args.reconnect_jitter_ms / 2)).await;
            let down = server.restart_gateway().await?;
            say(
                common.quiet,
                format!(
                    "{tag} gateway killed and restarted ({} ms down)",
                    down.as_millis()
                ),
            );
            format!(
                "all {conns} subscribers reconnect with Last-Event-ID (spread over {} ms); \
                 {} ms in, the gateway is SIGKILLed and restarted ({:.0} ms until it accepted again)",
                args.reconnect_jitter_ms,
                args.reconnect_jitter_ms / 2,
                down.as_secs_f64() * 1e3
            )
        }
        _ => "none".into(),
    };
    let mut last_seq = vec![0u64; channels];
    for p in producers {
        for (j, s) in p.await?? {
            last_seq[j] = s;
        }
    }
    let published = published.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_secs);
    while active.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let cpu_after = meter::cpu_of(&server.procs());
    let own = relay_testkit::bench::process_cpu().saturating_sub(own_before);
    // Where the target's Redis spent its time (INFO commandstats).
    let mut commandstats: Vec<(String, u64, f64)> = Vec::new();
    if let Some(stats) = match server.redis() {
        Some(r) => r.info_commandstats().await.ok(),
        None => None,
    } {
        commandstats = stats
            .into_iter()
            .map(|(k, v)| (k, v.calls, v.usec as f64))
            .collect();
    }
    let mut tallies: Vec<Tally> = Vec::with_capacity(conns);
    for h in handles {
        tallies.push(h.await?);
    }
    drop(server);

    // Aggregate.
    let mut f = RunFigures {
        target: target.name().into(),
        case: case.name().into(),
        connections: conns,
        connected,
        connect_secs: round3(connect_secs),
        channels,
        rate,
        published,
        publish_retries: retries.load(Ordering::Relaxed),
        publish_failed: failed.load(Ordering::Relaxed),
        mid_run,
        load_tool_cpu_s: round3(own.as_secs_f64()),
        ..Default::default()
    };
    let mut lat = Lat::new();
    let mut tl = Timeline::new(1.0);
    let mut last_arrival = start;
    for t in &tallies {
        let due = last_seq[t.job];
        f.expected += due;
        f.delivered += t.received;
        f.duplicates += t.duplicates;
        f.snapshots += t.snapshots;
        f.skipped_by_snapshot += t.skipped;
        f.lost += t.missing(due);
        f.reconnects += t.reconnects;
        f.connect_failures += t.connect_failures;
        if !t.terminal {
            f.unterminated += 1;
        }
        for (at, us) in &t.samples {
            lat.record_us(*us);
            tl.record(f64::from(*at), *us);
        }
        if let Some(a) = t.last_arrival {
            last_arrival = last_arrival.max(a);
        }
        if let Some(e) = &t.error {
            if f.errors.len() < 5 && !f.errors.contains(e) {
                f.errors.push(e.clone());
            }
        }
    }
    let window = last_arrival.duration_since(start).as_secs_f64().max(1e-9);
    f.delivered_per_s = round3(f.delivered as f64 / window);
    f.latency = lat.summary();
    let cpu = meter::cpu_delta(&cpu_before, &cpu_after);
    let per_ev = |s: f64| round3(s * 1e6 / f.delivered.max(1) as f64);
    f.cpu_us_per_event = cpu.iter().map(|(n, s)| (n.clone(), per_ev(*s))).collect();
    if case != Case::ERestart {
        f.server_cpu_us_per_event = Some(per_ev(cpu.iter().map(|(_, s)| s).sum()));
    }
    f.redis_commandstats = commandstats
        .into_iter()
        .map(|(k, calls, usec)| (k, calls, per_ev(usec / 1e6)))
        .collect();
    f.redis_commandstats.sort_by(|a, b| b.2.total_cmp(&a.2));
    f.cpu_s = cpu.into_iter().map(|(n, s)| (n, round3(s))).collect();
    let per_conn = |after: u64, before: u64| {
        round3(after.saturating_sub(before) as f64 * 1024.0 / connected.max(1) as f64)
    };
    let Mem {
        rss_kib: rb,
        pss_kib: pb,
    } = mem_before;
    f.rss_before_kib = rb;
    f.pss_before_kib = pb;
    f.rss_idle_kib = mem_idle.rss_kib;
    f.pss_idle_kib = mem_idle.pss_kib;
    f.rss_per_conn_bytes = per_conn(mem_idle.rss_kib, rb);
    f.pss_per_conn_bytes = per_conn(mem_idle.pss_kib, pb);
    f.load = (load_start, crate::loadavg());
    say(
        common.quiet,
        format!(
            "{tag} delivered {} ({:.0}/s), lost {}, dups {}, p99 {:.2} ms, server CPU {} µs/ev",
            f.delivered,
            f.delivered_per_s,
            f.lost,
            f.duplicates,
            f.latency.p99_ms,
            f.server_cpu_us_per_event
                .map_or("n/a".to_string(), |c| format!("{c:.1}"))
        ),
    );
    Ok((f, lat, tl))
}

/// The targets the flags name (`all`: the three).
fn targets(args: &FanoutArgs) -> Vec<Target> {
    let mut out = Vec::new();
    for t in &args.target {
        let each: &[Target] = match t {
            Target::All => &[Target::Relay, Target::NchanMemory, Target::NchanRedis],
            one => std::slice::from_ref(one),
        };
        for t in each {
            if !out.contains(t) {
                out.push(*t);
            }
        }
    }
    out
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// The side-by-side table of every run, then relay's ratios to each peer
/// per case.
pub fn tables(runs: &[RunFigures]) -> String {
    let mut out = format!(
        "{:<12} {:<13} {:>6} {:>12} {:>11} {:>11} {:>11} {:>8} {:>8} {:>7} {:>5} {:>6}\n",
        "case",
        "target",
        "conns",
        "delivered/s",
        "CPU µs/ev",
        "RSS B/conn",
        "PSS B/conn",
        "p50 ms",
        "p99 ms",
        "lost",
        "dups",
        "recon"
    );
    for r in runs {
        out.push_str(&format!(
            "{:<12} {:<13} {:>6} {:>12.0} {:>11} {:>11.0} {:>11.0} {:>8.2} {:>8.2} {:>7} {:>5} {:>6}\n",
            r.case,
            r.target,
            r.connected,
            r.delivered_per_s,
            opt(r.server_cpu_us_per_event, 1),
            r.rss_per_conn_bytes,
            r.pss_per_conn_bytes,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.lost,
            r.duplicates,
            r.reconnects
        ));
    }
    out.push_str(
        "\nrelay ÷ peer, same case (CPU per delivery, RSS and PSS per connection, p99):\n",
    );
    out.push_str(&format!(
        "{:<12} {:<13} {:>8} {:>8} {:>8} {:>8}\n",
        "case", "peer", "CPU", "RSS", "PSS", "p99"
    ));
    let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
    for relay in runs.iter().filter(|r| r.target == "relay") {
        for peer in runs
            .iter()
            .filter(|r| r.case == relay.case && r.target != "relay")
        {
            let cpu = match (relay.server_cpu_us_per_event, peer.server_cpu_us_per_event) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => None,
            };
            out.push_str(&format!(
                "{:<12} {:<13} {:>8} {:>8} {:>8} {:>8}\n",
                relay.case,
                peer.target,
                opt(cpu, 2),
                opt(ratio(relay.rss_per_conn_bytes, peer.rss_per_conn_bytes), 2),
                opt(ratio(relay.pss_per_conn_bytes, peer.pss_per_conn_bytes), 2),
                opt(ratio(relay.latency.p99_ms, peer.latency.p99_ms), 2),
            ));
        }
    }
    out.push_str("\nserver CPU µs per delivered event, by process:\n");
    for r in runs {
        let parts: Vec<String> = r
            .cpu_us_per_event
            .iter()
            .map(|(n, us)| format!("{n} {us:.1}"))
            .collect();
        out.push_str(&format!(
            "{:<12} {:<13} {}  | load tool {:.1}\n",
            r.case,
            r.target,
            parts.join(", "),
            r.load_tool_cpu_s * 1e6 / r.delivered.max(1) as f64
        ));
        if !r.redis_commandstats.is_empty() {
            let top: Vec<String> = r
                .redis_commandstats
                .iter()
                .take(5)
                .map(|(c, calls, us)| format!("{c} {us:.1} ({calls})"))
                .collect();
            out.push_str(&format!(
                "{:<12} {:<13}   Redis µs/ev by command (calls): {}\n",
                "",
                "",
                top.join(", ")
            ));
        }
    }
    out
}

/// The `fanout` scenario: every case × every target, cases outermost so
/// the targets of one case run back to back under the same load.
pub async fn run(common: &Common, args: &FanoutArgs) -> anyhow::Result<Report> {
    let cases: Vec<Case> = if args.cases.is_empty() {
        Case::ALL.to_vec()
    } else {
        args.cases.clone()
    };
    let targets = targets(args);
    let load_start = crate::loadavg();
    let mut runs = Vec::new();
    let mut first: Option<(Lat, Timeline)> = None;
    for case in &cases {
        for target in &targets {
            let (f, lat, tl) = run_one(common, args, *target, *case).await?;
            if first.is_none() {
                first = Some((lat, tl));
            }
            runs.push(f);
        }
    }
    let table = tables(&runs);
    println!("{table}");
    let (lat, tl) = first.unwrap_or_else(|| (Lat::new(), Timeline::new(1.0)));
    let mut environment = crate::spawn::versions();
    environment.push(("nginx".into(), nginx_version(&args.nginx)));
    environment.push(("load average at start".into(), load_start));
    environment.push(("load average at end".into(), crate::loadavg()));
    let mut summary = Vec::new();
    for r in &runs {
        let k = |what: &str| format!("[{} {}] {what}", r.case, r.target);
        summary.push((
            k("delivered"),
            format!(
                "{} of {} due ({:.0} ev/s), lost {}, duplicates {}",
                r.delivered, r.expected, r.delivered_per_s, r.lost, r.duplicates
            ),
        ));
        summary.push((k("server CPU µs/event"), opt(r.server_cpu_us_per_event, 2)));
        summary.push((
            k("RSS / PSS per connection"),
            format!(
                "{:.0} / {:.0} B",
                r.rss_per_conn_bytes, r.pss_per_conn_bytes
            ),
        ));
        summary.push((
            k("publish→client p50 / p99"),
            format!("{:.3} / {:.3} ms", r.latency.p50_ms, r.latency.p99_ms),
        ));
        if r.mid_run != "none" {
            summary.push((k("mid-run"), r.mid_run.clone()));
        }
    }
    Ok(Report {
        scenario: "fanout".into(),
        title: "relay-load fanout: relay vs nginx + Nchan (memory, Redis)".into(),
        command: crate::command_line(),
        started_unix: relay_core::auth::now_unix(),
        environment,
        summary,
        figures: serde_json::json!({ "runs": runs, "table": table }),
        latency_label: format!(
            "publish→client latency ({} {})",
            runs.first().map_or("", |r| r.case.as_str()),
            runs.first().map_or("", |r| r.target.as_str())
        ),
        level_label: "events/s delivered".into(),
        latency: lat.summary(),
        timeline: tl
            .windows()
            .into_iter()
            .map(|mut w| {
                w.level = w.count as f64;
                w
            })
            .collect(),
        histogram: lat.buckets(40),
    })
}

/// `nginx -v` (it prints to stderr).
fn nginx_version(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unavailable".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_to_the_three_targets_once() {
        let mut args = <crate::Cli as clap::Parser>::try_parse_from([
            "relay-load",
            "fanout",
            "--target",
            "relay,all",
            "--cases",
            "b-10k,e-restart",
        ])
        .expect("parses");
        let crate::Scenario::Fanout(f) = &mut args.scenario else {
            panic!("fanout");
        };
        assert_eq!(
            targets(f),
            [Target::Relay, Target::NchanMemory, Target::NchanRedis]
        );
        assert_eq!(f.cases, [Case::B10k, Case::ERestart]);
        assert_eq!(shape(Case::CHot, f), (1_000, 1, 10.0));
        assert_eq!(shape(Case::B10k, f), (10_000, 10_000, 10_000.0));
    }

    #[test]
    fn tables_give_relay_over_peer_ratios() {
        let run = |target: &str, cpu: f64, rss: f64| RunFigures {
            target: target.into(),
            case: "a-1k".into(),
            server_cpu_us_per_event: Some(cpu),
            rss_per_conn_bytes: rss,
            ..Default::default()
        };
        let t = tables(&[
            run("relay", 50.0, 4000.0),
            run("nchan-memory", 25.0, 8000.0),
        ]);
        assert!(
            t.contains("a-1k         nchan-memory      2.00     0.50"),
            "{t}"
        );
    }
}
