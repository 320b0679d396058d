//! The `relay` scenario: N producers publish at a target rate through the
//! real router (Redis shard streams → apply → Pub/Sub) to M SSE clients on
//! the gateway. Every event carries its publish time (`data.t_us`, µs since
//! the epoch, same host clock); clients record publish→client latency in an
//! HDR histogram, and count loss and duplicates per job.
//!
//! The same producers and clients then run against [`echo`](crate::echo): a
//! raw loopback TCP/HTTP server that frames the same events as SSE and fans
//! them out directly — the ceiling of the SSE path on this machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use relay_core::backend::redis::{ClusterTopology, RedisConfig, RedisTopology};
use relay_core::{Domain, Event, KeySpace, Profile, Publisher, PublisherConfig};
use relay_sse::client::{SseItem, SseReader};
use serde::{Deserialize, Serialize};

use crate::cluster::NodeClient;
use crate::produce::{Backlog, Probe, Produce, Sink, SnapshotProbe};
use crate::spawn::Topology;
use crate::stats::{round3, unix_us, Lat, LatSummary, Timeline};

/// `relay` flags.
#[derive(Clone, Debug, Args)]
pub struct RelayArgs {
    /// Target publish rate, events/s over all producers (0: as fast as possible).
    #[arg(long, env = "RELAY_LOAD_RATE", default_value_t = 10_000)]
    pub rate: u64,
    /// Publishing time, seconds.
    #[arg(long, env = "RELAY_LOAD_DURATION_SECS", default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Producer tasks.
    #[arg(long, env = "RELAY_LOAD_PRODUCERS", default_value_t = 4)]
    pub producers: usize,
    /// SSE clients.
    #[arg(long, env = "RELAY_LOAD_CLIENTS", default_value_t = 100)]
    pub clients: usize,
    /// Jobs (clients are spread over them; default: one per client).
    #[arg(long, env = "RELAY_LOAD_JOBS")]
    pub jobs: Option<usize>,
    /// Most events per publish call (batching when behind schedule).
    #[arg(long, env = "RELAY_LOAD_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// Padding bytes in each event's data.
    #[arg(long, env = "RELAY_LOAD_PAYLOAD_BYTES", default_value_t = 64)]
    pub payload_bytes: usize,
    /// Latencies of events published in the first seconds are not recorded.
    #[arg(long, env = "RELAY_LOAD_WARMUP_SECS", default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Event domain (must be the gateway's `--domain`).
    #[arg(long, env = "RELAY_LOAD_DOMAIN", default_value = "scan")]
    pub domain: String,
    /// Skip the loopback echo ceiling run.
    #[arg(long, env = "RELAY_LOAD_NO_CEILING")]
    pub no_ceiling: bool,
    /// Unthrottled runs (`--rate 0`): producers pause while more than this
    /// many events are published but not yet delivered, so the run measures
    /// the throughput the relay sustains rather than how long a queue grows
    /// (an unbounded backlog outgrows the bounded per-job history, and
    /// clients then resume with a snapshot). 0: no bound (open loop).
    #[arg(long, env = "RELAY_LOAD_MAX_BACKLOG", default_value_t = 20_000)]
    pub max_backlog: u64,
    /// How long clients may take to drain after publishing stops, seconds.
    #[arg(long, env = "RELAY_LOAD_DRAIN_SECS", default_value_t = 30.0)]
    pub drain_secs: f64,
    /// Redis topology: with --spawn, `cluster` starts three masters and
    /// three replicas and runs the router and gateway on them
    /// (`--redis-cluster`); the producers use the same topology. The
    /// report then gives every node's CPU and each master's share.
    #[arg(long, env = "RELAY_LOAD_TOPOLOGY", value_enum, default_value_t = Topology::Standalone)]
    pub topology: Topology,
    /// Seed nodes (`host:port,...`) of an existing Redis Cluster the
    /// router and gateway run on (without --spawn; implies `--topology
    /// cluster`). --redis-url then gives only the scheme and credentials.
    #[arg(long, env = "RELAY_LOAD_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// With --spawn: run once with each Redis client (redis-rs, then fred;
    /// a fresh deployment each, the same flags otherwise) and print the two
    /// side by side. Needs a `--features fred` build; `--json`/`--html`
    /// get the client's name before their extension.
    #[arg(long, env = "RELAY_LOAD_COMPARE_CLIENTS")]
    pub compare_clients: bool,
}

impl RelayArgs {
    /// The topology this run uses, or why the flags do not fit together:
    /// --spawn starts its own cluster (seeds of another one are a mistake),
    /// and an existing cluster can only be found through its seeds.
    pub fn effective_topology(&self, spawn: bool) -> Result<Topology, String> {
        match (spawn, self.topology, self.redis_cluster.is_empty()) {
            (true, _, false) => Err(
                "--redis-cluster names an existing cluster, but --spawn starts its own \
                 (use --spawn --topology cluster, or drop --spawn)"
                    .into(),
            ),
            (true, t, true) => Ok(t),
            (false, Topology::Cluster, true) => Err(
                "--topology cluster without --spawn needs the cluster's --redis-cluster seeds"
                    .into(),
            ),
            (false, _, false) => Ok(Topology::Cluster),
            (false, Topology::Standalone, true) => Ok(Topology::Standalone),
        }
    }
}

/// Where a process's CPU time is read: `/proc/<pid>/stat` of a local
/// process, or `INFO cpu` of a Redis node (a cluster node may be remote,
/// and its own figure is what a per-node share is computed from).
#[derive(Clone, Debug)]
pub enum CpuMeter {
    /// A local process.
    Pid(u32),
    /// A Redis node.
    Redis(NodeClient),
}

impl CpuMeter {
    /// CPU time used so far (zero when it cannot be read: a figure of 0
    /// is visibly wrong, where failing the run would lose the others).
    async fn read(&self) -> Duration {
        match self {
            Self::Pid(p) => crate::stats::pid_cpu(*p),
            Self::Redis(c) => c.cpu().await.unwrap_or_else(|e| {
                tracing::warn!(node = %c.addr, error = %e, "INFO cpu failed");
                Duration::ZERO
            }),
        }
    }
}

/// One client's tally.
#[derive(Debug)]
struct ClientTally {
    lat: Lat,
    tl: Timeline,
    received: u64,
    duplicates: u64,
    snapshots: u64,
    skipped: u64,
    /// Seqs below the terminal's that never arrived (with a terminal).
    missing: u64,
    got_terminal: bool,
    last_arrival: Option<Instant>,
    error: Option<String>,
}

impl ClientTally {
    fn new() -> Self {
        Self {
            lat: Lat::new(),
            tl: Timeline::new(1.0),
            received: 0,
            duplicates: 0,
            snapshots: 0,
            skipped: 0,
            missing: 0,
            got_terminal: false,
            last_arrival: None,
            error: None,
        }
    }
}

/// Figures of one run (relay or echo ceiling).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RelayFigures {
    /// What ran: `relay` or `echo ceiling`.
    pub path: String,
    /// Target rate (0 = unthrottled).
    pub target_rate: u64,
    /// Events published.
    pub published: u64,
    /// Published per second (publishing window).
    pub publish_rate: f64,
    /// Events delivered to clients (all clients).
    pub delivered: u64,
    /// Delivered per second (first publish → last delivery).
    pub delivered_per_s: f64,
    /// Expected deliveries (published × clients per job).
    pub expected: u64,
    /// Events never delivered to a client that should have had them.
    pub lost: u64,
    /// Events delivered twice to the same client.
    pub duplicates: u64,
    /// `snapshot` events received: exact resume was impossible (history
    /// trimmed or expired), so the gateway said so instead of leaving a gap.
    #[serde(default)]
    pub snapshots: u64,
    /// Events a snapshot stood in for (not counted as lost: G2 allows an
    /// explicit snapshot, never a silent gap).
    #[serde(default)]
    pub skipped_by_snapshot: u64,
    /// Clients that did not see the terminal event.
    pub unterminated_clients: u64,
    /// Client errors (first few).
    pub errors: Vec<String>,
    /// Publish → client latency.
    pub latency: LatSummary,
    /// CPU seconds per process over the run.
    pub cpu_s: Vec<(String, f64)>,
    /// CPU µs per delivered event per process.
    pub cpu_us_per_event: Vec<(String, f64)>,
    /// The run's id (its jobs are `rl-<run>-<n>`, n < `jobs`).
    #[serde(default)]
    pub run: String,
    /// Jobs the events were spread over.
    #[serde(default)]
    pub jobs: usize,
}

impl RelayFigures {
    /// The names of the run's jobs.
    pub fn job_names(&self) -> Vec<String> {
        (0..self.jobs).map(|j| job_name(&self.run, j)).collect()
    }
}

/// Publishing through relay (`Publisher` on Redis).
pub struct RelaySink(pub Publisher);

#[async_trait::async_trait]
impl Sink for RelaySink {
    async fn publish(&self, events: &[Event]) -> anyhow::Result<()> {
        if events.len() == 1 {
            self.0.publish(&events[0]).await?;
        } else {
            self.0.publish_batch(events).await?;
        }
        Ok(())
    }
}

fn job_name(run: &str, j: usize) -> String {
    format!("rl-{run}-{j}")
}

/// Runs producers and clients against `events_url(job)`; `meters` are the
/// processes whose CPU is reported.
pub async fn run_path(
    args: &RelayArgs,
    path: &str,
    sink: Arc<dyn Sink>,
    events_url: impl Fn(&str) -> String,
    meters: Vec<(String, CpuMeter)>,
    progress: Arc<AtomicU64>,
) -> (RelayFigures, Lat, Timeline) {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let jobs = args
        .jobs
        .unwrap_or(args.clients)
        .clamp(1, args.clients.max(1));
    let domain = args.domain.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients + 16)
        .tcp_nodelay(true)
        .build()
        .expect("http client");
    let t0 = Instant::now();
    let warm_until_us = Arc::new(AtomicU64::new(u64::MAX));
    let mut cpu_before = Vec::with_capacity(meters.len());
    for (_, m) in &meters {
        cpu_before.push(m.read().await);
    }
    let own_before = relay_testkit::bench::process_cpu();

    // Clients first (the gateway waits for jobs with no events yet).
    let mut clients = Vec::new();
    for c in 0..args.clients.max(1) {
        let job = job_name(&run, c % jobs);
        let url = events_url(&job);
        let client = client.clone();
        let warm = warm_until_us.clone();
        let progress = progress.clone();
        let drain = Duration::from_secs_f64(args.duration_secs + args.drain_secs + 30.0);
        clients.push(tokio::spawn(async move {
            let mut t = ClientTally::new();
            let mut seen: Vec<bool> = Vec::new();
            let deadline = tokio::time::Instant::now() + drain;
            let resp = match tokio::time::timeout_at(
                deadline,
                client
                    .get(&url)
                    .header("Accept", "text/event-stream")
                    .send(),
            )
            .await
            {
                Ok(Ok(r)) if r.status().is_success() => r,
                Ok(Ok(r)) => {
                    t.error = Some(format!("HTTP {}", r.status()));
                    return t;
                }
                Ok(Err(e)) => {
                    t.error = Some(e.to_string());
                    return t;
                }
                Err(_) => {
                    t.error = Some("timeout".into());
                    return t;
                }
            };
            let mut reader = SseReader::new(resp.bytes_stream());
            loop {
                let item = match tokio::time::timeout_at(deadline, reader.next_item()).await {
                    Ok(Some(Ok(i))) => i,
                    Ok(Some(Err(e))) => {
                        t.error = Some(e.to_string());
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        t.error = Some("drain timeout".into());
                        break;
                    }
                };
                let SseItem::Event(ev) = item else { continue };
                if ev.event == "snapshot" {
                    // Everything up to the state's seq is covered by it.
                    t.snapshots += 1;
                    let upto = serde_json::from_str::<SnapshotProbe>(&ev.data)
                        .ok()
                        .and_then(|p| p.seq)
                        .unwrap_or(0) as usize;
                    if seen.len() <= upto {
                        seen.resize(upto + 1024, false);
                    }
                    for s in seen.iter_mut().take(upto + 1).skip(1) {
                        if !*s {
                            *s = true;
                            t.skipped += 1;
                        }
                    }
                    continue;
                }
                let now = unix_us();
                let arrival = Instant::now();
                let Ok(p) = serde_json::from_str::<Probe>(&ev.data) else {
                    continue;
                };
                let i = p.seq as usize;
                if seen.len() <= i {
                    seen.resize(i + 1024, false);
                }
                if seen[i] {
                    t.duplicates += 1;
                    continue;
                }
                seen[i] = true;
                if p.stage == relay_core::event::DONE_STAGE {
                    t.got_terminal = true;
                    // Missing = seqs 1..terminal not seen.
                    t.missing = (1..p.seq as usize)
                        .filter(|s| !seen.get(*s).copied().unwrap_or(false))
                        .count() as u64;
                    break;
                }
                t.received += 1;
                progress.fetch_add(1, Ordering::Relaxed);
                t.last_arrival = Some(arrival);
                if p.data.t_us >= warm.load(Ordering::Relaxed) {
                    let us = now.saturating_sub(p.data.t_us);
                    t.lat.record_us(us);
                    t.tl.record(arrival.duration_since(t0).as_secs_f64(), us);
                }
            }
            t
        }));
    }
    // Let the clients connect and subscribe (resume makes this race safe anyway).
    tokio::time::sleep(Duration::from_millis(500 + 2 * args.clients as u64)).await;

    let start = Instant::now();
    warm_until_us.store(
        unix_us() + (args.warmup_secs * 1e6) as u64,
        Ordering::Relaxed,
    );
    let published = Arc::new(AtomicU64::new(0));
    let per_producer_rate = args.rate as f64 / args.producers.max(1) as f64;
    let dur = Duration::from_secs_f64(args.duration_secs);
    let pad = "x".repeat(args.payload_bytes);
    let mut producers = Vec::new();
    let nprod = args.producers.max(1);
    for p in 0..nprod {
        let my_jobs: Vec<String> = (0..jobs)
            .filter(|j| j % nprod == p)
            .map(|j| job_name(&run, j))
            .collect();
        if my_jobs.is_empty() {
            continue;
        }
        // Deliveries per event: every client of a job gets each of its events.
        let subs_per_job = (args.clients.max(1) / jobs).max(1) as u64;
        let backlog = (per_producer_rate <= 0.0 && args.max_backlog > 0).then(|| Backlog {
            delivered: progress.clone(),
            per_event: subs_per_job,
            max: args.max_backlog,
        });
        producers.push(tokio::spawn(
            Produce {
                sink: sink.clone(),
                jobs: my_jobs,
                domain: domain.clone(),
                pad: pad.clone(),
                rate: per_producer_rate,
                batch: args.batch,
                start,
                dur,
                published: published.clone(),
                backlog,
            }
            .run(),
        ));
    }
    for p in producers {
        // The domain was validated before the run and job names are
        // generated, so a producer has no reason to fail; say so if it did.
        match p.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("relay-load: a producer stopped: {e}"),
            Err(e) => eprintln!("relay-load: a producer task failed: {e}"),
        }
    }
    let publish_time = start.elapsed();
    let published = published.load(Ordering::Relaxed);

    let mut lat = Lat::new();
    let mut tl = Timeline::new(1.0);
    let mut f = RelayFigures {
        path: path.to_owned(),
        target_rate: args.rate,
        published,
        publish_rate: round3(published as f64 / publish_time.as_secs_f64().max(1e-9)),
        run: run.clone(),
        jobs,
        ..Default::default()
    };
    let mut last_arrival = start;
    for c in clients {
        let Ok(t) = c.await else { continue };
        lat.merge(&t.lat);
        tl.merge(&t.tl);
        f.delivered += t.received;
        f.duplicates += t.duplicates;
        f.snapshots += t.snapshots;
        f.skipped_by_snapshot += t.skipped;
        if t.got_terminal {
            f.lost += t.missing;
        } else {
            f.unterminated_clients += 1;
        }
        if let Some(e) = t.error {
            if f.errors.len() < 5 {
                f.errors.push(e);
            }
        }
        if let Some(a) = t.last_arrival {
            last_arrival = last_arrival.max(a);
        }
    }
    let jobs_u = jobs as u64;
    let clients_u = args.clients.max(1) as u64;
    f.expected = if clients_u.is_multiple_of(jobs_u) {
        published * (clients_u / jobs_u)
    } else {
        f.delivered + f.lost
    };
    // Undelivered events of clients without a terminal count as lost too.
    if f.expected > f.delivered + f.lost + f.skipped_by_snapshot {
        f.lost = f.expected - f.delivered - f.skipped_by_snapshot;
    }
    let window = last_arrival.duration_since(start).as_secs_f64().max(1e-9);
    f.delivered_per_s = round3(f.delivered as f64 / window);
    f.latency = lat.summary();
    let own = relay_testkit::bench::process_cpu().saturating_sub(own_before);
    let mut cpu: Vec<(String, f64)> = Vec::with_capacity(meters.len() + 1);
    for ((n, m), b) in meters.iter().zip(cpu_before) {
        cpu.push((n.clone(), m.read().await.saturating_sub(b).as_secs_f64()));
    }
    cpu.push(("relay-load (producers + clients)".into(), own.as_secs_f64()));
    f.cpu_us_per_event = cpu
        .iter()
        .map(|(n, s)| (n.clone(), round3(s * 1e6 / f.delivered.max(1) as f64)))
        .collect();
    f.cpu_s = cpu.into_iter().map(|(n, s)| (n, round3(s))).collect();
    (f, lat, tl)
}

/// The key space producers publish into.
pub fn key_space(domain: &str, shards: u32) -> anyhow::Result<KeySpace> {
    Ok(KeySpace::new(Profile::Native, Domain::new(domain)?, shards))
}

/// A publisher on `redis_url`, with `client`.
pub async fn publisher(
    client: relay_core::cli::RedisClient,
    redis_url: &str,
    keys: KeySpace,
) -> anyhow::Result<Publisher> {
    let backend = client.connect(redis_url).await?;
    Ok(Publisher::new(backend, keys, PublisherConfig::default()))
}

/// A publisher on the Redis Cluster found from `seeds`, with `node_url`'s
/// scheme and credentials on every node (the same topology the router
/// and gateway get from `--redis-cluster`), with `client`.
pub async fn cluster_publisher(
    client: relay_core::cli::RedisClient,
    seeds: &[String],
    node_url: &str,
    keys: KeySpace,
) -> anyhow::Result<Publisher> {
    let topology = RedisTopology::Cluster(ClusterTopology::new(seeds, node_url)?);
    let backend = client
        .connect_topology(topology, RedisConfig::default())
        .await?;
    Ok(Publisher::new(backend, keys, PublisherConfig::default()))
}

/// Summary rows for one path's figures.
pub fn summary_rows(f: &RelayFigures) -> Vec<(String, String)> {
    let p = &f.path;
    let mut rows = vec![
        (
            format!("[{p}] target rate"),
            if f.target_rate == 0 {
                "unthrottled".into()
            } else {
                format!("{} ev/s", f.target_rate)
            },
        ),
        (
            format!("[{p}] published"),
            format!("{} ({:.0} ev/s)", f.published, f.publish_rate),
        ),
        (
            format!("[{p}] delivered"),
            format!("{} ({:.0} ev/s)", f.delivered, f.delivered_per_s),
        ),
        (
            format!("[{p}] lost / duplicates"),
            format!("{} / {}", f.lost, f.duplicates),
        ),
        (
            format!("[{p}] snapshot resumes (events they stood in for)"),
            format!("{} ({})", f.snapshots, f.skipped_by_snapshot),
        ),
        (
            format!("[{p}] publish→client p50 / p99 / p999"),
            format!(
                "{:.3} / {:.3} / {:.3} ms",
                f.latency.p50_ms, f.latency.p99_ms, f.latency.p999_ms
            ),
        ),
    ];
    if f.unterminated_clients > 0 {
        rows.push((
            format!("[{p}] clients without terminal"),
            f.unterminated_clients.to_string(),
        ));
    }
    for e in &f.errors {
        rows.push((format!("[{p}] client error"), e.clone()));
    }
    for (n, us) in &f.cpu_us_per_event {
        rows.push((format!("[{p}] CPU µs/event {n}"), format!("{us:.2}")));
    }
    rows
}
