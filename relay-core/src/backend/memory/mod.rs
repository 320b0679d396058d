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
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::{
    Applied, ApplyJob, ApplyOptions, ApplyResult, Backend, BackendResult, PubSubMessage, StreamId,
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
    /// Heartbeat groups: member -> alive until.
    members: HashMap<String, HashMap<String, Instant>>,
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

    fn apply_job(&mut self, job: &ApplyJob, opts: &ApplyOptions, now: Instant) -> ApplyResult {
        let ttl = opts.history_ttl.max(opts.state_ttl);
        let keys = &job.keys;
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
        for ev in &job.events {
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

mod coordination;
mod job_log;
mod kv;
mod pubsub;
mod stream_log;

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> BackendResult<()> {
        Ok(())
    }
}
