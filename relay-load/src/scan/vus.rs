//! The ramping virtual users that run iterations, and their live counters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use super::*;

/// Live counters for the progress bar.
#[derive(Debug, Default)]
pub struct Live {
    /// Active VUs.
    pub vus: AtomicUsize,
    /// Iterations finished.
    pub done: AtomicU64,
    /// Iterations completed successfully.
    pub ok: AtomicU64,
    /// Iterations in flight.
    pub inflight: AtomicU64,
}

/// Parses `MIN-MAX` ms.
fn think_range(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a = a.trim().parse().unwrap_or(1000);
    let b = b.trim().parse().unwrap_or(a).max(a);
    (a, b)
}

/// Runs the ramping-VU scenario; returns every iteration and the VU
/// timeline (active VUs per second).
pub async fn run_vus(
    args: &ScanArgs,
    target: Target,
    live: Arc<Live>,
) -> (Vec<Iteration>, Vec<(f64, usize)>, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .expect("http client");
    let t0 = Instant::now();
    let results = Arc::new(Mutex::new(Vec::new()));
    let stopping = Arc::new(AtomicBool::new(false));
    let target_vus = Arc::new(AtomicUsize::new(0));
    let (think_lo, think_hi) = think_range(&args.think_ms);
    let timeout = Duration::from_secs_f64(args.iteration_timeout_secs.max(0.1));
    let mut handles = Vec::new();
    let mut levels = Vec::new();
    let total = args.stages.total();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let el = t0.elapsed();
        if el >= total {
            break;
        }
        let want = args.stages.target_at(el);
        target_vus.store(want, Ordering::Relaxed);
        live.vus.store(want, Ordering::Relaxed);
        levels.push((el.as_secs_f64(), want));
        while handles.len() < want {
            let vu = handles.len();
            let (client, target, results, stopping, target_vus, live) = (
                client.clone(),
                target.clone(),
                results.clone(),
                stopping.clone(),
                target_vus.clone(),
                live.clone(),
            );
            let (mode, image, poll) = (
                args.mode,
                args.image_url.clone(),
                Duration::from_millis(args.poll_ms.max(10)),
            );
            handles.push(tokio::spawn(async move {
                loop {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    if vu >= target_vus.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    live.inflight.fetch_add(1, Ordering::Relaxed);
                    let it = iteration(&client, &target, vu, mode, &image, poll, timeout, t0).await;
                    live.inflight.fetch_sub(1, Ordering::Relaxed);
                    live.done.fetch_add(1, Ordering::Relaxed);
                    if it.outcome == Outcome::Completed {
                        live.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(it);
                    let think = rand::rng().random_range(think_lo..=think_hi);
                    tokio::time::sleep(Duration::from_millis(think)).await;
                }
            }));
        }
    }
    let run_time = t0.elapsed();
    stopping.store(true, Ordering::Relaxed);
    target_vus.store(0, Ordering::Relaxed);
    live.vus.store(0, Ordering::Relaxed);
    // Graceful stop: in-flight iterations may finish, then are cut off.
    let grace = Instant::now() + Duration::from_secs_f64(args.graceful_stop_secs.max(0.0));
    for h in &handles {
        while !h.is_finished() && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cut = handles.iter().filter(|h| !h.is_finished()).count();
    for h in &handles {
        h.abort();
    }
    let mut out = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    for _ in 0..cut {
        out.push(Iteration::timed_out(run_time.as_secs_f64(), usize::MAX));
    }
    let mut per_sec: Vec<(f64, usize)> = Vec::new();
    for (t, v) in levels {
        match per_sec.last_mut() {
            Some(last) if last.0.floor() == t.floor() => last.1 = last.1.max(v),
            _ => per_sec.push((t.floor(), v)),
        }
    }
    (out, per_sec, run_time)
}
