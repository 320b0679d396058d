//! In-process backend with the full semantics relay relies on: streams with
//! consumer groups, pending lists, delivery counts and idle claims; TTLs;
//! bounded per-job history; pub/sub fan-out with bounded subscriber queues
//! (a subscriber that falls too far behind is disconnected, as Redis does with
//! its pub/sub output-buffer limit).
//!
//! It is the embedded default for examples, the demo and single-process
//! deployments, and passes the same conformance suite as [`RedisBackend`].
//!
//! [`RedisBackend`]: super::redis::RedisBackend

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::{
    dead_letter_fields, AppendOutcome, AppendRequest, Applied, ApplyJob, ApplyOptions, ApplyResult,
    Backend, BackendResult, ClaimResult, ConsumerStats, DeadLetter, Delivered, GroupStats,
    HistoryPage, JobLog, JobState, KvStore, PubSub, PubSubMessage, ReadFrom, StreamEntry, StreamId,
    StreamLog, Subscriber, SubscriberHandle,
};
use crate::codec::{Fields, LiveEnvelope, Record};
use crate::error::BackendError;
use crate::event::{now_ms, Epoch, Offset};
use crate::keys::JobKeys;

/// Capacity of each subscriber's queue before it is disconnected.
pub const SUBSCRIBER_QUEUE: usize = 65_536;

/// The in-process backend. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    next_sub: AtomicU64,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<String, StreamData>,
    kv: HashMap<String, Expiring<Bytes>>,
    jobs: HashMap<String, Expiring<JobData>>,
    subs: HashMap<u64, mpsc::Sender<PubSubMessage>>,
    channels: HashMap<String, HashSet<u64>>,
    sub_channels: HashMap<u64, HashSet<String>>,
    ops: u64,
}

struct Expiring<T> {
    value: T,
    expires: Option<Instant>,
}

impl<T> Expiring<T> {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// One job hash (see [`JobKeys`]): meta, idempotency map, history, state.
#[derive(Default)]
struct JobData {
    epoch: u64,
    top: u64,
    state: Option<(u64, Record)>,
    seen: HashMap<u64, u64>,
    hist: VecDeque<Record>,
}

#[derive(Default)]
struct StreamData {
    entries: BTreeMap<StreamId, Fields>,
    last_id: StreamId,
    groups: HashMap<String, Group>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Group {
    last_delivered: StreamId,
    pel: BTreeMap<StreamId, PendingInfo>,
    consumers: HashMap<String, Instant>,
}

struct PendingInfo {
    consumer: String,
    delivered_at: Instant,
    count: u64,
}

fn get_live<'a, T>(
    map: &'a mut HashMap<String, Expiring<T>>,
    key: &str,
    now: Instant,
) -> Option<&'a mut T> {
    if map.get(key).is_some_and(|e| !e.live(now)) {
        map.remove(key);
    }
    map.get_mut(key).map(|e| &mut e.value)
}

impl Inner {
    /// Drops expired keys now and then so unread keys do not accumulate.
    fn tick(&mut self, now: Instant) {
        self.ops += 1;
        if self.ops.is_multiple_of(4096) {
            self.kv.retain(|_, e| e.live(now));
            self.jobs.retain(|_, e| e.live(now));
        }
    }

    fn next_id(stream: &StreamData) -> StreamId {
        let ms = now_ms();
        if ms > stream.last_id.ms {
            StreamId::new(ms, 0)
        } else {
            StreamId::new(stream.last_id.ms, stream.last_id.seq + 1)
        }
    }

    fn xadd(&mut self, key: &str, fields: Fields, maxlen: Option<u64>) -> StreamId {
        let stream = self.streams.entry(key.to_owned()).or_default();
        let id = Self::next_id(stream);
        stream.last_id = id;
        stream.entries.insert(id, fields);
        if let Some(max) = maxlen {
            while stream.entries.len() as u64 > max {
                stream.entries.pop_first();
            }
        }
        stream.notify.notify_waiters();
        id
    }

    fn group_mut(&mut self, stream: &str, group: &str) -> BackendResult<&mut StreamData> {
        let no_group = || BackendError::NoGroup {
            stream: stream.to_owned(),
            group: group.to_owned(),
        };
        let data = self.streams.get_mut(stream).ok_or_else(no_group)?;
        if !data.groups.contains_key(group) {
            return Err(no_group());
        }
        Ok(data)
    }

    fn ack(&mut self, stream: &str, group: &str, ids: &[StreamId]) -> u64 {
        let Some(g) = self
            .streams
            .get_mut(stream)
            .and_then(|s| s.groups.get_mut(group))
        else {
            return 0;
        };
        ids.iter().filter(|id| g.pel.remove(id).is_some()).count() as u64
    }

    fn publish(&mut self, channel: &str, payload: Bytes) {
        let Some(ids) = self.channels.get(channel) else {
            return;
        };
        let mut dead = Vec::new();
        for id in ids {
            if let Some(tx) = self.subs.get(id) {
                let msg = PubSubMessage {
                    channel: channel.to_owned(),
                    payload: payload.clone(),
                };
                if tx.try_send(msg).is_err() {
                    // Full (too slow) or closed: disconnect, like Redis's
                    // pub/sub output-buffer limit. Its owner resubscribes.
                    dead.push(*id);
                }
            }
        }
        for id in dead {
            self.drop_subscriber(id);
        }
    }

    fn drop_subscriber(&mut self, id: u64) {
        self.subs.remove(&id);
        for ch in self.sub_channels.remove(&id).unwrap_or_default() {
            if let Some(set) = self.channels.get_mut(&ch) {
                set.remove(&id);
                if set.is_empty() {
                    self.channels.remove(&ch);
                }
            }
        }
    }

    fn apply_job(&mut self, job: ApplyJob, opts: &ApplyOptions, now: Instant) -> ApplyResult {
        let ttl = opts.history_ttl.max(opts.state_ttl);
        let keys = job.keys;
        let data = self
            .jobs
            .entry(keys.meta.clone())
            .or_insert_with(|| Expiring {
                value: JobData::default(),
                expires: Some(now),
            });
        if !data.live(now) {
            *data = Expiring {
                value: JobData {
                    epoch: job.epoch.0,
                    ..JobData::default()
                },
                expires: None,
            };
        }
        let d = &mut data.value;
        let epoch = d.epoch;
        let mut applied = Vec::with_capacity(job.events.len());
        let mut best: Option<(u64, Record)> = None;
        let mut publishes = Vec::new();
        for ev in job.events {
            let (offset, new) = match d.seen.get(&ev.seq) {
                Some(off) => (*off, false),
                None => {
                    d.top += 1;
                    let off = d.top;
                    d.seen.insert(ev.seq, off);
                    let record = Record {
                        offset: Offset(off),
                        payload: ev.payload.clone(),
                    };
                    d.hist.push_back(record.clone());
                    while d.hist.len() as u64 > opts.history_max {
                        d.hist.pop_front();
                    }
                    if best.as_ref().is_none_or(|(s, _)| ev.seq > *s) {
                        best = Some((ev.seq, record));
                    }
                    (off, true)
                }
            };
            if opts.publish {
                let env = LiveEnvelope {
                    epoch: Epoch(epoch),
                    record: Record {
                        offset: Offset(offset),
                        payload: ev.payload.clone(),
                    },
                };
                publishes.push((keys.live.clone(), env.encode()));
                if let Some(extra) = &job.extra_channel {
                    publishes.push((extra.clone(), ev.payload.0.clone()));
                }
            }
            applied.push(Applied {
                offset: Offset(offset),
                new,
            });
        }
        let mut state_update = None;
        if let Some((seq, record)) = best {
            if d.state.as_ref().is_none_or(|(s, _)| seq > *s) {
                state_update = Some(record.payload.0.clone());
                d.state = Some((seq, record));
            }
        }
        data.expires = Some(now + ttl);
        if let Some(state_key) = &keys.state {
            match state_update {
                Some(value) => {
                    self.kv.insert(
                        state_key.clone(),
                        Expiring {
                            value,
                            expires: Some(now + opts.state_ttl),
                        },
                    );
                }
                None => {
                    if let Some(state) = self.kv.get_mut(state_key) {
                        state.expires = Some(now + opts.state_ttl);
                    }
                }
            }
        }
        for (ch, payload) in publishes {
            self.publish(&ch, payload);
        }
        ApplyResult {
            epoch: Epoch(epoch),
            applied,
        }
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way later calls would misread, so recover the guard.
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fault injection: disconnects every subscriber connection (their
    /// message streams end), like `CLIENT KILL TYPE pubsub` on Redis.
    pub fn kill_subscribers(&self) {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner.subs.keys().copied().collect();
        for id in ids {
            inner.drop_subscriber(id);
        }
    }

    /// Number of connected subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.lock().subs.len()
    }
}

struct MemorySubscriber {
    id: u64,
    shared: Weak<Shared>,
}

impl MemorySubscriber {
    fn with_inner<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> BackendResult<R> {
        let shared = self.shared.upgrade().ok_or(BackendError::Closed)?;
        let mut inner = shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !inner.subs.contains_key(&self.id) {
            return Err(BackendError::Connection("subscriber disconnected".into()));
        }
        Ok(f(&mut inner))
    }
}

#[async_trait]
impl SubscriberHandle for MemorySubscriber {
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()> {
        let id = self.id;
        self.with_inner(|inner| {
            for ch in channels {
                inner.channels.entry(ch.clone()).or_default().insert(id);
                inner.sub_channels.entry(id).or_default().insert(ch.clone());
            }
        })
    }

    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()> {
        let id = self.id;
        self.with_inner(|inner| {
            for ch in channels {
                if let Some(set) = inner.channels.get_mut(ch) {
                    set.remove(&id);
                    if set.is_empty() {
                        inner.channels.remove(ch);
                    }
                }
                if let Some(set) = inner.sub_channels.get_mut(&id) {
                    set.remove(ch);
                }
            }
        })
    }
}

impl Drop for MemorySubscriber {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut inner = shared
                .inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            inner.drop_subscriber(self.id);
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> BackendResult<()> {
        Ok(())
    }
}

#[async_trait]
impl StreamLog for MemoryBackend {
    async fn append_batch(&self, reqs: Vec<AppendRequest>) -> BackendResult<Vec<AppendOutcome>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tick(now);
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            if req.fields.is_empty() {
                return Err(BackendError::Server(
                    "ERR wrong number of arguments for 'xadd' command".into(),
                ));
            }
            if let Some(d) = &req.dedupe {
                if let Some(existing) = get_live(&mut inner.kv, &d.key, now) {
                    let id = std::str::from_utf8(existing)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_default();
                    out.push(AppendOutcome {
                        id,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let id = inner.xadd(&req.stream, req.fields, req.maxlen);
            if let Some(d) = req.dedupe {
                inner.kv.insert(
                    d.key,
                    Expiring {
                        value: Bytes::from(id.to_string()),
                        expires: Some(now + d.ttl),
                    },
                );
            }
            out.push(AppendOutcome {
                id,
                duplicate: false,
            });
        }
        Ok(out)
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> BackendResult<()> {
        let mut inner = self.lock();
        inner
            .streams
            .entry(stream.to_owned())
            .or_default()
            .groups
            .entry(group.to_owned())
            .or_default();
        Ok(())
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
    ) -> BackendResult<Vec<StreamEntry>> {
        let deadline = block.map(|b| Instant::now() + b);
        loop {
            let notify = {
                let now = Instant::now();
                let mut inner = self.lock();
                let data = inner.group_mut(stream, group)?;
                let notify = data.notify.clone();
                let StreamData {
                    entries, groups, ..
                } = data;
                let Some(g) = groups.get_mut(group) else {
                    return Err(BackendError::NoGroup {
                        stream: stream.to_owned(),
                        group: group.to_owned(),
                    });
                };
                g.consumers.insert(consumer.to_owned(), now);
                let mut out = Vec::new();
                match from {
                    ReadFrom::Pending => {
                        for (id, p) in g.pel.iter_mut().filter(|(_, p)| p.consumer == consumer) {
                            if out.len() >= count {
                                break;
                            }
                            p.count += 1;
                            p.delivered_at = now;
                            out.push(StreamEntry {
                                id: *id,
                                fields: entries.get(id).cloned().unwrap_or_default(),
                            });
                        }
                        return Ok(out);
                    }
                    ReadFrom::New => {
                        let start = std::ops::Bound::Excluded(g.last_delivered);
                        for (id, fields) in entries.range((start, std::ops::Bound::Unbounded)) {
                            if out.len() >= count {
                                break;
                            }
                            out.push(StreamEntry {
                                id: *id,
                                fields: fields.clone(),
                            });
                        }
                        if let Some(last) = out.last() {
                            g.last_delivered = last.id;
                            for e in &out {
                                g.pel.insert(
                                    e.id,
                                    PendingInfo {
                                        consumer: consumer.to_owned(),
                                        delivered_at: now,
                                        count: 1,
                                    },
                                );
                            }
                            return Ok(out);
                        }
                    }
                }
                notify
            };
            let Some(deadline) = deadline else {
                return Ok(Vec::new());
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check after registering, so an append between the check and
            // the registration is not missed.
            let has_new = {
                let mut inner = self.lock();
                let data = inner.group_mut(stream, group)?;
                let last = data.groups.get(group).map(|g| g.last_delivered);
                last.is_some_and(|l| {
                    data.entries
                        .range(StreamId::new(l.ms, l.seq.saturating_add(1))..)
                        .next()
                        .is_some()
                })
            };
            if !has_new {
                let _ = tokio::time::timeout(deadline - now, notified).await;
            }
        }
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> BackendResult<ClaimResult> {
        let now = Instant::now();
        let mut inner = self.lock();
        let data = inner.group_mut(stream, group)?;
        let StreamData {
            entries, groups, ..
        } = data;
        let Some(g) = groups.get_mut(group) else {
            return Ok(ClaimResult::default());
        };
        g.consumers.insert(consumer.to_owned(), now);
        let mut result = ClaimResult::default();
        let idle: Vec<StreamId> = g
            .pel
            .iter()
            .filter(|(_, p)| now.duration_since(p.delivered_at) >= min_idle)
            .map(|(id, _)| *id)
            .take(count)
            .collect();
        for id in idle {
            match entries.get(&id) {
                None => {
                    g.pel.remove(&id);
                    result.deleted.push(id);
                }
                Some(fields) => {
                    if let Some(p) = g.pel.get_mut(&id) {
                        p.consumer = consumer.to_owned();
                        p.delivered_at = now;
                        p.count += 1;
                        result.claimed.push(Delivered {
                            entry: StreamEntry {
                                id,
                                fields: fields.clone(),
                            },
                            deliveries: p.count,
                        });
                    }
                }
            }
        }
        Ok(result)
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> BackendResult<u64> {
        Ok(self.lock().ack(stream, group, ids))
    }

    async fn group_stats(&self, stream: &str, group: &str) -> BackendResult<GroupStats> {
        let now = Instant::now();
        let mut inner = self.lock();
        let data = inner.group_mut(stream, group)?;
        let Some(g) = data.groups.get(group) else {
            return Ok(GroupStats::default());
        };
        let lag = data
            .entries
            .range((
                std::ops::Bound::Excluded(g.last_delivered),
                std::ops::Bound::Unbounded,
            ))
            .count() as u64;
        let mut consumers: Vec<ConsumerStats> = g
            .consumers
            .iter()
            .map(|(name, seen)| ConsumerStats {
                name: name.clone(),
                pending: g.pel.values().filter(|p| &p.consumer == name).count() as u64,
                idle_ms: now.duration_since(*seen).as_millis() as u64,
            })
            .collect();
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(GroupStats {
            length: data.entries.len() as u64,
            pending: g.pel.len() as u64,
            lag: Some(lag),
            consumers,
        })
    }

    async fn delete_consumer(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> BackendResult<u64> {
        let mut inner = self.lock();
        let data = inner.group_mut(stream, group)?;
        let Some(g) = data.groups.get_mut(group) else {
            return Ok(0);
        };
        let before = g.pel.len();
        g.pel.retain(|_, p| p.consumer != consumer);
        g.consumers.remove(consumer);
        Ok((before - g.pel.len()) as u64)
    }

    async fn dead_letter(&self, dl: DeadLetter<'_>) -> BackendResult<StreamId> {
        let mut inner = self.lock();
        let fields = dead_letter_fields(&dl);
        let id = inner.xadd(dl.dlq, fields, Some(dl.limits.maxlen.max(1)));
        inner.ack(dl.source, dl.group, &[dl.entry.id]);
        Ok(id)
    }

    async fn range(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
    ) -> BackendResult<Vec<StreamEntry>> {
        let inner = self.lock();
        let Some(data) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        Ok(data
            .entries
            .range((start, std::ops::Bound::Unbounded))
            .take(count)
            .map(|(id, fields)| StreamEntry {
                id: *id,
                fields: fields.clone(),
            })
            .collect())
    }

    async fn delete_entries(&self, stream: &str, ids: &[StreamId]) -> BackendResult<u64> {
        let mut inner = self.lock();
        let Some(data) = inner.streams.get_mut(stream) else {
            return Ok(0);
        };
        Ok(ids
            .iter()
            .filter(|id| data.entries.remove(id).is_some())
            .count() as u64)
    }

    async fn stream_len(&self, stream: &str) -> BackendResult<u64> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .map_or(0, |s| s.entries.len() as u64))
    }
}

#[async_trait]
impl JobLog for MemoryBackend {
    async fn apply(
        &self,
        jobs: Vec<ApplyJob>,
        opts: &ApplyOptions,
    ) -> BackendResult<Vec<ApplyResult>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tick(now);
        Ok(jobs
            .into_iter()
            .map(|job| inner.apply_job(job, opts, now))
            .collect())
    }

    async fn get_state(&self, keys: &JobKeys) -> BackendResult<Option<JobState>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(d) = get_live(&mut inner.jobs, &keys.meta, now) else {
            return Ok(None);
        };
        let Some((seq, record)) = &d.state else {
            return Ok(None);
        };
        Ok(Some(JobState {
            epoch: Epoch(d.epoch),
            top: Offset(d.top),
            seq: *seq,
            record: record.clone(),
        }))
    }

    async fn read_history(
        &self,
        keys: &JobKeys,
        after: Offset,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(d) = get_live(&mut inner.jobs, &keys.meta, now) else {
            return Ok(HistoryPage::default());
        };
        Ok(HistoryPage {
            epoch: Some(Epoch(d.epoch)),
            top: Offset(d.top),
            first: d.hist.front().map(|r| r.offset),
            records: d
                .hist
                .iter()
                .filter(|r| r.offset > after)
                .take(limit)
                .cloned()
                .collect(),
        })
    }
}

#[async_trait]
impl PubSub for MemoryBackend {
    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()> {
        let mut inner = self.lock();
        for (ch, payload) in messages {
            inner.publish(&ch, payload);
        }
        Ok(())
    }

    async fn subscriber(&self) -> BackendResult<Subscriber> {
        let id = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.lock().subs.insert(id, tx);
        Ok(Subscriber {
            handle: Box::new(MemorySubscriber {
                id,
                shared: Arc::downgrade(&self.shared),
            }),
            messages: rx,
        })
    }
}

#[async_trait]
impl KvStore for MemoryBackend {
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if get_live(&mut inner.kv, key, now).is_some() {
            return Ok(false);
        }
        inner.kv.insert(
            key.to_owned(),
            Expiring {
                value,
                expires: ttl.map(|t| now + t),
            },
        );
        Ok(true)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<()> {
        let now = Instant::now();
        self.lock().kv.insert(
            key.to_owned(),
            Expiring {
                value,
                expires: ttl.map(|t| now + t),
            },
        );
        Ok(())
    }

    async fn get(&self, key: &str) -> BackendResult<Option<Bytes>> {
        let now = Instant::now();
        Ok(get_live(&mut self.lock().kv, key, now).cloned())
    }

    async fn delete(&self, keys: &[String]) -> BackendResult<u64> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut n = 0;
        for k in keys {
            let mut hit = false;
            hit |= inner.kv.remove(k).is_some_and(|e| e.live(now));
            hit |= inner.jobs.remove(k).is_some_and(|e| e.live(now));
            hit |= inner.streams.remove(k).is_some();
            n += u64::from(hit);
        }
        Ok(n)
    }
}
