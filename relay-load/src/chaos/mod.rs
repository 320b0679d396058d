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
//!
//! The modules follow the run's seams: `args` (the flags), `fleet` (the
//! spawned processes), `faults` (the fault log and schedule helpers) with one
//! module per fault source (`kills`, `redis_faults`, `amqp_faults`), `load`
//! (what the producers and clients share and record), `producer` (the
//! submissions), `client` (the SSE clients), `checker` (one job's exact
//! check), `verdict` (all jobs checked and tallied), `figures` (the report's
//! figures and table) and `soak` (the timed run that ties them together).

use std::sync::Arc;

use rand::Rng;
use relay_testkit::redis::{RedisServer, RedisServerOptions};

use crate::report::Report;

mod amqp_faults;
mod args;
mod checker;
mod client;
mod faults;
mod figures;
mod fleet;
mod kills;
mod load;
mod producer;
mod redis_faults;
mod soak;
mod verdict;

pub use amqp_faults::amqp_port;
pub use args::{ChaosArgs, Fsync};
pub use checker::{check_job, DeliveryCounts, History, JobFindings};
pub use client::frame_is_terminal;
pub use figures::ChaosFigures;
pub use fleet::Kind;
pub use load::{Follow, Got, Scan, Submit};

use faults::write_lines;
use figures::summary_rows;
use fleet::{deploy, topology};
use soak::soak;

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
        common.redis_client,
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
