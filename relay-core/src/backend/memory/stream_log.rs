//! [`StreamLog`] in memory: streams, consumer groups, pending lists, claims.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::backend::*;
use crate::error::BackendError;

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
