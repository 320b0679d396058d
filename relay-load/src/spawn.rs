//! `--spawn`: a private deployment on loopback — redis-server (free port,
//! temp dir, like the test harness) or, with [`Topology::Cluster`], a
//! private Redis Cluster of three masters and three replicas
//! (`relay_testkit::cluster`), `relay-router`, `relay-sse`, and for
//! scans `pipeline-scan api` plus `pipeline-scan worker`(s) over RabbitMQ
//! (127.0.0.1:5672 by default) with a unique queue prefix. Everything is
//! killed when the [`Deployment`] drops.

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::cli::RedisClient;
use relay_testkit::cluster::RedisCluster;
use relay_testkit::procs::{free_port, wait_for_port, Proc};
use relay_testkit::redis::RedisServer;
use serde::{Deserialize, Serialize};

/// Which Redis the relay runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// One redis-server (`--redis-url`).
    #[default]
    Standalone,
    /// A Redis Cluster (`--redis-cluster` seeds); `--spawn` starts three
    /// masters with a replica each.
    Cluster,
}

/// Where the system under test lives.
#[derive(Debug)]
pub struct Deployment {
    /// Redis URL: the server, or for a cluster the scheme and credentials
    /// used on every node (its host and port are one of the seeds).
    pub redis_url: String,
    /// Redis Cluster seed nodes (`host:port`); empty for one server.
    pub redis_cluster: Vec<String>,
    /// Gateway base URL (`http://127.0.0.1:PORT`).
    pub sse_url: String,
    /// Scan API base URL (scan deployments).
    pub api_url: Option<String>,
    /// Spawned processes by role (declared before `redis`: fields drop in
    /// order, so the processes are killed before their Redis goes away).
    pub procs: Vec<(String, Proc)>,
    /// The private redis-server, when spawned standalone.
    pub redis: Option<RedisServer>,
    /// The private cluster, when spawned as one (dropped after the
    /// processes, like `redis`).
    pub cluster: Option<RedisCluster>,
    /// Queue prefix of the spawned workers.
    pub queue_prefix: Option<String>,
    /// The broker settings the spawned API and workers share (to delete
    /// their queues at the end: the broker is shared, a run leaves nothing).
    pipeline: Option<pipeline_scan::app::PipelineArgs>,
}

/// Parses the broker flags exactly as the spawned processes do, so the
/// queue names (retry queues depend on the backoff settings) match theirs.
fn pipeline_args(flags: &[&str]) -> anyhow::Result<pipeline_scan::app::PipelineArgs> {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        pipeline: pipeline_scan::app::PipelineArgs,
    }
    let flags = <Flags as clap::Parser>::try_parse_from(
        std::iter::once("pipeline-scan").chain(flags.iter().copied()),
    )?;
    Ok(flags.pipeline)
}

/// What to spawn for scans.
#[derive(Clone, Debug)]
pub struct ScanSpawn {
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Worker processes.
    pub workers: usize,
    /// Vision simulator latency (`MS±JITTER`).
    pub sim_latency_ms: String,
    /// Extra simulated latency per stage (`stage=MS±J,...`).
    pub sim_stage_latency_ms: String,
    /// Prefetch per stage (`stage=N,...`).
    pub stage_prefetch: String,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Deployment {
    /// An existing deployment given by URLs (and, for a cluster, its
    /// seeds; `redis_url` then gives only the scheme and credentials).
    pub fn external(
        redis_url: String,
        redis_cluster: Vec<String>,
        sse_url: String,
        api_url: Option<String>,
    ) -> Self {
        Self {
            redis_url,
            redis_cluster,
            sse_url: sse_url.trim_end_matches('/').to_owned(),
            api_url: api_url.map(|u| u.trim_end_matches('/').to_owned()),
            redis: None,
            cluster: None,
            procs: Vec::new(),
            queue_prefix: None,
            pipeline: None,
        }
    }

    /// Spawns Redis (one server, or a 3 + 3 cluster), router and gateway
    /// (and the scan API and workers when `scan` is given), all with
    /// `client`, and waits until each listens.
    pub fn spawn(
        client: RedisClient,
        shards: u32,
        router_batch: u32,
        topology: Topology,
        scan: Option<&ScanSpawn>,
    ) -> anyhow::Result<Self> {
        let (redis, cluster) = match topology {
            Topology::Standalone => (Some(RedisServer::start()), None),
            Topology::Cluster => (
                None,
                Some(RedisCluster::try_start_private().map_err(|e| {
                    anyhow::Error::new(e).context("starting a private Redis Cluster")
                })?),
            ),
        };
        let redis_cluster = cluster
            .as_ref()
            .map(RedisCluster::seeds)
            .unwrap_or_default();
        let redis_url = match (&redis, redis_cluster.first()) {
            (Some(r), _) => r.url(),
            (None, Some(seed)) => format!("redis://{seed}"),
            (None, None) => anyhow::bail!("the spawned Redis Cluster has no nodes"),
        };
        let seeds = redis_cluster.join(",");
        let shards_s = shards.to_string();
        // The processes find every node from the seeds; --redis-url then
        // only gives the scheme.
        let mut common = vec![
            "--redis-client",
            client.as_str(),
            "--redis-url",
            redis_url.as_str(),
        ];
        if !seeds.is_empty() {
            common.extend(["--redis-cluster", seeds.as_str()]);
        }
        common.extend(["--shards", shards_s.as_str()]);
        let mut procs = Vec::new();

        let router_metrics = free_port();
        let rm = addr(router_metrics).to_string();
        let batch = router_batch.to_string();
        let mut args: Vec<&str> = common.to_vec();
        args.extend([
            "--metrics-addr",
            rm.as_str(),
            "--batch",
            batch.as_str(),
            "--block-ms",
            "1000",
        ]);
        procs.push((
            "relay-router".to_owned(),
            Proc::spawn("relay-router", &args, &[]),
        ));
        wait_for_port(addr(router_metrics), Duration::from_secs(30));

        let sse_port = free_port();
        let listen = addr(sse_port).to_string();
        let mut args: Vec<&str> = common.to_vec();
        args.extend([
            "--listen",
            listen.as_str(),
            "--max-connections",
            "20000",
            "--pending-job-secs",
            "30",
        ]);
        procs.push(("relay-sse".to_owned(), Proc::spawn("relay-sse", &args, &[])));
        wait_for_port(addr(sse_port), Duration::from_secs(30));

        let mut api_url = None;
        let mut queue_prefix = None;
        let mut pipeline_flags = None;
        if let Some(s) = scan {
            let prefix = format!("load{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
            // api and workers: the relay's flags, then the broker's.
            let broker = [
                "--amqp-url",
                s.amqp_url.as_str(),
                "--queue-prefix",
                prefix.as_str(),
            ];
            let mut pipeline: Vec<&str> = common.to_vec();
            pipeline.extend(broker);
            for i in 0..s.workers.max(1) {
                let metrics = addr(free_port()).to_string();
                let mut args = pipeline.clone();
                args.extend([
                    "worker",
                    "--metrics-addr",
                    metrics.as_str(),
                    "--sim-latency-ms",
                    s.sim_latency_ms.as_str(),
                ]);
                if !s.sim_stage_latency_ms.is_empty() {
                    args.extend(["--sim-stage-latency-ms", s.sim_stage_latency_ms.as_str()]);
                }
                if !s.stage_prefetch.is_empty() {
                    args.extend(["--stage-prefetch", s.stage_prefetch.as_str()]);
                }
                procs.push((
                    format!("pipeline-scan worker {i}"),
                    Proc::spawn("pipeline-scan", &args, &[]),
                ));
            }
            let api_port = free_port();
            let listen = addr(api_port).to_string();
            let mut args = pipeline.clone();
            args.extend(["api", "--listen", listen.as_str()]);
            procs.push((
                "pipeline-scan api".to_owned(),
                Proc::spawn("pipeline-scan", &args, &[]),
            ));
            wait_for_port(addr(api_port), Duration::from_secs(30));
            api_url = Some(format!("http://{listen}"));
            pipeline_flags = Some(pipeline_args(&broker)?);
            queue_prefix = Some(prefix);
        }
        Ok(Self {
            redis_url,
            redis_cluster,
            sse_url: format!("http://127.0.0.1:{sse_port}"),
            api_url,
            redis,
            cluster,
            procs,
            queue_prefix,
            pipeline: pipeline_flags,
        })
    }

    /// Stops the spawned processes and deletes the queues the spawned API
    /// and workers declared (the broker is shared; a run leaves nothing).
    pub async fn teardown(&mut self) -> anyhow::Result<()> {
        self.procs.clear();
        if let Some(p) = self.pipeline.take() {
            p.topology().delete_all(&p.amqp()).await?;
        }
        Ok(())
    }

    /// (role, pid) of every spawned process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .filter_map(|(n, p)| p.pid().map(|pid| (n.clone(), pid)))
            .collect()
    }
}

/// `redis-server --version` and `rabbitmqctl version` (best effort).
pub fn versions() -> Vec<(String, String)> {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unavailable".into())
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let redis = run("redis-server", &["--version"]);
    let redis = redis
        .split_whitespace()
        .find(|w| w.starts_with("v="))
        .map(|v| v.trim_start_matches("v=").to_owned())
        .unwrap_or(redis);
    vec![
        ("cores".into(), cores),
        ("cpu".into(), cpu),
        ("redis-server".into(), redis),
        ("rabbitmq".into(), run("rabbitmqctl", &["version"])),
    ]
}
