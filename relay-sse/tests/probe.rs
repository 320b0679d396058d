//! The liveness probe: a subscriber connection that silently stops
//! delivering (no error, no end of stream) is detected and replaced, and the
//! clients catch up on what it swallowed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::*;
use relay_core::keys::JobKeys;
use relay_core::Offset;
use relay_sse::GatewayOptions;
use tokio::sync::mpsc;

/// Memory backend whose subscriber connection number `deaf` swallows every
/// message while staying "connected".
struct DeafBackend {
    inner: MemoryBackend,
    next: AtomicU64,
    deaf: Arc<AtomicU64>,
}

#[async_trait]
impl Backend for DeafBackend {
    fn name(&self) -> &'static str {
        "deaf-memory"
    }

    async fn ping(&self) -> BackendResult<()> {
        self.inner.ping().await
    }
}

#[async_trait]
impl StreamLog for DeafBackend {
    async fn append_batch(&self, reqs: Vec<AppendRequest>) -> BackendResult<Vec<AppendOutcome>> {
        self.inner.append_batch(reqs).await
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> BackendResult<()> {
        self.inner.ensure_group(stream, group).await
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
        self.inner
            .read_group(stream, group, consumer, from, count, block)
            .await
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> BackendResult<ClaimResult> {
        self.inner
            .claim_idle(stream, group, consumer, min_idle, count)
            .await
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> BackendResult<u64> {
        self.inner.ack(stream, group, ids).await
    }

    async fn group_stats(&self, stream: &str, group: &str) -> BackendResult<GroupStats> {
        self.inner.group_stats(stream, group).await
    }

    async fn delete_consumer(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> BackendResult<u64> {
        self.inner.delete_consumer(stream, group, consumer).await
    }

    async fn dead_letter(&self, dl: DeadLetter<'_>) -> BackendResult<StreamId> {
        self.inner.dead_letter(dl).await
    }

    async fn range(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
    ) -> BackendResult<Vec<StreamEntry>> {
        self.inner.range(stream, after, count).await
    }

    async fn delete_entries(&self, stream: &str, ids: &[StreamId]) -> BackendResult<u64> {
        self.inner.delete_entries(stream, ids).await
    }

    async fn stream_len(&self, stream: &str) -> BackendResult<u64> {
        self.inner.stream_len(stream).await
    }
}

#[async_trait]
impl JobLog for DeafBackend {
    async fn apply(
        &self,
        jobs: &[ApplyJob],
        opts: &ApplyOptions,
    ) -> BackendResult<Vec<ApplyResult>> {
        self.inner.apply(jobs, opts).await
    }

    async fn get_state(&self, keys: &JobKeys) -> BackendResult<Option<JobState>> {
        self.inner.get_state(keys).await
    }

    async fn read_history(
        &self,
        keys: &JobKeys,
        after: Offset,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        self.inner.read_history(keys, after, limit).await
    }
}

#[async_trait]
impl PubSub for DeafBackend {
    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()> {
        self.inner.publish_batch(messages).await
    }

    async fn subscriber(&self) -> BackendResult<Subscriber> {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut sub = self.inner.subscriber().await?;
        let (tx, rx) = mpsc::channel(1024);
        let deaf = self.deaf.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.messages.recv().await {
                if deaf.load(Ordering::SeqCst) != id && tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        Ok(Subscriber {
            handle: sub.handle,
            messages: rx,
        })
    }
}

#[async_trait]
impl Coordination for DeafBackend {
    async fn try_lease(&self, key: &str, owner: &str, ttl: Duration) -> BackendResult<bool> {
        self.inner.try_lease(key, owner, ttl).await
    }
    async fn release_lease(&self, key: &str, owner: &str) -> BackendResult<()> {
        self.inner.release_lease(key, owner).await
    }
    async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BackendResult<Vec<String>> {
        self.inner.heartbeat(group, member, ttl).await
    }
}

#[tokio::test]
async fn silent_subscriber_is_replaced_and_clients_catch_up() {
    let deaf = Arc::new(AtomicU64::new(0));
    let backend = Arc::new(DeafBackend {
        inner: MemoryBackend::new(),
        next: AtomicU64::new(0),
        deaf: deaf.clone(),
    });
    let b: Arc<dyn Backend> = backend.clone();
    // No heartbeat polls: only the probe-triggered reconnect can recover.
    let opts = GatewayOptions {
        heartbeat: Duration::from_secs(3600),
        probe_interval: Duration::from_millis(100),
        ..opts()
    };
    let t = TestGateway::start(b, opts).await;
    let job = "job-probe-1";
    t.apply(&step(job, 1, 4)).await;
    let mut c = connect(&t.url(&format!("/v1/jobs/{job}/events")), None).await;
    assert_eq!(offset_of(&c.next_event().await.unwrap()), 1);
    // The current connection goes deaf; everything after is swallowed.
    deaf.store(backend.next.load(Ordering::SeqCst), Ordering::SeqCst);
    let before = t.gateway.metrics().subscriber_reconnects.get();
    for n in 2..=4 {
        t.apply(&step(job, n, 4)).await;
    }
    let offs: Vec<u64> = c.collect().await.iter().map(offset_of).collect();
    assert_eq!(offs, [2, 3, 4]);
    assert!(t.gateway.metrics().subscriber_reconnects.get() > before);
}
