//! The timed run: start the fault tasks and the supervisor, submit scans at
//! `--rate` during the fault phase, drain without faults, then check every
//! accepted job and build the report.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::KvStore;
use relay_core::testing::RedisServer;
use relay_core::{Domain, KeySpace, Profile, Status};

use super::amqp_faults::amqp_loop;
use super::args::ChaosArgs;
use super::checker::{check_job, describe, granted_reward, read_history};
use super::client::follow;
use super::faults::{write_lines, FaultCounts, FaultLog};
use super::figures::ChaosFigures;
use super::fleet::Deployed;
use super::kills::kill_loop;
use super::load::{Ctx, Scan, Submit};
use super::producer::submit;
use super::redis_faults::redis_loop;
use crate::report::Report;
use crate::stats::{round3, Lat, Timeline};

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
