//! The producer loop the `relay` and `fanout` scenarios share: publish
//! round-robin over a set of jobs at a target rate through a [`Sink`],
//! keep every job's seqs gap-free across refused publishes, then close
//! each job with its terminal event. [`Sink`] is what the events are
//! published through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::{Event, Status, ValidationError};
use serde::Deserialize;

use crate::stats::unix_us;

/// What a client reads back of an event this loop produced: its seq, its
/// stage (the terminal one ends a job) and the publish time it carries.
#[derive(Deserialize)]
pub(crate) struct Probe {
    pub(crate) seq: u64,
    pub(crate) stage: String,
    #[serde(default)]
    pub(crate) data: ProbeData,
}

/// The publish time an event carries (`data.t_us`, µs since the epoch).
#[derive(Deserialize, Default)]
pub(crate) struct ProbeData {
    #[serde(default)]
    pub(crate) t_us: u64,
}

/// A snapshot's seq: what a resumed client has already been given.
#[derive(Deserialize)]
pub(crate) struct SnapshotProbe {
    pub(crate) seq: Option<u64>,
}

/// How producers hand events to the system under test.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Publishes a batch (in order).
    async fn publish(&self, events: &[Event]) -> anyhow::Result<()>;
}

/// Holds an unthrottled producer back while too much is published and not
/// yet delivered, so a run measures the relay, not a growing queue.
pub struct Backlog {
    /// Deliveries counted by the clients.
    pub delivered: Arc<AtomicU64>,
    /// Deliveries per published event (clients per job).
    pub per_event: u64,
    /// Most events published and not yet delivered.
    pub max: u64,
}

/// One producer's work.
pub struct Produce {
    /// Where events go.
    pub sink: Arc<dyn Sink>,
    /// The jobs this producer writes, round-robin.
    pub jobs: Vec<String>,
    /// The events' domain.
    pub domain: String,
    /// Padding carried in every event's data.
    pub pad: String,
    /// Events per second for this producer; 0 or less: as fast as the
    /// sink takes them.
    pub rate: f64,
    /// Most events per publish call.
    pub batch: usize,
    /// When publishing started (shared by all producers of a run).
    pub start: Instant,
    /// How long to publish.
    pub dur: Duration,
    /// Events published, across producers.
    pub published: Arc<AtomicU64>,
    /// Unthrottled runs only: the backlog bound.
    pub backlog: Option<Backlog>,
}

impl Produce {
    /// Publishes until `dur` has passed, then each job's terminal event;
    /// returns each job's last progress seq, in `jobs` order. Fails at
    /// once, before publishing anything, on a domain or job name that is
    /// no valid name.
    pub async fn run(self) -> Result<Vec<u64>, ValidationError> {
        relay_core::Domain::new(self.domain.as_str())?;
        for job in &self.jobs {
            relay_core::JobId::new(job.as_str())?;
        }
        let batch = self.batch.max(1);
        let unthrottled = self.rate <= 0.0;
        let mut seqs = vec![0u64; self.jobs.len()];
        let mut next = 0usize;
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = Vec::with_capacity(batch);
        while !self.jobs.is_empty() {
            let el = self.start.elapsed();
            if el >= self.dur {
                break;
            }
            if let Some(b) = self.backlog.as_ref().filter(|_| unthrottled) {
                let in_flight = self
                    .published
                    .load(Ordering::Relaxed)
                    .saturating_sub(b.delivered.load(Ordering::Relaxed) / b.per_event.max(1));
                if in_flight > b.max {
                    tick.tick().await;
                    continue;
                }
            }
            let due = if unthrottled {
                sent + batch as u64
            } else {
                (self.rate * el.as_secs_f64()) as u64
            };
            if due <= sent {
                tick.tick().await;
                continue;
            }
            let n = ((due - sent) as usize).min(batch);
            buf.clear();
            let t_us = unix_us();
            for _ in 0..n {
                let j = next % self.jobs.len();
                next += 1;
                seqs[j] += 1;
                let e = Event::new(
                    &self.domain,
                    &self.jobs[j],
                    seqs[j],
                    "load",
                    Status::Progress,
                )?
                .with_data(serde_json::json!({ "t_us": t_us, "pad": self.pad }));
                buf.push(e);
            }
            if self.sink.publish(&buf).await.is_err() {
                // Roll back so every job's seqs stay gap-free.
                for _ in 0..n {
                    next -= 1;
                    seqs[next % self.jobs.len()] -= 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            sent += n as u64;
            self.published.fetch_add(n as u64, Ordering::Relaxed);
            if unthrottled {
                tokio::task::yield_now().await;
            }
        }
        // Terminal event per job (closes the streams).
        let done = self
            .jobs
            .iter()
            .zip(&seqs)
            .map(|(job, s)| {
                Ok(Event::new(
                    &self.domain,
                    job,
                    s + 1,
                    relay_core::event::DONE_STAGE,
                    Status::Completed,
                )?
                .with_data(serde_json::json!({ "t_us": unix_us() })))
            })
            .collect::<Result<Vec<Event>, ValidationError>>()?;
        for chunk in done.chunks(batch) {
            let mut tries = 0;
            while self.sink.publish(chunk).await.is_err() && tries < 50 {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(seqs)
    }
}
