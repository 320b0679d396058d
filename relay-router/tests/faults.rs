//! Fault tests of the real `relay-router` binary against private
//! redis-servers: kill -9 mid-run, a dead consumer's pending entries, dropped
//! connections and a Redis restart, poison entries, and the eco2 wire format.
//!
//! Every test checks the end state, not timings: every produced event is
//! applied exactly once, history is gap-free, state holds the highest seq.
//!
//! Each test runs once per Redis client ([`per_redis_client!`]):
//! `redis_rs::…` and, with `--features fred`, `fred::…`, where the router
//! (and relayctl) run with `--redis-client fred` and the test's own
//! producer and checks use the fred backend too.
//!
//! [`per_redis_client!`]: relay_testkit::per_redis_client

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use relay_core::backend::{AppendRequest, Backend, ReadFrom};
use relay_core::cli::RedisClient;
use relay_core::codec::{field, native_fields, Encoding};
use relay_core::eco2::Eco2Entry;
use relay_core::{
    Decoded, Domain, Event, JobId, KeySpace, Offset, Profile, Publisher, PublisherConfig, Stage,
    Status,
};
use relay_testkit::procs::Proc;
use relay_testkit::redis::{RedisServerOptions, TestRedis, WriteRefusal};

/// Spawns the real `relay-router` with `client` (SIGKILLed when the handle
/// drops).
fn spawn_router(
    client: RedisClient,
    url: &str,
    domain: &str,
    consumer: &str,
    extra: &[&str],
) -> Proc {
    let mut args = vec![
        "--redis-client",
        client.as_str(),
        "--redis-url",
        url,
        "--domain",
        domain,
        "--consumer",
        consumer,
    ];
    // Defaults for what `extra` does not set.
    for (flag, value) in [
        ("--block-ms", "200"),
        ("--claim-idle-ms", "1000"),
        ("--batch", "128"),
        ("--metrics-addr", "127.0.0.1:0"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    Proc::spawn("relay-router", &args, &[])
}

/// A backend on the test's Redis, with the client under test.
async fn redis_backend(client: RedisClient, redis: &TestRedis) -> Arc<dyn Backend> {
    client
        .connect(redis.url())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {} with {client}: {e}", redis.url()))
}

/// A domain no other test uses, so tests can share a `REDIS_URL` server.
fn unique_domain() -> String {
    let p: String = relay_testkit::redis::unique_prefix()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("t{p}")
}

fn keyspace(profile: Profile, domain: &str) -> KeySpace {
    KeySpace::new(profile, Domain::new(domain).expect("domain"), 4)
}

/// Publishes `jobs × per_job` events (seq 1..=per_job) in shuffled batches.
async fn produce(
    backend: Arc<dyn Backend>,
    keys: KeySpace,
    jobs: usize,
    per_job: u64,
    pace: Duration,
) {
    let publisher = Publisher::new(backend, keys.clone(), PublisherConfig::default());
    for seq in 1..=per_job {
        let batch: Vec<Event> = (0..jobs)
            .map(|j| {
                let status = if seq == per_job {
                    Status::Completed
                } else {
                    Status::Progress
                };
                let stage = if seq == per_job { "done" } else { "work" };
                Event::new(
                    keys.domain().as_str(),
                    &format!("job-{j}"),
                    seq,
                    stage,
                    status,
                )
                .expect("event")
                .with_data(serde_json::json!({ "seq": seq }))
            })
            .collect();
        // A producer retry: publishing twice must not duplicate anything.
        for _ in 0..2 {
            loop {
                match publisher.publish_batch(&batch).await {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        tokio::time::sleep(pace).await;
    }
}

/// Waits until every job's history holds seqs 1..=per_job exactly once at
/// offsets 1..=per_job, and state = per_job; panics with details after `limit`.
async fn await_complete(
    backend: &dyn Backend,
    keys: &KeySpace,
    jobs: usize,
    per_job: u64,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut problems = Vec::new();
        for j in 0..jobs {
            let job = JobId::new(format!("job-{j}")).expect("job");
            let k = keys.job(&job);
            let page = match backend.read_history(&k, Offset::ZERO, 10_000).await {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("{job}: {e}"));
                    continue;
                }
            };
            let mut seqs = BTreeMap::new();
            for (i, r) in page.records.iter().enumerate() {
                if r.offset.0 != i as u64 + 1 {
                    problems.push(format!("{job}: offset {} at position {i}", r.offset));
                }
                let seq = match r.payload.decode() {
                    Ok(Decoded::Native(e)) => e.seq,
                    Ok(Decoded::Eco2(e)) => e.seq,
                    Err(e) => panic!("undecodable history record: {e}"),
                };
                *seqs.entry(seq).or_insert(0) += 1;
            }
            if seqs.len() as u64 != per_job || seqs.values().any(|n| *n != 1) {
                problems.push(format!("{job}: {} distinct seqs of {per_job}", seqs.len()));
                continue;
            }
            match backend.get_state(&k).await {
                Ok(Some(s)) if s.seq == per_job => {}
                other => problems.push(format!(
                    "{job}: state {:?}",
                    other.map(|s| s.map(|s| s.seq))
                )),
            }
        }
        if problems.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "not complete after {limit:?}: {} problems, e.g. {:?}",
                problems.len(),
                &problems[..problems.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn await_drained(backend: &dyn Backend, keys: &KeySpace, group: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut busy = 0;
        for s in keys.shard_streams() {
            match backend.group_stats(&s, group).await {
                Ok(st) => busy += st.pending + st.lag.unwrap_or(1),
                // No group yet: the router has not started on this shard.
                Err(_) => busy += 1,
            }
        }
        if busy == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{busy} entries still pending or unread"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every produced event routed exactly once and the group fully acked.
async fn await_routed(backend: &dyn Backend, keys: &KeySpace, jobs: usize, per_job: u64) {
    await_complete(backend, keys, jobs, per_job, Duration::from_secs(60)).await;
    await_drained(backend, keys, keys.default_group(), Duration::from_secs(30)).await;
}

async fn kill9_mid_run_loses_nothing_and_applies_once(client: RedisClient) {
    let redis = TestRedis::get();
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let (jobs, per_job) = (200, 60);

    let mut router = spawn_router(client, redis.url(), &domain, "r1", &[]);
    let producer = tokio::spawn(produce(
        backend.clone(),
        keys.clone(),
        jobs,
        per_job,
        Duration::from_millis(15),
    ));
    // Kill -9 three times while the producer runs, restarting with the same
    // consumer name (it re-reads its own pending entries first).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        router.kill9();
        tokio::time::sleep(Duration::from_millis(100)).await;
        router = spawn_router(client, redis.url(), &domain, "r1", &[]);
    }
    producer.await.expect("producer");
    await_routed(backend.as_ref(), &keys, jobs, per_job).await;
    // Graceful shutdown exits 0.
    assert!(router.terminate().expect("router was running").success());
}

async fn survivor_claims_pending_of_dead_consumers(client: RedisClient) {
    let redis = TestRedis::get();
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let group = keys.default_group();

    // A consumer that read entries and died: they sit in its pending list.
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    for s in keys.shard_streams() {
        backend.ensure_group(&s, group).await.expect("group");
    }
    let events: Vec<Event> = (0..40)
        .map(|j| {
            Event::new(&domain, &format!("job-{j}"), 1, "done", Status::Completed).expect("event")
        })
        .collect();
    publisher.publish_batch(&events).await.expect("publish");
    let mut ghost_pending = 0;
    for s in keys.shard_streams() {
        ghost_pending += backend
            .read_group(&s, group, "ghost", ReadFrom::New, 1000, None)
            .await
            .expect("ghost read")
            .len();
    }
    assert_eq!(ghost_pending, 40);

    // Two routers share the group; one is killed mid-run.
    let r1 = spawn_router(client, redis.url(), &domain, "r1", &[]);
    let mut r2 = spawn_router(client, redis.url(), &domain, "r2", &[]);
    let producer = tokio::spawn(produce(
        backend.clone(),
        keys.clone(),
        50,
        40,
        Duration::from_millis(10),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    r2.kill9();
    producer.await.expect("producer");

    // The ghost's job-0..39 seq 1 and everything r2 held are claimed by r1.
    await_routed(backend.as_ref(), &keys, 50, 40).await;
    drop(r1);
}

async fn survives_client_kill_and_redis_restart_with_aof(client: RedisClient) {
    let redis =
        TestRedis::private_with(RedisServerOptions::with_aof().args(["--appendfsync", "always"]));
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let (jobs, per_job) = (50, 40);

    let _router = spawn_router(client, redis.url(), &domain, "r1", &[]);
    let producer = tokio::spawn(produce(
        backend.clone(),
        keys.clone(),
        jobs,
        per_job,
        Duration::from_millis(20),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = redis
        .client_kill(&["TYPE", "normal"])
        .await
        .expect("client kill");
    assert!(killed > 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().expect("restart");
    producer.await.expect("producer");
    await_routed(backend.as_ref(), &keys, jobs, per_job).await;
}

fn raw(fields: &[(&str, &[u8])]) -> Vec<(String, Bytes)> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v)))
        .collect()
}

async fn poison_entries_go_to_the_dlq_and_do_not_stall_the_shard(client: RedisClient) {
    let redis = TestRedis::get();
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let job = JobId::new("poisoned-job").expect("job");
    let stream = keys.shard_stream(keys.shard_of(&job));
    let good =
        |seq: u64| Event::new(&domain, job.as_str(), seq, "work", Status::Progress).expect("event");
    let big_body = vec![b'x'; 2 * 1024 * 1024];
    let entries = vec![
        native_fields(&good(1), Encoding::MsgPack).expect("fields"),
        raw(&[("seq", b"2"), ("enc", b"json"), ("body", b"{}")]),
        raw(&[
            ("job", job.as_str().as_bytes()),
            ("seq", b"three"),
            ("enc", b"json"),
            ("body", b"{}"),
        ]),
        raw(&[
            ("job", job.as_str().as_bytes()),
            ("seq", b"4"),
            ("enc", b"msgpack"),
            ("body", b"\xc1\xc1garbage"),
        ]),
        raw(&[
            ("job", job.as_str().as_bytes()),
            ("seq", b"5"),
            ("enc", b"json"),
            ("body", &big_body),
        ]),
        native_fields(&good(6), Encoding::Json).expect("fields"),
    ];
    for fields in entries {
        backend
            .append(AppendRequest {
                stream: stream.clone(),
                fields,
                maxlen: None,
                dedupe: None,
            })
            .await
            .expect("xadd");
    }
    let _router = spawn_router(client, redis.url(), &domain, "r1", &[]);
    await_drained(
        backend.as_ref(),
        &keys,
        keys.default_group(),
        Duration::from_secs(30),
    )
    .await;

    let page = backend
        .read_history(&keys.job(&job), Offset::ZERO, 100)
        .await
        .expect("history");
    let seqs: Vec<u64> = page
        .records
        .iter()
        .map(|r| match r.payload.decode() {
            Ok(Decoded::Native(e)) => e.seq,
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    assert_eq!(seqs, [1, 6]);

    let dlq = dead_letters(&*backend, &keys).await;
    let reasons: Vec<String> = dlq
        .iter()
        .map(|e| String::from_utf8_lossy(field(&e.fields, "reason").expect("reason")).into_owned())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons[0].contains("missing field \"job\""),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("seq"), "{}", reasons[1]);
    assert!(reasons[2].contains("msgpack"), "{}", reasons[2]);
    assert!(reasons[3].contains("limit"), "{}", reasons[3]);
    // The 2 MiB body is stored cut to --dlq-max-field-bytes (64 KiB), with
    // its size and hash.
    let big = &dlq[3].fields;
    assert_eq!(field(big, "f.body").map(|v| v.len()), Some(64 * 1024));
    let marker = String::from_utf8_lossy(field(big, "t.body").expect("cut marker")).into_owned();
    assert!(
        marker.starts_with(&format!("{} ", 2 * 1024 * 1024)),
        "{marker}"
    );
    assert!(field(&dlq[0].fields, "t.body").is_none());
    // A cut entry is never replayed: what it would append is not the
    // original.
    let replay = std::process::Command::new(relay_testkit::procs::bin_path("relayctl"))
        .args([
            "--redis-client",
            client.as_str(),
            "--redis-url",
            redis.url(),
            "--domain",
            &domain,
            "dlq",
            "replay",
        ])
        .arg(dlq[3].id.to_string())
        .output()
        .expect("run relayctl");
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{text}");
    assert!(text.contains("cannot be replayed"), "{text}");
    let after = dead_letters(&*backend, &keys).await;
    assert!(
        after.iter().any(|e| e.id == dlq[3].id),
        "still dead-lettered"
    );
    for e in &dlq {
        assert_eq!(
            field(&e.fields, "source").map(|v| v.as_ref()),
            Some(stream.as_bytes())
        );
        assert!(field(&e.fields, "id").is_some());
    }
}

async fn eco2_entries_route_byte_exact(client: RedisClient) {
    // eco2 keys are fixed names (`scan:events:{shard}`, `scan:state:{job}`):
    // a private server keeps this test isolated.
    let redis = TestRedis::private();
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = "scan";
    let keys = keyspace(Profile::Eco2, domain);
    let job = JobId::new("fc052f15-449f-4ce4-aa96-99d400ed7865").expect("job");
    assert_eq!(keys.shard_of(&job), 0);

    let mut sub = backend.subscriber().await.expect("subscriber");
    sub.handle
        .subscribe(&["sse:events:0".to_owned()])
        .await
        .expect("subscribe");

    // Exactly what the Python producer XADDs (queued omits the trace fields).
    let python_entries: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("job_id", job.as_str()),
            ("stage", "queued"),
            ("status", "started"),
            ("seq", "0"),
            ("ts", "1766899790.1"),
            ("progress", "0"),
            ("result", ""),
        ],
        vec![
            ("job_id", job.as_str()),
            ("stage", "vision"),
            ("status", "completed"),
            ("seq", "11"),
            ("ts", "1766899796.475799"),
            ("progress", "25"),
            ("result", ""),
            ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("span_id", "00f067aa0ba902b7"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        vec![
            ("job_id", job.as_str()),
            ("stage", "done"),
            ("status", "completed"),
            ("seq", "51"),
            ("ts", "1766899801.2"),
            ("progress", "100"),
            (
                "result",
                r#"{"task_id": "x", "status": "completed", "message": "종이류"}"#,
            ),
            ("trace_id", ""),
            ("span_id", ""),
            ("traceparent", ""),
        ],
    ];
    let mut ids = Vec::new();
    let redis_client = redis::Client::open(redis.url()).expect("client");
    let mut conn = redis_client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    for e in &python_entries {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("scan:events:0")
            .arg("MAXLEN")
            .arg("~")
            .arg(10000)
            .arg("*");
        for (k, v) in e {
            cmd.arg(*k).arg(*v);
        }
        let id: String = cmd.query_async(&mut conn).await.expect("xadd");
        ids.push(id);
    }
    let _router = spawn_router(client, redis.url(), domain, "r1", &["--profile", "eco2"]);

    let expected_done = format!(
        r#"{{"job_id":"{job}","stage":"done","status":"completed","seq":51,"ts":"1766899801.2","progress":100,"result":{{"task_id":"x","status":"completed","message":"종이류"}},"trace_id":"","span_id":"","traceparent":"","stream_id":"{}"}}"#,
        ids[2]
    );
    let expected_vision = format!(
        r#"{{"job_id":"{job}","stage":"vision","status":"completed","seq":11,"ts":"1766899796.475799","progress":25,"result":"","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","stream_id":"{}"}}"#,
        ids[1]
    );
    let expected_queued = format!(
        r#"{{"job_id":"{job}","stage":"queued","status":"started","seq":0,"ts":"1766899790.1","progress":0,"result":"","stream_id":"{}"}}"#,
        ids[0]
    );
    let mut got = Vec::new();
    while got.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(20), sub.messages.recv())
            .await
            .expect("pub/sub message in time")
            .expect("subscription open");
        assert_eq!(msg.channel, "sse:events:0");
        got.push(String::from_utf8(msg.payload.to_vec()).expect("utf8"));
    }
    assert_eq!(
        got,
        [expected_queued, expected_vision, expected_done.clone()]
    );

    let state: String = redis::cmd("GET")
        .arg(format!("scan:state:{job}"))
        .query_async(&mut conn)
        .await
        .expect("state");
    assert_eq!(state, expected_done);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("scan:state:{job}"))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!(ttl > 3500 && ttl <= 3600, "state TTL {ttl}");

    // Our own eco2 producer writes the same shape, with failed = base + 2.
    let failed = Eco2Entry::build(
        &job,
        &Stage::new("answer").expect("stage"),
        "failed",
        relay_core::eco2::seq_for("answer", "failed"),
        "1.0",
        None,
        None,
        None,
    );
    assert_eq!(failed.seq, 32);
    let mut by_name: HashMap<&str, &str> = HashMap::new();
    for (k, v) in &failed.fields {
        by_name.insert(k, v);
    }
    assert_eq!(by_name["seq"], "32");
}

async fn split_pubsub_server_receives_live_and_data_stays_on_streams_server(client: RedisClient) {
    let data = TestRedis::private();
    let pubsub = TestRedis::private();
    let data_backend: Arc<dyn Backend> = redis_backend(client, &data).await;
    let pubsub_backend: Arc<dyn Backend> = redis_backend(client, &pubsub).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let job = JobId::new("split-job").expect("job");
    let mut sub = pubsub_backend.subscriber().await.expect("subscriber");
    sub.handle
        .subscribe(&[keys.job(&job).live])
        .await
        .expect("subscribe");

    let _router = spawn_router(
        client,
        data.url(),
        &domain,
        "r1",
        &["--pubsub-url", pubsub.url()],
    );
    let publisher = Publisher::new(
        data_backend.clone(),
        keys.clone(),
        PublisherConfig::default(),
    );
    for seq in 1..=5 {
        let e = Event::new(&domain, job.as_str(), seq, "work", Status::Progress).expect("event");
        publisher.publish(&e).await.expect("publish");
    }
    let mut offsets = Vec::new();
    while offsets.len() < 5 {
        let msg = tokio::time::timeout(Duration::from_secs(20), sub.messages.recv())
            .await
            .expect("live message in time")
            .expect("subscription open");
        let env = relay_core::LiveEnvelope::decode(&msg.payload).expect("envelope");
        offsets.push(env.record.offset.0);
    }
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    let state = data_backend
        .get_state(&keys.job(&job))
        .await
        .expect("state")
        .expect("some state");
    assert_eq!(state.seq, 5);
    // Nothing routed lands on the pub/sub server.
    assert!(pubsub_backend
        .get_state(&keys.job(&job))
        .await
        .expect("state")
        .is_none());
}

async fn await_readyz(port: u16, want: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    relay_testkit::procs::wait_readyz(addr, want, Duration::from_secs(30)).await;
}

async fn readyz_follows_redis_and_the_router_keeps_running(client: RedisClient) {
    let redis = TestRedis::private_with(RedisServerOptions::with_aof());
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let port = relay_testkit::procs::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut router = spawn_router(
        client,
        redis.url(),
        &domain,
        "r1",
        &["--metrics-addr", &addr],
    );
    await_readyz(port, 200).await;
    redis.stop().expect("stop");
    await_readyz(port, 503).await;
    redis.restart().expect("restart");
    await_readyz(port, 200).await;
    // Still routing after the outage.
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    let job = JobId::new("after-outage").expect("job");
    let mut published = false;
    for _ in 0..50 {
        let e = Event::new(&domain, job.as_str(), 1, "done", Status::Completed).expect("event");
        if publisher.publish(&e).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while backend
        .get_state(&keys.job(&job))
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not routed after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(router.terminate().expect("router was running").success());
}

/// Decodes a history record's or live message's seq.
fn seq_of(payload: &relay_core::Payload) -> u64 {
    match payload.decode() {
        Ok(Decoded::Native(e)) => e.seq,
        Ok(Decoded::Eco2(e)) => e.seq,
        Err(e) => panic!("undecodable record: {e}"),
    }
}

/// F1 and F2 against the real binary: the server refuses writes (but not
/// reads or PUBLISH) while a stopped router holds unrouted entries, then the
/// router resumes. Refused applies are retried, never dead-lettered, and no
/// live message names an offset that was not committed with that event.
async fn write_refusal_is_retried_and_publishes_only_committed(
    client: RedisClient,
    refusal: WriteRefusal,
) {
    let redis = TestRedis::private();
    let server = redis.server().expect("private server");
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let job = JobId::new("refused-job").expect("job");
    let mut sub = backend.subscriber().await.expect("subscriber");
    sub.handle
        .subscribe(&[keys.job(&job).live])
        .await
        .expect("subscribe");
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    let publish = |seq: u64| {
        let (stage, status) = if seq == 10 {
            ("done", Status::Completed)
        } else {
            ("work", Status::Progress)
        };
        let e = Event::new(&domain, job.as_str(), seq, stage, status).expect("event");
        let publisher = publisher.clone();
        async move { publisher.publish(&e).await.expect("publish") }
    };
    // A long block: the stopped router is parked in XREADGROUP, which the
    // server answers with seq 6 and 7 before the refusal starts, so the
    // router applies them while writes are refused. A short claim idle: the
    // janitor races the reader for the same entries.
    let router = spawn_router(
        client,
        redis.url(),
        &domain,
        "r1",
        &["--claim-idle-ms", "200", "--block-ms", "5000"],
    );
    for seq in 1..=5 {
        publish(seq).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while backend
        .get_state(&keys.job(&job))
        .await
        .ok()
        .flatten()
        .map(|s| s.seq)
        != Some(5)
    {
        assert!(tokio::time::Instant::now() < deadline, "seq 1-5 not routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    router.signal("STOP");
    publish(6).await;
    publish(7).await;
    server.refuse_writes(refusal).await.expect("refuse writes");
    router.signal("CONT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.allow_writes().await.expect("allow writes");
    for seq in 8..=10 {
        publish(seq).await;
    }

    let single = [JobId::new("refused-job").expect("job")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let history = loop {
        let page = backend
            .read_history(&keys.job(&single[0]), Offset::ZERO, 100)
            .await
            .expect("history");
        if page.top == Offset(10) {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history stuck at {:?}",
            page.top
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let committed: BTreeMap<u64, u64> = history
        .records
        .iter()
        .map(|r| (r.offset.0, seq_of(&r.payload)))
        .collect();
    let expected: BTreeMap<u64, u64> = (1..=10).map(|o| (o, o)).collect();
    assert_eq!(committed, expected, "every seq once, in order, gap-free");
    let dlq = dead_letters(&*backend, &keys).await.len();
    assert_eq!(dlq, 0, "a refused write is not poison");

    // Every live message matches what was committed at its offset.
    let mut live = BTreeMap::new();
    while live.len() < 10 {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.messages.recv())
            .await
            .unwrap_or_else(|_| panic!("only offsets {:?} went live", live.keys()))
            .expect("subscription open");
        let env = relay_core::LiveEnvelope::decode(&msg.payload).expect("envelope");
        let seq = seq_of(&env.record.payload);
        let off = env.record.offset.0;
        assert_eq!(
            committed.get(&off),
            Some(&seq),
            "live offset {off} carried seq {seq}, history has {:?}",
            committed.get(&off)
        );
        live.insert(off, seq);
    }
    drop(router);
}

async fn oom_write_refusal_is_retried_and_publishes_only_committed(client: RedisClient) {
    write_refusal_is_retried_and_publishes_only_committed(client, WriteRefusal::Oom).await;
}

async fn noreplicas_write_refusal_is_retried_and_publishes_only_committed(client: RedisClient) {
    write_refusal_is_retried_and_publishes_only_committed(client, WriteRefusal::NoReplicas).await;
}

/// An event whose apply keeps failing for its own reason (here its job key
/// holds a value of the wrong type) is retried and dead-lettered once, after
/// `--max-deliveries`, not on its first failure; other jobs are unaffected.
async fn failing_apply_is_dead_lettered_once_after_max_deliveries(client: RedisClient) {
    let redis = TestRedis::private();
    let server = redis.server().expect("private server");
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let bad = JobId::new("wrongtype-job").expect("job");
    let meta = keys.job(&bad).meta;
    server
        .command(&["SET", &meta, "not a hash"])
        .await
        .expect("set");
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    let e = Event::new(&domain, bad.as_str(), 1, "work", Status::Progress).expect("event");
    publisher.publish(&e).await.expect("publish");
    let _router = spawn_router(
        client,
        redis.url(),
        &domain,
        "r1",
        &["--claim-idle-ms", "100", "--max-deliveries", "3"],
    );
    produce(
        backend.clone(),
        keys.clone(),
        5,
        3,
        Duration::from_millis(10),
    )
    .await;
    await_complete(backend.as_ref(), &keys, 5, 3, Duration::from_secs(60)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dlq = loop {
        let dlq = dead_letters(&*backend, &keys).await;
        if !dlq.is_empty() {
            break dlq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deliveries: u64 =
        std::str::from_utf8(field(&dlq[0].fields, "deliveries").expect("deliveries"))
            .expect("utf8")
            .parse()
            .expect("number");
    assert!(
        deliveries > 3,
        "dead-lettered after {deliveries} deliveries"
    );
    await_drained(
        backend.as_ref(),
        &keys,
        keys.default_group(),
        Duration::from_secs(30),
    )
    .await;
    let dlq = dead_letters(&*backend, &keys).await;
    assert_eq!(dlq.len(), 1, "dead-lettered exactly once");
}

/// With `--pubsub-url`, `/readyz` follows the Pub/Sub server too: while
/// publishes fail it stays 503, even though every shard's reads on the data
/// server keep succeeding, and it is 200 again once publishes go through.
async fn readyz_stays_down_while_pubsub_publishes_fail(client: RedisClient) {
    let data = TestRedis::private();
    let pubsub = TestRedis::private();
    let backend: Arc<dyn Backend> = redis_backend(client, &data).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let port = relay_testkit::procs::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _router = spawn_router(
        client,
        data.url(),
        &domain,
        "r1",
        &["--pubsub-url", pubsub.url(), "--metrics-addr", &addr],
    );
    await_readyz(port, 200).await;
    pubsub.stop().expect("stop pub/sub server");
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    let job = JobId::new("pubsub-down").expect("job");
    let e = Event::new(&domain, job.as_str(), 1, "work", Status::Progress).expect("event");
    publisher.publish(&e).await.expect("publish");
    await_readyz(port, 503).await;
    // Reads of all four shards keep succeeding meanwhile (block 200 ms):
    // readiness must not flap back while the publish is still failing.
    let sock = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(relay_testkit::procs::readyz_status(sock).await, Some(503));
    }
    pubsub.restart().expect("restart pub/sub server");
    await_readyz(port, 200).await;
}

/// The chaos soak's finding: an entry a dead consumer left pending was
/// routed after newer entries of the same job (by the janitor, once idle),
/// so `done` took offset 1 and the earlier event offset 2, after the
/// terminal. The shard's new owner routes what earlier owners left pending
/// before anything newer: history stays in stream order.
async fn pending_of_a_dead_consumer_is_routed_before_newer_entries(client: RedisClient) {
    let redis = TestRedis::get();
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = KeySpace::new(Profile::Native, Domain::new(&domain).expect("domain"), 1);
    let group = keys.default_group();
    let stream = keys.shard_stream(0);
    backend.ensure_group(&stream, group).await.expect("group");
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    let job = JobId::new("ordered-job").expect("job");
    let first = Event::new(&domain, job.as_str(), 10, "vision", Status::Started).expect("event");
    publisher.publish(&first).await.expect("publish");
    // A consumer reads it and dies before routing it.
    let taken = backend
        .read_group(&stream, group, "dead", ReadFrom::New, 1, None)
        .await
        .expect("dead consumer read");
    assert_eq!(taken.len(), 1);
    let done = Event::new(&domain, job.as_str(), 51, "done", Status::Completed).expect("event");
    publisher.publish(&done).await.expect("publish");

    let _router = spawn_router(
        client,
        redis.url(),
        &domain,
        "r1",
        &["--shards", "1", "--claim-idle-ms", "3000"],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let seqs = loop {
        let page = backend
            .read_history(&keys.job(&job), Offset::ZERO, 10)
            .await
            .expect("history");
        if page.records.len() == 2 {
            break page
                .records
                .iter()
                .map(|r| seq_of(&r.payload))
                .collect::<Vec<_>>();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not routed: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seqs, [10, 51], "history in stream order, done last");
}

/// Two routers of one group split the shards between them (one owner per
/// shard), and each job's history is in the producer's seq order.
async fn two_routers_split_the_shards_and_keep_each_job_in_order(client: RedisClient) {
    let redis = TestRedis::get();
    let backend: Arc<dyn Backend> = redis_backend(client, &redis).await;
    let domain = unique_domain();
    let keys = keyspace(Profile::Native, &domain);
    let lease = ["--shard-lease-ms", "1000"];
    let r1 = spawn_router(client, redis.url(), &domain, "r1", &lease);
    let r2 = spawn_router(client, redis.url(), &domain, "r2", &lease);
    produce(
        backend.clone(),
        keys.clone(),
        40,
        20,
        Duration::from_millis(5),
    )
    .await;
    await_routed(backend.as_ref(), &keys, 40, 20).await;
    for j in 0..40 {
        let job = JobId::new(format!("job-{j}")).expect("job");
        let page = backend
            .read_history(&keys.job(&job), Offset::ZERO, 100)
            .await
            .expect("history");
        let seqs: Vec<u64> = page.records.iter().map(|r| seq_of(&r.payload)).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "job-{j}");
    }
    drop((r1, r2));
}

/// Every dead-letter entry of `keys`' domain (one stream per shard).
async fn dead_letters(
    backend: &dyn relay_core::backend::StreamLog,
    keys: &relay_core::KeySpace,
) -> Vec<relay_core::backend::StreamEntry> {
    let mut all = Vec::new();
    for dlq in keys.dlq_streams() {
        all.extend(backend.range(&dlq, None, 100).await.expect("dlq"));
    }
    all
}

relay_testkit::per_redis_client!(
    relay_core::cli::RedisClient;
    kill9_mid_run_loses_nothing_and_applies_once,
    survivor_claims_pending_of_dead_consumers,
    survives_client_kill_and_redis_restart_with_aof,
    poison_entries_go_to_the_dlq_and_do_not_stall_the_shard,
    eco2_entries_route_byte_exact,
    split_pubsub_server_receives_live_and_data_stays_on_streams_server,
    readyz_follows_redis_and_the_router_keeps_running,
    oom_write_refusal_is_retried_and_publishes_only_committed,
    noreplicas_write_refusal_is_retried_and_publishes_only_committed,
    failing_apply_is_dead_lettered_once_after_max_deliveries,
    readyz_stays_down_while_pubsub_publishes_fail,
    pending_of_a_dead_consumer_is_routed_before_newer_entries,
    two_routers_split_the_shards_and_keep_each_job_in_order,
);
