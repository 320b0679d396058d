//! Routing one batch of stream entries: decode each (poison goes to the
//! dead-letter stream), group by job, apply (atomic per job, idempotent per
//! (job, seq)), publish, and ack only what was applied and published. The
//! shard readers ([`shard`](super::shard)) and the janitor
//! ([`janitor`](super::janitor)) both hand their entries here.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::warn;

use super::backoff::Backoff;
use super::Router;
use crate::backend::{AckRequest, ApplyResult, DeadLetter, StreamId};
use crate::backend::{ApplyEvent, ApplyJob, ApplyOptions, StreamEntry};
use crate::codec::{parse_native, LiveEnvelope, Payload, Record};
use crate::eco2::Eco2Entry;
use crate::event::{Epoch, JobId, TraceContext};
use crate::keys::Profile;

/// How far applying a batch got.
enum Routed {
    /// Applied, published and acked.
    Acked,
    /// Applied and published; the caller acks all but `failed`: entries
    /// whose apply failed for their own reason stay pending, to be claimed
    /// again and dead-lettered only after `max_deliveries`.
    Applied {
        /// Entries left pending.
        failed: Vec<StreamId>,
    },
    /// Gave up because of shutdown (entries stay pending).
    Stopped,
}

/// A decoded entry ready to apply.
struct Routable {
    entry: StreamEntry,
    job: JobId,
    seq: u64,
    payload: Payload,
    /// The event's trace context, kept only when an apply span will
    /// continue it (see [`traced`]); always `None` without `otel`.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    trace: Option<TraceContext>,
}

/// The event's trace context (read by `trace`), when a `router.apply` span
/// is to continue it: spans are exported and the trace is sampled.
/// Otherwise `None` without calling `trace`, and the batch creates no span.
#[cfg(feature = "otel")]
fn traced(trace: impl FnOnce() -> Option<TraceContext>) -> Option<TraceContext> {
    if !crate::otel::exporting() {
        return None;
    }
    trace().filter(|t| crate::otel::follow(Some(t)))
}

/// Without the `otel` feature no span continues a trace.
#[cfg(not(feature = "otel"))]
fn traced(_trace: impl FnOnce() -> Option<TraceContext>) -> Option<TraceContext> {
    None
}

/// One `router.apply` span per job of `batch` that carries a followed
/// trace: its parent is the first such event's producer span, the other
/// producers are links. The spans cover the apply and the publish (the
/// caller drops them after).
#[cfg(feature = "otel")]
fn apply_spans(shard: u32, batch: &[Routable]) -> Vec<tracing::Span> {
    let mut spans: Vec<(&JobId, tracing::Span, Vec<&TraceContext>)> = Vec::new();
    for r in batch {
        let Some(trace) = &r.trace else { continue };
        match spans.iter_mut().find(|(job, ..)| *job == &r.job) {
            Some((_, span, seen)) => {
                if !seen.contains(&trace) {
                    crate::otel::add_link(span, trace);
                    seen.push(trace);
                }
            }
            None => {
                let span = tracing::info_span!(
                    "router.apply",
                    otel.kind = "consumer",
                    job = %r.job,
                    shard,
                    seq = r.seq,
                );
                crate::otel::set_parent(&span, trace);
                spans.push((&r.job, span, vec![trace]));
            }
        }
    }
    spans.into_iter().map(|(_, span, _)| span).collect()
}

/// Without the `otel` feature no event keeps a trace: no span.
#[cfg(not(feature = "otel"))]
fn apply_spans(_shard: u32, _batch: &[Routable]) -> Vec<tracing::Span> {
    Vec::new()
}

impl Router {
    /// Routes one batch: decode, dead-letter poison, apply, publish, ack.
    /// Returns false only if it gave up because of shutdown (entries stay
    /// pending and are re-read on restart).
    pub(super) async fn process(
        &self,
        shard: u32,
        stream: &str,
        entries: Vec<StreamEntry>,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let started = Instant::now();
        let n = entries.len();
        let mut ok = Vec::with_capacity(n);
        let mut to_ack = Vec::with_capacity(n);
        for entry in entries {
            if entry.is_deleted() {
                self.metrics.lost_trimmed.inc();
                warn!(id = %entry.id, stream, "pending entry was trimmed before it was routed");
                to_ack.push(entry.id);
                continue;
            }
            match self.decode(&entry) {
                Ok((job, seq, payload, trace)) => ok.push(Routable {
                    entry,
                    job,
                    seq,
                    payload,
                    trace,
                }),
                Err(reason) => {
                    if !self
                        .dead_letter(shard, stream, &entry, &reason, 1, stop)
                        .await
                    {
                        return false;
                    }
                }
            }
        }
        to_ack.extend(ok.iter().map(|r| r.entry.id));
        if !ok.is_empty() {
            match self
                .apply_and_publish(shard, stream, &ok, &to_ack, stop)
                .await
            {
                Routed::Stopped => return false,
                Routed::Acked => {
                    self.metrics.acked.inc_by(to_ack.len() as u64);
                    to_ack.clear();
                }
                Routed::Applied { failed } => {
                    if !failed.is_empty() {
                        to_ack.retain(|id| !failed.contains(id));
                    }
                }
            }
        }
        let mut backoff = Backoff::new();
        while !to_ack.is_empty() {
            match self.data.ack(stream, &self.config.group, &to_ack).await {
                Ok(_) => {
                    self.metrics.acked.inc_by(to_ack.len() as u64);
                    break;
                }
                Err(e) => {
                    self.on_error("ack", &e);
                    if *stop.borrow() {
                        // Applied and published; left pending it is re-applied
                        // as a no-op on restart.
                        return false;
                    }
                    backoff.wait().await;
                }
            }
        }
        self.metrics.observe_batch(n, started.elapsed());
        true
    }

    fn decode(
        &self,
        entry: &StreamEntry,
    ) -> Result<(JobId, u64, Payload, Option<TraceContext>), String> {
        let size = crate::codec::fields_size(&entry.fields);
        if size > self.config.max_entry_bytes {
            return Err(format!(
                "entry is {size} bytes, over the {}-byte limit",
                self.config.max_entry_bytes
            ));
        }
        match self.config.keys.profile() {
            Profile::Native => {
                let e = parse_native(&entry.fields).map_err(|e| e.to_string())?;
                let payload = e.payload();
                if e.event.domain != *self.config.keys.domain() {
                    return Err(format!(
                        "event domain {:?} does not match router domain {:?}",
                        e.event.domain.as_str(),
                        self.config.keys.domain().as_str()
                    ));
                }
                Ok((
                    e.event.job_id,
                    e.event.seq,
                    payload,
                    traced(|| e.event.trace),
                ))
            }
            Profile::Eco2 => {
                let e = Eco2Entry::parse(&entry.fields).map_err(|e| e.to_string())?;
                let json = e.routed_json(&entry.id.to_string());
                let trace = traced(|| e.trace());
                Ok((e.job_id, e.seq, Payload(Bytes::from(json)), trace))
            }
        }
    }

    pub(super) async fn dead_letter(
        &self,
        shard: u32,
        stream: &str,
        entry: &StreamEntry,
        reason: &str,
        deliveries: u64,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let dlq = self.config.keys.dlq_stream(shard);
        let dl = DeadLetter {
            dlq: &dlq,
            source: stream,
            group: &self.config.group,
            entry,
            reason,
            deliveries,
            limits: self.config.dead_letter,
        };
        let mut backoff = Backoff::new();
        loop {
            match self.data.dead_letter(dl).await {
                Ok(_) => {
                    self.metrics.dead_lettered.inc();
                    if dl.truncates() {
                        self.metrics.dlq_truncated.inc();
                    }
                    warn!(id = %entry.id, stream, reason, "entry dead-lettered");
                    return true;
                }
                Err(e) => {
                    self.on_error("dead_letter", &e);
                    if *stop.borrow() {
                        return false;
                    }
                    backoff.wait().await;
                }
            }
        }
    }

    /// Groups a batch by job, keeping each job's events in stream order.
    fn build_jobs(&self, shard: u32, batch: &[Routable]) -> Vec<ApplyJob> {
        let mut jobs: Vec<ApplyJob> = Vec::new();
        let mut index: HashMap<&JobId, usize> = HashMap::new();
        let extra = (self.config.keys.profile() == Profile::Eco2 && self.config.eco2_shard_channel)
            .then(|| self.config.keys.eco2_shard_channel(shard));
        for r in batch {
            let j = *index.entry(&r.job).or_insert_with(|| {
                jobs.push(ApplyJob {
                    keys: self.config.keys.job(&r.job),
                    epoch: Epoch::random(),
                    events: Vec::new(),
                    extra_channel: extra.clone(),
                });
                jobs.len() - 1
            });
            jobs[j].events.push(ApplyEvent {
                seq: r.seq,
                payload: r.payload.clone(),
            });
        }
        jobs
    }

    /// Applies and publishes `batch`. When the data server also publishes
    /// (no `--pubsub-url`), the apply acks `to_ack` in the same step:
    /// apply, publish and ack are then one script call, in that order.
    /// With a separate Pub/Sub server the ack must wait for the publish.
    async fn apply_and_publish(
        &self,
        shard: u32,
        stream: &str,
        batch: &[Routable],
        to_ack: &[StreamId],
        stop: &watch::Receiver<bool>,
    ) -> Routed {
        let jobs = self.build_jobs(shard, batch);
        let _spans = apply_spans(shard, batch);
        let mut opts = self.config.apply.clone();
        opts.publish = self.pubsub.is_none();
        let fold_ack = self.pubsub.is_none();
        let ack = AckRequest {
            stream,
            group: &self.config.group,
            ids: to_ack,
        };
        let mut backoff = Backoff::new();
        let results = loop {
            let r = if fold_ack {
                self.data.apply_and_ack(&jobs, &opts, ack).await
            } else {
                self.data.apply(&jobs, &opts).await
            };
            match r {
                Ok(r) => break r,
                Err(e) if e.is_transient() => {
                    self.on_error("apply", &e);
                    if *stop.borrow() {
                        return Routed::Stopped;
                    }
                    backoff.wait().await;
                }
                Err(e) => {
                    // A server-side error (e.g. a script error) must not
                    // block the shard: apply job by job and dead-letter the
                    // entries of the job that keeps failing.
                    warn!(error = %e, "batch apply failed; isolating per job");
                    return match self.apply_isolated(shard, batch, &opts).await {
                        Some(failed) => Routed::Applied { failed },
                        None => Routed::Stopped,
                    };
                }
            }
        };
        self.account(&jobs, &results);
        if let Some(pubsub) = &self.pubsub {
            let messages = self.live_messages(&jobs, &results);
            let count = messages.len() as u64;
            let mut backoff = Backoff::new();
            loop {
                match pubsub.publish_batch(messages.clone()).await {
                    Ok(()) => {
                        self.metrics.published.inc_by(count);
                        self.metrics.pubsub_failing.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        self.on_publish_error(&e);
                        if *stop.borrow() {
                            return Routed::Stopped;
                        }
                        backoff.wait().await;
                    }
                }
            }
        }
        if fold_ack {
            Routed::Acked
        } else {
            Routed::Applied { failed: Vec::new() }
        }
    }

    /// Applies `batch` entry by entry after a batch apply failed with a
    /// non-transient error. An entry that fails again is left pending (not
    /// acked): the janitor claims it after `claim_idle` and tries again, and
    /// dead-letters it once its delivery count passes `max_deliveries`, so
    /// a valid event is never dead-lettered on one failure.
    /// Returns the entries left pending; `None` when it gave up on a
    /// transient error (everything stays pending and is re-read).
    async fn apply_isolated(
        &self,
        shard: u32,
        batch: &[Routable],
        opts: &ApplyOptions,
    ) -> Option<Vec<StreamId>> {
        let mut failed = Vec::new();
        for r in batch {
            let one = std::slice::from_ref(r);
            let jobs = self.build_jobs(shard, one);
            let _spans = apply_spans(shard, one);
            match self.data.apply(&jobs, opts).await {
                Ok(results) => {
                    self.account(&jobs, &results);
                    if let Some(pubsub) = &self.pubsub {
                        let msgs = self.live_messages(&jobs, &results);
                        if let Err(e) = pubsub.publish_batch(msgs).await {
                            self.on_publish_error(&e);
                            return None;
                        }
                        self.metrics.pubsub_failing.store(false, Ordering::Relaxed);
                    }
                }
                Err(e) if e.is_transient() => {
                    self.on_error("apply", &e);
                    return None;
                }
                Err(e) => {
                    self.metrics.apply_failed.inc();
                    warn!(
                        id = %r.entry.id,
                        job = %r.job,
                        error = %e,
                        "apply failed; left pending for a later delivery"
                    );
                    failed.push(r.entry.id);
                }
            }
        }
        Some(failed)
    }

    fn account(&self, jobs: &[ApplyJob], results: &[ApplyResult]) {
        let mut new = 0;
        let mut dup = 0;
        for res in results {
            for a in &res.applied {
                if a.new {
                    new += 1;
                } else {
                    dup += 1;
                }
            }
        }
        self.metrics.applied.inc_by(new);
        self.metrics.duplicates.inc_by(dup);
        if self.pubsub.is_none() {
            let per_event = if jobs.iter().any(|j| j.extra_channel.is_some()) {
                2
            } else {
                1
            };
            self.metrics.published.inc_by((new + dup) * per_event);
        }
    }

    fn live_messages(&self, jobs: &[ApplyJob], results: &[ApplyResult]) -> Vec<(String, Bytes)> {
        let mut out = Vec::new();
        for (job, res) in jobs.iter().zip(results) {
            for (ev, a) in job.events.iter().zip(&res.applied) {
                let env = LiveEnvelope {
                    epoch: res.epoch,
                    record: Record {
                        offset: a.offset,
                        payload: ev.payload.clone(),
                    },
                };
                out.push((job.keys.live.clone(), env.encode()));
                if let Some(extra) = &job.extra_channel {
                    out.push((extra.clone(), ev.payload.0.clone()));
                }
            }
        }
        out
    }
}
