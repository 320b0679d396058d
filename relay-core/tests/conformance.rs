//! The backend conformance suite: the same tests, generated per backend by
//! [`conformance_tests!`], so `cargo test` shows `memory::…` and `redis::…`.
//!
//! Run: `cargo test -p relay-core --features test-util --test conformance`.
//! The Redis tests start a private `redis-server` each (or use `REDIS_URL`
//! with a unique key prefix); a missing `redis-server` fails them loudly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::redis::RedisBackend;
use relay_core::backend::{
    AckRequest, AppendRequest, ApplyEvent, ApplyJob, ApplyOptions, ApplyResult, Backend,
    DeadLetter, DeadLetterLimits, Dedupe, ReadFrom, StreamEntry, StreamId, Subscriber,
    DLQ_TRUNCATED_PREFIX,
};
use relay_core::backend::{JobLog, KvStore, PubSub, StreamLog};
use relay_core::codec::{field, Fields};
use relay_core::keys::JobKeys;
use relay_core::testing::TestRedis;
use relay_core::{BackendError, Encoding, Epoch, LiveEnvelope, Offset, Payload};

/// One test's backend, key prefix and (for Redis) server.
pub struct Fixture {
    backend: Arc<dyn Backend>,
    prefix: String,
    kind: Kind,
}

enum Kind {
    Memory(Arc<MemoryBackend>),
    Redis(TestRedis),
}

impl Fixture {
    async fn memory() -> Fixture {
        let b = Arc::new(MemoryBackend::new());
        Fixture {
            backend: b.clone(),
            prefix: relay_core::testing::unique_prefix(),
            kind: Kind::Memory(b),
        }
    }

    async fn redis() -> Fixture {
        Self::redis_on(TestRedis::get()).await
    }

    /// A fixture on a private server, whatever `REDIS_URL` says: for tests
    /// that inject faults.
    async fn redis_private() -> Fixture {
        Self::redis_on(TestRedis::private()).await
    }

    /// Cluster mode (`RedisConfig::cluster`: one apply call per job, the
    /// ack after the apply) against a single server: the same semantics.
    async fn redis_cluster_mode() -> Fixture {
        let redis = TestRedis::get();
        let config = relay_core::backend::redis::RedisConfig {
            cluster: true,
            ..Default::default()
        };
        let backend = RedisBackend::connect_with(redis.url(), config)
            .await
            .expect("connect");
        Fixture {
            backend: Arc::new(backend),
            prefix: redis.prefix().to_owned(),
            kind: Kind::Redis(redis),
        }
    }

    async fn redis_on(redis: TestRedis) -> Fixture {
        let backend: Arc<dyn Backend> = Arc::new(redis.backend().await);
        Fixture {
            backend,
            prefix: redis.prefix().to_owned(),
            kind: Kind::Redis(redis),
        }
    }

    fn b(&self) -> &dyn Backend {
        &*self.backend
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn job(&self, name: &str) -> JobKeys {
        let base = format!("{}{{{name}}}", self.prefix);
        JobKeys {
            meta: format!("{base}:meta"),
            state: Some(format!("{base}:state")),
            live: format!("{base}:live"),
        }
    }

    /// Drops every subscriber connection (fault injection). `None` when the
    /// backend cannot (a shared `REDIS_URL` server).
    async fn kill_subscribers(&self) -> Option<()> {
        match &self.kind {
            Kind::Memory(m) => {
                m.kill_subscribers();
                Some(())
            }
            Kind::Redis(r) => r.client_kill(&["TYPE", "pubsub"]).await.ok().map(|_| ()),
        }
    }
}

fn payload(s: &str) -> Payload {
    Payload::native(Encoding::Json, s.as_bytes())
}

fn ev(seq: u64) -> ApplyEvent {
    ApplyEvent {
        seq,
        payload: payload(&format!("{{\"seq\":{seq}}}")),
    }
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

fn plain(stream: &str, n: u32) -> AppendRequest {
    AppendRequest {
        stream: stream.to_owned(),
        fields: fields(&[("n", &n.to_string()), ("body", "x")]),
        maxlen: None,
        dedupe: None,
    }
}

fn apply_job(keys: &JobKeys, epoch: u64, seqs: &[u64]) -> ApplyJob {
    ApplyJob {
        keys: keys.clone(),
        epoch: Epoch(epoch),
        events: seqs.iter().map(|&s| ev(s)).collect(),
        extra_channel: None,
    }
}

fn quiet() -> ApplyOptions {
    ApplyOptions {
        publish: false,
        ..ApplyOptions::default()
    }
}

async fn apply1(
    fx: &Fixture,
    keys: &JobKeys,
    epoch: u64,
    seqs: &[u64],
    opts: &ApplyOptions,
) -> ApplyResult {
    let mut r = fx
        .b()
        .apply(vec![apply_job(keys, epoch, seqs)], opts)
        .await
        .expect("apply");
    assert_eq!(r.len(), 1);
    r.remove(0)
}

fn offsets(r: &ApplyResult) -> Vec<(u64, bool)> {
    r.applied.iter().map(|a| (a.offset.0, a.new)).collect()
}

async fn recv(sub: &mut Subscriber) -> (String, Bytes) {
    let m = tokio::time::timeout(Duration::from_secs(5), sub.messages.recv())
        .await
        .expect("no pub/sub message within 5s")
        .expect("subscriber closed");
    (m.channel, m.payload)
}

async fn assert_silent(sub: &mut Subscriber, wait: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(wait, sub.messages.recv()).await {
        panic!("unexpected message on {}: {:?}", m.channel, m.payload);
    }
}

fn ids(entries: &[StreamEntry]) -> Vec<StreamId> {
    entries.iter().map(|e| e.id).collect()
}

/// The test bodies, shared by every backend.
mod cases {
    use super::*;

    pub async fn ping(fx: &Fixture) {
        fx.b().ping().await.unwrap();
        assert!(!fx.b().name().is_empty());
    }

    pub async fn idempotent_append(fx: &Fixture) {
        let stream = fx.key("events:0");
        let req = AppendRequest {
            stream: stream.clone(),
            fields: fields(&[("job", "j1"), ("seq", "10")]),
            maxlen: Some(1000),
            dedupe: Some(Dedupe {
                key: fx.key("{j1}:pub:10"),
                ttl: Duration::from_secs(60),
            }),
        };
        let first = fx.b().append(req.clone()).await.unwrap();
        assert!(!first.duplicate);
        let again = fx.b().append(req.clone()).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.id, first.id, "a duplicate returns the original id");
        assert_eq!(fx.b().stream_len(&stream).await.unwrap(), 1);

        // Within one batch, too; and plain appends are never deduplicated.
        let mut other = req.clone();
        other.dedupe = Some(Dedupe {
            key: fx.key("{j1}:pub:11"),
            ttl: Duration::from_secs(60),
        });
        let out = fx
            .b()
            .append_batch(vec![
                other.clone(),
                other,
                req,
                plain(&stream, 1),
                plain(&stream, 1),
            ])
            .await
            .unwrap();
        assert_eq!(out.len(), 5);
        assert!(!out[0].duplicate);
        assert!(out[1].duplicate);
        assert_eq!(out[1].id, out[0].id);
        assert!(out[2].duplicate);
        assert_eq!(out[2].id, first.id);
        assert!(!out[3].duplicate && !out[4].duplicate);
        assert!(out[3].id < out[4].id && out[0].id < out[3].id && first.id < out[0].id);
        assert_eq!(fx.b().stream_len(&stream).await.unwrap(), 4);
        let entries = fx.b().range(&stream, None, 10).await.unwrap();
        assert_eq!(
            ids(&entries),
            vec![first.id, out[0].id, out[3].id, out[4].id]
        );
        assert_eq!(entries[0].fields, fields(&[("job", "j1"), ("seq", "10")]));
    }

    pub async fn apply_assigns_gap_free_offsets(fx: &Fixture) {
        let k = fx.job("gapfree");
        let r = apply1(fx, &k, 7, &[10, 20, 30], &quiet()).await;
        assert_eq!(r.epoch, Epoch(7));
        assert_eq!(offsets(&r), vec![(1, true), (2, true), (3, true)]);
        let r = apply1(fx, &k, 7, &[40, 50], &quiet()).await;
        assert_eq!(offsets(&r), vec![(4, true), (5, true)]);
        let page = fx.b().read_history(&k, Offset::ZERO, 100).await.unwrap();
        assert_eq!(page.epoch, Some(Epoch(7)));
        assert_eq!(page.top, Offset(5));
        assert_eq!(page.first, Some(Offset(1)));
        let got: Vec<(u64, Payload)> = page
            .records
            .iter()
            .map(|r| (r.offset.0, r.payload.clone()))
            .collect();
        let want: Vec<(u64, Payload)> = [10, 20, 30, 40, 50]
            .iter()
            .enumerate()
            .map(|(i, &s)| (i as u64 + 1, ev(s).payload))
            .collect();
        assert_eq!(got, want);
    }

    pub async fn apply_batch_of_jobs(fx: &Fixture) {
        let a = fx.job("batch-a");
        let b = fx.job("batch-b");
        let out = fx
            .b()
            .apply(
                vec![
                    apply_job(&a, 1, &[1, 2]),
                    apply_job(&b, 2, &[5]),
                    apply_job(&a, 3, &[3]),
                ],
                &quiet(),
            )
            .await
            .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].epoch, Epoch(1));
        assert_eq!(offsets(&out[0]), vec![(1, true), (2, true)]);
        assert_eq!(out[1].epoch, Epoch(2));
        assert_eq!(offsets(&out[1]), vec![(1, true)]);
        assert_eq!(
            out[2].epoch,
            Epoch(1),
            "the job's epoch, not the new candidate"
        );
        assert_eq!(offsets(&out[2]), vec![(3, true)]);
        assert!(fx.b().apply(vec![], &quiet()).await.unwrap().is_empty());
    }

    pub async fn reapply_is_noop(fx: &Fixture) {
        let k = fx.job("reapply");
        apply1(fx, &k, 9, &[1, 2, 3], &quiet()).await;
        let before = fx.b().read_history(&k, Offset::ZERO, 100).await.unwrap();
        let r = apply1(fx, &k, 9, &[2, 3], &quiet()).await;
        assert_eq!(offsets(&r), vec![(2, false), (3, false)]);
        let after = fx.b().read_history(&k, Offset::ZERO, 100).await.unwrap();
        assert_eq!(after, before, "a re-applied event changes nothing");
        let r = apply1(fx, &k, 9, &[3, 4, 4, 1], &quiet()).await;
        assert_eq!(
            offsets(&r),
            vec![(3, false), (4, true), (4, false), (1, false)]
        );
        let page = fx.b().read_history(&k, Offset::ZERO, 100).await.unwrap();
        assert_eq!(page.top, Offset(4));
        assert_eq!(page.records.len(), 4);
        let state = fx.b().get_state(&k).await.unwrap().unwrap();
        assert_eq!(state.seq, 4);
        assert_eq!(state.record.offset, Offset(4));
    }

    pub async fn state_never_regresses(fx: &Fixture) {
        let k = fx.job("state");
        assert_eq!(fx.b().get_state(&k).await.unwrap(), None);
        apply1(fx, &k, 3, &[5], &quiet()).await;
        let r = apply1(fx, &k, 3, &[3], &quiet()).await;
        assert_eq!(
            offsets(&r),
            vec![(2, true)],
            "late events still get history"
        );
        let s = fx.b().get_state(&k).await.unwrap().unwrap();
        assert_eq!(s.seq, 5);
        assert_eq!(s.epoch, Epoch(3));
        assert_eq!(s.top, Offset(2));
        assert_eq!(s.record.offset, Offset(1));
        assert_eq!(s.record.payload, ev(5).payload);

        // Highest seq of a batch wins, whatever the order; 10 > 9 (not as text).
        apply1(fx, &k, 3, &[9, 10, 8], &quiet()).await;
        let s = fx.b().get_state(&k).await.unwrap().unwrap();
        assert_eq!((s.seq, s.record.offset, s.top), (10, Offset(4), Offset(5)));
        assert_eq!(s.record.payload, ev(10).payload);

        // Exact over the whole u64 range (beyond 2^53).
        let k = fx.job("state-big");
        let big = u64::MAX - 1;
        apply1(fx, &k, 3, &[big], &quiet()).await;
        apply1(fx, &k, 3, &[big - 1, (1 << 53) + 1], &quiet()).await;
        let s = fx.b().get_state(&k).await.unwrap().unwrap();
        assert_eq!(s.seq, big);
        assert_eq!(s.record.offset, Offset(1));
        apply1(fx, &k, 3, &[u64::MAX], &quiet()).await;
        let s = fx.b().get_state(&k).await.unwrap().unwrap();
        assert_eq!((s.seq, s.record.offset), (u64::MAX, Offset(4)));
        let r = apply1(fx, &k, 3, &[big - 1], &quiet()).await;
        assert_eq!(offsets(&r), vec![(2, false)]);
    }

    pub async fn history_after_offset(fx: &Fixture) {
        let k = fx.job("hist");
        let empty = fx.b().read_history(&k, Offset::ZERO, 10).await.unwrap();
        assert_eq!(empty.epoch, None);
        assert_eq!(empty.top, Offset(0));
        assert_eq!(empty.first, None);
        assert!(empty.records.is_empty());

        apply1(fx, &k, 11, &[1, 2, 3, 4, 5, 6], &quiet()).await;
        let page = fx.b().read_history(&k, Offset(3), 100).await.unwrap();
        assert_eq!(page.epoch, Some(Epoch(11)));
        assert_eq!(page.top, Offset(6));
        assert_eq!(page.first, Some(Offset(1)));
        let offs: Vec<u64> = page.records.iter().map(|r| r.offset.0).collect();
        assert_eq!(offs, vec![4, 5, 6]);
        assert_eq!(page.records[0].payload, ev(4).payload);

        let page = fx.b().read_history(&k, Offset(3), 2).await.unwrap();
        let offs: Vec<u64> = page.records.iter().map(|r| r.offset.0).collect();
        assert_eq!(offs, vec![4, 5], "limit bounds the page");
        assert_eq!(page.top, Offset(6));

        let page = fx.b().read_history(&k, Offset(6), 100).await.unwrap();
        assert!(page.records.is_empty());
        assert_eq!(page.epoch, Some(Epoch(11)));
        let page = fx.b().read_history(&k, Offset(60), 100).await.unwrap();
        assert!(page.records.is_empty());
    }

    /// D6: a resume offset past anything a job can hold (a forged or
    /// corrupted `Last-Event-ID`, up to `u64::MAX`) reads as "ahead of the
    /// history" on every backend: no records, the true top and epoch.
    pub async fn history_after_huge_offset(fx: &Fixture) {
        let k = fx.job("huge");
        apply1(fx, &k, 12, &[1, 2, 3], &quiet()).await;
        for after in [
            1u64 << 53,
            (1u64 << 53) + 1,
            (1u64 << 63) - 512,
            1u64 << 63,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let page = fx.b().read_history(&k, Offset(after), 100).await;
            let page = page.unwrap_or_else(|e| panic!("after {after}: {e}"));
            assert_eq!(page.epoch, Some(Epoch(12)), "after {after}");
            assert_eq!(page.top, Offset(3), "after {after}");
            assert_eq!(page.first, Some(Offset(1)), "after {after}");
            assert!(page.records.is_empty(), "after {after}: {page:?}");
        }
    }

    pub async fn history_is_bounded(fx: &Fixture) {
        let k = fx.job("bounded");
        let opts = ApplyOptions {
            history_max: 5,
            ..quiet()
        };
        apply1(fx, &k, 1, &[1, 2, 3], &opts).await;
        apply1(fx, &k, 1, &[4, 5, 6, 7, 8], &opts).await;
        let page = fx.b().read_history(&k, Offset::ZERO, 100).await.unwrap();
        assert_eq!(page.top, Offset(8));
        assert_eq!(page.first, Some(Offset(4)));
        let offs: Vec<u64> = page.records.iter().map(|r| r.offset.0).collect();
        assert_eq!(offs, vec![4, 5, 6, 7, 8]);
        // A trimmed event is still known: re-applying it is a no-op.
        let r = apply1(fx, &k, 1, &[2], &opts).await;
        assert_eq!(offsets(&r), vec![(2, false)]);
    }

    pub async fn history_expires(fx: &Fixture) {
        let k = fx.job("ttl");
        let opts = ApplyOptions {
            history_ttl: Duration::from_millis(300),
            state_ttl: Duration::from_millis(300),
            ..quiet()
        };
        let r = apply1(fx, &k, 21, &[1, 2], &opts).await;
        assert_eq!(r.epoch, Epoch(21));
        let page = fx.b().read_history(&k, Offset::ZERO, 10).await.unwrap();
        assert_eq!(page.epoch, Some(Epoch(21)));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let page = fx.b().read_history(&k, Offset::ZERO, 10).await.unwrap();
        assert_eq!(page.epoch, None, "meta expired");
        assert!(page.records.is_empty());
        assert_eq!(page.first, None);
        assert_eq!(fx.b().get_state(&k).await.unwrap(), None);

        // Re-created: new epoch, offsets from 1 again, old seqs are new again.
        let r = apply1(fx, &k, 22, &[2], &quiet()).await;
        assert_eq!(r.epoch, Epoch(22));
        assert_eq!(offsets(&r), vec![(1, true)]);
        let page = fx.b().read_history(&k, Offset::ZERO, 10).await.unwrap();
        assert_eq!(page.epoch, Some(Epoch(22)));
        assert_eq!(page.records.len(), 1);
    }

    pub async fn epoch_is_stable(fx: &Fixture) {
        let k = fx.job("epoch");
        let e1 = Epoch::random();
        let r = apply1(fx, &k, e1.0, &[1], &quiet()).await;
        assert_eq!(r.epoch, e1);
        for _ in 0..3 {
            let r = apply1(fx, &k, Epoch::random().0, &[2, 3], &quiet()).await;
            assert_eq!(r.epoch, e1);
        }
        assert_eq!(fx.b().get_state(&k).await.unwrap().unwrap().epoch, e1);
        assert_eq!(
            fx.b()
                .read_history(&k, Offset::ZERO, 1)
                .await
                .unwrap()
                .epoch,
            Some(e1)
        );
    }

    pub async fn publish_reaches_subscribers(fx: &Fixture) {
        let k = fx.job("live");
        let extra = fx.key("sse:events:0");
        let mut sub = fx.b().subscriber().await.unwrap();
        sub.handle
            .subscribe(&[k.live.clone(), extra.clone()])
            .await
            .unwrap();
        let mut job = apply_job(&k, 31, &[1, 2]);
        job.extra_channel = Some(extra.clone());
        let opts = ApplyOptions::default();
        assert!(opts.publish);
        fx.b().apply(vec![job.clone()], &opts).await.unwrap();

        let mut live = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..4 {
            let (ch, p) = recv(&mut sub).await;
            if ch == k.live {
                live.push(LiveEnvelope::decode(&p).expect("live envelope"));
            } else {
                assert_eq!(ch, extra);
                raw.push(p);
            }
        }
        let pos: Vec<(u64, u64)> = live
            .iter()
            .map(|e| (e.epoch.0, e.record.offset.0))
            .collect();
        assert_eq!(pos, vec![(31, 1), (31, 2)]);
        assert_eq!(live[0].record.payload, ev(1).payload);
        assert_eq!(live[1].record.payload, ev(2).payload);
        assert_eq!(raw, vec![ev(1).payload.0, ev(2).payload.0]);

        // A redelivered event is published again, with its original offset.
        job.events = vec![ev(2)];
        job.extra_channel = None;
        fx.b().apply(vec![job.clone()], &opts).await.unwrap();
        let (ch, p) = recv(&mut sub).await;
        assert_eq!(ch, k.live);
        let env = LiveEnvelope::decode(&p).unwrap();
        assert_eq!((env.epoch, env.record.offset), (Epoch(31), Offset(2)));

        // publish = false: the caller publishes.
        job.events = vec![ev(3)];
        fx.b().apply(vec![job], &quiet()).await.unwrap();
        assert_silent(&mut sub, Duration::from_millis(200)).await;

        // publish_batch, pipelined.
        fx.b()
            .publish_batch(vec![
                (k.live.clone(), Bytes::from_static(b"a")),
                (fx.key("nobody"), Bytes::from_static(b"b")),
                (extra.clone(), Bytes::from_static(b"c")),
            ])
            .await
            .unwrap();
        assert_eq!(
            recv(&mut sub).await,
            (k.live.clone(), Bytes::from_static(b"a"))
        );
        assert_eq!(
            recv(&mut sub).await,
            (extra.clone(), Bytes::from_static(b"c"))
        );
        fx.b()
            .publish(&extra, Bytes::from_static(b"d"))
            .await
            .unwrap();
        assert_eq!(recv(&mut sub).await, (extra, Bytes::from_static(b"d")));
    }

    pub async fn subscribe_many_channels(fx: &Fixture) {
        let channels: Vec<String> = (0..500).map(|i| fx.key(&format!("ch:{i}"))).collect();
        let mut sub = fx.b().subscriber().await.unwrap();
        sub.handle.subscribe(&channels).await.unwrap();
        sub.handle.subscribe(&channels[..10]).await.unwrap(); // idempotent
        let all: Vec<(String, Bytes)> = channels
            .iter()
            .map(|c| (c.clone(), Bytes::from(c.clone())))
            .collect();
        fx.b().publish_batch(all.clone()).await.unwrap();
        for (c, _) in &all {
            let (ch, p) = recv(&mut sub).await;
            assert_eq!(&ch, c, "in publish order");
            assert_eq!(p, Bytes::from(c.clone()));
        }

        // Unsubscribe the odd ones: only even channels deliver afterwards.
        let odd: Vec<String> = channels.iter().skip(1).step_by(2).cloned().collect();
        sub.handle.unsubscribe(&odd).await.unwrap();
        sub.handle
            .unsubscribe(&[fx.key("never-subscribed")])
            .await
            .unwrap();
        sub.handle.subscribe(&[]).await.unwrap();
        fx.b().publish_batch(all).await.unwrap();
        fx.b()
            .publish(&channels[0], Bytes::from_static(b"end"))
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let (ch, p) = recv(&mut sub).await;
            if p.as_ref() == b"end" {
                break;
            }
            got.push(ch);
        }
        let even: Vec<String> = channels.iter().step_by(2).cloned().collect();
        assert_eq!(got, even);
    }

    pub async fn subscriber_ends_when_connection_dies(fx: &Fixture) {
        // Killing connections needs a private server: on a shared
        // `REDIS_URL` server this test brings its own.
        let private;
        let fx = match &fx.kind {
            Kind::Redis(r) if !r.is_private() => {
                private = Fixture::redis_private().await;
                &private
            }
            _ => fx,
        };
        let ch = fx.key("dies");
        let mut sub = fx.b().subscriber().await.unwrap();
        sub.handle
            .subscribe(std::slice::from_ref(&ch))
            .await
            .unwrap();
        fx.kill_subscribers()
            .await
            .expect("a private server allows fault injection");
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            while sub.messages.recv().await.is_some() {}
        })
        .await;
        assert!(end.is_ok(), "messages must end when the connection is lost");
        // A new subscriber works.
        let mut sub2 = fx.b().subscriber().await.unwrap();
        sub2.handle
            .subscribe(std::slice::from_ref(&ch))
            .await
            .unwrap();
        fx.b().publish(&ch, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(recv(&mut sub2).await.1, Bytes::from_static(b"x"));
    }

    pub async fn group_starts_at_beginning(fx: &Fixture) {
        let s = fx.key("grp-start");
        let a = fx.b().append(plain(&s, 1)).await.unwrap();
        let b = fx.b().append(plain(&s, 2)).await.unwrap();
        fx.b().ensure_group(&s, "g").await.unwrap();
        fx.b().ensure_group(&s, "g").await.unwrap(); // idempotent
        let got = fx
            .b()
            .read_group(&s, "g", "c1", ReadFrom::New, 10, None)
            .await
            .unwrap();
        assert_eq!(ids(&got), vec![a.id, b.id]);
        assert_eq!(got[0].fields, plain(&s, 1).fields);

        // ensure_group creates the stream.
        let empty = fx.key("grp-empty");
        fx.b().ensure_group(&empty, "g").await.unwrap();
        assert_eq!(fx.b().stream_len(&empty).await.unwrap(), 0);
        let got = fx
            .b()
            .read_group(&empty, "g", "c1", ReadFrom::New, 10, None)
            .await
            .unwrap();
        assert!(got.is_empty());
    }

    pub async fn missing_group_is_nogroup(fx: &Fixture) {
        let s = fx.key("nogroup");
        fx.b().append(plain(&s, 1)).await.unwrap();
        let err = fx
            .b()
            .read_group(&s, "missing", "c", ReadFrom::New, 10, None)
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::NoGroup { .. }), "{err:?}");
        let err = fx.b().group_stats(&s, "missing").await.unwrap_err();
        assert!(matches!(err, BackendError::NoGroup { .. }), "{err:?}");
        let err = fx
            .b()
            .group_stats(&fx.key("no-stream"), "missing")
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::NoGroup { .. }), "{err:?}");
        assert!(!err.is_transient());
    }

    pub async fn pending_reread_after_crash(fx: &Fixture) {
        let s = fx.key("pending");
        fx.b().ensure_group(&s, "g").await.unwrap();
        for i in 0..3 {
            fx.b().append(plain(&s, i)).await.unwrap();
        }
        let first = fx
            .b()
            .read_group(&s, "g", "c1", ReadFrom::New, 10, None)
            .await
            .unwrap();
        assert_eq!(first.len(), 3);
        // "Crash": no ack. On restart the consumer re-reads its own pending.
        let again = fx
            .b()
            .read_group(&s, "g", "c1", ReadFrom::Pending, 10, None)
            .await
            .unwrap();
        assert_eq!(again, first);
        let limited = fx
            .b()
            .read_group(&s, "g", "c1", ReadFrom::Pending, 2, None)
            .await
            .unwrap();
        assert_eq!(ids(&limited), ids(&first[..2]));
        let none = fx
            .b()
            .read_group(&s, "g", "c1", ReadFrom::New, 10, None)
            .await
            .unwrap();
        assert!(none.is_empty(), "nothing new");
        let other = fx
            .b()
            .read_group(&s, "g", "c2", ReadFrom::Pending, 10, None)
            .await
            .unwrap();
        assert!(other.is_empty(), "pending is per consumer");
        assert_eq!(fx.b().ack(&s, "g", &ids(&first)).await.unwrap(), 3);
        let after = fx
            .b()
            .read_group(&s, "g", "c1", ReadFrom::Pending, 10, None)
            .await
            .unwrap();
        assert!(after.is_empty());
    }

    pub async fn ack_removes_pending(fx: &Fixture) {
        let s = fx.key("ack");
        fx.b().ensure_group(&s, "g").await.unwrap();
        for i in 0..3 {
            fx.b().append(plain(&s, i)).await.unwrap();
        }
        let st = fx.b().group_stats(&s, "g").await.unwrap();
        assert_eq!((st.length, st.pending, st.lag), (3, 0, Some(3)));
        let got = fx
            .b()
            .read_group(&s, "g", "c1", ReadFrom::New, 10, None)
            .await
            .unwrap();
        let st = fx.b().group_stats(&s, "g").await.unwrap();
        assert_eq!((st.length, st.pending, st.lag), (3, 3, Some(0)));
        assert_eq!(st.consumers.len(), 1);
        assert_eq!(st.consumers[0].name, "c1");
        assert_eq!(st.consumers[0].pending, 3);

        assert_eq!(fx.b().ack(&s, "g", &ids(&got[..2])).await.unwrap(), 2);
        assert_eq!(fx.b().ack(&s, "g", &ids(&got[..2])).await.unwrap(), 0);
        assert_eq!(fx.b().ack(&s, "g", &[]).await.unwrap(), 0);
        let st = fx.b().group_stats(&s, "g").await.unwrap();
        assert_eq!(st.pending, 1);
        assert_eq!(st.consumers[0].pending, 1);

        assert_eq!(fx.b().delete_consumer(&s, "g", "c1").await.unwrap(), 1);
        let st = fx.b().group_stats(&s, "g").await.unwrap();
        assert!(st.consumers.is_empty());
        assert_eq!(
            st.pending, 0,
            "deleting a consumer drops its pending entries"
        );
    }

    pub async fn apply_and_ack_acks_after_applying(fx: &Fixture) {
        let s = fx.key("apply-ack");
        fx.b().ensure_group(&s, "g").await.unwrap();
        for i in 0..4 {
            fx.b().append(plain(&s, i)).await.unwrap();
        }
        let got = fx
            .b()
            .read_group(&s, "g", "c1", ReadFrom::New, 10, None)
            .await
            .unwrap();
        assert_eq!(got.len(), 4);
        let (a, b) = (fx.job("apply-ack-a"), fx.job("apply-ack-b"));
        let jobs = vec![apply_job(&a, 5, &[1, 2]), apply_job(&b, 6, &[7])];
        let ack = AckRequest {
            stream: &s,
            group: "g",
            ids: &ids(&got[..3]),
        };
        let r = fx.b().apply_and_ack(jobs, &quiet(), ack).await.unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(offsets(&r[0]), vec![(1, true), (2, true)]);
        assert_eq!(offsets(&r[1]), vec![(1, true)]);
        assert_eq!(
            fx.b().read_history(&a, Offset::ZERO, 10).await.unwrap().top,
            Offset(2)
        );
        let st = fx.b().group_stats(&s, "g").await.unwrap();
        assert_eq!(
            st.pending, 1,
            "the three acked entries left the pending list"
        );
        // Nothing to ack: a plain apply (re-applying is a no-op).
        let ack = AckRequest {
            stream: &s,
            group: "g",
            ids: &[],
        };
        let r = fx
            .b()
            .apply_and_ack(vec![apply_job(&a, 5, &[2])], &quiet(), ack)
            .await
            .unwrap();
        assert_eq!(offsets(&r[0]), vec![(2, false)]);
        assert_eq!(fx.b().group_stats(&s, "g").await.unwrap().pending, 1);
    }

    pub async fn claim_after_idle(fx: &Fixture) {
        let s = fx.key("claim");
        fx.b().ensure_group(&s, "g").await.unwrap();
        for i in 0..2 {
            fx.b().append(plain(&s, i)).await.unwrap();
        }
        let read = fx
            .b()
            .read_group(&s, "g", "A", ReadFrom::New, 10, None)
            .await
            .unwrap();
        assert_eq!(read.len(), 2);
        let early = fx
            .b()
            .claim_idle(&s, "g", "B", Duration::from_secs(5), 10)
            .await
            .unwrap();
        assert!(
            early.claimed.is_empty() && early.deleted.is_empty(),
            "not idle yet"
        );

        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = fx
            .b()
            .claim_idle(&s, "g", "B", Duration::from_millis(50), 10)
            .await
            .unwrap();
        assert!(c.deleted.is_empty());
        let got: Vec<(StreamId, u64)> = c
            .claimed
            .iter()
            .map(|d| (d.entry.id, d.deliveries))
            .collect();
        assert_eq!(got, vec![(read[0].id, 2), (read[1].id, 2)]);
        assert_eq!(c.claimed[0].entry, read[0]);

        let st = fx.b().group_stats(&s, "g").await.unwrap();
        let pend = |name: &str| {
            st.consumers
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.pending)
        };
        assert_eq!(pend("B"), Some(2));
        assert_eq!(pend("A"), Some(0));
        let mine = fx
            .b()
            .read_group(&s, "g", "B", ReadFrom::Pending, 10, None)
            .await
            .unwrap();
        assert_eq!(ids(&mine), ids(&read));

        // Claimed entries are fresh again, and count bounds a claim.
        let none = fx
            .b()
            .claim_idle(&s, "g", "C", Duration::from_millis(50), 10)
            .await
            .unwrap();
        assert!(none.claimed.is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let one = fx
            .b()
            .claim_idle(&s, "g", "C", Duration::from_millis(50), 1)
            .await
            .unwrap();
        assert_eq!(one.claimed.len(), 1);
        assert_eq!(one.claimed[0].entry.id, read[0].id);
        // 2 (claim by B) + 1 (B re-read its pending list) + 1 (this claim).
        assert_eq!(
            one.claimed[0].deliveries, 4,
            "re-reads and claims both count"
        );
    }

    pub async fn delivery_count_increments(fx: &Fixture) {
        let s = fx.key("deliveries");
        fx.b().ensure_group(&s, "g").await.unwrap();
        let a = fx.b().append(plain(&s, 0)).await.unwrap();
        fx.b()
            .read_group(&s, "g", "c0", ReadFrom::New, 10, None)
            .await
            .unwrap();
        for round in 2..=5u64 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let c = fx
                .b()
                .claim_idle(&s, "g", &format!("c{round}"), Duration::from_millis(20), 10)
                .await
                .unwrap();
            assert_eq!(c.claimed.len(), 1, "round {round}");
            assert_eq!(c.claimed[0].entry.id, a.id);
            assert_eq!(c.claimed[0].deliveries, round);
        }
    }

    pub async fn claim_reports_deleted_entries(fx: &Fixture) {
        let s = fx.key("claim-deleted");
        fx.b().ensure_group(&s, "g").await.unwrap();
        for i in 0..3 {
            fx.b().append(plain(&s, i)).await.unwrap();
        }
        let read = fx
            .b()
            .read_group(&s, "g", "A", ReadFrom::New, 10, None)
            .await
            .unwrap();
        assert_eq!(fx.b().delete_entries(&s, &[read[1].id]).await.unwrap(), 1);
        // The owner re-reading its pending list sees the deleted entry empty.
        let pend = fx
            .b()
            .read_group(&s, "g", "A", ReadFrom::Pending, 10, None)
            .await
            .unwrap();
        assert_eq!(ids(&pend), ids(&read));
        assert!(!pend[0].is_deleted());
        assert!(pend[1].is_deleted());
        assert!(!pend[2].is_deleted());

        tokio::time::sleep(Duration::from_millis(60)).await;
        let c = fx
            .b()
            .claim_idle(&s, "g", "B", Duration::from_millis(20), 10)
            .await
            .unwrap();
        assert_eq!(
            ids(&c
                .claimed
                .iter()
                .map(|d| d.entry.clone())
                .collect::<Vec<_>>()),
            vec![read[0].id, read[2].id]
        );
        assert_eq!(c.deleted, vec![read[1].id]);
        let st = fx.b().group_stats(&s, "g").await.unwrap();
        assert_eq!(st.pending, 2, "deleted entries leave the pending list");
    }

    pub async fn dead_letter_moves_and_acks(fx: &Fixture) {
        let s = fx.key("dl-src");
        let dlq = fx.key("dlq");
        fx.b().ensure_group(&s, "g").await.unwrap();
        fx.b()
            .append(AppendRequest {
                stream: s.clone(),
                fields: fields(&[("job", "j"), ("body", "\u{1}garbage")]),
                maxlen: None,
                dedupe: None,
            })
            .await
            .unwrap();
        let got = fx
            .b()
            .read_group(&s, "g", "c", ReadFrom::New, 10, None)
            .await
            .unwrap();
        let entry = &got[0];
        let id = fx
            .b()
            .dead_letter(DeadLetter {
                dlq: &dlq,
                source: &s,
                group: "g",
                entry,
                reason: "undecodable body",
                deliveries: 5,
                limits: DeadLetterLimits::default(),
            })
            .await
            .unwrap();
        let dl = fx.b().range(&dlq, None, 10).await.unwrap();
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].id, id);
        let f = &dl[0].fields;
        let text = |k: &str| field(f, k).map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(text("reason").as_deref(), Some("undecodable body"));
        assert_eq!(text("source"), Some(s.clone()));
        assert_eq!(text("id"), Some(entry.id.to_string()));
        assert_eq!(text("deliveries").as_deref(), Some("5"));
        assert_eq!(text("f.job").as_deref(), Some("j"));
        assert_eq!(text("f.body").as_deref(), Some("\u{1}garbage"));
        let st = fx.b().group_stats(&s, "g").await.unwrap();
        assert_eq!(st.pending, 0, "dead-lettered entries are acked");
        assert_eq!(st.length, 1, "the source entry itself stays");
        assert!(
            f.iter().all(|(k, _)| !k.starts_with(DLQ_TRUNCATED_PREFIX)),
            "nothing was cut: {f:?}"
        );
    }

    /// G6 for poison: the dead-letter stream keeps at most `maxlen`
    /// entries, and values over `max_field_bytes` are stored cut, with
    /// their size and SHA-256.
    pub async fn dead_letter_is_bounded(fx: &Fixture) {
        let s = fx.key("dl-bounded");
        let dlq = fx.key("dlq-bounded");
        fx.b().ensure_group(&s, "g").await.unwrap();
        let big = "x".repeat(1000);
        for i in 0..12 {
            fx.b()
                .append(AppendRequest {
                    stream: s.clone(),
                    fields: fields(&[("n", &i.to_string()), ("body", &big)]),
                    maxlen: None,
                    dedupe: None,
                })
                .await
                .unwrap();
        }
        let got = fx
            .b()
            .read_group(&s, "g", "c", ReadFrom::New, 100, None)
            .await
            .unwrap();
        assert_eq!(got.len(), 12);
        let limits = DeadLetterLimits {
            maxlen: 5,
            max_field_bytes: 100,
        };
        for entry in &got {
            let dl = DeadLetter {
                dlq: &dlq,
                source: &s,
                group: "g",
                entry,
                reason: "poison",
                deliveries: 1,
                limits,
            };
            assert!(dl.truncates());
            fx.b().dead_letter(dl).await.unwrap();
        }
        let dl = fx.b().range(&dlq, None, 100).await.unwrap();
        assert_eq!(dl.len(), 5, "trimmed to maxlen, oldest first");
        let f = &dl[4].fields;
        assert_eq!(field(f, "f.n").map(|v| v.to_vec()), Some(b"11".to_vec()));
        assert_eq!(field(f, "f.body").map(|v| v.len()), Some(100));
        assert_eq!(field(f, "t.n"), None, "short fields are kept whole");
        let marker = String::from_utf8_lossy(field(f, "t.body").expect("cut marker")).into_owned();
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(big.as_bytes()));
        assert_eq!(marker, format!("1000 {digest}"));
        assert_eq!(fx.b().group_stats(&s, "g").await.unwrap().pending, 0);
    }

    /// Shard ownership: a lease has one holder, who can renew it; once it
    /// expires (or is released) another owner takes it.
    pub async fn lease_is_exclusive_and_expires(fx: &Fixture) {
        let key = fx.key("lease");
        let ttl = Duration::from_millis(300);
        assert!(fx.b().try_lease(&key, "a", ttl).await.unwrap());
        assert!(!fx.b().try_lease(&key, "b", ttl).await.unwrap());
        assert!(fx.b().try_lease(&key, "a", ttl).await.unwrap(), "renewal");
        fx.b().release_lease(&key, "b").await.unwrap();
        assert!(
            !fx.b().try_lease(&key, "b", ttl).await.unwrap(),
            "not b's to free"
        );
        tokio::time::sleep(ttl + Duration::from_millis(200)).await;
        assert!(fx.b().try_lease(&key, "b", ttl).await.unwrap(), "expired");
        assert!(!fx.b().try_lease(&key, "a", ttl).await.unwrap());
        fx.b().release_lease(&key, "b").await.unwrap();
        assert!(fx.b().try_lease(&key, "a", ttl).await.unwrap(), "released");
    }

    /// Membership: every live member is listed, sorted; one whose
    /// heartbeat expired is dropped.
    pub async fn heartbeat_lists_live_members(fx: &Fixture) {
        let key = fx.key("members");
        let short = Duration::from_millis(300);
        let long = Duration::from_secs(30);
        assert_eq!(fx.b().heartbeat(&key, "r2", long).await.unwrap(), ["r2"]);
        assert_eq!(
            fx.b().heartbeat(&key, "r1", short).await.unwrap(),
            ["r1", "r2"]
        );
        tokio::time::sleep(short + Duration::from_millis(200)).await;
        assert_eq!(
            fx.b().heartbeat(&key, "r3", long).await.unwrap(),
            ["r2", "r3"]
        );
    }

    pub async fn blocking_read_wakes_on_append(fx: &Fixture) {
        let s = fx.key("block");
        fx.b().ensure_group(&s, "g").await.unwrap();
        let backend = fx.backend.clone();
        let s2 = s.clone();
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            backend
                .read_group(
                    &s2,
                    "g",
                    "c",
                    ReadFrom::New,
                    10,
                    Some(Duration::from_secs(5)),
                )
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let a = fx.b().append(plain(&s, 1)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(4), reader)
            .await
            .expect("blocked read did not wake")
            .unwrap()
            .unwrap();
        assert_eq!(ids(&got), vec![a.id]);
        assert!(start.elapsed() < Duration::from_secs(4));

        // Nothing arrives: an empty result after about `block`.
        let start = Instant::now();
        let got = fx
            .b()
            .read_group(
                &s,
                "g",
                "c",
                ReadFrom::New,
                10,
                Some(Duration::from_millis(300)),
            )
            .await
            .unwrap();
        assert!(got.is_empty());
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250),
            "returned after {took:?}"
        );
        assert!(took < Duration::from_secs(3), "returned after {took:?}");

        // Pending reads never block.
        let start = Instant::now();
        let got = fx
            .b()
            .read_group(
                &s,
                "g",
                "c",
                ReadFrom::Pending,
                10,
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert_eq!(ids(&got), vec![a.id]);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    pub async fn concurrent_blocking_reads(fx: &Fixture) {
        // Several blocked readers must not stall each other or other commands.
        let s = fx.key("block-many");
        fx.b().ensure_group(&s, "g").await.unwrap();
        let mut readers = Vec::new();
        for i in 0..4 {
            let backend = fx.backend.clone();
            let s = s.clone();
            readers.push(tokio::spawn(async move {
                backend
                    .read_group(
                        &s,
                        "g",
                        &format!("c{i}"),
                        ReadFrom::New,
                        1,
                        Some(Duration::from_secs(5)),
                    )
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        fx.b().ping().await.unwrap();
        fx.b()
            .set(&fx.key("k"), Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "commands stalled behind blocked reads: {:?}",
            start.elapsed()
        );
        for i in 0..4 {
            fx.b().append(plain(&s, i)).await.unwrap();
        }
        let mut total = 0;
        for r in readers {
            let got = tokio::time::timeout(Duration::from_secs(4), r)
                .await
                .expect("reader did not wake")
                .unwrap()
                .unwrap();
            total += got.len();
        }
        assert_eq!(total, 4);
    }

    pub async fn kv_operations(fx: &Fixture) {
        let k = fx.key("kv");
        assert_eq!(fx.b().get(&k).await.unwrap(), None);
        assert!(fx
            .b()
            .set_nx(&k, Bytes::from_static(b"one"), None)
            .await
            .unwrap());
        assert!(!fx
            .b()
            .set_nx(&k, Bytes::from_static(b"two"), None)
            .await
            .unwrap());
        assert_eq!(
            fx.b().get(&k).await.unwrap(),
            Some(Bytes::from_static(b"one"))
        );
        fx.b()
            .set(&k, Bytes::from_static(b"\x00\xffbin"), None)
            .await
            .unwrap();
        assert_eq!(
            fx.b().get(&k).await.unwrap(),
            Some(Bytes::from_static(b"\x00\xffbin"))
        );
        let other = fx.key("kv2");
        assert_eq!(fx.b().delete(&[k.clone(), other.clone()]).await.unwrap(), 1);
        assert_eq!(fx.b().get(&k).await.unwrap(), None);
        assert_eq!(fx.b().delete(&[]).await.unwrap(), 0);

        let t = fx.key("kv-ttl");
        assert!(fx
            .b()
            .set_nx(
                &t,
                Bytes::from_static(b"x"),
                Some(Duration::from_millis(200))
            )
            .await
            .unwrap());
        fx.b()
            .set(
                &other,
                Bytes::from_static(b"y"),
                Some(Duration::from_millis(200)),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(fx.b().get(&t).await.unwrap(), None);
        assert_eq!(fx.b().get(&other).await.unwrap(), None);
        assert!(fx
            .b()
            .set_nx(&t, Bytes::from_static(b"z"), None)
            .await
            .unwrap());
    }

    pub async fn range_delete_len(fx: &Fixture) {
        let s = fx.key("range");
        assert_eq!(fx.b().stream_len(&s).await.unwrap(), 0);
        assert!(fx.b().range(&s, None, 10).await.unwrap().is_empty());
        let mut all = Vec::new();
        for i in 0..5 {
            all.push(fx.b().append(plain(&s, i)).await.unwrap().id);
        }
        let got = fx.b().range(&s, None, 10).await.unwrap();
        assert_eq!(ids(&got), all);
        assert_eq!(got[2].fields, plain(&s, 2).fields);
        let got = fx.b().range(&s, Some(all[1]), 2).await.unwrap();
        assert_eq!(ids(&got), all[2..4].to_vec());
        let got = fx.b().range(&s, Some(all[4]), 10).await.unwrap();
        assert!(got.is_empty());
        assert!(fx.b().range(&s, None, 0).await.unwrap().is_empty());

        let missing = StreamId::new(1, 0);
        assert_eq!(
            fx.b().delete_entries(&s, &[all[0], missing]).await.unwrap(),
            1
        );
        assert_eq!(fx.b().delete_entries(&s, &[]).await.unwrap(), 0);
        assert_eq!(fx.b().stream_len(&s).await.unwrap(), 4);
        let got = fx.b().range(&s, None, 10).await.unwrap();
        assert_eq!(ids(&got), all[1..].to_vec());
    }
}

/// Generates one `#[tokio::test]` per case for a backend, in module `$name`.
macro_rules! conformance_tests {
    ($name:ident, $make:expr) => {
        mod $name {
            conformance_tests!(@cases $make;
                ping,
                idempotent_append,
                apply_assigns_gap_free_offsets,
                apply_batch_of_jobs,
                reapply_is_noop,
                state_never_regresses,
                history_after_offset,
                history_after_huge_offset,
                history_is_bounded,
                history_expires,
                epoch_is_stable,
                publish_reaches_subscribers,
                subscribe_many_channels,
                subscriber_ends_when_connection_dies,
                group_starts_at_beginning,
                missing_group_is_nogroup,
                pending_reread_after_crash,
                ack_removes_pending,
                apply_and_ack_acks_after_applying,
                claim_after_idle,
                delivery_count_increments,
                claim_reports_deleted_entries,
                dead_letter_moves_and_acks,
                dead_letter_is_bounded,
                blocking_read_wakes_on_append,
                lease_is_exclusive_and_expires,
                heartbeat_lists_live_members,
                concurrent_blocking_reads,
                kv_operations,
                range_delete_len,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx: $crate::Fixture = ($make)().await;
                $crate::cases::$case(&fx).await;
            }
        )*
    };
}

conformance_tests!(memory, crate::Fixture::memory);
conformance_tests!(redis, crate::Fixture::redis);
conformance_tests!(redis_cluster_mode, crate::Fixture::redis_cluster_mode);

/// Redis-only behaviour: connection handling and fault injection.
mod redis_faults {
    use super::*;
    use relay_core::backend::redis::RedisConfig;
    use relay_core::testing::{RedisServerOptions, WriteRefusal};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn block_longer_than_response_timeout() {
        // The Python system's socket timeout was shorter than its XREAD BLOCK.
        let redis = TestRedis::get();
        let config = RedisConfig {
            response_timeout: Duration::from_millis(200),
            ..RedisConfig::default()
        };
        let b = RedisBackend::connect_with(redis.url(), config)
            .await
            .unwrap();
        let s = redis.key("s");
        b.ensure_group(&s, "g").await.unwrap();
        let start = Instant::now();
        let got = b
            .read_group(
                &s,
                "g",
                "c",
                ReadFrom::New,
                10,
                Some(Duration::from_millis(800)),
            )
            .await
            .unwrap();
        assert!(got.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(750));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_after_client_kill() {
        let redis = TestRedis::private();
        let b = redis.backend().await;
        b.set("k", Bytes::from_static(b"v"), None).await.unwrap();
        let killed = redis.client_kill(&["TYPE", "normal"]).await.unwrap();
        assert!(killed >= 1);
        let mut ok = false;
        for _ in 0..50 {
            match b.get("k").await {
                Ok(v) => {
                    assert_eq!(v, Some(Bytes::from_static(b"v")));
                    ok = true;
                    break;
                }
                Err(e) => assert!(e.is_transient(), "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "no recovery after CLIENT KILL");
    }

    /// D7: the first idempotent read after the server dropped our
    /// connections (`CLIENT KILL`) answers, instead of failing once with a
    /// broken pipe while the connection is re-established.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_read_after_client_kill_succeeds() {
        let redis = TestRedis::private();
        let b = redis.backend().await;
        let base = format!("{}{{d7}}", redis.prefix());
        let k = JobKeys {
            meta: format!("{base}:meta"),
            state: Some(format!("{base}:state")),
            live: format!("{base}:live"),
        };
        b.apply(vec![apply_job(&k, 3, &[1, 2])], &quiet())
            .await
            .unwrap();
        b.set("k", Bytes::from_static(b"v"), None).await.unwrap();
        for round in 0..3 {
            let killed = redis.client_kill(&["TYPE", "normal"]).await.unwrap();
            assert!(killed >= 1);
            // Let the client notice the closed socket first, as a gateway
            // idle between two requests does.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let state = b.get_state(&k).await;
            let state = state.unwrap_or_else(|e| panic!("round {round}: get_state: {e}"));
            assert_eq!(state.map(|s| s.top), Some(Offset(2)));
            redis.client_kill(&["TYPE", "normal"]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let v = b
                .get("k")
                .await
                .unwrap_or_else(|e| panic!("round {round}: get: {e}"));
            assert_eq!(v, Some(Bytes::from_static(b"v")));
            redis.client_kill(&["TYPE", "normal"]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let page = b.read_history(&k, Offset::ZERO, 10).await;
            let page = page.unwrap_or_else(|e| panic!("round {round}: history: {e}"));
            assert_eq!(page.records.len(), 2);
            // SET NX is not idempotent, yet it must not fail either.
            redis.client_kill(&["TYPE", "normal"]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let nx = format!("{}nx{round}", redis.prefix());
            let value = Bytes::from(format!("mine-{round}"));
            let set = b.set_nx(&nx, value.clone(), None).await;
            assert!(set.unwrap_or_else(|e| panic!("round {round}: set_nx: {e}")));
            assert!(!b.set_nx(&nx, value.clone(), None).await.unwrap());
            assert_eq!(b.get(&nx).await.unwrap(), Some(value));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_down_is_transient_and_blocked_read_fails_fast() {
        let redis = TestRedis::private();
        let b = redis.backend().await;
        let s = redis.key("s");
        b.ensure_group(&s, "g").await.unwrap();
        let b2 = b.clone();
        let s2 = s.clone();
        let reader = tokio::spawn(async move {
            b2.read_group(
                &s2,
                "g",
                "c",
                ReadFrom::New,
                10,
                Some(Duration::from_secs(30)),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis.stop().unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("blocked read must fail when the server dies")
            .unwrap()
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let err = b.ping().await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_keeps_aof_data_and_reloads_scripts() {
        let redis = TestRedis::private_with(RedisServerOptions::with_aof());
        let b = redis.backend().await;
        let base = format!("{}{{job}}", redis.prefix());
        let k = JobKeys {
            meta: format!("{base}:meta"),
            state: Some(format!("{base}:state")),
            live: format!("{base}:live"),
        };
        let r = b
            .apply(vec![apply_job(&k, 5, &[1, 2])], &quiet())
            .await
            .unwrap();
        assert_eq!(offsets(&r[0]), vec![(1, true), (2, true)]);
        redis.restart().unwrap();
        // After the restart the script cache is empty (NOSCRIPT → reload).
        let mut result = None;
        for _ in 0..50 {
            match b.apply(vec![apply_job(&k, 6, &[2, 3])], &quiet()).await {
                Ok(r) => {
                    result = Some(r);
                    break;
                }
                Err(e) => assert!(e.is_transient(), "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = result.expect("no recovery after restart");
        assert_eq!(r[0].epoch, Epoch(5));
        assert_eq!(offsets(&r[0]), vec![(2, false), (3, true)]);
        let page = b.read_history(&k, Offset::ZERO, 10).await.unwrap();
        assert_eq!(page.records.len(), 3);
        let stats = redis.info_commandstats().await.unwrap();
        assert!(
            stats.get("evalsha").is_some_and(|s| s.calls >= 1),
            "{stats:?}"
        );
    }

    /// F1 and F2: a server that refuses writes while still answering
    /// reads and `PUBLISH` (`OOM` under `noeviction`, `NOREPLICAS`) must
    /// make the apply fail as a transient error (retried, never
    /// dead-lettered) and publish nothing: a live message for an offset
    /// that was never committed would later be reassigned to another event.
    async fn refused_apply_publishes_nothing_and_is_transient(refusal: WriteRefusal) {
        let redis = TestRedis::private();
        let server = redis.server().unwrap();
        let b = redis.backend().await;
        let base = format!("{}{{refused}}", redis.prefix());
        let k = JobKeys {
            meta: format!("{base}:meta"),
            state: Some(format!("{base}:state")),
            live: format!("{base}:live"),
        };
        let mut sub = b.subscriber().await.unwrap();
        sub.handle
            .subscribe(std::slice::from_ref(&k.live))
            .await
            .unwrap();
        let opts = ApplyOptions::default();
        b.apply(vec![apply_job(&k, 9, &[1, 2, 3])], &opts)
            .await
            .unwrap();
        for _ in 0..3 {
            recv(&mut sub).await;
        }

        // The router acks in the apply call: the refused call acks nothing.
        let s = redis.key("refused-stream");
        b.ensure_group(&s, "g").await.unwrap();
        b.append(plain(&s, 1)).await.unwrap();
        let got = b
            .read_group(&s, "g", "c", ReadFrom::New, 10, None)
            .await
            .unwrap();
        server.refuse_writes(refusal).await.unwrap();
        let ack = AckRequest {
            stream: &s,
            group: "g",
            ids: &ids(&got),
        };
        let err = b
            .apply_and_ack(vec![apply_job(&k, 9, &[4, 5])], &opts, ack)
            .await
            .expect_err("the server refuses writes");
        assert!(err.is_transient(), "{refusal:?} must be transient: {err:?}");
        assert_silent(&mut sub, Duration::from_millis(500)).await;
        server.allow_writes().await.unwrap();
        assert_eq!(b.group_stats(&s, "g").await.unwrap().pending, 1);

        // Offsets 4 and 5 were never committed: the next events take them,
        // and what is published matches what is stored.
        b.apply(vec![apply_job(&k, 9, &[5, 6])], &opts)
            .await
            .unwrap();
        let mut published = Vec::new();
        for _ in 0..2 {
            let (_, p) = recv(&mut sub).await;
            let env = LiveEnvelope::decode(&p).unwrap();
            published.push((env.record.offset.0, env.record.payload));
        }
        assert_eq!(published, vec![(4, ev(5).payload), (5, ev(6).payload)]);
        let page = b.read_history(&k, Offset(3), 10).await.unwrap();
        let stored: Vec<_> = page
            .records
            .iter()
            .map(|r| (r.offset.0, r.payload.clone()))
            .collect();
        assert_eq!(stored, published);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oom_refused_apply_publishes_nothing_and_is_transient() {
        refused_apply_publishes_nothing_and_is_transient(WriteRefusal::Oom).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn noreplicas_refused_apply_publishes_nothing_and_is_transient() {
        refused_apply_publishes_nothing_and_is_transient(WriteRefusal::NoReplicas).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_server_refuses_fault_injection() {
        let redis = TestRedis::get();
        if redis.is_private() {
            assert!(redis.server().is_ok());
        } else {
            let err = redis.server().unwrap_err();
            assert!(err.to_string().contains("private"), "{err}");
        }
    }
}
