//! The router's linger (`RouterConfig::linger`): after a short read a shard
//! reader waits before reading again, so entries that arrive meanwhile are
//! applied as one batch — and still each exactly once, in order.

use std::sync::Arc;
use std::time::Duration;

use relay_core::backend::memory::MemoryBackend;
use relay_core::backend::Backend;
use relay_core::router::RouterHandle;
use relay_core::{
    Decoded, Domain, Event, KeySpace, Offset, Profile, Publisher, PublisherConfig, Router,
    RouterConfig, Status,
};

const JOB: &str = "linger-job";

async fn publish(publisher: &Publisher, seq: u64) {
    let e = Event::new("t", JOB, seq, "work", Status::Progress).expect("valid event");
    publisher.publish(&e).await.expect("publish");
}

async fn wait_acked(handle: &RouterHandle, n: u64) {
    for _ in 0..2_000 {
        if handle.metrics().acked.get() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("router acked {} of {n}", handle.metrics().acked.get());
}

/// Routes seq 1, then publishes seqs 2..=6 20 ms apart while the reader
/// lingers for `linger`; returns how many batches the five took and the
/// job's history offsets with their seqs.
async fn burst_after_short_read(linger: Duration) -> (u64, Vec<(u64, u64)>) {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let keys = KeySpace::new(Profile::Native, Domain::new("t").expect("domain"), 1);
    let mut config = RouterConfig::new(keys.clone());
    config.linger = linger;
    config.block = Duration::from_millis(50);
    let handle = Router::new(backend.clone(), config).spawn();
    let publisher = Publisher::new(backend.clone(), keys.clone(), PublisherConfig::default());
    publish(&publisher, 1).await;
    wait_acked(&handle, 1).await;
    let before = handle.metrics().batches.get();
    for seq in 2..=6 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        publish(&publisher, seq).await;
    }
    wait_acked(&handle, 6).await;
    let batches = handle.metrics().batches.get() - before;
    let page = backend
        .read_history(&keys.job(&JOB.parse().expect("job id")), Offset(0), 100)
        .await
        .expect("history");
    let history = page
        .records
        .iter()
        .map(|r| {
            let seq = match r.payload.decode().expect("payload") {
                Decoded::Native(e) => e.seq,
                other => panic!("not a native event: {other:?}"),
            };
            (r.offset.0, seq)
        })
        .collect();
    handle.shutdown().await;
    (batches, history)
}

#[tokio::test]
async fn entries_arriving_while_lingering_are_applied_in_one_batch() {
    let (batches, history) = burst_after_short_read(Duration::from_millis(600)).await;
    assert_eq!(
        batches, 1,
        "the five events published during the linger were applied in {batches} batches"
    );
    let expected: Vec<(u64, u64)> = (1..=6).map(|s| (s, s)).collect();
    assert_eq!(history, expected, "every event once, in order");
}

#[tokio::test]
async fn without_linger_every_event_is_still_applied_once_in_order() {
    let (_, history) = burst_after_short_read(Duration::ZERO).await;
    let expected: Vec<(u64, u64)> = (1..=6).map(|s| (s, s)).collect();
    assert_eq!(history, expected);
}
