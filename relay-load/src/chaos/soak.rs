//! The timed run: start the fault tasks and the supervisor, submit scans at
//! `--rate` during the fault phase, drain without faults, then have every
//! scan checked and build the report.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_testkit::redis::RedisServer;

use super::amqp_faults::amqp_loop;
use super::args::ChaosArgs;
use super::client::follow;
use super::faults::{write_lines, FaultCounts, FaultLog, FaultPhase};
use super::figures::ChaosFigures;
use super::fleet::Deployed;
use super::kills::kill_loop;
use super::load::{Ctx, Scan, Submit};
use super::producer::submit;
use super::redis_faults::redis_loop;
use super::verdict::{check_scans, record_faults, Checked};
use crate::report::Report;
use crate::stats::round3;

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

/// Load, faults, drain and check; the deployment is cleaned up by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) async fn soak(
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
    let phase = FaultPhase {
        args: args.clone(),
        start: t0,
        end: phase_end,
        stop: stop.clone(),
        counts: counts.clone(),
        log: log.clone(),
    };
    let killer = tokio::spawn(kill_loop(
        dep.cluster.clone(),
        phase.clone(),
        StdRng::seed_from_u64(master.random()),
    ));
    let redis_faults = tokio::spawn(redis_loop(
        redis.clone(),
        phase.clone(),
        StdRng::seed_from_u64(master.random()),
    ));
    let amqp_faults = tokio::spawn(amqp_loop(
        dep.cluster.clone(),
        phase,
        StdRng::seed_from_u64(master.random()),
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
    let mut fig = ChaosFigures {
        secs: args.secs,
        rate: args.rate,
        seed,
        appendfsync: format!("{:?}", args.appendfsync).to_lowercase(),
        ..Default::default()
    };
    let Checked {
        mut notes,
        e2e,
        timeline: tl,
    } = check_scans(
        common.redis_client,
        &redis.url(),
        common.shards,
        &scans,
        &mut fig,
    )
    .await?;
    let exits = dep
        .cluster
        .exits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    record_faults(&mut fig, &counts, &exits);
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
