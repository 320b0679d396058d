//! Gateway-side resume: merge a job's history (catch-up) with its live feed
//! into one gap-free, duplicate-free, offset-ordered sequence.
//!
//! [`Resume`] is pure logic — no I/O, no clock. The caller (the SSE gateway)
//! feeds it what happens and performs the [`Action`]s it asks for:
//!
//! 1. subscribe to the job's live channel **first** (so nothing published
//!    from now on can be missed), then call [`Resume::start`];
//! 2. deliver every live envelope with [`Resume::on_live`] (also while a
//!    history read is in flight: they are buffered and merged);
//! 3. answer every [`Action::ReadHistory`] with exactly one
//!    [`Resume::on_history`] (a page read *after* the request was made) and
//!    every [`Action::ReadState`] with exactly one [`Resume::on_state`];
//! 4. after the subscriber connection was lost and re-established (messages
//!    may have been missed), or when the live inbox overflowed, call
//!    [`Resume::on_reconnect`]; call [`Resume::poll`] when idle (e.g. on each
//!    heartbeat) so a lost *last* message is still found in history;
//! 5. write every [`Action::Emit`] and [`Action::Snapshot`] to the client, in
//!    the order given.
//!
//! Guarantees (property-tested in this module): for any starting position
//! and any interleaving of history reads and live deliveries — including
//! duplicated, reordered-by-redelivery and dropped live messages — every
//! offset after the client's position is emitted exactly once, in increasing
//! order; a [`Snapshot`] is emitted only when exact resume is impossible (the
//! client's epoch is not the job's, the history was trimmed past the client's
//! position or has expired), after which emission continues gap-free from the
//! snapshot's position. At most one read is outstanding at a time.
//!
//! ```
//! use relay_core::resume::{Action, Resume};
//! use relay_core::backend::HistoryPage;
//! use relay_core::{Epoch, Offset, Payload, Record, LiveEnvelope};
//! use bytes::Bytes;
//!
//! let rec = |o| Record { offset: Offset(o), payload: Payload(Bytes::from_static(b"j{}")) };
//! let mut r = Resume::new(None);
//! assert_eq!(r.start(), vec![Action::ReadHistory { after: Offset(0) }]);
//! // offset 3 arrives live while the history read is in flight
//! assert!(r.on_live(LiveEnvelope { epoch: Epoch(7), record: rec(3) }).is_empty());
//! let out = r.on_history(HistoryPage {
//!     epoch: Some(Epoch(7)), top: Offset(2), first: Some(Offset(1)),
//!     records: vec![rec(1), rec(2)],
//! });
//! let offsets: Vec<u64> = out.iter().filter_map(|a| match a {
//!     Action::Emit(e) => Some(e.record.offset.0), _ => None }).collect();
//! assert_eq!(offsets, [1, 2, 3]);
//! ```

use std::collections::BTreeMap;

use crate::backend::{HistoryPage, JobState};
use crate::codec::{LiveEnvelope, Payload, Record};
use crate::event::{Epoch, Offset, Position};

/// Default bound on live envelopes buffered during a catch-up.
pub const DEFAULT_BUFFER_LIMIT: usize = 4096;

/// Why exact resume was impossible. `Display` is [`as_str`](Self::as_str).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum SnapshotReason {
    /// The client's epoch is not the job's current history (unknown id, or
    /// the history expired and was re-created).
    EpochMismatch,
    /// The history no longer holds the events right after the client's
    /// position (trimmed by the length bound).
    Trimmed,
    /// The job's history no longer exists (expired).
    Expired,
    /// The client's offset is beyond anything the job's history assigned.
    Ahead,
}

impl SnapshotReason {
    /// A short lowercase name (for the SSE payload and metrics labels).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// An explicit "exact resume impossible" marker with the job's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Why it was needed.
    pub reason: SnapshotReason,
    /// The current state (`None`: the job has no state either; the stream
    /// then restarts from the beginning of whatever history appears next).
    pub state: Option<JobState>,
}

impl Snapshot {
    /// The client's position after this snapshot (`{epoch}:{top}`), if any.
    pub fn position(&self) -> Option<Position> {
        self.state.as_ref().map(|s| Position {
            epoch: s.epoch,
            offset: s.top,
        })
    }
}

/// What the caller must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this record to the client (its id is the envelope's position).
    Emit(LiveEnvelope),
    /// Read the job's history after this offset and call
    /// [`Resume::on_history`] with the page.
    ReadHistory {
        /// Read records with offset strictly greater than this.
        after: Offset,
    },
    /// Read the job's state and call [`Resume::on_state`] with it.
    ReadState,
    /// Send a snapshot event to the client.
    Snapshot(Snapshot),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `start` not called yet.
    Idle,
    /// A history read is outstanding.
    Reading,
    /// A state read is outstanding.
    FetchingState(SnapshotReason),
    /// Merging live envelopes.
    Live,
}

/// The per-connection resume state machine. See the module docs.
#[derive(Clone, Debug)]
pub struct Resume {
    from: Option<Position>,
    /// The history being followed (`None`: none yet; any history is
    /// followed from its first offset).
    epoch: Option<Epoch>,
    /// Last offset the client has.
    last: Offset,
    phase: Phase,
    /// Another history read is required once the current one completes.
    reread: bool,
    /// A live envelope arrived while no history was known.
    fresh_trigger: bool,
    /// Live records not yet emitted, keyed by (epoch, offset).
    buffer: BTreeMap<(u64, u64), Payload>,
    buffer_limit: usize,
    /// Position of the last snapshot whose state had no history behind it.
    snapshot_at: Option<Position>,
    snapshots: u32,
    known: bool,
}

impl Resume {
    /// A resume for a client at `from` (`None`: a new client, which receives
    /// the whole history from its first offset).
    pub fn new(from: Option<Position>) -> Self {
        Self {
            from,
            epoch: from.map(|p| p.epoch),
            last: from.map(|p| p.offset).unwrap_or(Offset::ZERO),
            phase: Phase::Idle,
            reread: false,
            fresh_trigger: false,
            buffer: BTreeMap::new(),
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            snapshot_at: None,
            snapshots: 0,
            known: false,
        }
    }

    /// Sets the bound on buffered live envelopes (at least 1). Envelopes
    /// beyond it are dropped and recovered with another history read.
    pub fn with_buffer_limit(mut self, limit: usize) -> Self {
        self.buffer_limit = limit.max(1);
        self
    }

    /// The position the client asked to resume from.
    pub fn from(&self) -> Option<Position> {
        self.from
    }

    /// The client's current position (`None` while no history is known).
    pub fn position(&self) -> Option<Position> {
        self.epoch.map(|epoch| Position {
            epoch,
            offset: self.last,
        })
    }

    /// Whether the job's history is known: a history page confirmed the
    /// epoch being followed, a live message started a new one, or a snapshot
    /// carried a state. Before that a client's claimed position is unverified.
    pub fn is_known(&self) -> bool {
        self.known && self.epoch.is_some()
    }

    /// Whether a history or state read is outstanding.
    pub fn is_reading(&self) -> bool {
        matches!(self.phase, Phase::Reading | Phase::FetchingState(_))
    }

    /// How many snapshots were emitted so far.
    pub fn snapshots(&self) -> u32 {
        self.snapshots
    }

    /// Live envelopes currently buffered.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Starts the catch-up. Call after subscribing to the live channel.
    pub fn start(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Idle {
            self.read(&mut out);
        }
        out
    }

    /// A live envelope arrived (in channel order; duplicates and stale
    /// messages are fine).
    pub fn on_live(&mut self, env: LiveEnvelope) -> Vec<Action> {
        let mut out = Vec::new();
        let LiveEnvelope { epoch, record } = env;
        if self.epoch == Some(epoch) && record.offset <= self.last {
            return out; // already delivered
        }
        if self.epoch.is_none() {
            self.fresh_trigger = true;
        }
        if self.buffer.len() >= self.buffer_limit {
            // Dropping is safe: another history read recovers it.
            self.reread = true;
        } else {
            self.buffer
                .insert((epoch.0, record.offset.0), record.payload);
        }
        if self.phase == Phase::Live {
            self.pump(&mut out);
        }
        out
    }

    /// The answer to the outstanding [`Action::ReadHistory`].
    pub fn on_history(&mut self, page: HistoryPage) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase != Phase::Reading {
            return out; // not asked for: ignore
        }
        self.phase = Phase::Live;
        match (page.epoch, self.epoch) {
            (None, None) => {
                // No history yet: wait for live messages (or a poll).
            }
            (None, Some(e)) => {
                if self.snapshot_at == Some(self.pos(e)) {
                    // The snapshot already told the client all there is.
                } else {
                    self.fetch_state(SnapshotReason::Expired, &mut out);
                    return out;
                }
            }
            (Some(pe), Some(e)) if pe != e => {
                self.fetch_state(SnapshotReason::EpochMismatch, &mut out);
                return out;
            }
            (Some(pe), _) => {
                let fresh = self.epoch.is_none();
                self.epoch = Some(pe);
                self.known = true;
                // Live envelopes of other epochs are stale (see module docs).
                self.buffer.retain(|(be, _), _| *be == pe.0);
                if self.last > page.top {
                    self.fetch_state(SnapshotReason::Ahead, &mut out);
                    return out;
                }
                let next = self.last.next();
                let trimmed = match page.first {
                    Some(first) => first > next,
                    None => page.top > self.last,
                };
                if trimmed {
                    if fresh {
                        self.epoch = None;
                    }
                    self.fetch_state(SnapshotReason::Trimmed, &mut out);
                    return out;
                }
                let mut progressed = false;
                for rec in page.records {
                    if rec.offset <= self.last {
                        continue;
                    }
                    if rec.offset != self.last.next() {
                        // A hole inside the history itself: trimmed under us.
                        self.fetch_state(SnapshotReason::Trimmed, &mut out);
                        return out;
                    }
                    self.emit(pe, rec, &mut out);
                    progressed = true;
                }
                if progressed && self.last < page.top {
                    // More pages.
                    self.read(&mut out);
                    return out;
                }
            }
        }
        self.pump(&mut out);
        out
    }

    /// The answer to the outstanding [`Action::ReadState`].
    pub fn on_state(&mut self, state: Option<JobState>) -> Vec<Action> {
        let mut out = Vec::new();
        let Phase::FetchingState(reason) = self.phase else {
            return out;
        };
        self.snapshots += 1;
        match &state {
            Some(st) => {
                self.epoch = Some(st.epoch);
                self.known = true;
                self.last = st.top;
                self.snapshot_at = Some(self.pos(st.epoch));
                let (e, top) = (st.epoch.0, st.top.0);
                self.buffer.retain(|(be, bo), _| *be == e && *bo > top);
                out.push(Action::Snapshot(Snapshot { reason, state }));
                // Catch up from the snapshot: anything applied after the
                // state read, whose live message we may have discarded.
                self.reread = false;
                self.read(&mut out);
            }
            None => {
                self.epoch = None;
                self.known = false;
                self.last = Offset::ZERO;
                self.snapshot_at = None;
                out.push(Action::Snapshot(Snapshot { reason, state }));
                self.phase = Phase::Live;
                self.pump(&mut out);
            }
        }
        out
    }

    /// The live subscription was re-established (or the live inbox
    /// overflowed): messages may have been missed, so catch up again.
    pub fn on_reconnect(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        match self.phase {
            Phase::Idle => {}
            Phase::Live => self.read(&mut out),
            Phase::Reading | Phase::FetchingState(_) => self.reread = true,
        }
        out
    }

    /// Idle check: re-reads history after the current position, so a lost
    /// live message with nothing after it is still delivered. A no-op while
    /// a read is outstanding.
    pub fn poll(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Live {
            self.fresh_trigger = false;
            self.read(&mut out);
        }
        out
    }

    fn pos(&self, epoch: Epoch) -> Position {
        Position {
            epoch,
            offset: self.last,
        }
    }

    fn read(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Reading;
        out.push(Action::ReadHistory { after: self.last });
    }

    fn fetch_state(&mut self, reason: SnapshotReason, out: &mut Vec<Action>) {
        self.phase = Phase::FetchingState(reason);
        out.push(Action::ReadState);
    }

    fn emit(&mut self, epoch: Epoch, record: Record, out: &mut Vec<Action>) {
        self.last = record.offset;
        self.snapshot_at = None;
        out.push(Action::Emit(LiveEnvelope { epoch, record }));
    }

    /// Emits buffered records that continue the sequence and requests a
    /// history read when something is missing. Phase must be `Live`.
    fn pump(&mut self, out: &mut Vec<Action>) {
        let epoch = match self.epoch {
            Some(e) => e,
            None => {
                // Any history starting at offset 1 can be followed directly.
                let first = self
                    .buffer
                    .keys()
                    .find(|(_, o)| *o == 1)
                    .map(|(e, _)| Epoch(*e));
                match first {
                    Some(e) => {
                        self.epoch = Some(e);
                        self.known = true;
                        self.buffer.retain(|(be, _), _| *be == e.0);
                        e
                    }
                    None => {
                        if self.fresh_trigger || self.reread {
                            self.fresh_trigger = false;
                            self.reread = false;
                            self.read(out);
                        }
                        return;
                    }
                }
            }
        };
        let e = epoch.0;
        loop {
            let next = self.last.next();
            match self.buffer.remove(&(e, next.0)) {
                Some(payload) => self.emit(
                    epoch,
                    Record {
                        offset: next,
                        payload,
                    },
                    out,
                ),
                None => break,
            }
        }
        let last = self.last.0;
        self.buffer.retain(|(be, bo), _| *be != e || *bo > last);
        let missing = self.reread || !self.buffer.is_empty();
        if missing {
            self.reread = false;
            self.read(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    const E: Epoch = Epoch(42);

    #[test]
    fn snapshot_reasons_display_their_short_names() {
        let all = [
            SnapshotReason::EpochMismatch,
            SnapshotReason::Trimmed,
            SnapshotReason::Expired,
            SnapshotReason::Ahead,
        ];
        let names = ["epoch_mismatch", "trimmed", "expired", "ahead"];
        assert_eq!(all.map(SnapshotReason::as_str), names);
        assert_eq!(all.map(|r| r.to_string()), names.map(str::to_owned));
    }

    fn payload(o: u64) -> Payload {
        Payload(Bytes::from(format!("j{{\"o\":{o}}}")))
    }

    fn rec(o: u64) -> Record {
        Record {
            offset: Offset(o),
            payload: payload(o),
        }
    }

    fn env(e: Epoch, o: u64) -> LiveEnvelope {
        LiveEnvelope {
            epoch: e,
            record: rec(o),
        }
    }

    /// A page of an untrimmed history whose top is `top`, holding `records`.
    fn page(epoch: Epoch, top: u64, records: &[u64]) -> HistoryPage {
        HistoryPage {
            epoch: Some(epoch),
            top: Offset(top),
            first: Some(Offset(1)),
            records: records.iter().map(|&o| rec(o)).collect(),
        }
    }

    /// A job's state: its top event.
    fn state(epoch: Epoch, top: u64) -> JobState {
        JobState {
            epoch,
            top: Offset(top),
            seq: top,
            record: rec(top),
        }
    }

    /// The job as the backend holds it.
    #[derive(Debug)]
    struct Job {
        epoch: Epoch,
        applied: u64,
        /// Keep at most this many history records (`None`: unbounded).
        keep: Option<u64>,
        /// Whether any read ever saw the history trimmed past what it asked for.
        trimmed_seen: bool,
    }

    impl Job {
        fn first(&self) -> u64 {
            match self.keep {
                Some(k) if self.applied > k => self.applied - k + 1,
                _ => 1,
            }
        }
        fn page(&mut self, after: Offset, limit: usize) -> HistoryPage {
            if self.applied == 0 {
                return HistoryPage::default();
            }
            let first = self.first();
            if first > after.0 + 1 {
                self.trimmed_seen = true;
            }
            let start = first.max(after.0 + 1);
            let records = (start..=self.applied).take(limit).map(rec).collect();
            HistoryPage {
                epoch: Some(self.epoch),
                top: Offset(self.applied),
                first: Some(Offset(first)),
                records,
            }
        }
        fn state(&self) -> Option<JobState> {
            (self.applied > 0).then(|| JobState {
                epoch: self.epoch,
                top: Offset(self.applied),
                seq: self.applied,
                record: rec(self.applied),
            })
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Apply {
            drop: bool,
            dup: bool,
        },
        Deliver,
        Serve {
            limit: usize,
        },
        /// Execute the outstanding read now, answer later.
        Exec {
            limit: usize,
        },
        Reconnect,
        Poll,
        Republish(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<bool>(), any::<bool>()).prop_map(|(d, u)| Op::Apply { drop: d && u, dup: u && !d }),
            4 => Just(Op::Deliver),
            2 => (1usize..5).prop_map(|limit| Op::Serve { limit }),
            2 => (1usize..5).prop_map(|limit| Op::Exec { limit }),
            1 => Just(Op::Reconnect),
            1 => Just(Op::Poll),
            1 => (1u64..50).prop_map(Op::Republish),
        ]
    }

    #[derive(Debug)]
    enum Answer {
        History(HistoryPage),
        State(Option<JobState>),
    }

    /// Drives a resume against a simulated job; returns the client's view.
    struct Sim {
        job: Job,
        live: VecDeque<LiveEnvelope>,
        r: Resume,
        outstanding: Option<Action>,
        /// The result of an executed, not yet answered read.
        result: Option<Answer>,
        /// The client's position as it sees it, from emits and snapshots.
        client: Option<Position>,
        emitted: Vec<Position>,
        snapshots: Vec<Snapshot>,
        total: u64,
        silent_drop: bool,
    }

    impl Sim {
        fn handle(&mut self, actions: Vec<Action>) {
            for a in actions {
                match a {
                    Action::Emit(env) => {
                        let pos = env.position();
                        if let Some(c) = self.client {
                            assert_eq!(c.epoch, pos.epoch, "epoch changed without snapshot");
                            assert_eq!(
                                pos.offset,
                                c.offset.next(),
                                "not contiguous: {c:?} -> {pos:?}"
                            );
                        } else {
                            assert_eq!(pos.offset, Offset(1), "new client must start at 1");
                        }
                        assert_eq!(env.record.payload, payload(pos.offset.0));
                        self.client = Some(pos);
                        self.emitted.push(pos);
                    }
                    Action::Snapshot(s) => {
                        self.client = s.position();
                        self.snapshots.push(s);
                    }
                    a @ (Action::ReadHistory { .. } | Action::ReadState) => {
                        assert!(self.outstanding.is_none(), "two reads outstanding");
                        self.outstanding = Some(a);
                    }
                }
            }
        }

        fn apply(&mut self, drop: bool, dup: bool) {
            if self.job.applied >= self.total {
                return;
            }
            self.job.applied += 1;
            let e = env(self.job.epoch, self.job.applied);
            self.silent_drop |= drop;
            if !drop {
                self.live.push_back(e.clone());
                if dup {
                    self.live.push_back(e);
                }
            }
        }

        fn exec(&mut self, limit: usize) {
            if self.result.is_some() {
                return;
            }
            self.result = match &self.outstanding {
                Some(Action::ReadHistory { after }) => {
                    Some(Answer::History(self.job.page(*after, limit)))
                }
                Some(Action::ReadState) => Some(Answer::State(self.job.state())),
                _ => None,
            };
        }

        fn serve(&mut self, limit: usize) {
            self.exec(limit);
            self.outstanding = None;
            let out = match self.result.take() {
                Some(Answer::History(page)) => self.r.on_history(page),
                Some(Answer::State(st)) => self.r.on_state(st),
                None => return,
            };
            self.handle(out);
        }

        fn step(&mut self, op: Op) {
            match op {
                Op::Apply { drop, dup } => self.apply(drop, dup),
                Op::Deliver => {
                    if let Some(e) = self.live.pop_front() {
                        let out = self.r.on_live(e);
                        self.handle(out);
                    }
                }
                Op::Serve { limit } => self.serve(limit),
                Op::Exec { limit } => self.exec(limit),
                Op::Reconnect => {
                    self.live.clear(); // lost during the outage
                    let out = self.r.on_reconnect();
                    self.handle(out);
                }
                Op::Poll => {
                    let out = self.r.poll();
                    self.handle(out);
                }
                Op::Republish(o) => {
                    if o <= self.job.applied {
                        self.live.push_back(env(self.job.epoch, o));
                    }
                }
            }
        }

        /// Applies the rest and lets everything settle, without polling:
        /// a final re-publish of the last event (as a router redelivery would)
        /// must be enough for gap detection to recover every lost message.
        fn finish(&mut self) {
            // Settle without new publishes or polls: unless a live message
            // was lost silently (no reconnect signalled), the client must
            // already have everything applied so far.
            self.settle();
            if !self.silent_drop && self.job.applied > 0 {
                assert_eq!(
                    self.client.map(|p| p.offset),
                    Some(Offset(self.job.applied)),
                    "settled short of the top without a silent loss"
                );
            }
            while self.job.applied < self.total {
                self.apply(false, false);
            }
            if self.total > 0 {
                self.live.push_back(env(self.job.epoch, self.total));
            }
            self.settle();
        }

        fn settle(&mut self) {
            for _ in 0..10_000 {
                if let Some(e) = self.live.pop_front() {
                    let out = self.r.on_live(e);
                    self.handle(out);
                } else if self.outstanding.is_some() {
                    self.serve(3);
                } else {
                    break;
                }
            }
            assert!(self.outstanding.is_none() && self.live.is_empty());
        }
    }

    fn sim(from: Option<Position>, pre: u64, total: u64, keep: Option<u64>) -> Sim {
        let mut s = Sim {
            job: Job {
                epoch: E,
                applied: pre,
                keep,
                trimmed_seen: false,
            },
            live: VecDeque::new(),
            r: Resume::new(from).with_buffer_limit(8),
            outstanding: None,
            result: None,
            client: from,
            emitted: Vec::new(),
            snapshots: Vec::new(),
            total,
            silent_drop: false,
        };
        let out = s.r.start();
        s.handle(out);
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Exact resume: every offset after the client's position exactly
        /// once, in order, never a snapshot.
        #[test]
        fn exact_resume_any_interleaving(
            total in 1u64..30,
            pre_frac in 0.0f64..=1.0,
            from_frac in proptest::option::of(0.0f64..=1.0),
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let pre = (total as f64 * pre_frac) as u64;
            let from = from_frac.map(|f| Position { epoch: E, offset: Offset((pre as f64 * f) as u64) });
            // A client at offset 0 of a job with no history yet cannot hold an epoch.
            let from = from.filter(|p| pre > 0 || p.offset.0 > 0);
            let mut s = sim(from, pre, total, None);
            for op in ops {
                s.step(op);
            }
            s.finish();
            let start = from.map(|p| p.offset.0).unwrap_or(0);
            let got: Vec<u64> = s.emitted.iter().map(|p| p.offset.0).collect();
            let want: Vec<u64> = (start + 1..=total).collect();
            prop_assert_eq!(got, want);
            prop_assert!(s.snapshots.is_empty(), "unexpected snapshot {:?}", s.snapshots);
            prop_assert_eq!(s.r.position(), Some(Position { epoch: E, offset: Offset(total) }));
        }

        /// Trimmed history: a snapshot only when a read saw the history
        /// trimmed past the client's position; afterwards gap-free to the end.
        #[test]
        fn trimmed_history_snapshots_only_when_needed(
            total in 1u64..30,
            keep in 1u64..8,
            pre_frac in 0.0f64..=1.0,
            from_frac in proptest::option::of(0.0f64..=1.0),
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let pre = (total as f64 * pre_frac) as u64;
            let from = from_frac
                .map(|f| Position { epoch: E, offset: Offset((pre as f64 * f) as u64) })
                .filter(|p| pre > 0 || p.offset.0 > 0);
            let mut s = sim(from, pre, total, Some(keep));
            for op in ops {
                s.step(op);
            }
            s.finish();
            if !s.job.trimmed_seen {
                prop_assert!(s.snapshots.is_empty());
            }
            for snap in &s.snapshots {
                prop_assert_eq!(snap.reason, SnapshotReason::Trimmed);
            }
            // Sim::handle checked contiguity after each snapshot.
            prop_assert_eq!(s.client, Some(Position { epoch: E, offset: Offset(total) }));
        }

        /// A client from another epoch gets exactly one snapshot first, then
        /// the rest gap-free.
        #[test]
        fn unknown_epoch_snapshot_then_gap_free(
            total in 1u64..20,
            pre in 1u64..20,
            offset in 0u64..40,
            ops in proptest::collection::vec(op(), 0..80),
        ) {
            let pre = pre.min(total);
            let from = Some(Position { epoch: Epoch(7), offset: Offset(offset) });
            let mut s = sim(from, pre, total, None);
            for op in ops {
                s.step(op);
            }
            s.finish();
            prop_assert_eq!(s.snapshots.len(), 1);
            prop_assert_eq!(s.snapshots[0].reason, SnapshotReason::EpochMismatch);
            prop_assert_eq!(s.client, Some(Position { epoch: E, offset: Offset(total) }));
        }
    }

    #[test]
    fn new_client_of_unknown_job_waits_then_follows_live() {
        let mut r = Resume::new(None);
        assert_eq!(r.start(), vec![Action::ReadHistory { after: Offset(0) }]);
        assert!(r.on_history(HistoryPage::default()).is_empty());
        assert!(!r.is_known());
        let out = r.on_live(env(E, 1));
        assert_eq!(out, vec![Action::Emit(env(E, 1))]);
        assert!(r.is_known());
        // A gap asks for history.
        assert_eq!(
            r.on_live(env(E, 3)),
            vec![Action::ReadHistory { after: Offset(1) }]
        );
    }

    #[test]
    fn expired_history_and_state_gives_empty_snapshot() {
        let mut r = Resume::new(Some(Position {
            epoch: E,
            offset: Offset(4),
        }));
        r.start();
        assert_eq!(
            r.on_history(HistoryPage::default()),
            vec![Action::ReadState]
        );
        let out = r.on_state(None);
        assert_eq!(
            out,
            vec![Action::Snapshot(Snapshot {
                reason: SnapshotReason::Expired,
                state: None
            })]
        );
        assert!(!r.is_known());
    }

    #[test]
    fn client_ahead_of_history_gets_snapshot() {
        let mut r = Resume::new(Some(Position {
            epoch: E,
            offset: Offset(9),
        }));
        r.start();
        assert_eq!(r.on_history(page(E, 2, &[])), vec![Action::ReadState]);
        let st = state(E, 2);
        let out = r.on_state(Some(st.clone()));
        assert_eq!(
            out[0],
            Action::Snapshot(Snapshot {
                reason: SnapshotReason::Ahead,
                state: Some(st)
            })
        );
        assert_eq!(out[1], Action::ReadHistory { after: Offset(2) });
    }

    #[test]
    fn epoch_change_mid_stream_snapshots() {
        let mut r = Resume::new(None);
        r.start();
        assert_eq!(r.on_history(page(E, 1, &[1])).len(), 1);
        // The history expired and was re-created with another epoch.
        let e2 = Epoch(99);
        assert_eq!(
            r.on_live(env(e2, 1)),
            vec![Action::ReadHistory { after: Offset(1) }]
        );
        assert_eq!(r.on_history(page(e2, 1, &[1])), vec![Action::ReadState]);
        let out = r.on_state(Some(state(e2, 1)));
        assert!(
            matches!(&out[0], Action::Snapshot(s) if s.reason == SnapshotReason::EpochMismatch)
        );
        assert_eq!(
            r.position(),
            Some(Position {
                epoch: e2,
                offset: Offset(1)
            })
        );
    }
}
