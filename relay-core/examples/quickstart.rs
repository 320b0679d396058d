//! Quickstart: the whole relay on the in-process memory backend — no Redis.
//!
//! Publishes a job's events, runs a router, reads the job's state and
//! history, and follows live events on a subscription.
//!
//! ```sh
//! cargo run -p relay-core --example quickstart
//! ```

use std::sync::Arc;
use std::time::Duration;

use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::Backend;
use relay_core::{
    Decoded, Domain, Event, KeySpace, LiveEnvelope, Offset, Profile, Publisher, PublisherConfig,
    Router, RouterConfig, Status,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let keys = KeySpace::new(Profile::Native, Domain::new("scan")?, 4);
    let job = relay_core::JobId::new("quickstart-job-1")?;

    // 1. A router turns shard streams into state, history and live publishes.
    let mut config = RouterConfig::new(keys.clone());
    config.block = Duration::from_millis(100);
    let router = Router::new(backend.clone(), config).spawn();

    // 2. A gateway would subscribe to the job's live channel first...
    let mut sub = backend.subscriber().await?;
    sub.handle.subscribe(&[keys.job(&job).live]).await?;

    // 3. ...while a worker publishes the job's progress.
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    let steps = [
        (10, "vision", Status::Started, 10),
        (11, "vision", Status::Completed, 25),
        (21, "rule", Status::Completed, 50),
        (31, "answer", Status::Completed, 75),
        (51, "done", Status::Completed, 100),
    ];
    for (seq, stage, status, progress) in steps {
        let event = Event::new("scan", job.as_str(), seq, stage, status)?.with_progress(progress);
        publisher.publish(&event).await?;
    }
    // Publishing the same (job, seq) again (a producer retry) is harmless:
    // the router drops the repeat, so the job still has five events.
    let again = Event::new("scan", job.as_str(), 51, "done", Status::Completed)?;
    publisher.publish(&again).await?;

    // 4. Live events arrive in offset order.
    println!("live:");
    for _ in 0..steps.len() {
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.messages.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscription closed"))?;
        let env = LiveEnvelope::decode(&msg.payload)?;
        if let Decoded::Native(e) = env.record.payload.decode()? {
            println!(
                "  id {}  {:<7} {:<9} seq {:>2}  progress {}",
                env.position(),
                e.stage,
                e.status,
                e.seq,
                e.progress.map(|p| format!("{p}%")).unwrap_or_default()
            );
        }
    }

    // 5. State holds the highest seq; history replays everything after an offset.
    let state = backend
        .get_state(&keys.job(&job))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no state"))?;
    anyhow::ensure!(state.top == Offset(5), "the retry must not add an event");
    if let Decoded::Native(e) = state.record.payload.decode()? {
        println!(
            "state: stage {} status {} (seq {}, top offset {})",
            e.stage, e.status, state.seq, state.top
        );
    }
    let page = backend
        .read_history(&keys.job(&job), Offset(2), 100)
        .await?;
    println!("history after offset 2:");
    for r in page.records {
        if let Decoded::Native(e) = r.payload.decode()? {
            println!("  offset {}  {} {}", r.offset, e.stage, e.status);
        }
    }

    router.shutdown().await;
    Ok(())
}
