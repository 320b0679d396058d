//! Redis-only behaviour: connection handling and fault injection (killed
//! connections, a stopped or restarted server, refused writes), for each
//! Redis client (`redis_faults::redis::…`, `redis_faults::fred::…`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::backend::redis::{RedisConfig, RedisTopology};
use relay_core::backend::{AckRequest, ApplyOptions, ReadFrom};
use relay_core::{Epoch, LiveEnvelope, Offset};
use relay_testkit::redis::{RedisServerOptions, TestRedis, WriteRefusal};

use crate::support::{
    apply_job, assert_silent, ev, ids, job_keys, offsets, per_client_tests, plain, quiet,
    read_group, recv, spawn_read, RedisClient, RedisRoles, GROUP,
};

/// `client`'s backend on the standalone server at `url`.
async fn connect(client: RedisClient, url: &str, config: RedisConfig) -> Arc<dyn RedisRoles> {
    client
        .backend(RedisTopology::Standalone(url.to_owned()), config)
        .await
}

async fn block_longer_than_response_timeout(client: RedisClient) {
    // The Python system's socket timeout was shorter than its XREAD BLOCK.
    let redis = TestRedis::get();
    let config = RedisConfig {
        response_timeout: Duration::from_millis(200),
        ..RedisConfig::default()
    };
    let b = connect(client, redis.url(), config).await;
    let s = redis.key("s");
    b.ensure_group(&s, GROUP).await.unwrap();
    let start = Instant::now();
    let block = Some(Duration::from_millis(800));
    let got = read_group(&*b, &s, "c", ReadFrom::New, 10, block)
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(750));
}

async fn recovers_after_client_kill(client: RedisClient) {
    let redis = TestRedis::private();
    let b = connect(client, redis.url(), RedisConfig::default()).await;
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
async fn first_read_after_client_kill_succeeds(client: RedisClient) {
    let redis = TestRedis::private();
    let b = connect(client, redis.url(), RedisConfig::default()).await;
    let k = job_keys(redis.prefix(), "d7");
    b.apply(&[apply_job(&k, 3, &[1, 2])], &quiet())
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

async fn server_down_is_transient_and_blocked_read_fails_fast(client: RedisClient) {
    let redis = TestRedis::private();
    let b = connect(client, redis.url(), RedisConfig::default()).await;
    let s = redis.key("s");
    b.ensure_group(&s, GROUP).await.unwrap();
    let reader = spawn_read(b.clone(), &s, "c", 10, Duration::from_secs(30));
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

async fn restart_keeps_aof_data_and_reloads_scripts(client: RedisClient) {
    let redis = TestRedis::private_with(RedisServerOptions::with_aof());
    let b = connect(client, redis.url(), RedisConfig::default()).await;
    let k = job_keys(redis.prefix(), "job");
    let r = b
        .apply(&[apply_job(&k, 5, &[1, 2])], &quiet())
        .await
        .unwrap();
    assert_eq!(offsets(&r[0]), vec![(1, true), (2, true)]);
    redis.restart().unwrap();
    // After the restart the script cache is empty (NOSCRIPT → reload).
    let mut result = None;
    for _ in 0..50 {
        match b.apply(&[apply_job(&k, 6, &[2, 3])], &quiet()).await {
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
async fn refused_apply_publishes_nothing_and_is_transient(
    client: RedisClient,
    refusal: WriteRefusal,
) {
    let redis = TestRedis::private();
    let server = redis.server().unwrap();
    let b = connect(client, redis.url(), RedisConfig::default()).await;
    let k = job_keys(redis.prefix(), "refused");
    let mut sub = b.subscriber().await.unwrap();
    sub.handle
        .subscribe(std::slice::from_ref(&k.live))
        .await
        .unwrap();
    let opts = ApplyOptions::default();
    b.apply(&[apply_job(&k, 9, &[1, 2, 3])], &opts)
        .await
        .unwrap();
    for _ in 0..3 {
        recv(&mut sub).await;
    }

    // The router acks in the apply call: the refused call acks nothing.
    let s = redis.key("refused-stream");
    b.ensure_group(&s, GROUP).await.unwrap();
    b.append(plain(&s, 1)).await.unwrap();
    let got = read_group(&*b, &s, "c", ReadFrom::New, 10, None)
        .await
        .unwrap();
    server.refuse_writes(refusal).await.unwrap();
    let ack = AckRequest {
        stream: &s,
        group: GROUP,
        ids: &ids(&got),
    };
    let err = b
        .apply_and_ack(&[apply_job(&k, 9, &[4, 5])], &opts, ack)
        .await
        .expect_err("the server refuses writes");
    assert!(err.is_transient(), "{refusal:?} must be transient: {err:?}");
    assert_silent(&mut sub, Duration::from_millis(500)).await;
    server.allow_writes().await.unwrap();
    assert_eq!(b.group_stats(&s, GROUP).await.unwrap().pending, 1);

    // Offsets 4 and 5 were never committed: the next events take them,
    // and what is published matches what is stored.
    b.apply(&[apply_job(&k, 9, &[5, 6])], &opts).await.unwrap();
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

async fn oom_refused_apply_publishes_nothing_and_is_transient(client: RedisClient) {
    refused_apply_publishes_nothing_and_is_transient(client, WriteRefusal::Oom).await;
}

async fn noreplicas_refused_apply_publishes_nothing_and_is_transient(client: RedisClient) {
    refused_apply_publishes_nothing_and_is_transient(client, WriteRefusal::NoReplicas).await;
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

/// A stopped process (`SIGSTOP`), resumed when dropped: its sockets stay
/// open, it just never answers (a hung or partitioned node).
#[cfg(feature = "fred")]
struct Stopped(u32);

#[cfg(feature = "fred")]
impl Stopped {
    fn new(pid: u32) -> Self {
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "SIGSTOP {pid}");
        Stopped(pid)
    }
}

#[cfg(feature = "fred")]
impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// fred's subscriber probes its connection: a server that stops answering
/// without closing the connection still ends the subscriber (so the owner
/// resubscribes and catches up), where fred alone would wait forever.
#[cfg(feature = "fred")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_subscriber_ends_when_the_server_stops_answering() {
    let redis = TestRedis::private();
    let b = connect(RedisClient::Fred, redis.url(), RedisConfig::default()).await;
    let mut sub = b.subscriber().await.unwrap();
    sub.handle.subscribe(&[redis.key("hung")]).await.unwrap();
    let pid = redis.server().unwrap().pid().expect("server pid");
    let _resume = Stopped::new(pid);
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        while sub.messages.recv().await.is_some() {}
    })
    .await;
    assert!(
        end.is_ok(),
        "messages must end when the server stops answering"
    );
}

per_client_tests!(
    block_longer_than_response_timeout,
    recovers_after_client_kill,
    first_read_after_client_kill_succeeds,
    server_down_is_transient_and_blocked_read_fails_fast,
    restart_keeps_aof_data_and_reloads_scripts,
    oom_refused_apply_publishes_nothing_and_is_transient,
    noreplicas_refused_apply_publishes_nothing_and_is_transient,
);
