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
use std::fmt;

use crate::backend::{HistoryPage, JobState};
use crate::codec::{LiveEnvelope, Payload, Record};
use crate::event::{Epoch, Offset, Position};

/// Default bound on live envelopes buffered during a catch-up.
pub const DEFAULT_BUFFER_LIMIT: usize = 4096;

/// Why exact resume was impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
        match self {
            SnapshotReason::EpochMismatch => "epoch_mismatch",
            SnapshotReason::Trimmed => "trimmed",
            SnapshotReason::Expired => "expired",
            SnapshotReason::Ahead => "ahead",
        }
    }
}

impl fmt::Display for SnapshotReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
            self.buffer.insert((epoch.0, record.offset.0), record.payload);
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
