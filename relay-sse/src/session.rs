//! One SSE connection's session: drives a [`Resume`] against the backend
//! and the live inbox, frames what it emits (see [`crate::frame`]) in
//! bounded chunks, and writes them to an [`Output`] under the write
//! timeout, the heartbeat and the stream's time limit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use relay_core::backend::{Backend, JobState};
use relay_core::event::now_ms;
use relay_core::keys::JobKeys;
use relay_core::resume::{Action, Resume};
use relay_core::{Epoch, LiveEnvelope, Offset, Position, TraceContext};

use crate::frame::{Framing, LiveMsg};
use crate::hub::{Membership, Signal};
use crate::metrics::{CloseReason, Metrics};
use crate::output::Output;
use crate::retry::retry;
use crate::sse;

/// Per-connection settings.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    /// Most history records per read.
    pub history_page: usize,
    /// Comment heartbeat interval (also the idle history re-check).
    pub heartbeat: Duration,
    /// Longest stream (catch-up included).
    pub max_stream: Duration,
    /// Longest wait for the client to take one chunk; then it is slow.
    pub write_timeout: Duration,
    /// Framing stops at this many bytes and the chunk is written before
    /// more history is read or framed.
    pub chunk_bytes: usize,
}

/// History records read first, before record sizes are known.
const FIRST_PAGE: usize = 16;

/// Bytes a connection holds (framed and not yet written, plus history
/// records waiting to be framed), mirrored into the process-wide
/// `relay_sse_buffered_bytes` gauge.
struct Held {
    bytes: i64,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Held {
    fn set(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.gauge.inc_by(bytes - self.bytes);
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

/// One framed event on its way to the client.
struct Pending {
    /// Producer timestamp (unix ms) for the latency histogram.
    ts_ms: Option<u64>,
    /// Its `gateway.deliver` span, from framing until the chunk holding it
    /// is written (ends with the session if it never is).
    span: Option<tracing::Span>,
}

/// The `gateway.deliver` span of the record `env`, child of its event's
/// producer span (`trace`).
fn delivery_span(trace: &TraceContext, env: &LiveEnvelope) -> tracing::Span {
    let span = tracing::info_span!(
        "gateway.deliver",
        otel.kind = "producer",
        epoch = %env.epoch,
        offset = env.record.offset.0,
    );
    relay_core::otel::set_parent(&span, trace);
    span
}

/// Why a session could not go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// A backend read failed (after its retries).
    #[error("backend: {0}")]
    Backend(#[from] relay_core::BackendError),
}

/// The state of one SSE connection.
pub(crate) struct Session {
    /// State and history reads.
    pub backend: Arc<dyn Backend>,
    /// The job's keys.
    pub keys: JobKeys,
    /// How events are framed.
    pub framing: Framing,
    /// The history + live merge (what to read, send or snapshot next).
    pub resume: Resume,
    /// The live inbox and resync signal.
    pub member: Membership,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// Per-connection settings.
    pub cfg: SessionConfig,
    /// A terminal event that is the job's last known event was framed:
    /// close after writing.
    pub terminal: bool,
    /// Highest offset known to exist (history pages' `top`, live
    /// envelopes), with its epoch. A terminal event below it is not the end
    /// of the job (e.g. a `failed` run followed by a dead-letter replay).
    top: Option<(Epoch, Offset)>,
    /// Read the job's state once the client is at the top of the history:
    /// if it is terminal the client has the job's end, even when no
    /// terminal event was (or will be) framed as the last record (see
    /// [`Session::check_finished`]).
    state_check: bool,
    /// Events framed into the current chunk (for the delivered counter
    /// and the delivery spans).
    pending: Vec<Pending>,
    /// Actions not performed yet: framing stops at `chunk_bytes`, the
    /// rest waits here (at most one history page) until the chunk is
    /// written.
    queue: VecDeque<Action>,
    /// Records and bytes read from history so far (sizes the next page).
    read_records: u64,
    read_bytes: u64,
    held: Held,
    /// Bound on live envelopes the resume buffers during a catch-up.
    merge_limit: usize,
}

impl Session {
    /// A session for the client at `from` (`None`: a new client, sent the
    /// whole history), subscribed through `member`; `buffer_limit` bounds
    /// the live envelopes merged during a catch-up.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: Arc<dyn Backend>,
        keys: JobKeys,
        framing: Framing,
        from: Option<Position>,
        member: Membership,
        metrics: Arc<Metrics>,
        cfg: SessionConfig,
        buffer_limit: usize,
    ) -> Self {
        Self {
            backend,
            keys,
            framing,
            resume: Resume::new(from).with_buffer_limit(buffer_limit),
            merge_limit: buffer_limit.max(1),
            member,
            cfg,
            terminal: false,
            top: None,
            // A new client frames the whole history, so a terminal event
            // below the top re-arms the check; a resuming one may hold the
            // end already (nothing left to frame).
            state_check: from.is_some(),
            pending: Vec::new(),
            queue: VecDeque::new(),
            read_records: 0,
            read_bytes: 0,
            held: Held {
                bytes: 0,
                gauge: metrics.buffered_bytes.clone(),
            },
            metrics,
        }
    }

    /// Records that `offset` exists in `epoch`'s history.
    fn note_top(&mut self, epoch: Epoch, offset: Offset) {
        match self.top {
            Some((e, t)) if e == epoch => {
                if offset > t {
                    self.top = Some((e, offset));
                }
            }
            _ => {
                let following = self.resume.position().map(|p| p.epoch);
                if self.top.is_none() || following.is_none() || following == Some(epoch) {
                    self.top = Some((epoch, offset));
                }
            }
        }
    }

    /// Whether nothing is known to follow `offset` in `epoch`'s history.
    fn is_last(&self, epoch: Epoch, offset: Offset) -> bool {
        match self.top {
            Some((e, t)) if e == epoch => offset >= t,
            _ => true,
        }
    }

    /// Queues actions and performs them (and the ones they lead to),
    /// framing the output into `buf` until it holds `chunk_bytes`; what is
    /// left waits for [`Session::drain`]. Stops framing after a terminal
    /// event.
    pub async fn run(
        &mut self,
        actions: Vec<Action>,
        buf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        self.run_with(actions, buf, None).await
    }

    /// Whether queued actions wait for the current chunk to be written.
    pub fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Performs queued actions into `buf` (see [`Session::run`]).
    pub async fn drain(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        self.run_with(Vec::new(), buf, None).await
    }

    /// Bytes of the history records queued and not framed yet.
    fn queued_bytes(&self) -> usize {
        self.queue
            .iter()
            .map(|a| match a {
                Action::Emit(env) => env.record.payload.0.len(),
                _ => 0,
            })
            .sum()
    }

    /// Records per history read: about one chunk's worth at the record
    /// size seen so far, so a client that does not read pins at most about
    /// one chunk of history besides the chunk being written.
    fn page_len(&self) -> usize {
        let max = self.cfg.history_page.max(1);
        if self.read_records == 0 {
            return FIRST_PAGE.min(max);
        }
        let avg = (self.read_bytes / self.read_records).max(1);
        usize::try_from(self.cfg.chunk_bytes as u64 / avg)
            .unwrap_or(max)
            .clamp(1, max)
    }

    /// [`Session::run`], reusing `live`'s shared frame when it is emitted.
    async fn run_with(
        &mut self,
        actions: Vec<Action>,
        buf: &mut BytesMut,
        live: Option<&LiveMsg>,
    ) -> Result<(), SessionError> {
        self.queue.extend(actions);
        while buf.len() < self.cfg.chunk_bytes.max(1) {
            let Some(action) = self.queue.pop_front() else {
                break;
            };
            match action {
                Action::Emit(env) => {
                    if self.terminal {
                        continue;
                    }
                    let shared = live
                        .filter(|m| {
                            m.env.as_ref().is_some_and(|e| {
                                e.epoch == env.epoch && e.record.offset == env.record.offset
                            })
                        })
                        .map(|m| m.frame(self.framing).cloned());
                    let frame = match shared {
                        Some(f) => f,
                        None => self.framing.frame_record(&env),
                    };
                    match frame {
                        Some(f) => {
                            buf.extend_from_slice(&f.bytes);
                            self.pending.push(Pending {
                                ts_ms: f.ts_ms,
                                span: f.trace.as_ref().map(|t| delivery_span(t, &env)),
                            });
                            if f.terminal {
                                if self.is_last(env.epoch, env.record.offset) {
                                    self.terminal = true;
                                } else {
                                    // Records follow the terminal event: the
                                    // state decides once they are sent.
                                    self.state_check = true;
                                }
                            }
                        }
                        None => {
                            self.metrics.bad_messages.inc();
                            tracing::warn!(
                                offset = env.record.offset.0,
                                "skipping undecodable record"
                            );
                        }
                    }
                }
                Action::Snapshot(snap) => {
                    if self.terminal {
                        continue;
                    }
                    self.pending.push(Pending {
                        ts_ms: None,
                        span: None,
                    });
                    if let Some(st) = &snap.state {
                        self.note_top(st.epoch, st.top);
                    }
                    let terminal = self.framing.put_snapshot(buf, &snap);
                    self.terminal |= terminal
                        && snap
                            .state
                            .as_ref()
                            .is_none_or(|st| self.is_last(st.epoch, st.top));
                }
                Action::ReadHistory { after } => {
                    self.metrics.history_reads.inc();
                    let n = self.page_len();
                    let (b, k) = (&self.backend, &self.keys);
                    let page = retry(|| b.read_history(k, after, n)).await?;
                    if let Some(e) = page.epoch {
                        self.note_top(e, page.top);
                    }
                    self.read_records += page.records.len() as u64;
                    self.read_bytes += page
                        .records
                        .iter()
                        .map(|r| r.payload.0.len() as u64)
                        .sum::<u64>();
                    let next = self.resume.on_history(page);
                    self.queue.extend(next);
                }
                Action::ReadState => {
                    let (b, k) = (&self.backend, &self.keys);
                    let state: Option<JobState> = retry(|| b.get_state(k)).await?;
                    let next = self.resume.on_state(state);
                    self.queue.extend(next);
                }
            }
        }
        if self.queue.is_empty() {
            self.check_finished().await?;
        } else {
            self.metrics.chunk_cuts.inc();
        }
        self.held.set(buf.len() + self.queued_bytes());
        Ok(())
    }

    /// Whether nothing was framed since the last delivery.
    pub fn nothing_framed(&self) -> bool {
        self.pending.is_empty()
    }

    /// Ends the stream when the client holds the whole history and the
    /// job's state is terminal. The state is the job's highest-seq event,
    /// so this covers what the "terminal event at the top" rule cannot: a
    /// client resuming *at* the terminal event (nothing left to frame), and
    /// a lower-seq event applied after the terminal one (history `…, done,
    /// late`: the state stays `done`). A dead-letter replay runs with higher
    /// seqs, so its job's state is not terminal until the replay ends.
    async fn check_finished(&mut self) -> Result<(), SessionError> {
        if self.terminal || !self.state_check || self.resume.is_reading() {
            return Ok(());
        }
        let (Some(pos), Some((epoch, top))) = (self.resume.position(), self.top) else {
            return Ok(());
        };
        if pos.epoch != epoch || pos.offset < top {
            return Ok(());
        }
        let (b, k) = (&self.backend, &self.keys);
        let Some(state) = retry(|| b.get_state(k)).await? else {
            return Ok(());
        };
        if state.epoch != pos.epoch {
            return Ok(());
        }
        self.note_top(state.epoch, state.top);
        if state.top > pos.offset {
            return Ok(()); // more records exist: check again at the new top
        }
        self.state_check = false;
        let terminal = state.record.payload.decode().is_ok_and(|d| d.is_terminal());
        if terminal && state.record.offset <= pos.offset {
            self.terminal = true;
        }
        Ok(())
    }

    /// Handles one live message.
    pub async fn on_message(
        &mut self,
        msg: Arc<LiveMsg>,
        buf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        match &msg.env {
            Some(env) => {
                self.note_top(env.epoch, env.record.offset);
                if self.resume.buffered() >= self.merge_limit {
                    self.metrics.merge_buffer_full.inc();
                }
                let actions = self.resume.on_live(env.clone());
                self.run_with(actions, buf, Some(&msg)).await
            }
            None => {
                self.metrics.bad_messages.inc();
                tracing::warn!("undecodable live message");
                Ok(())
            }
        }
    }

    /// Re-runs catch-up if the hub asked for it.
    pub async fn check_resync(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        if self.member.signal.take() {
            let actions = self.resume.on_reconnect();
            self.run(actions, buf).await?;
        }
        Ok(())
    }

    /// Records the events framed since the last call as delivered now
    /// (their delivery spans end here).
    pub fn delivered(&mut self) {
        let now = now_ms();
        for Pending { ts_ms, span } in self.pending.drain(..) {
            drop(span);
            self.metrics.delivered.inc();
            if let Some(ts) = ts_ms {
                self.metrics
                    .latency
                    .observe(now.saturating_sub(ts) as f64 / 1000.0);
            }
        }
    }

    /// Streams into `out`, starting with `first` (the `retry:` hint and
    /// the first catch-up chunk), until the terminal event, the client
    /// leaving, a slow client, the stream time limit or a persistent backend
    /// failure. The catch-up is framed and written one chunk at a time, each
    /// write under the same rules as live delivery.
    pub async fn stream<O: Output>(&mut self, out: &mut O, first: Bytes) -> CloseReason {
        // One timer per connection: the next heartbeat or the stream's end.
        let start = tokio::time::Instant::now();
        let deadline = start + self.cfg.max_stream;
        let mut next_beat = start + self.cfg.heartbeat;
        let timer = tokio::time::sleep_until(next_beat.min(deadline));
        tokio::pin!(timer);
        let signal = self.member.signal.clone();
        let mut chunk = (!first.is_empty()).then_some(first);
        loop {
            if let Some(c) = chunk.take() {
                if let Err(reason) = self.write(out, c, &signal, deadline).await {
                    return reason;
                }
            }
            if self.terminal {
                return CloseReason::Done;
            }
            if tokio::time::Instant::now() >= deadline {
                return CloseReason::MaxDuration;
            }
            let mut buf = BytesMut::new();
            // Catch-up left over: frame the next chunk before anything else.
            // Live messages wait in the bounded inbox meanwhile; if it
            // overflows while the client does not take the chunk, the
            // client is slow.
            let result = if self.has_pending() {
                self.drain(&mut buf).await
            } else {
                tokio::select! {
                    biased;
                    _ = out.closed() => return CloseReason::ClientGone,
                    _ = signal.notified() => self.check_resync(&mut buf).await,
                    msg = self.member.rx.recv() => match msg {
                        Some(msg) => {
                            let mut r = self.on_message(msg, &mut buf).await;
                            // Drain what is already queued into the same chunk.
                            while r.is_ok()
                                && !self.terminal
                                && !self.has_pending()
                                && buf.len() < self.cfg.chunk_bytes
                            {
                                match self.member.rx.try_recv() {
                                    Ok(msg) => r = self.on_message(msg, &mut buf).await,
                                    Err(_) => break,
                                }
                            }
                            if r.is_ok() && !self.has_pending() {
                                r = self.check_resync(&mut buf).await;
                            }
                            r
                        }
                        None => return CloseReason::Shutdown,
                    },
                    _ = &mut timer => {
                        let now = tokio::time::Instant::now();
                        if now >= deadline {
                            return CloseReason::MaxDuration;
                        }
                        next_beat = now + self.cfg.heartbeat;
                        timer.as_mut().reset(next_beat.min(deadline));
                        sse::put_comment(&mut buf, "keep-alive");
                        // Catches a lost last message that no later one reveals.
                        let actions = self.resume.poll();
                        self.run(actions, &mut buf).await
                    }
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "closing stream after backend failure");
                return CloseReason::BackendError;
            }
            if !buf.is_empty() {
                chunk = Some(buf.freeze());
            }
        }
    }

    /// Writes one chunk within the write timeout (else the client is slow)
    /// and the stream's deadline; counts what it carried as delivered.
    async fn write<O: Output>(
        &mut self,
        out: &mut O,
        chunk: Bytes,
        signal: &Signal,
        deadline: tokio::time::Instant,
    ) -> Result<(), CloseReason> {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(CloseReason::MaxDuration);
        }
        let slow_at = now + self.cfg.write_timeout;
        self.held.set(chunk.len() + self.queued_bytes());
        let result = tokio::time::timeout_at(slow_at.min(deadline), out.write(chunk, signal)).await;
        self.held.set(self.queued_bytes());
        match result {
            Ok(Ok(())) => {
                self.delivered();
                Ok(())
            }
            Ok(Err(reason)) => Err(reason),
            Err(_) if slow_at <= deadline => {
                self.metrics.write_timeouts.inc();
                Err(CloseReason::SlowClient)
            }
            Err(_) => Err(CloseReason::MaxDuration),
        }
    }
}
