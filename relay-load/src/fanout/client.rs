//! One SSE subscriber of the fan-out bench, the same code for relay-sse and
//! for Nchan: it follows one channel (a relay job, an Nchan channel id),
//! remembers the last `id:` it saw, and whenever its stream ends, fails or
//! is dropped on purpose it reconnects with that id as `Last-Event-ID`, as
//! a browser's EventSource does. Every event's data is the relay event
//! JSON (`seq`, `stage`, `data.t_us`), whichever server framed it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_sse::client::{SseItem, SseReader};
use tokio::sync::{watch, Semaphore};

use crate::produce::{Probe, SnapshotProbe};
use crate::stats::unix_us;

/// Counters every subscriber updates while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    /// Subscribers whose first request got its response headers (relay
    /// sends them with a job's first event; the server's established
    /// connections say when subscribers are connected, see
    /// [`super::meter::established`]).
    pub connected: AtomicU64,
    /// First deliveries of an event, all subscribers.
    pub delivered: AtomicU64,
}

/// What a subscriber is told while it runs.
#[derive(Clone, Debug)]
pub struct Control {
    /// Bumped to make every subscriber drop its connection and reconnect
    /// with `Last-Event-ID`.
    pub drop_gen: watch::Receiver<u64>,
    /// Set when the run is over: return what was received.
    pub stop: watch::Receiver<bool>,
}

/// One subscriber's record.
#[derive(Debug, Default)]
pub struct Tally {
    /// Which job (channel) it followed, by index.
    pub job: usize,
    /// `seen[seq]`: seq was delivered (or covered by a snapshot).
    pub seen: Vec<bool>,
    /// First deliveries (terminal excluded).
    pub received: u64,
    /// Events delivered again after their first delivery.
    pub duplicates: u64,
    /// `snapshot` events (relay's explicit "exact resume impossible").
    pub snapshots: u64,
    /// Seqs a snapshot stood in for.
    pub skipped: u64,
    /// The terminal event arrived.
    pub terminal: bool,
    /// Reconnections after the first connection (any cause).
    pub reconnects: u64,
    /// Reconnections the run asked for (`drop_gen`).
    pub drops: u64,
    /// Requests that failed or were refused before a stream opened.
    pub connect_failures: u64,
    /// Publish→client latency samples, µs, of first deliveries of
    /// events published after the warm-up, with their arrival time
    /// (seconds since the run's `t0`).
    pub samples: Vec<(f32, u64)>,
    /// Arrival of the last first delivery.
    pub last_arrival: Option<Instant>,
    /// The first error seen.
    pub error: Option<String>,
}

/// How a subscriber connects and what it compares against.
#[derive(Clone, Debug)]
pub struct Follow {
    /// The SSE URL of its channel.
    pub url: String,
    /// Its job's index.
    pub job: usize,
    /// Its index among subscribers (spreads reconnects over `jitter`).
    pub index: usize,
    /// Reconnects are spread over this window.
    pub jitter: Duration,
    /// Events published before this (µs since the epoch) are not timed.
    pub warm_until_us: Arc<AtomicU64>,
    /// The run's start, for the latency timeline.
    pub t0: Instant,
}

impl Tally {
    fn mark(&mut self, seq: u64) -> bool {
        let i = seq as usize;
        if self.seen.len() <= i {
            self.seen.resize(i + 32, false);
        }
        let fresh = !self.seen[i];
        self.seen[i] = true;
        fresh
    }

    /// Seqs `1..=last` never delivered.
    pub fn missing(&self, last: u64) -> u64 {
        (1..=last as usize)
            .filter(|s| !self.seen.get(*s).copied().unwrap_or(false))
            .count() as u64
    }

    /// Handles one event; true when it was the terminal one.
    fn on_event(&mut self, f: &Follow, live: &Live, event: &str, data: &str) -> bool {
        if event == "snapshot" {
            self.snapshots += 1;
            let upto = serde_json::from_str::<SnapshotProbe>(data)
                .ok()
                .and_then(|p| p.seq)
                .unwrap_or(0);
            for s in 1..=upto {
                if self.mark(s) {
                    self.skipped += 1;
                }
            }
            return false;
        }
        let now_us = unix_us();
        let arrival = Instant::now();
        let Ok(p) = serde_json::from_str::<Probe>(data) else {
            return false;
        };
        if !self.mark(p.seq) {
            self.duplicates += 1;
            return false;
        }
        if p.stage == relay_core::event::DONE_STAGE {
            self.terminal = true;
            return true;
        }
        self.received += 1;
        live.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_arrival = Some(arrival);
        if p.data.t_us >= f.warm_until_us.load(Ordering::Relaxed) {
            self.samples.push((
                arrival.duration_since(f.t0).as_secs_f32(),
                now_us.saturating_sub(p.data.t_us),
            ));
        }
        false
    }
}

/// Why a connection's read loop ended.
enum Ended {
    /// Terminal event or stop: the subscriber is done.
    Done,
    /// The server ended or broke the stream: reconnect after a pause.
    Broken,
    /// The run asked for a drop: reconnect now.
    Dropped,
}

/// Follows `f.url` until its terminal event or until `ctl.stop`,
/// reconnecting with `Last-Event-ID` (the first connection waits for a
/// permit of `gate`, so a crowd of subscribers does not overflow the
/// server's accept queue).
pub async fn follow(
    http: reqwest::Client,
    f: Follow,
    mut ctl: Control,
    live: Arc<Live>,
    gate: Arc<Semaphore>,
) -> Tally {
    let mut t = Tally {
        job: f.job,
        ..Default::default()
    };
    let mut last_id: Option<String> = None;
    let mut first = true;
    // Spread reconnects of a crowd: a fixed slot per subscriber.
    let slot = if f.jitter.is_zero() {
        Duration::ZERO
    } else {
        let ms = f.jitter.as_millis().max(1) as u64;
        Duration::from_millis((f.index as u64).wrapping_mul(7919) % ms)
    };
    ctl.drop_gen.borrow_and_update();
    loop {
        if *ctl.stop.borrow() {
            break;
        }
        let permit = if first {
            gate.clone().acquire_owned().await.ok()
        } else {
            None
        };
        let mut req = http
            .get(&f.url)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id.as_str());
        }
        // The permit goes back when the response headers arrive or after
        // a short while, whichever is first: relay-sse answers a job with
        // no events yet only when its first event comes, so waiting for
        // the headers would let only one gate-full connect before
        // publishing starts.
        let mut send = Box::pin(req.send());
        let early = tokio::select! {
            r = &mut send => Some(r),
            _ = tokio::time::sleep(Duration::from_millis(50)) => None,
            _ = ctl.stop.changed() => break,
        };
        drop(permit);
        let resp = match early {
            Some(r) => r,
            None => tokio::select! {
                r = &mut send => r,
                _ = ctl.stop.changed() => break,
            },
        };
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            other => {
                t.connect_failures += 1;
                if t.error.is_none() {
                    t.error = Some(match other {
                        Ok(r) => format!("HTTP {}", r.status()),
                        Err(e) => e.to_string(),
                    });
                }
                pause(&mut ctl, Duration::from_millis(100) + slot / 5).await;
                continue;
            }
        };
        if first {
            live.connected.fetch_add(1, Ordering::Relaxed);
            first = false;
        } else {
            t.reconnects += 1;
        }
        let mut reader = SseReader::new(resp.bytes_stream());
        let ended = loop {
            tokio::select! {
                item = reader.next_item() => match item {
                    Some(Ok(SseItem::Event(ev))) => {
                        if let Some(id) = ev.id.as_ref().filter(|id| !id.is_empty()) {
                            last_id = Some(id.clone());
                        }
                        if t.on_event(&f, &live, &ev.event, &ev.data) {
                            break Ended::Done;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        if t.error.is_none() {
                            t.error = Some(e.to_string());
                        }
                        break Ended::Broken;
                    }
                    None => break Ended::Broken,
                },
                _ = ctl.drop_gen.changed() => break Ended::Dropped,
                _ = ctl.stop.changed() => break Ended::Done,
            }
        };
        drop(reader);
        match ended {
            Ended::Done => break,
            Ended::Broken => pause(&mut ctl, Duration::from_millis(100) + slot / 5).await,
            Ended::Dropped => {
                t.drops += 1;
                pause(&mut ctl, slot).await;
            }
        }
    }
    t
}

/// Sleeps `d` unless the run stops first.
async fn pause(ctl: &mut Control, d: Duration) {
    if d.is_zero() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = ctl.stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow_cfg() -> Follow {
        Follow {
            url: String::new(),
            job: 0,
            index: 0,
            jitter: Duration::ZERO,
            warm_until_us: Arc::new(AtomicU64::new(0)),
            t0: Instant::now(),
        }
    }

    #[test]
    fn counts_first_deliveries_duplicates_and_gaps() {
        let f = follow_cfg();
        let live = Live::default();
        let mut t = Tally::default();
        let ev = |seq: u64, stage: &str| {
            format!(
                r#"{{"seq":{seq},"stage":"{stage}","data":{{"t_us":{}}}}}"#,
                unix_us()
            )
        };
        assert!(!t.on_event(&f, &live, "load", &ev(1, "load")));
        assert!(!t.on_event(&f, &live, "load", &ev(3, "load")));
        assert!(!t.on_event(&f, &live, "load", &ev(3, "load")));
        assert!(t.on_event(&f, &live, "done", &ev(5, "done")));
        assert_eq!((t.received, t.duplicates, t.terminal), (2, 1, true));
        assert_eq!(t.missing(4), 2);
        assert_eq!(t.samples.len(), 2);
        assert_eq!(live.delivered.load(Ordering::Relaxed), 2);
        // A snapshot covers everything up to its seq.
        assert!(!t.on_event(&f, &live, "snapshot", r#"{"seq":4}"#));
        assert_eq!((t.missing(4), t.skipped), (0, 2));
    }
}
