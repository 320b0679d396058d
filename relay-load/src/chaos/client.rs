//! The SSE clients: each accepted job is followed until its terminal event,
//! alternating gateways and resuming with `Last-Event-ID` after every
//! disconnect; everything received is kept for the checker.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use relay_core::Event;
use relay_sse::client::{SseEvent, SseItem, SseReader};

use super::load::{reqwest_reason, Ctx, Follow, Got};
use crate::stats::round3;

/// Whether a received frame ends the stream: a terminal event, or a
/// snapshot whose state is terminal.
pub fn frame_is_terminal(ev: &SseEvent) -> bool {
    if ev.event == "snapshot" {
        return serde_json::from_str::<serde_json::Value>(&ev.data)
            .ok()
            .and_then(|v| {
                v.get("state")
                    .and_then(|s| s.get("stage"))
                    .and_then(|s| s.as_str())
                    .map(|s| s == relay_core::event::DONE_STAGE)
            })
            .unwrap_or(false);
    }
    serde_json::from_str::<Event>(&ev.data).is_ok_and(|e| e.is_terminal())
}

/// Follows `job` from gateway `first_gw` on until its terminal event or
/// the end of the run.
pub(super) async fn follow(ctx: &Ctx, job: &str, first_gw: usize, start: Instant) -> Follow {
    let mut f = Follow::default();
    let mut last_id = String::new();
    let mut gw = first_gw % ctx.gateways.len();
    while !ctx.stopped() {
        if f.connections > 0 {
            f.reconnects += 1;
            gw = (gw + 1) % ctx.gateways.len();
            let pause = rand::rng().random_range(50..300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        f.connections += 1;
        let url = format!("{}/v1/jobs/{job}/events", ctx.gateways[gw]);
        let mut req = ctx.sse.get(&url).header("Accept", "text/event-stream");
        if !last_id.is_empty() {
            req = req.header("Last-Event-ID", last_id.as_str());
        }
        let resp = match tokio::time::timeout(Duration::from_secs(10), req.send()).await {
            Err(_) => {
                *f.errors.entry("connect timeout".into()).or_default() += 1;
                continue;
            }
            Ok(Err(e)) => {
                *f.errors.entry(reqwest_reason(&e).into()).or_default() += 1;
                continue;
            }
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            *f.errors
                .entry(format!("HTTP {}", resp.status().as_u16()))
                .or_default() += 1;
            continue;
        }
        let mut reader = SseReader::new(resp.bytes_stream());
        loop {
            if ctx.stopped() {
                break;
            }
            let item = match tokio::time::timeout(ctx.idle, reader.next_item()).await {
                Err(_) => {
                    f.idle_reconnects += 1;
                    *f.errors.entry("idle".into()).or_default() += 1;
                    break;
                }
                Ok(None) => {
                    *f.errors.entry("stream ended".into()).or_default() += 1;
                    break;
                }
                Ok(Some(Err(e))) => {
                    *f.errors
                        .entry(format!("stream {}", reqwest_reason(&e)))
                        .or_default() += 1;
                    break;
                }
                Ok(Some(Ok(i))) => i,
            };
            let SseItem::Event(ev) = item else { continue };
            if !reader.last_event_id().is_empty() {
                last_id = reader.last_event_id().to_owned();
            }
            let terminal = frame_is_terminal(&ev);
            f.got.push(Got {
                t: round3(ctx.t()),
                gw: gw as u8,
                conn: f.connections,
                id: ev.id,
                event: ev.event,
                data: ev.data,
            });
            if terminal {
                f.e2e = Some(start.elapsed());
                ctx.terminal.fetch_add(1, Ordering::Relaxed);
                return f;
            }
        }
    }
    f
}
