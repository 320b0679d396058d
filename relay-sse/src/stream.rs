//! One SSE connection: drives a [`Resume`] against the backend and the live
//! inbox, and encodes what it emits into SSE frames.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use relay_core::backend::{Backend, JobState};
use relay_core::event::now_ms;
use relay_core::keys::JobKeys;
use relay_core::resume::{Action, Resume, Snapshot};
use relay_core::{Decoded, Epoch, KeySpace, LiveEnvelope, Offset, Payload, Position};
use serde_json::json;
use tokio::sync::mpsc;

use crate::hub::Membership;
use crate::metrics::{CloseReason, Metrics};
use crate::sse;

/// How events are framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `id: {epoch}:{offset}`, `event: <stage>` (`failed` for a terminal
    /// failure, `snapshot` for a snapshot), `data: <event JSON>`.
    Native,
    /// eco2 (WIRE.md): `id: <stream_id>`, `event: <stage>` or `error`,
    /// `data: <routed JSON verbatim>`.
    Eco2,
}

/// A frame ready to write, with what the connection needs to know about it.
pub(crate) struct Encoded {
    pub terminal: bool,
    /// Producer timestamp (unix ms) for the latency histogram.
    pub ts_ms: Option<u64>,
}

fn eco2_ts_ms(raw: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let f: f64 = match v.get("ts")? {
        serde_json::Value::String(s) => s.parse().ok()?,
        serde_json::Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    (f.is_finite() && f > 0.0).then_some((f * 1000.0) as u64)
}

impl Framing {
    /// Appends the frame for one record; `None` when the payload cannot be
    /// decoded (skipped, counted by the caller).
    pub(crate) fn put_record(self, buf: &mut BytesMut, env: &LiveEnvelope) -> Option<Encoded> {
        let decoded = env.record.payload.decode().ok()?;
        let pos = env.position().to_string();
        match decoded {
            Decoded::Native(ev) => {
                let data = serde_json::to_vec(&ev).ok()?;
                let name = if ev.is_terminal() && ev.status == relay_core::Status::Failed {
                    "failed"
                } else {
                    ev.stage.as_str()
                };
                sse::put_event(buf, Some(&pos), Some(name), &data);
                Some(Encoded {
                    terminal: ev.is_terminal(),
                    ts_ms: Some(ev.ts),
                })
            }
            Decoded::Eco2(r) => {
                let id = match self {
                    Framing::Native => pos.as_str(),
                    Framing::Eco2 => r.stream_id.as_str(),
                };
                sse::put_event(buf, Some(id), Some(r.sse_event()), &r.raw);
                Some(Encoded {
                    terminal: r.is_terminal(),
                    ts_ms: eco2_ts_ms(&r.raw),
                })
            }
        }
    }

    /// Appends the frame for a snapshot. Returns whether the state is terminal.
    pub(crate) fn put_snapshot(self, buf: &mut BytesMut, snap: &Snapshot) -> bool {
        let decoded = snap
            .state
            .as_ref()
            .and_then(|s| s.record.payload.decode().ok());
        let terminal = decoded.as_ref().is_some_and(Decoded::is_terminal);
        if let (Framing::Eco2, Some(Decoded::Eco2(r))) = (self, &decoded) {
            // The Python frontend knows no snapshot event: the state is sent
            // as the event it is (as the Python gateway's state recovery did).
            sse::put_event(buf, Some(&r.stream_id), Some(r.sse_event()), &r.raw);
            return terminal;
        }
        let state_json = match &decoded {
            Some(Decoded::Native(ev)) => {
                serde_json::to_value(ev).unwrap_or(serde_json::Value::Null)
            }
            Some(Decoded::Eco2(r)) => {
                serde_json::from_slice(&r.raw).unwrap_or(serde_json::Value::Null)
            }
            None => serde_json::Value::Null,
        };
        let pos = snap.position().unwrap_or(Position {
            epoch: Epoch(0),
            offset: Offset::ZERO,
        });
        let data = json!({
            "reason": snap.reason.as_str(),
            "epoch": pos.epoch.0,
            "offset": pos.offset.0,
            "seq": snap.state.as_ref().map(|s| s.seq),
            "state_offset": snap.state.as_ref().map(|s| s.record.offset.0),
            "state": state_json,
        });
        sse::put_event(
            buf,
            Some(&pos.to_string()),
            Some("snapshot"),
            data.to_string().as_bytes(),
        );
        terminal
    }
}

/// Per-connection settings.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    pub history_page: usize,
    pub heartbeat: Duration,
    pub max_stream: Duration,
}

/// Why a session could not go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("backend: {0}")]
    Backend(#[from] relay_core::BackendError),
}

/// The state of one SSE connection.
pub(crate) struct Session {
    pub backend: Arc<dyn Backend>,
    pub keys: JobKeys,
    pub framing: Framing,
    pub resume: Resume,
    pub member: Membership,
    pub metrics: Arc<Metrics>,
    pub cfg: SessionConfig,
    /// The terminal event was framed: close after writing.
    pub terminal: bool,
    /// Events framed into the current chunk (for the delivered counter).
    pending_ts: Vec<Option<u64>>,
}

async fn retry<T, F, Fut>(mut f: F) -> Result<T, relay_core::BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, relay_core::BackendError>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempts < 8 => {
                attempts += 1;
                tracing::debug!(error = %e, attempts, "backend read failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: Arc<dyn Backend>,
        keyspace: &KeySpace,
        job: &relay_core::JobId,
        framing: Framing,
        from: Option<Position>,
        member: Membership,
        metrics: Arc<Metrics>,
        cfg: SessionConfig,
        buffer_limit: usize,
    ) -> Self {
        Self {
            backend,
            keys: keyspace.job(job),
            framing,
            resume: Resume::new(from).with_buffer_limit(buffer_limit),
            member,
            metrics,
            cfg,
            terminal: false,
            pending_ts: Vec::new(),
        }
    }

    /// Performs actions (and the ones they lead to) and frames the output
    /// into `buf`. Stops framing after a terminal event.
    pub async fn run(
        &mut self,
        actions: Vec<Action>,
        buf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Emit(env) => {
                    if self.terminal {
                        continue;
                    }
                    match self.framing.put_record(buf, &env) {
                        Some(enc) => {
                            self.pending_ts.push(enc.ts_ms);
                            self.terminal |= enc.terminal;
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
                    self.pending_ts.push(None);
                    self.terminal |= self.framing.put_snapshot(buf, &snap);
                }
                Action::ReadHistory { after } => {
                    self.metrics.history_reads.inc();
                    let (b, k, n) = (&self.backend, &self.keys, self.cfg.history_page);
                    let page = retry(|| b.read_history(k, after, n)).await?;
                    queue.extend(self.resume.on_history(page));
                }
                Action::ReadState => {
                    let (b, k) = (&self.backend, &self.keys);
                    let state: Option<JobState> = retry(|| b.get_state(k)).await?;
                    queue.extend(self.resume.on_state(state));
                }
            }
        }
        Ok(())
    }

    /// Handles one raw live message.
    pub async fn on_message(&mut self, raw: Bytes, buf: &mut BytesMut) -> Result<(), SessionError> {
        match LiveEnvelope::decode(&raw) {
            Ok(env) => {
                let actions = self.resume.on_live(env);
                self.run(actions, buf).await
            }
            Err(e) => {
                self.metrics.bad_messages.inc();
                tracing::warn!(error = %e, "undecodable live message");
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

    /// Records the events framed since the last call as delivered now.
    pub fn delivered(&mut self) {
        let now = now_ms();
        for ts in self.pending_ts.drain(..) {
            self.metrics.delivered.inc();
            if let Some(ts) = ts {
                self.metrics
                    .latency
                    .observe(now.saturating_sub(ts) as f64 / 1000.0);
            }
        }
    }

    /// Streams until the terminal event, the client leaving, a slow client,
    /// the stream time limit or a persistent backend failure.
    pub async fn stream(mut self, out: mpsc::Sender<Bytes>) -> CloseReason {
        if self.terminal {
            return CloseReason::Done;
        }
        let start = tokio::time::Instant::now();
        let deadline = tokio::time::sleep_until(start + self.cfg.max_stream);
        tokio::pin!(deadline);
        let mut heartbeat =
            tokio::time::interval_at(start + self.cfg.heartbeat, self.cfg.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let signal = self.member.signal.clone();
        loop {
            let mut buf = BytesMut::new();
            let result = tokio::select! {
                biased;
                _ = out.closed() => return CloseReason::ClientGone,
                _ = &mut deadline => return CloseReason::MaxDuration,
                _ = signal.notified() => self.check_resync(&mut buf).await,
                msg = self.member.rx.recv() => match msg {
                    Some(raw) => {
                        let mut r = self.on_message(raw, &mut buf).await;
                        // Drain what is already queued into the same chunk.
                        while r.is_ok() && !self.terminal {
                            match self.member.rx.try_recv() {
                                Ok(raw) => r = self.on_message(raw, &mut buf).await,
                                Err(_) => break,
                            }
                        }
                        if r.is_ok() { r = self.check_resync(&mut buf).await; }
                        r
                    }
                    None => return CloseReason::Shutdown,
                },
                _ = heartbeat.tick() => {
                    sse::put_comment(&mut buf, "keep-alive");
                    // Catches a lost last message that no later one reveals.
                    let actions = self.resume.poll();
                    self.run(actions, &mut buf).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "closing stream after backend failure");
                return CloseReason::BackendError;
            }
            if !buf.is_empty() {
                match out.try_send(buf.freeze()) {
                    Ok(()) => self.delivered(),
                    Err(mpsc::error::TrySendError::Full(_)) => return CloseReason::SlowClient,
                    Err(mpsc::error::TrySendError::Closed(_)) => return CloseReason::ClientGone,
                }
            }
            if self.terminal {
                return CloseReason::Done;
            }
        }
    }
}

/// The payload of a state response.
pub(crate) fn state_json(state: &JobState) -> serde_json::Value {
    let event = match state.record.payload.decode() {
        Ok(Decoded::Native(ev)) => serde_json::to_value(ev).unwrap_or(serde_json::Value::Null),
        Ok(Decoded::Eco2(r)) => serde_json::from_slice(&r.raw).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    json!({
        "epoch": state.epoch.0,
        "offset": state.top.0,
        "seq": state.seq,
        "state_offset": state.record.offset.0,
        "event": event,
    })
}

/// eco2: maps a `Last-Event-ID` stream id to a history position: after the
/// record with that stream id (or the last one before it). Unknown → a
/// position that makes the resume answer with a snapshot.
pub(crate) async fn eco2_position(
    backend: &Arc<dyn Backend>,
    keys: &JobKeys,
    target: relay_core::backend::StreamId,
    page: usize,
) -> Result<Position, relay_core::BackendError> {
    let unknown = Position {
        epoch: Epoch(0),
        offset: Offset::ZERO,
    };
    let mut after = Offset::ZERO;
    let mut best: Option<Offset> = None;
    let mut epoch = None;
    loop {
        let p = retry(|| backend.read_history(keys, after, page.max(1))).await?;
        let Some(e) = p.epoch else { return Ok(unknown) };
        if epoch.is_some_and(|x| x != e) {
            return Ok(unknown);
        }
        epoch = Some(e);
        let Some(last) = p.records.last().map(|r| r.offset) else {
            break;
        };
        for rec in &p.records {
            let sid = match Payload::decode(&rec.payload) {
                Ok(Decoded::Eco2(r)) => r.stream_id.parse::<relay_core::backend::StreamId>().ok(),
                _ => None,
            };
            match sid {
                Some(s) if s <= target => best = Some(rec.offset),
                Some(_) => {
                    return Ok(finish(e, best));
                }
                None => {}
            }
        }
        after = last;
        if last >= p.top {
            break;
        }
    }
    Ok(match epoch {
        Some(e) => finish(e, best),
        None => unknown,
    })
}

fn finish(epoch: Epoch, best: Option<Offset>) -> Position {
    // Before everything retained: offset 0, and the resume snapshots if the
    // history was trimmed (first retained > 1).
    Position {
        epoch,
        offset: best.unwrap_or(Offset::ZERO),
    }
}
