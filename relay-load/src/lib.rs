//! # relay-load
//!
//! The k6-equivalent load tool of the relay workspace.
//!
//! - `relay-load scan`: ramping virtual users (`--stages 30s:50,90s:50,30s:0`)
//!   submit scans to the scan API and follow each job's SSE stream to its
//!   terminal event (or poll the result with `--mode poll`), then think
//!   1–3 s. Reports completion, req/min, submit / first-event / E2E
//!   latencies, per-stage durations, duplicate and missing events, and the
//!   relay overhead: E2E minus the job's simulated model time (`model_ms`
//!   in the stage events).
//! - `relay-load relay`: producers publish at `--rate` through the real
//!   router to SSE clients on the gateway; reports delivered events/s,
//!   publish→client latency p50/p99/p999, loss and duplicates, CPU per
//!   event, next to the same run against a raw loopback TCP/HTTP echo (the
//!   ceiling of the SSE path) and `redis-benchmark` ceilings for the Redis
//!   work.
//! - `relay-load fanout`: SSE fan-out of relay side by side with nginx +
//!   Nchan (shared-memory and Redis storage), same subscribers, same run:
//!   delivered/s, server CPU per delivery, idle memory per connection,
//!   publish→client latency, loss and duplicates across drops and gateway
//!   restarts (see [`fanout`]).
//! - `relay-load chaos`: a full-stack soak under faults (process kills,
//!   Redis restarts, client kills and write refusals, broker disconnects)
//!   with an exact checker of every job's history and every client's
//!   received sequence (see [`chaos`] and `docs/CHAOS.md`).
//!
//! Targets: a deployment by URL (`--api-url`, `--sse-url`, `--redis-url`), or
//! `--spawn` to start redis-server, `relay-router`, `relay-sse`,
//! `pipeline-scan api` and `pipeline-scan worker`(s) on loopback. `relay`
//! also runs on a Redis Cluster: `--topology cluster` with `--spawn` (three
//! masters, three replicas), or `--redis-cluster` seeds of an existing one;
//! its report then has every node's CPU and each master's share.
//! Output: a progress bar, a table on stdout, `--json`, `--html` (inline SVG).

pub mod chaos;
pub mod cluster;
pub mod echo;
pub mod fanout;
pub mod produce;
pub mod relay;
pub mod report;
pub mod scan;
pub mod spawn;
pub mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use relay_core::cli::RedisClient;

use crate::cluster::{ClusterFigures, ClusterView, RunCounts};
use crate::relay::CpuMeter;
use crate::report::Report;
use crate::spawn::{Deployment, ScanSpawn, Topology};

/// `relay-load`: load scenarios for relay (every flag also from `RELAY_LOAD_*`).
#[derive(Debug, Parser)]
#[command(name = "relay-load", version, about)]
pub struct Cli {
    /// Target and output flags.
    #[command(flatten)]
    pub common: Common,
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Flags every scenario takes.
#[derive(Clone, Debug, Args)]
pub struct Common {
    /// Start a private deployment on loopback instead of using URLs.
    #[arg(long, env = "RELAY_LOAD_SPAWN", global = true)]
    pub spawn: bool,
    /// Scan API base URL.
    #[arg(
        long,
        env = "RELAY_LOAD_API_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub api_url: String,
    /// SSE gateway base URL.
    #[arg(
        long,
        env = "RELAY_LOAD_SSE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub sse_url: String,
    /// Redis URL (relay scenario producers).
    #[arg(
        long,
        env = "RELAY_LOAD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Redis client of the load tool's producers and checker and of the
    /// processes `--spawn` and `chaos` start (`fred` needs them built with
    /// `--features fred`).
    #[arg(
        long,
        env = "RELAY_LOAD_REDIS_CLIENT",
        value_name = "CLIENT",
        default_value = "redis-rs",
        value_parser = relay_core::cli::redis_client_parser(),
        global = true
    )]
    pub redis_client: RedisClient,
    /// Shard streams (must match the router and gateway).
    #[arg(long, env = "RELAY_LOAD_SHARDS", default_value_t = 4, global = true)]
    pub shards: u32,
    /// `--spawn`: the router's batch size.
    #[arg(
        long,
        env = "RELAY_LOAD_ROUTER_BATCH",
        default_value_t = 256,
        global = true
    )]
    pub router_batch: u32,
    /// Write the report as JSON here.
    #[arg(long, env = "RELAY_LOAD_JSON", global = true)]
    pub json: Option<PathBuf>,
    /// Write the HTML report (inline SVG charts) here.
    #[arg(long, env = "RELAY_LOAD_HTML", global = true)]
    pub html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, env = "RELAY_LOAD_QUIET", global = true)]
    pub quiet: bool,
}

/// Scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Ramping VUs: submit a scan, follow its stream to the end, think.
    Scan(scan::ScanArgs),
    /// Producers → router → gateway → SSE clients at a target rate.
    Relay(relay::RelayArgs),
    /// Full-stack soak under faults (kills, Redis restarts and refusals,
    /// broker disconnects) with an exact delivery checker; always spawns its
    /// own deployment and exits non-zero on any violation.
    Chaos(chaos::ChaosArgs),
    /// SSE fan-out side by side: relay vs nginx + Nchan (memory and
    /// Redis storage), each case on fresh private servers (always spawns;
    /// needs nginx and the Nchan module, see benches/peers/nchan.sh).
    Fanout(fanout::FanoutArgs),
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn bar(quiet: bool, len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        pb.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    }
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

/// Runs the parsed command; returns the report (also printed and written).
pub async fn run(cli: Cli) -> anyhow::Result<Report> {
    let report = match &cli.scenario {
        Scenario::Scan(args) => run_scan(&cli.common, args).await?,
        Scenario::Relay(args) if args.compare_clients => {
            return compare_clients(&cli.common, args).await;
        }
        Scenario::Relay(args) => run_relay(&cli.common, args).await?,
        Scenario::Fanout(args) => fanout::run(&cli.common, args).await?,
        Scenario::Chaos(args) => {
            let (report, violations) = chaos::run(&cli.common, args).await?;
            emit(&cli.common, &report)?;
            anyhow::ensure!(
                violations == 0,
                "chaos: {violations} violations (see the findings above)"
            );
            return Ok(report);
        }
    };
    emit(&cli.common, &report)?;
    Ok(report)
}

/// Prints the table and writes `--json` / `--html`.
pub fn emit(common: &Common, report: &Report) -> anyhow::Result<()> {
    println!("{}", report.table());
    if let Some(p) = &common.json {
        std::fs::write(p, serde_json::to_vec_pretty(report)?)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &common.html {
        std::fs::write(p, report.to_html())?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// `relay --compare-clients`: the relay scenario on a fresh spawned
/// deployment per Redis client, back to back, each report emitted as usual,
/// then one table of both. Separate deployments keep one client's keys,
/// connections and Redis state out of the other's run; running them back
/// to back (rather than in two invocations) keeps the machine's load as
/// alike as it gets. Returns the last client's report.
async fn compare_clients(common: &Common, args: &relay::RelayArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        common.spawn,
        "--compare-clients needs --spawn (it starts the router and gateway with each client)"
    );
    let clients = [RedisClient::RedisRs, RedisClient::Fred];
    for c in clients {
        c.available()?;
    }
    let mut rows = Vec::new();
    let mut last = None;
    for client in clients {
        let mut c = common.clone();
        c.redis_client = client;
        c.json = common.json.as_deref().map(|p| per_client_path(p, client));
        c.html = common.html.as_deref().map(|p| per_client_path(p, client));
        let report = run_relay(&c, args).await?;
        emit(&c, &report)?;
        let fig: relay::RelayFigures =
            serde_json::from_value(report.figures["paths"][0].clone()).unwrap_or_default();
        rows.push((client, fig, loadavg()));
        last = Some(report);
    }
    println!("{}", client_table(&rows));
    last.ok_or_else(|| anyhow::anyhow!("no client ran"))
}

/// `out.json` → `out.fred.json`: one report file per compared client.
fn per_client_path(path: &std::path::Path, client: RedisClient) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{client}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{client}"),
    };
    path.with_file_name(name)
}

/// The compared clients' relay figures, one row each. Redis CPU is every
/// metered process other than relay's own (`redis-server`, or all nodes of
/// a cluster).
fn client_table(rows: &[(RedisClient, relay::RelayFigures, String)]) -> String {
    let mut out = format!(
        "redis clients side by side (relay path):\n{:>9} {:>12} {:>9} {:>9} {:>15} {:>16} {:>14} {:>6} {:>18}\n",
        "client",
        "delivered/s",
        "p50 ms",
        "p99 ms",
        "router µs/ev",
        "gateway µs/ev",
        "Redis µs/ev",
        "lost",
        "load at end"
    );
    for (client, f, load) in rows {
        let cpu = |want: &dyn Fn(&str) -> bool| -> f64 {
            f.cpu_us_per_event
                .iter()
                .filter(|(n, _)| want(n))
                .map(|(_, us)| us)
                .sum()
        };
        out.push_str(&format!(
            "{:>9} {:>12.0} {:>9.3} {:>9.3} {:>15.2} {:>16.2} {:>14.2} {:>6} {:>18}\n",
            client.as_str(),
            f.delivered_per_s,
            f.latency.p50_ms,
            f.latency.p99_ms,
            cpu(&|n| n == "relay-router"),
            cpu(&|n| n == "relay-sse"),
            cpu(&|n| !n.starts_with("relay-")),
            f.lost,
            load
        ));
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn environment(dep: &Deployment, common: &Common) -> Vec<(String, String)> {
    let spawned = common.spawn;
    let mut env = spawn::versions();
    env.push(("load average at end (1/5/15 min)".into(), loadavg()));
    env.push((
        "target".into(),
        if spawned {
            "spawned on loopback".into()
        } else {
            "external URLs".into()
        },
    ));
    env.push(("sse url".into(), dep.sse_url.clone()));
    if let Some(a) = &dep.api_url {
        env.push(("api url".into(), a.clone()));
    }
    env.push(("redis client".into(), common.redis_client.to_string()));
    if dep.redis_cluster.is_empty() {
        env.push(("redis url".into(), dep.redis_url.clone()));
    } else {
        env.push(("redis cluster seeds".into(), dep.redis_cluster.join(",")));
    }
    if let Some(q) = &dep.queue_prefix {
        env.push(("queue prefix".into(), q.clone()));
    }
    env
}

/// The `scan` scenario.
pub async fn run_scan(common: &Common, args: &scan::ScanArgs) -> anyhow::Result<Report> {
    let load_start = loadavg();
    let dep = if common.spawn {
        let s = ScanSpawn {
            amqp_url: args.amqp_url.clone(),
            workers: args.workers,
            sim_latency_ms: args.sim_latency_ms.clone(),
            sim_stage_latency_ms: args.sim_stage_latency_ms.clone(),
            stage_prefetch: args.stage_prefetch.clone(),
        };
        let (client, shards, batch) = (common.redis_client, common.shards, common.router_batch);
        tokio::task::spawn_blocking(move || {
            Deployment::spawn(client, shards, batch, Topology::Standalone, Some(&s))
        })
        .await??
    } else {
        Deployment::external(
            common.redis_url.clone(),
            Vec::new(),
            common.sse_url.clone(),
            Some(common.api_url.clone()),
        )
    };
    let target = scan::Target {
        api_url: dep
            .api_url
            .clone()
            .unwrap_or_else(|| common.api_url.clone()),
        sse_url: dep.sse_url.clone(),
    };
    let live = Arc::new(scan::Live::default());
    let total = args.stages.total();
    let pb = bar(
        common.quiet,
        total.as_secs().max(1),
        "{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
    );
    let ticker = {
        let (pb, live) = (pb.clone(), live.clone());
        let t0 = Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                pb.set_position(t0.elapsed().as_secs().min(pb.length().unwrap_or(0)));
                let done = live.done.load(Ordering::Relaxed);
                let ok = live.ok.load(Ordering::Relaxed);
                pb.set_message(format!(
                    "VUs {} | in flight {} | iterations {} | completed {:.1} %",
                    live.vus.load(Ordering::Relaxed),
                    live.inflight.load(Ordering::Relaxed),
                    done,
                    if done == 0 {
                        100.0
                    } else {
                        100.0 * ok as f64 / done as f64
                    }
                ));
            }
        })
    };
    let (its, levels, run_time) = scan::run_vus(args, target, live).await;
    ticker.abort();
    pb.finish_and_clear();
    let mut dep = dep;
    if let Err(e) = dep.teardown().await {
        eprintln!("relay-load: deleting the spawned deployment's queues failed: {e}");
    }
    let (fig, e2e, tl) = scan::aggregate(args, &its, &levels, run_time);
    let mut env = environment(&dep, common);
    env.push(("load average at start".into(), load_start));
    if common.spawn {
        env.push((
            "workers".into(),
            format!(
                "{} × pipeline-scan worker (AMQP), prefetch {}",
                args.workers, args.stage_prefetch
            ),
        ));
        env.push((
            "simulated latency".into(),
            format!(
                "vision {} ms, {}",
                args.sim_latency_ms, args.sim_stage_latency_ms
            ),
        ));
    }
    Ok(Report {
        scenario: "scan".into(),
        title: format!("relay-load scan: {} VUs ({})", fig.max_vus, fig.stages),
        command: command_line(),
        started_unix: relay_core::auth::now_unix(),
        environment: env,
        summary: scan::summary_rows(&fig),
        figures: serde_json::to_value(&fig)?,
        latency_label: "E2E latency".into(),
        level_label: "VUs".into(),
        latency: e2e.summary(),
        timeline: tl.windows(),
        histogram: e2e.buckets(40),
    })
}

/// `redis-benchmark` ceilings for the relay's per-event Redis work on the
/// spawned server: XADD (producer), the apply script (router), combined.
async fn redis_ceilings(server: &relay_testkit::redis::RedisServer) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let port = server.port();
    let xadd = tokio::task::spawn_blocking(move || {
        let body = "x".repeat(160);
        relay_testkit::bench::redis_benchmark_rps(
            port,
            200_000,
            64,
            &[
                "XADD",
                "ceiling:{__rand_int__}",
                "*",
                "job",
                "j",
                "seq",
                "1",
                "enc",
                "msgpack",
                "body",
                &body,
            ],
        )
    })
    .await
    .ok()
    .flatten();
    let eval = relay_testkit::bench::evalsha_ceiling(server, 100_000, 64).await;
    if let Some(x) = xadd {
        out.push(("redis-benchmark XADD -P 64 (ops/s)".into(), x));
    }
    if let Some(e) = eval {
        out.push((
            "redis-benchmark EVALSHA apply script -P 64 (ops/s)".into(),
            e,
        ));
    }
    if let (Some(x), Some(e)) = (xadd, eval) {
        out.push((
            "combined XADD + apply (events/s)".into(),
            1.0 / (1.0 / x + 1.0 / e),
        ));
    }
    out
}

/// `PUBLISH`es of the cluster bus probe (a second or two of
/// `redis-benchmark -P 64` on this box).
const BUS_PROBE_PUBLISHES: u64 = 200_000;
/// Its message size: about a relay live envelope of the load's events.
const BUS_PROBE_PAYLOAD: usize = 200;

/// The `relay` scenario.
pub async fn run_relay(common: &Common, args: &relay::RelayArgs) -> anyhow::Result<Report> {
    let load_start = loadavg();
    let topology = args
        .effective_topology(common.spawn)
        .map_err(anyhow::Error::msg)?;
    let dep = if common.spawn {
        let (client, shards, batch) = (common.redis_client, common.shards, common.router_batch);
        tokio::task::spawn_blocking(move || {
            Deployment::spawn(client, shards, batch, topology, None)
        })
        .await??
    } else {
        Deployment::external(
            common.redis_url.clone(),
            args.redis_cluster.clone(),
            common.sse_url.clone(),
            None,
        )
    };
    let keys = relay::key_space(&args.domain, common.shards)?;
    let (publisher, view) = if dep.redis_cluster.is_empty() {
        (
            relay::publisher(common.redis_client, &dep.redis_url, keys.clone()).await?,
            None,
        )
    } else {
        let publisher = relay::cluster_publisher(
            common.redis_client,
            &dep.redis_cluster,
            &dep.redis_url,
            keys.clone(),
        )
        .await?;
        let view = ClusterView::discover(&dep.redis_cluster, &dep.redis_url).await?;
        (publisher, Some(view))
    };
    let mut meters: Vec<(String, CpuMeter)> = dep
        .pids()
        .into_iter()
        .map(|(n, p)| (n, CpuMeter::Pid(p)))
        .collect();
    if let Some(pid) = dep.redis.as_ref().and_then(|r| r.pid()) {
        meters.push(("redis-server".into(), CpuMeter::Pid(pid)));
    }
    if let Some(r) = &dep.redis {
        let _ = r.reset_stats().await;
    }
    if let Some(v) = &view {
        for (n, c) in v.nodes() {
            meters.push((v.label(n), CpuMeter::Redis(c.clone())));
        }
        v.reset_stats().await;
    }
    let progress = Arc::new(AtomicU64::new(0));
    let expected = if args.rate == 0 {
        0
    } else {
        (args.rate as f64 * args.duration_secs) as u64
    };
    let pb = bar(
        common.quiet,
        expected.max(1),
        "{elapsed_precise} [{bar:30}] {pos} events delivered {per_sec} {msg}",
    );
    let ticker = {
        let (pb, progress) = (pb.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                pb.set_position(progress.load(Ordering::Relaxed));
            }
        })
    };
    pb.set_message("(relay)");
    let sse = dep.sse_url.clone();
    let (fig, lat, tl) = relay::run_path(
        args,
        "relay",
        Arc::new(relay::RelaySink(publisher)),
        move |job| format!("{sse}/v1/jobs/{job}/events"),
        meters,
        progress.clone(),
    )
    .await;
    // Where Redis spent its time during the relay run (INFO commandstats).
    let mut commandstats: Vec<(String, u64, f64)> = Vec::new();
    if let Some(r) = &dep.redis {
        if let Ok(stats) = r.info_commandstats().await {
            commandstats = stats
                .into_iter()
                .map(|(k, v)| (k, v.calls, v.usec as f64 / fig.delivered.max(1) as f64))
                .collect();
            commandstats.sort_by(|a, b| b.2.total_cmp(&a.2));
        }
    }
    let mut cluster_figures = None;
    if let Some(v) = &view {
        let mut stats = std::collections::HashMap::new();
        for (n, c) in v.nodes() {
            match c.commandstats().await {
                Ok(t) => {
                    stats.insert(n.addr.clone(), t);
                }
                Err(e) => eprintln!("relay-load: INFO commandstats of {}: {e:#}", n.addr),
            }
        }
        let jobs = fig.job_names();
        cluster_figures = Some(ClusterFigures::build(
            v,
            &fig.cpu_s,
            &stats,
            &RunCounts {
                published: fig.published,
                delivered: fig.delivered,
                keys: &keys,
                jobs: &jobs,
            },
        ));
    }
    let mut paths = vec![fig.clone()];
    if !args.no_ceiling {
        progress.store(0, Ordering::Relaxed);
        pb.set_message("(loopback echo ceiling)");
        let echo = echo::Echo::start().await?;
        let url = echo.url();
        let (efig, _, _) = relay::run_path(
            args,
            "echo ceiling",
            Arc::new(echo::EchoSink(echo)),
            move |job| format!("{url}/e/{job}"),
            Vec::new(),
            progress.clone(),
        )
        .await;
        paths.push(efig);
    }
    if let (Some(v), Some(cf)) = (&view, cluster_figures.as_mut()) {
        // Like the standalone ceilings: on the spawned cluster only (an
        // external one may be shared, and redis-benchmark runs on loopback).
        if common.spawn {
            pb.set_message("(PUBLISH probe of the cluster bus)");
            match cluster::bus_probe(v, BUS_PROBE_PUBLISHES, BUS_PROBE_PAYLOAD).await {
                Ok(p) => cf.bus_probe = p,
                Err(e) => eprintln!("relay-load: the PUBLISH probe failed: {e:#}"),
            }
        }
    }
    ticker.abort();
    pb.finish_and_clear();
    let ceilings = match (&dep.redis, &view) {
        (Some(server), _) => redis_ceilings(server).await,
        (None, Some(v)) if common.spawn => cluster::ceilings(v).await.unwrap_or_else(|e| {
            eprintln!("relay-load: the cluster's redis-benchmark ceilings failed: {e:#}");
            Vec::new()
        }),
        _ => Vec::new(),
    };
    let mut summary = vec![
        (
            "topology".to_owned(),
            match &view {
                Some(v) => format!(
                    "Redis Cluster, {} masters + {} replicas, {} shard streams",
                    v.nodes
                        .iter()
                        .filter(|n| n.role == cluster::Role::Master)
                        .count(),
                    v.nodes
                        .iter()
                        .filter(|n| n.role == cluster::Role::Replica)
                        .count(),
                    common.shards
                ),
                None => format!("one redis-server, {} shard streams", common.shards),
            },
        ),
        (
            "producers / clients / jobs".to_owned(),
            format!(
                "{} / {} / {}",
                args.producers,
                args.clients,
                args.jobs.unwrap_or(args.clients)
            ),
        ),
        (
            "duration".into(),
            format!("{} s publishing", args.duration_secs),
        ),
    ];
    for p in &paths {
        summary.extend(relay::summary_rows(p));
    }
    if let Some(e) = paths.get(1) {
        summary.push((
            "relay / echo delivered".into(),
            format!(
                "{:.1} %",
                100.0 * fig.delivered_per_s / e.delivered_per_s.max(1e-9)
            ),
        ));
        summary.push((
            "relay p99 − echo p99".into(),
            format!("{:.3} ms", fig.latency.p99_ms - e.latency.p99_ms),
        ));
    }
    if let Some(cf) = &cluster_figures {
        summary.extend(cf.summary_rows());
    }
    for (cmd, calls, us) in commandstats.iter().take(6) {
        summary.push((
            format!("Redis µs/event {cmd}"),
            format!("{us:.2} ({calls} calls)"),
        ));
    }
    for (k, v) in &ceilings {
        summary.push((k.clone(), format!("{v:.0}")));
    }
    if let Some((_, c)) = ceilings.iter().find(|(k, _)| k.starts_with("combined")) {
        summary.push((
            "relay delivered / Redis ceiling".into(),
            format!("{:.1} %", 100.0 * fig.delivered_per_s / c),
        ));
    }
    let mut env = environment(&dep, common);
    env.push(("load average at start".into(), load_start));
    Ok(Report {
        scenario: "relay".into(),
        title: format!(
            "relay-load relay: {} ev/s target, {} clients",
            if args.rate == 0 {
                "unthrottled".to_string()
            } else {
                args.rate.to_string()
            },
            args.clients
        ),
        command: command_line(),
        started_unix: relay_core::auth::now_unix(),
        environment: env,
        summary,
        figures: serde_json::json!({
            "topology": topology,
            "cluster": cluster_figures,
            "paths": paths,
            "redis_ceilings": ceilings,
            "redis_commandstats_us_per_event": commandstats,
        }),
        latency_label: "publish→client latency".into(),
        level_label: "events/s delivered".into(),
        latency: lat.summary(),
        timeline: {
            // Level = events delivered in the window.
            tl.windows()
                .into_iter()
                .map(|mut w| {
                    w.level = w.count as f64;
                    w
                })
                .collect()
        },
        histogram: lat.buckets(40),
    })
}

#[cfg(test)]
mod cli_tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Scenario, Topology};

    #[test]
    fn every_flag_reads_a_relay_load_env_var() {
        Cli::command().debug_assert();
        let missing = relay_core::cli::flags_without_env(&Cli::command(), "RELAY_LOAD_");
        assert!(
            missing.is_empty(),
            "flags without RELAY_LOAD_* env: {missing:?}"
        );
    }

    /// The relay scenario's topology flags and the topology a run uses.
    fn topology_of(args: &[&str]) -> Result<Topology, String> {
        let cli = Cli::try_parse_from(std::iter::once("relay-load").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let Scenario::Relay(relay) = &cli.scenario else {
            panic!("not the relay scenario: {args:?}");
        };
        relay.effective_topology(cli.common.spawn)
    }

    #[test]
    fn topology_flags_select_standalone_or_cluster() {
        assert_eq!(topology_of(&["relay"]), Ok(Topology::Standalone));
        assert_eq!(topology_of(&["--spawn", "relay"]), Ok(Topology::Standalone));
        assert_eq!(
            topology_of(&["--spawn", "relay", "--topology", "cluster"]),
            Ok(Topology::Cluster)
        );
        assert_eq!(
            topology_of(&["relay", "--spawn", "--topology", "standalone"]),
            Ok(Topology::Standalone)
        );
        // Seeds of an existing cluster imply the cluster topology.
        assert_eq!(
            topology_of(&["relay", "--redis-cluster", "10.0.0.1:7000,10.0.0.2:7000"]),
            Ok(Topology::Cluster)
        );
        let cli = Cli::try_parse_from([
            "relay-load",
            "relay",
            "--redis-cluster",
            "10.0.0.1:7000,10.0.0.2:7000",
        ])
        .expect("parses");
        let Scenario::Relay(relay) = cli.scenario else {
            panic!("relay");
        };
        assert_eq!(relay.redis_cluster, ["10.0.0.1:7000", "10.0.0.2:7000"]);
    }

    #[test]
    fn compared_clients_write_one_report_each() {
        use relay_core::cli::RedisClient;
        let p = super::per_client_path(std::path::Path::new("/tmp/run.json"), RedisClient::Fred);
        assert_eq!(p, std::path::Path::new("/tmp/run.fred.json"));
        let p = super::per_client_path(std::path::Path::new("out"), RedisClient::RedisRs);
        assert_eq!(p, std::path::Path::new("out.redis-rs"));
        let cli = Cli::try_parse_from(["relay-load", "--spawn", "relay", "--compare-clients"])
            .expect("parses");
        let Scenario::Relay(relay) = cli.scenario else {
            panic!("relay");
        };
        assert!(relay.compare_clients);
    }

    #[test]
    fn topology_flags_that_do_not_fit_are_refused() {
        let err = topology_of(&["--spawn", "relay", "--redis-cluster", "10.0.0.1:7000"])
            .expect_err("--spawn starts its own cluster");
        assert!(err.contains("--spawn starts its own"), "{err}");
        let err = topology_of(&["relay", "--topology", "cluster"])
            .expect_err("no seeds and nothing spawned");
        assert!(
            err.contains("needs the cluster's --redis-cluster seeds"),
            "{err}"
        );
        let err = topology_of(&["relay", "--topology", "sentinel"]).expect_err("no such value");
        assert!(
            err.contains("standalone") && err.contains("cluster"),
            "{err}"
        );
    }
}
