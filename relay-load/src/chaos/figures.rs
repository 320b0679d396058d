//! The run's figures (the report's JSON) and the summary table rows.

use std::collections::BTreeMap;

use serde::Serialize;

use super::checker::DeliveryCounts;

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
    /// Deliveries that departed from the histories (undecodable history
    /// records count as mismatches).
    #[serde(flatten)]
    pub delivery: DeliveryCounts,
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

/// The summary table rows of the report.
pub(super) fn summary_rows(f: &ChaosFigures) -> Vec<(String, String)> {
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
        ("lost".into(), f.delivery.lost.to_string()),
        ("duplicated".into(), f.delivery.duplicated.to_string()),
        ("out of order".into(), f.delivery.out_of_order.to_string()),
        (
            "content / id mismatches".into(),
            f.delivery.mismatched.to_string(),
        ),
        ("foreign epoch".into(), f.delivery.foreign_epoch.to_string()),
        (
            "snapshots (events skipped)".into(),
            format!(
                "{} ({})",
                f.delivery.snapshots, f.delivery.skipped_by_snapshot
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_counts_stay_flat_and_in_place_in_the_json() {
        let fig = ChaosFigures {
            delivery: DeliveryCounts {
                lost: 1,
                snapshots: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&fig).expect("figures serialize");
        let obj = v.as_object().expect("an object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let at = keys
            .iter()
            .position(|k| *k == "amqp_connections_closed")
            .expect("amqp_connections_closed");
        assert_eq!(
            keys[at + 1..at + 9],
            [
                "lost",
                "duplicated",
                "out_of_order",
                "mismatched",
                "foreign_epoch",
                "snapshots",
                "skipped_by_snapshot",
                "multiple_terminals"
            ]
        );
        assert_eq!(
            (obj["lost"].as_u64(), obj["snapshots"].as_u64()),
            (Some(1), Some(2))
        );
        assert!(!obj.contains_key("delivery"));
    }
}
