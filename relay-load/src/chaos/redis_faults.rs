//! Redis faults: client kills, write refusals, write pauses, and
//! redis-server `kill -9` + restarts (AOF reload) spread over the phase.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use relay_testkit::redis::{RedisServer, WriteRefusal};

use super::faults::{jitter, FaultCounts, FaultLog, FaultPhase};

#[derive(Clone, Copy, Debug)]
enum RedisFault {
    KillNormal,
    KillPubsub,
    Oom,
    NoReplicas,
    Pause,
}

async fn allow_writes(redis: &RedisServer) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..50 {
        match redis.allow_writes().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

async fn redis_fault(
    redis: &RedisServer,
    fault: RedisFault,
    hold: Duration,
    counts: &FaultCounts,
    log: &FaultLog,
) -> Result<(), String> {
    match fault {
        RedisFault::KillNormal | RedisFault::KillPubsub => {
            let ty = if matches!(fault, RedisFault::KillNormal) {
                "normal"
            } else {
                "pubsub"
            };
            let n = redis
                .client_kill(&["TYPE", ty])
                .await
                .map_err(|e| e.to_string())?;
            match fault {
                RedisFault::KillNormal => counts.kill_normal.fetch_add(1, Ordering::Relaxed),
                _ => counts.kill_pubsub.fetch_add(1, Ordering::Relaxed),
            };
            counts.clients_killed.fetch_add(n, Ordering::Relaxed);
            log.note(format!("redis CLIENT KILL TYPE {ty}: {n} connections"));
        }
        RedisFault::Oom | RedisFault::NoReplicas => {
            let (refusal, what, counter) = match fault {
                RedisFault::Oom => (
                    WriteRefusal::Oom,
                    "maxmemory 1 (noeviction)",
                    &counts.refusals_oom,
                ),
                _ => (
                    WriteRefusal::NoReplicas,
                    "min-replicas-to-write 1",
                    &counts.refusals_noreplicas,
                ),
            };
            log.note(format!(
                "redis refuses writes: {what} for {} ms",
                hold.as_millis()
            ));
            let set = redis
                .refuse_writes(refusal)
                .await
                .map_err(|e| e.to_string());
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(hold).await;
            allow_writes(redis).await?;
            log.note("redis accepts writes again");
            set?;
        }
        RedisFault::Pause => {
            redis
                .command(&["CLIENT", "PAUSE", "1500", "WRITE"])
                .await
                .map_err(|e| e.to_string())?;
            counts.pauses.fetch_add(1, Ordering::Relaxed);
            log.note("redis CLIENT PAUSE 1500 WRITE");
        }
    }
    Ok(())
}

/// Redis faults every `redis_fault_every_secs`, and `redis_restarts`
/// restarts spread evenly over the phase. A restart that does not come back
/// is fatal (returned as an error).
pub(super) async fn redis_loop(
    redis: Arc<RedisServer>,
    phase: FaultPhase,
    mut rng: StdRng,
) -> Result<(), String> {
    let FaultPhase {
        args,
        start,
        end,
        counts,
        log,
        ..
    } = &phase;
    let (start, end) = (*start, *end);
    let length = end.saturating_duration_since(start);
    let mut restarts: Vec<Instant> = (0..args.redis_restarts)
        .map(|i| start + length.mul_f64((f64::from(i) + 0.5) / f64::from(args.redis_restarts)))
        .collect();
    restarts.reverse();
    let mut next_fault = Instant::now() + jitter(&mut rng, args.redis_fault_every_secs);
    loop {
        let next_restart = restarts.last().copied();
        if args.redis_fault_every_secs <= 0.0 {
            next_fault = end;
        }
        let wake = next_restart.map_or(next_fault, |r| r.min(next_fault));
        if !phase.wait_until(wake).await {
            break;
        }
        if next_restart.is_some_and(|r| Instant::now() >= r) {
            restarts.pop();
            let down = Duration::from_millis(rng.random_range(200..=args.redis_down_ms.max(200)));
            log.note(format!(
                "kill -9 redis-server; restart in {} ms (AOF reload)",
                down.as_millis()
            ));
            let r = redis.clone();
            let _ = tokio::task::spawn_blocking(move || r.stop()).await;
            tokio::time::sleep(down).await;
            let r = redis.clone();
            let t = Instant::now();
            tokio::task::spawn_blocking(move || r.restart())
                .await
                .map_err(|e| format!("redis-server did not restart: {e}"))?;
            counts.redis_restarts.fetch_add(1, Ordering::Relaxed);
            log.note(format!(
                "redis-server back (loaded in {} ms)",
                t.elapsed().as_millis()
            ));
            continue;
        }
        if Instant::now() < next_fault {
            continue;
        }
        next_fault = Instant::now() + jitter(&mut rng, args.redis_fault_every_secs);
        let fault = match rng.random_range(0..5) {
            0 => RedisFault::KillNormal,
            1 => RedisFault::KillPubsub,
            2 => RedisFault::Oom,
            3 => RedisFault::NoReplicas,
            _ => RedisFault::Pause,
        };
        let hold = Duration::from_millis(rng.random_range(1000..=2000));
        if let Err(e) = redis_fault(&redis, fault, hold, counts, log).await {
            counts.redis_fault_errors.fetch_add(1, Ordering::Relaxed);
            log.note(format!("redis fault {fault:?} failed: {e}"));
        }
    }
    allow_writes(&redis)
        .await
        .map_err(|e| format!("cannot lift the write refusal: {e}"))
}
