//! The exact checker of one job: its history in Redis must be gap-free with
//! one terminal, and the client must have received every history event
//! exactly once, in order, with the stored content.

use std::collections::{BTreeMap, HashSet};

use relay_core::backend::JobLog;
use relay_core::{Event, JobId, KeySpace, Offset, Position, Status};
use relay_sse::client::SseEvent;
use serde::Serialize;

use super::client::frame_is_terminal;
use super::load::Got;

/// A job's history as read from Redis.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// History identity (`None`: no history).
    pub epoch: Option<u64>,
    /// Highest offset assigned.
    pub top: u64,
    /// First retained offset.
    pub first: Option<u64>,
    /// (offset, decoded native event; `None` when undecodable), ascending.
    pub records: Vec<(u64, Option<Event>)>,
}

impl History {
    /// The job's terminal record (offset, event), the first if several.
    pub fn terminal(&self) -> Option<(u64, &Event)> {
        self.records
            .iter()
            .find_map(|(o, e)| e.as_ref().filter(|e| e.is_terminal()).map(|e| (*o, e)))
    }

    /// The last event (for reports on stuck jobs).
    pub fn last(&self) -> Option<&Event> {
        self.records.last().and_then(|(_, e)| e.as_ref())
    }
}

/// How a client's deliveries departed from its job's history: the counts a
/// job's findings and the run's figures share (all zero: exact delivery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    /// History events the client never received (and no snapshot covered).
    pub lost: u64,
    /// Events received more than once.
    pub duplicated: u64,
    /// Events received after a later offset.
    pub out_of_order: u64,
    /// Received events whose id or content differ from the history's.
    pub mismatched: u64,
    /// Received events of another epoch than the history's.
    pub foreign_epoch: u64,
    /// `snapshot` events received (resume failures).
    pub snapshots: u64,
    /// History events not received because a snapshot skipped them.
    pub skipped_by_snapshot: u64,
}

impl DeliveryCounts {
    /// Sum of the counts (each one is a violation).
    pub fn total(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.out_of_order
            + self.mismatched
            + self.foreign_epoch
            + self.snapshots
            + self.skipped_by_snapshot
    }
}

impl std::ops::AddAssign for DeliveryCounts {
    fn add_assign(&mut self, o: Self) {
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.mismatched += o.mismatched;
        self.foreign_epoch += o.foreign_epoch;
        self.snapshots += o.snapshots;
        self.skipped_by_snapshot += o.skipped_by_snapshot;
    }
}

/// What the checker found for one job (all zero / `terminals == 1` /
/// `client_terminals == 1`: clean).
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobFindings {
    /// Terminal events in the history.
    pub terminals: u32,
    /// Reward `completed` events in the history.
    pub reward_completed: u32,
    /// Offsets missing from the history (`1..=top` must all be there).
    pub history_gaps: u64,
    /// History events after the terminal one.
    pub after_terminal: u64,
    /// History events (up to the terminal) stored after an event with a
    /// higher seq: the apply order differs from the producer's order.
    pub seq_inversions: u64,
    /// History records that do not decode as native events.
    pub undecodable: u64,
    /// Events the client received (snapshots excluded).
    pub delivered: u64,
    /// How the client's deliveries departed from the history.
    #[serde(flatten)]
    pub delivery: DeliveryCounts,
    /// Terminal frames the client received.
    pub client_terminals: u32,
    /// Details of each finding (offsets, times, gateways).
    pub notes: Vec<String>,
}

impl JobFindings {
    /// Number of violated checks (0: the job is clean).
    pub fn violations(&self) -> u64 {
        u64::from(self.terminals != 1)
            + u64::from(self.reward_completed > 1)
            + self.history_gaps
            + self.after_terminal
            + self.seq_inversions
            + self.undecodable
            + self.delivery.total()
            + u64::from(self.client_terminals != 1)
    }
}

/// `seq N stage status` of an event, for findings.
pub(super) fn describe(e: Option<&Event>) -> String {
    e.map(|e| format!("seq {} {} {}", e.seq, e.stage.as_str(), e.status.as_str()))
        .unwrap_or_else(|| "undecodable".into())
}

/// Compares what a client received with the job's final history.
pub fn check_job(h: &History, got: &[Got]) -> JobFindings {
    let mut f = JobFindings::default();
    // The history itself.
    let offsets: HashSet<u64> = h.records.iter().map(|(o, _)| *o).collect();
    if h.epoch.is_some() {
        if h.first != Some(1) {
            f.notes
                .push(format!("history starts at {:?}, not 1", h.first));
        }
        for o in 1..=h.top {
            if !offsets.contains(&o) {
                f.history_gaps += 1;
                f.notes
                    .push(format!("history lacks offset {o} (top {})", h.top));
            }
        }
    }
    let terminal_at = h.terminal().map(|(o, _)| o);
    let mut max_seq: Option<(u64, u64)> = None;
    for (o, e) in &h.records {
        match e {
            None => {
                f.undecodable += 1;
                f.notes.push(format!("history offset {o} does not decode"));
            }
            Some(e) => {
                if e.is_terminal() {
                    f.terminals += 1;
                }
                if e.stage.as_str() == "reward" && e.status == Status::Completed {
                    f.reward_completed += 1;
                }
                match max_seq {
                    Some((seq, at)) if e.seq < seq && terminal_at.is_none_or(|t| *o <= t) => {
                        f.seq_inversions += 1;
                        f.notes.push(format!(
                            "history offset {o} ({}) stored after seq {seq} (offset {at})",
                            describe(Some(e))
                        ));
                    }
                    Some((seq, _)) if e.seq <= seq => {}
                    _ => max_seq = Some((e.seq, *o)),
                }
                if terminal_at.is_some_and(|t| *o > t) {
                    f.after_terminal += 1;
                    f.notes.push(format!(
                        "history offset {o} ({}) after the terminal at {}",
                        describe(Some(e)),
                        terminal_at.unwrap_or(0)
                    ));
                }
            }
        }
    }
    if f.terminals > 1 {
        f.notes
            .push(format!("{} terminal events in the history", f.terminals));
    }
    if f.reward_completed > 1 {
        f.notes.push(format!(
            "{} reward completed events in the history",
            f.reward_completed
        ));
    }
    // The client's sequence.
    let by_offset: BTreeMap<u64, Option<&Event>> =
        h.records.iter().map(|(o, e)| (*o, e.as_ref())).collect();
    let mut first_seen: BTreeMap<u64, &Got> = BTreeMap::new();
    let mut max_seen = 0u64;
    let mut covered = 0u64;
    for g in got {
        if frame_is_terminal(&SseEvent {
            id: g.id.clone(),
            event: g.event.clone(),
            data: g.data.clone(),
        }) {
            f.client_terminals += 1;
        }
        let pos = g.id.as_deref().and_then(|i| i.parse::<Position>().ok());
        if g.event == "snapshot" {
            f.delivery.snapshots += 1;
            f.notes.push(format!(
                "snapshot at t={} gw{} conn {} id {:?}: {}",
                g.t,
                g.gw,
                g.conn,
                g.id,
                g.data.chars().take(200).collect::<String>()
            ));
            if let Some(p) = pos {
                covered = covered.max(p.offset.0);
                max_seen = max_seen.max(p.offset.0);
            }
            continue;
        }
        f.delivered += 1;
        let Some(pos) = pos else {
            f.delivery.mismatched += 1;
            f.notes
                .push(format!("event without a valid id at t={}: {:?}", g.t, g.id));
            continue;
        };
        let off = pos.offset.0;
        if h.epoch.is_some_and(|e| e != pos.epoch.0) {
            f.delivery.foreign_epoch += 1;
            f.notes.push(format!(
                "event {} at t={} gw{} is not of the history's epoch {:?}",
                pos, g.t, g.gw, h.epoch
            ));
        }
        if let Some(prev) = first_seen.get(&off) {
            f.delivery.duplicated += 1;
            f.notes.push(format!(
                "offset {off} received again at t={} gw{} conn {} (first at t={} gw{} conn {})",
                g.t, g.gw, g.conn, prev.t, prev.gw, prev.conn
            ));
            continue;
        }
        if off < max_seen {
            f.delivery.out_of_order += 1;
            f.notes.push(format!(
                "offset {off} received at t={} gw{} conn {} after offset {max_seen}",
                g.t, g.gw, g.conn
            ));
        }
        first_seen.insert(off, g);
        max_seen = max_seen.max(off);
        let received = serde_json::from_str::<Event>(&g.data).ok();
        match by_offset.get(&off) {
            Some(Some(stored)) if received.as_ref() == Some(*stored) => {}
            stored => {
                f.delivery.mismatched += 1;
                f.notes.push(format!(
                    "offset {off} at t={} gw{}: received {}, history has {}",
                    g.t,
                    g.gw,
                    describe(received.as_ref()),
                    match stored {
                        Some(e) => describe(*e),
                        None => "nothing".into(),
                    }
                ));
            }
        }
    }
    // History events the client never got (up to the terminal: after it
    // the client stops, and events there are a history violation already).
    let until = terminal_at.unwrap_or(h.top);
    for (o, e) in &h.records {
        if *o > until || first_seen.contains_key(o) {
            continue;
        }
        if *o <= covered {
            f.delivery.skipped_by_snapshot += 1;
        } else {
            f.delivery.lost += 1;
            f.notes.push(format!(
                "offset {o} ({}) never received",
                describe(e.as_ref())
            ));
        }
    }
    if f.client_terminals == 0 {
        f.notes.push(format!(
            "the client saw no terminal event (received {} events, last {:?})",
            got.len(),
            got.last().map(|g| (g.t, g.id.clone(), g.event.clone()))
        ));
    }
    f
}

/// The reward grant of a history: (user's reward key, character) when the
/// reward `completed` event granted one.
pub(super) fn granted_reward(h: &History) -> Option<(String, bool)> {
    h.records.iter().find_map(|(_, e)| {
        let e = e.as_ref()?;
        if e.stage.as_str() != "reward" || e.status != Status::Completed {
            return None;
        }
        let r = e.data.get("reward")?;
        let id = r.get("character_id")?.as_str()?.to_owned();
        let owned = r
            .get("already_owned")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Some((id, owned))
    })
}

/// Reads a job's whole history from Redis.
pub(super) async fn read_history(
    backend: &dyn JobLog,
    keys: &KeySpace,
    job: &str,
) -> anyhow::Result<History> {
    let job = JobId::new(job)?;
    let page = backend
        .read_history(&keys.job(&job), Offset(0), 100_000)
        .await?;
    Ok(History {
        epoch: page.epoch.map(|e| e.0),
        top: page.top.0,
        first: page.first.map(|o| o.0),
        records: page
            .records
            .iter()
            .map(|r| {
                let e = match r.payload.decode() {
                    Ok(relay_core::Decoded::Native(e)) => Some(e),
                    _ => None,
                };
                (r.offset.0, e)
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, stage: &str, status: Status) -> Event {
        let mut e = Event::new("scan", "job-1", seq, stage, status).unwrap();
        e.ts = 1_700_000_000_000 + seq;
        e
    }

    fn history() -> History {
        let evs = [
            ev(1, "queued", Status::Started),
            ev(10, "vision", Status::Started),
            ev(11, "vision", Status::Completed),
            ev(51, "done", Status::Completed),
        ];
        History {
            epoch: Some(7),
            top: 4,
            first: Some(1),
            records: evs
                .into_iter()
                .enumerate()
                .map(|(i, e)| (i as u64 + 1, Some(e)))
                .collect(),
        }
    }

    fn got(h: &History, offsets: &[u64]) -> Vec<Got> {
        offsets
            .iter()
            .map(|o| {
                let e = h.records[*o as usize - 1].1.clone().unwrap();
                Got {
                    t: 0.0,
                    gw: 0,
                    conn: 1,
                    id: Some(format!("7:{o}")),
                    event: e.stage.as_str().to_owned(),
                    data: serde_json::to_string(&e).unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn checker_accepts_an_exact_delivery() {
        let h = history();
        let f = check_job(&h, &got(&h, &[1, 2, 3, 4]));
        assert_eq!(f.violations(), 0, "{:?}", f.notes);
        assert_eq!(f.delivered, 4);
    }

    #[test]
    fn delivery_counts_add_up_and_total() {
        let one = DeliveryCounts {
            lost: 1,
            duplicated: 2,
            out_of_order: 3,
            mismatched: 4,
            foreign_epoch: 5,
            snapshots: 6,
            skipped_by_snapshot: 7,
        };
        let mut sum = DeliveryCounts::default();
        sum += one;
        sum += one;
        assert_eq!(sum.total(), 56);
        assert_eq!((sum.lost, sum.skipped_by_snapshot), (2, 14));
    }

    #[test]
    fn checker_counts_lost_duplicated_and_out_of_order() {
        let h = history();
        let f = check_job(&h, &got(&h, &[1, 3, 3, 2, 4]));
        assert_eq!(
            (
                f.delivery.lost,
                f.delivery.duplicated,
                f.delivery.out_of_order
            ),
            (0, 1, 1)
        );
        let f = check_job(&h, &got(&h, &[1, 2, 4]));
        assert_eq!(
            (
                f.delivery.lost,
                f.delivery.duplicated,
                f.delivery.out_of_order
            ),
            (1, 0, 0)
        );
        assert_eq!(f.violations(), 1);
    }

    #[test]
    fn checker_reports_snapshots_and_what_they_skipped() {
        let h = history();
        let mut g = got(&h, &[1]);
        g.push(Got {
            t: 0.0,
            gw: 1,
            conn: 2,
            id: Some("7:3".into()),
            event: "snapshot".into(),
            data: r#"{"reason":"trimmed","state":{"stage":"vision"}}"#.into(),
        });
        g.extend(got(&h, &[4]));
        let f = check_job(&h, &g);
        assert_eq!(
            (
                f.delivery.snapshots,
                f.delivery.skipped_by_snapshot,
                f.delivery.lost
            ),
            (1, 2, 0)
        );
        assert!(f.violations() >= 3);
    }

    #[test]
    fn checker_flags_wrong_content_epoch_and_missing_terminal() {
        let h = history();
        let mut g = got(&h, &[1, 2, 3, 4]);
        g[1].data = serde_json::to_string(&ev(99, "vision", Status::Started)).unwrap();
        g[2].id = Some("8:3".into());
        let f = check_job(&h, &g);
        assert_eq!((f.delivery.mismatched, f.delivery.foreign_epoch), (1, 1));
        let f = check_job(&h, &got(&h, &[1, 2, 3]));
        assert_eq!(f.client_terminals, 0);
        assert!(f.violations() > 0);
    }

    #[test]
    fn checker_flags_a_bad_history() {
        let mut h = history();
        h.records.push((5, Some(ev(59, "done", Status::Failed))));
        h.records.remove(1);
        h.top = 5;
        let f = check_job(&h, &[]);
        assert_eq!((f.terminals, f.after_terminal, f.history_gaps), (2, 1, 1));

        let swap = |h: &mut History, i: usize, j: usize| {
            let e = h.records[i].1.take();
            h.records[i].1 = h.records[j].1.take();
            h.records[j].1 = e;
        };
        let mut h = history();
        swap(&mut h, 1, 2);
        let f = check_job(&h, &[]);
        assert_eq!(f.seq_inversions, 1, "{:?}", f.notes);
        let mut h = history();
        swap(&mut h, 2, 3);
        let f = check_job(&h, &[]);
        assert_eq!(
            (f.seq_inversions, f.after_terminal),
            (0, 1),
            "{:?}",
            f.notes
        );
    }
}
