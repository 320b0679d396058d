//! How records, snapshots and states are rendered for the wire: the two
//! SSE framings, and [`LiveMsg`], a live message decoded once and framed at
//! most once per framing however many clients receive it.
//!
//! This sits below both the hub (which builds a [`LiveMsg`] per published
//! message) and the session (which frames history and live records), so
//! neither has to import the other for it.

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use relay_core::backend::JobState;
use relay_core::resume::Snapshot;
use relay_core::{Decoded, LiveEnvelope, TraceContext};
use serde_json::json;

use crate::position::UNKNOWN_POSITION;
use crate::sse;

/// How events are framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `id: {epoch}:{offset}`, `event: <stage>` (`failed` for a terminal
    /// failure, `snapshot` for a snapshot), `data: <event JSON>`.
    Native,
    /// eco2 (docs/ECO2_WIRE.md): `id: <stream_id>`, `event: <stage>` or `error`,
    /// `data: <routed JSON verbatim>`.
    Eco2,
}

/// A framed record, with what the connection needs to know about it.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    /// The SSE frame bytes.
    pub bytes: Bytes,
    /// A terminal event (`done`/`failed`).
    pub terminal: bool,
    /// Producer timestamp (unix ms) for the latency histogram.
    pub ts_ms: Option<u64>,
    /// The event's trace context, only when a delivery span is to
    /// continue it (spans exported, trace sampled: see
    /// [`relay_core::otel::follow`]).
    pub trace: Option<TraceContext>,
}

/// One live Pub/Sub message, decoded once by the hub and framed at most once
/// per framing, shared by every subscriber of its channel.
#[derive(Debug)]
pub(crate) struct LiveMsg {
    /// `None`: the message could not be decoded.
    pub env: Option<LiveEnvelope>,
    native: OnceLock<Option<Frame>>,
    eco2: OnceLock<Option<Frame>>,
}

impl LiveMsg {
    /// Decodes the envelope (cheap: the payload stays encoded until framed).
    pub fn new(raw: &Bytes) -> Self {
        Self {
            env: LiveEnvelope::decode(raw).ok(),
            native: OnceLock::new(),
            eco2: OnceLock::new(),
        }
    }

    /// The frame of this message in `framing` (computed by the first caller).
    pub(crate) fn frame(&self, framing: Framing) -> Option<&Frame> {
        let env = self.env.as_ref()?;
        let cell = match framing {
            Framing::Native => &self.native,
            Framing::Eco2 => &self.eco2,
        };
        cell.get_or_init(|| framing.frame_record(env)).as_ref()
    }
}

impl Framing {
    /// The frame for one record; `None` when the payload cannot be decoded
    /// (skipped, counted by the caller).
    pub(crate) fn frame_record(self, env: &LiveEnvelope) -> Option<Frame> {
        let mut buf = BytesMut::new();
        let (terminal, ts_ms, trace) = self.put_record(&mut buf, env)?;
        Some(Frame {
            bytes: buf.freeze(),
            terminal,
            ts_ms,
            trace,
        })
    }

    /// Appends the frame for one record: (terminal, producer ts, followed
    /// trace).
    fn put_record(
        self,
        buf: &mut BytesMut,
        env: &LiveEnvelope,
    ) -> Option<(bool, Option<u64>, Option<TraceContext>)> {
        let exporting = relay_core::otel::exporting();
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
                let (terminal, ts) = (ev.is_terminal(), ev.ts);
                let trace = ev.trace.filter(|t| relay_core::otel::follow(Some(t)));
                Some((terminal, Some(ts), trace))
            }
            Decoded::Eco2(r) => {
                let id = match self {
                    Framing::Native => pos.as_str(),
                    Framing::Eco2 => r.stream_id.as_str(),
                };
                sse::put_event(buf, Some(id), Some(r.sse_event()), &r.raw);
                let trace = exporting
                    .then(|| r.trace())
                    .flatten()
                    .filter(|t| relay_core::otel::follow(Some(t)));
                Some((r.is_terminal(), r.ts_ms, trace))
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
        let state_json = event_json(decoded.as_ref());
        let pos = snap.position().unwrap_or(UNKNOWN_POSITION);
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

/// A decoded record as JSON: the native event, or the eco2 routed JSON
/// as it is; `null` when there is none (or it does not convert).
fn event_json(decoded: Option<&Decoded>) -> serde_json::Value {
    match decoded {
        Some(Decoded::Native(ev)) => serde_json::to_value(ev).unwrap_or(serde_json::Value::Null),
        Some(Decoded::Eco2(r)) => serde_json::from_slice(&r.raw).unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    }
}

/// The payload of a state response.
pub(crate) fn state_json(state: &JobState) -> serde_json::Value {
    let event = event_json(state.record.payload.decode().ok().as_ref());
    json!({
        "epoch": state.epoch.0,
        "offset": state.top.0,
        "seq": state.seq,
        "state_offset": state.record.offset.0,
        "event": event,
    })
}
