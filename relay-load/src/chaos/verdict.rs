//! The run's verdict: every scan's submission and client are checked against
//! the job's final history in Redis (and its reward grant), and the findings
//! and fault counters are tallied into the figures. Apart from the per-job
//! checker because it reads Redis and spans the whole run.

use std::sync::atomic::Ordering;

use relay_core::{Domain, KeySpace, Profile, Status};

use super::checker::{check_job, describe, granted_reward, read_history};
use super::faults::FaultCounts;
use super::figures::ChaosFigures;
use super::load::{Scan, Submit};
use crate::stats::{Lat, Timeline};

/// What checking the scans produced besides the figures.
pub(super) struct Checked {
    /// Findings of the scans with violations, one line each.
    pub(super) notes: Vec<String>,
    /// Submit → terminal received, of the clients that saw a terminal.
    pub(super) e2e: Lat,
    /// The same latencies over time.
    pub(super) timeline: Timeline,
}

/// Checks every scan against the history in the Redis at `redis_url` (read
/// with `client`), tallies the outcome into `fig` and sets
/// `fig.violations`.
pub(super) async fn check_scans(
    client: relay_core::cli::RedisClient,
    redis_url: &str,
    shards: u32,
    scans: &[Scan],
    fig: &mut ChaosFigures,
) -> anyhow::Result<Checked> {
    let (backend, kv) = client.connect_with_kv(redis_url).await?;
    let keys = KeySpace::new(Profile::Native, Domain::new("scan")?, shards);
    let mut notes = Vec::new();
    let mut e2e = Lat::new();
    let mut tl = Timeline::new(10.0);
    for s in scans {
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
        let h = read_history(backend.as_ref(), &keys, job).await?;
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
            let owner = kv.get(&key).await?;
            if already_owned || owner.as_deref() != Some(job.as_bytes()) {
                reward_bad = true;
                f.notes.push(format!(
                    "reward {character}: already_owned {already_owned}, {key} holds {:?}",
                    owner.map(|o| String::from_utf8_lossy(&o).into_owned())
                ));
            }
        }
        fig.events_delivered += f.delivered;
        fig.delivery += f.delivery;
        fig.delivery.mismatched += f.undecodable;
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
        + fig.delivery.total()
        + fig.multiple_terminals
        + fig.reward_violations
        + fig.history_gaps
        + fig.events_after_terminal
        + fig.seq_inversions
        + fig.not_terminal
        + fig.client_terminal_violations;
    Ok(Checked {
        notes,
        e2e,
        timeline: tl,
    })
}

/// Copies the fault counters and the unexpected exits into `fig`.
pub(super) fn record_faults(fig: &mut ChaosFigures, counts: &FaultCounts, exits: &[String]) {
    {
        let kills = counts.kills.lock().unwrap_or_else(|p| p.into_inner());
        fig.kills = kills
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), *v))
            .collect();
        fig.kills_total = kills.values().sum();
    }
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
}
