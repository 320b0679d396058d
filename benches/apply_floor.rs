//! The floor under the router's apply: Redis CPU per event for the same
//! writes issued three ways on the same server, in the same run —
//!
//! - **script**: the router's apply script (`apply.lua`), one `EVALSHA` per
//!   batch, as `RedisBackend` calls it on a single server;
//! - **fenced**: what a Lua-free apply would send: `WATCH` on the batch's
//!   job hashes (the fence against a concurrent writer: another router of
//!   the group, the janitor's claim) with one pipelined `HMGET` per job,
//!   then one `MULTI` of an `HSET` per job, the `XACK` and a `PUBLISH` per
//!   event, `EXEC`;
//! - **unfenced**: the same without `WATCH`: the floor of plain commands,
//!   not a safe design (nothing stops a second writer between the read and
//!   the `EXEC`).
//!
//! All three write the same fields and messages (offsets, history entry, state,
//! live message `epoch:offset:payload`) for 2,000 jobs × 12 events,
//! interleaved seq-major in batches of 256 (the router bench's workload).
//! The clock passed to the script (1 ms) keeps its TTL refresh from coming
//! due, and the plain ways send none: `RedisBackend`'s first apply of a job
//! also writes `rx` and `PEXPIRE`s, which neither side here pays.
//! The difference is what the script's Lua costs Redis per event, and what
//! the fence costs; BENCHMARKS.md ("The Lua-free apply, measured") reads it
//! against the router target.
//! Also printed: this process's CPU per event for each (a hint of what the
//! client side of each costs; the real router does more).
//!
//! `cargo bench --bench apply_floor` (needs `redis-server` on PATH).

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use relay_testkit::bench::{process_cpu, redis_cpu};
use relay_testkit::redis::RedisServer;

const JOBS: usize = 2_000;
const EVENTS: u64 = 12;
const BATCH: usize = 256;
const ROUNDS: usize = 6;
const SCRIPT: &str = include_str!("../relay-core/src/backend/scripts/apply.lua");
const GROUP: &str = "routers";
/// `script`: the apply script; `fenced`: plain commands behind `WATCH`;
/// `unfenced`: the same without `WATCH` (safe only with one writer per job,
/// which nothing enforces then: the floor, not a design).
const WAYS: [&str; 3] = ["script", "fenced", "unfenced"];

/// The shard stream each batch acks on (its entry ids are not pending: the
/// `XACK` costs the same lookup either way).
fn stream(prefix: &str) -> String {
    format!("{prefix}:stream")
}

fn ack_ids(batch: &[(String, u64)]) -> Vec<String> {
    (0..batch.len()).map(|i| format!("1-{i}")).collect()
}

fn payload(seq: u64) -> String {
    format!("{{\"t\":\"scan\",\"j\":\"job\",\"s\":{seq},\"stage\":\"work\",\"status\":\"progress\",\"p\":{},\"d\":{{\"step\":{seq},\"note\":\"benchmark payload of modest size\"}}}}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", seq * 8)
}

fn batches(prefix: &str) -> Vec<Vec<(String, u64)>> {
    let mut all = Vec::new();
    for seq in 1..=EVENTS {
        for j in 0..JOBS {
            all.push((format!("{prefix}:{{job-{j}}}"), seq));
        }
    }
    all.chunks(BATCH).map(|c| c.to_vec()).collect()
}

/// The script call `RedisBackend` makes: KEYS job hash ×2 per job (no eco2
/// state string), then the stream; ARGV as `apply.lua` names them.
async fn script(con: &mut MultiplexedConnection, sha: &str, stream: &str, batch: &[(String, u64)]) {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(batch.len() * 2 + 1);
    for (job, _) in batch {
        cmd.arg(job).arg(job);
    }
    cmd.arg(stream);
    let ids = ack_ids(batch);
    cmd.arg(1000)
        .arg(3_600_000)
        .arg(3_600_000)
        .arg("1")
        .arg(1)
        .arg(60_000)
        .arg(ids.len())
        .arg(GROUP)
        .arg(&ids);
    for (job, seq) in batch {
        cmd.arg("e1")
            .arg(format!("{job}:live"))
            .arg("")
            .arg(1)
            .arg(seq.to_string())
            .arg(payload(*seq));
    }
    let _: redis::Value = cmd.query_async(con).await.expect("evalsha");
}

/// The same writes as plain commands, behind a `WATCH` fence when `fenced`.
async fn plain(
    con: &mut MultiplexedConnection,
    stream: &str,
    batch: &[(String, u64)],
    fenced: bool,
) {
    let mut read = redis::pipe();
    let mut watch = redis::cmd("WATCH");
    for (job, _) in batch {
        watch.arg(job);
    }
    if fenced {
        read.add_command(watch).ignore();
    }
    for (job, seq) in batch {
        read.cmd("HMGET")
            .arg(job)
            .arg(&["epoch", "top", "hf", "sq", "rx"])
            .arg(format!("s{seq}"));
    }
    let reads: Vec<Vec<Option<String>>> = read.query_async(con).await.expect("hmget");
    let mut write = redis::pipe();
    write.atomic();
    let mut pubs = Vec::with_capacity(batch.len());
    for ((job, seq), m) in batch.iter().zip(reads) {
        let top: u64 = m[1].as_deref().and_then(|t| t.parse().ok()).unwrap_or(0) + 1;
        let p = payload(*seq);
        let mut h = redis::cmd("HSET");
        h.arg(job);
        if m[0].is_none() {
            h.arg("epoch").arg("e1").arg("hf").arg("1");
        }
        h.arg(format!("s{seq}"))
            .arg(top)
            .arg(format!("h{top}"))
            .arg(&p)
            .arg("top")
            .arg(top)
            .arg("sq")
            .arg(seq)
            .arg("so")
            .arg(top)
            .arg("st")
            .arg(&p);
        write.add_command(h).ignore();
        pubs.push((format!("{job}:live"), format!("e1:{top}:{p}")));
    }
    write
        .cmd("XACK")
        .arg(stream)
        .arg(GROUP)
        .arg(ack_ids(batch))
        .ignore();
    for (ch, msg) in pubs {
        write.cmd("PUBLISH").arg(ch).arg(msg).ignore();
    }
    // A fenced-off EXEC answers nil: no writer but this one runs, so none
    // should be, and one would mean the bench measured writes not made.
    let reply: redis::Value = write.query_async(con).await.expect("multi");
    assert!(
        !matches!(reply, redis::Value::Nil),
        "the transaction was fenced off"
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(&mut con)
        .await
        .expect("load the apply script");
    let events = (JOBS as u64 * EVENTS) as f64;
    let mut rows: Vec<(&str, f64, f64, f64)> = Vec::new();
    // The three ways alternate, so a load change on the box hits all.
    for round in 0..ROUNDS {
        for way in WAYS {
            let prefix = format!("{way}{round}");
            let stream = stream(&prefix);
            let _: () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut con)
                .await
                .expect("group");
            let batches = batches(&prefix);
            let (redis_before, own_before, start) =
                (redis_cpu(&server).await, process_cpu(), Instant::now());
            for batch in &batches {
                match way {
                    "script" => script(&mut con, &sha, &stream, batch).await,
                    "fenced" => plain(&mut con, &stream, batch, true).await,
                    _ => plain(&mut con, &stream, batch, false).await,
                }
            }
            let wall = start.elapsed();
            let redis_us = (redis_cpu(&server).await - redis_before).as_secs_f64() * 1e6 / events;
            let own_us = (process_cpu() - own_before).as_secs_f64() * 1e6 / events;
            let rate = events / wall.as_secs_f64();
            println!(
                "{way:>6} round {round}: redis {redis_us:.2} us/event, client {own_us:.2} us/event, {rate:.0} events/s"
            );
            rows.push((way, redis_us, own_us, rate));
            // Every round starts on an empty keyspace (the script stays
            // loaded): a growing dataset would tax the later rounds.
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut con)
                .await
                .expect("flushall");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mean = |way: &str, f: fn(&(&str, f64, f64, f64)) -> f64| {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 == way).map(f).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!("\napply floor (mean of {ROUNDS} rounds; {events} events = {JOBS} jobs x {EVENTS}, batch {BATCH}):");
    println!(
        "{:>8} {:>16} {:>17} {:>10}",
        "way", "redis CPU us/ev", "client CPU us/ev", "events/s"
    );
    for way in WAYS {
        println!(
            "{way:>8} {:>16.2} {:>17.2} {:>10.0}",
            mean(way, |r| r.1),
            mean(way, |r| r.2),
            mean(way, |r| r.3)
        );
    }
    for way in ["fenced", "unfenced"] {
        println!(
            "{way} / script Redis CPU per event: {:.2}",
            mean(way, |r| r.1) / mean("script", |r| r.1)
        );
    }
}
