//! The process fleet: the relay processes a run spawns (api, workers,
//! routers, gateways), shared by the fault tasks (which kill and restart
//! them) and the supervisor (which restarts those that die by themselves).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_testkit::procs::{free_port, wait_port, Proc};
use serde::Serialize;

use super::args::ChaosArgs;

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
    /// Every role (the kill schedule picks from these).
    pub(super) const ALL: [Kind; 4] = [Kind::Api, Kind::Worker, Kind::Router, Kind::Gateway];

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
pub(super) struct Cluster {
    members: Mutex<Vec<Member>>,
    /// Exits nobody asked for (a process died by itself), for the report.
    pub(super) exits: Mutex<Vec<String>>,
}

impl Cluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Running members of `kind`: (index, name).
    pub(super) fn running(&self, kind: Kind) -> Vec<(usize, String)> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.kind == kind && m.proc.pid().is_some())
            .map(|(i, m)| (i, m.name.clone()))
            .collect()
    }

    /// Pids of the running members of `kinds`.
    pub(super) fn pids(&self, kinds: &[Kind]) -> Vec<u32> {
        self.lock()
            .iter()
            .filter(|m| kinds.contains(&m.kind))
            .filter_map(|m| m.proc.pid())
            .collect()
    }

    /// `kill -9` of member `idx`.
    pub(super) fn kill(&self, idx: usize) {
        if let Some(m) = self.lock().get_mut(idx) {
            m.proc.kill9();
        }
    }

    /// Restarts member `idx` unless it runs.
    pub(super) fn start(&self, idx: usize) {
        if let Some(m) = self.lock().get_mut(idx) {
            if m.proc.pid().is_none() {
                m.proc.restart();
            }
        }
    }

    /// Restarts members that exited by themselves; returns their names.
    pub(super) fn supervise(&self, t: f64) -> Vec<String> {
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
    pub(super) fn ensure_all_running(&self) {
        for m in self.lock().iter_mut() {
            if m.proc.pid().is_none() {
                m.proc.restart();
            }
        }
    }

    /// `kill -9` of every member.
    pub(super) fn kill_all(&self) {
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

/// The run's private queue topology (deleted at the end).
pub(super) fn topology(prefix: &str, args: &ChaosArgs) -> pipeline_scan::transport::amqp::Topology {
    let retry = pipeline_scan::pipeline::RetryPolicy {
        max_attempts: args.max_attempts.max(1),
        base_delay: Duration::from_millis(args.backoff_ms.max(1)),
        max_delay: Duration::from_millis(args.max_backoff_ms.max(args.backoff_ms).max(1)),
    };
    pipeline_scan::transport::amqp::Topology::new(prefix, &pipeline_scan::scan::STAGE_NAMES, &retry)
}

/// A deployment: its processes and where to reach them.
pub(super) struct Deployed {
    /// The spawned processes.
    pub(super) cluster: Arc<Cluster>,
    /// `http://` address of the scan API.
    pub(super) api_url: String,
    /// `http://` addresses of the gateways.
    pub(super) gateways: Vec<String>,
    /// The private queue prefix.
    pub(super) prefix: String,
}

/// Spawns api, workers, routers and gateways against `redis_url` with
/// `client` and waits until each listens.
pub(super) async fn deploy(
    client: relay_core::cli::RedisClient,
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
        "--redis-client".to_owned(),
        client.to_string(),
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
