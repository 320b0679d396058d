//! Process kills: `kill -9` of a random relay process on a jittered
//! schedule, each followed by a restart with the same arguments.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use super::faults::FaultPhase;
use super::fleet::{Cluster, Kind};

/// Kills a random process every `kill_every_secs` and restarts it after up
/// to `restart_delay_ms` (restarts run concurrently, so downtimes overlap).
pub(super) async fn kill_loop(cluster: Arc<Cluster>, phase: FaultPhase, mut rng: StdRng) {
    let FaultPhase {
        args, counts, log, ..
    } = &phase;
    let mut restarts = Vec::new();
    if args.kill_every_secs <= 0.0 {
        return;
    }
    loop {
        if !phase.wait_jittered(&mut rng, args.kill_every_secs).await {
            break;
        }
        let kind = Kind::ALL[rng.random_range(0..Kind::ALL.len())];
        let candidates = cluster.running(kind);
        if candidates.is_empty() {
            continue;
        }
        let (idx, name) = candidates[rng.random_range(0..candidates.len())].clone();
        cluster.kill(idx);
        *counts
            .kills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        let delay = Duration::from_millis(rng.random_range(0..=args.restart_delay_ms));
        log.note(format!(
            "kill -9 {name}; restart in {} ms",
            delay.as_millis()
        ));
        let cluster = cluster.clone();
        restarts.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            cluster.start(idx);
        }));
    }
    for r in restarts {
        let _ = r.await;
    }
}
