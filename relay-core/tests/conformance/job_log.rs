//! [`JobLog`](relay_core::backend::JobLog): the per-job history and state the router writes and the
//! gateways read (gap-free offsets, idempotent re-applies, bounds, expiry).

use std::time::Duration;

use relay_core::backend::{ApplyOptions, HistoryPage};
use relay_core::keys::JobKeys;
use relay_core::{Epoch, Offset, Payload};

use crate::support::{apply_job, conformance_tests, ev, offsets, quiet, Fixture};

/// The page of `k`'s history after `after`, up to `limit` records.
async fn history(fx: &Fixture, k: &JobKeys, after: Offset, limit: usize) -> HistoryPage {
    fx.b().read_history(k, after, limit).await.unwrap()
}

async fn apply_assigns_gap_free_offsets(fx: &Fixture) {
    let k = fx.job("gapfree");
    let r = fx.apply1(&k, 7, &[10, 20, 30], &quiet()).await;
    assert_eq!(r.epoch, Epoch(7));
    assert_eq!(offsets(&r), vec![(1, true), (2, true), (3, true)]);
    let r = fx.apply1(&k, 7, &[40, 50], &quiet()).await;
    assert_eq!(offsets(&r), vec![(4, true), (5, true)]);
    let page = history(fx, &k, Offset::ZERO, 100).await;
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

async fn apply_batch_of_jobs(fx: &Fixture) {
    let a = fx.job("batch-a");
    let b = fx.job("batch-b");
    let out = fx
        .b()
        .apply(
            &[
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
    assert!(fx.b().apply(&[], &quiet()).await.unwrap().is_empty());
}

async fn reapply_is_noop(fx: &Fixture) {
    let k = fx.job("reapply");
    fx.apply1(&k, 9, &[1, 2, 3], &quiet()).await;
    let before = history(fx, &k, Offset::ZERO, 100).await;
    let r = fx.apply1(&k, 9, &[2, 3], &quiet()).await;
    assert_eq!(offsets(&r), vec![(2, false), (3, false)]);
    let after = history(fx, &k, Offset::ZERO, 100).await;
    assert_eq!(after, before, "a re-applied event changes nothing");
    let r = fx.apply1(&k, 9, &[3, 4, 4, 1], &quiet()).await;
    assert_eq!(
        offsets(&r),
        vec![(3, false), (4, true), (4, false), (1, false)]
    );
    let page = history(fx, &k, Offset::ZERO, 100).await;
    assert_eq!(page.top, Offset(4));
    assert_eq!(page.records.len(), 4);
    let state = fx.b().get_state(&k).await.unwrap().unwrap();
    assert_eq!(state.seq, 4);
    assert_eq!(state.record.offset, Offset(4));
}

async fn state_never_regresses(fx: &Fixture) {
    let k = fx.job("state");
    assert_eq!(fx.b().get_state(&k).await.unwrap(), None);
    fx.apply1(&k, 3, &[5], &quiet()).await;
    let r = fx.apply1(&k, 3, &[3], &quiet()).await;
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
    fx.apply1(&k, 3, &[9, 10, 8], &quiet()).await;
    let s = fx.b().get_state(&k).await.unwrap().unwrap();
    assert_eq!((s.seq, s.record.offset, s.top), (10, Offset(4), Offset(5)));
    assert_eq!(s.record.payload, ev(10).payload);

    // Exact over the whole u64 range (beyond 2^53).
    let k = fx.job("state-big");
    let big = u64::MAX - 1;
    fx.apply1(&k, 3, &[big], &quiet()).await;
    fx.apply1(&k, 3, &[big - 1, (1 << 53) + 1], &quiet()).await;
    let s = fx.b().get_state(&k).await.unwrap().unwrap();
    assert_eq!(s.seq, big);
    assert_eq!(s.record.offset, Offset(1));
    fx.apply1(&k, 3, &[u64::MAX], &quiet()).await;
    let s = fx.b().get_state(&k).await.unwrap().unwrap();
    assert_eq!((s.seq, s.record.offset), (u64::MAX, Offset(4)));
    let r = fx.apply1(&k, 3, &[big - 1], &quiet()).await;
    assert_eq!(offsets(&r), vec![(2, false)]);
}

async fn history_after_offset(fx: &Fixture) {
    let k = fx.job("hist");
    let empty = history(fx, &k, Offset::ZERO, 10).await;
    assert_eq!(empty.epoch, None);
    assert_eq!(empty.top, Offset(0));
    assert_eq!(empty.first, None);
    assert!(empty.records.is_empty());

    fx.apply1(&k, 11, &[1, 2, 3, 4, 5, 6], &quiet()).await;
    let page = history(fx, &k, Offset(3), 100).await;
    assert_eq!(page.epoch, Some(Epoch(11)));
    assert_eq!(page.top, Offset(6));
    assert_eq!(page.first, Some(Offset(1)));
    let offs: Vec<u64> = page.records.iter().map(|r| r.offset.0).collect();
    assert_eq!(offs, vec![4, 5, 6]);
    assert_eq!(page.records[0].payload, ev(4).payload);

    let page = history(fx, &k, Offset(3), 2).await;
    let offs: Vec<u64> = page.records.iter().map(|r| r.offset.0).collect();
    assert_eq!(offs, vec![4, 5], "limit bounds the page");
    assert_eq!(page.top, Offset(6));

    let page = history(fx, &k, Offset(6), 100).await;
    assert!(page.records.is_empty());
    assert_eq!(page.epoch, Some(Epoch(11)));
    let page = history(fx, &k, Offset(60), 100).await;
    assert!(page.records.is_empty());
}

/// D6: a resume offset past anything a job can hold (a forged or
/// corrupted `Last-Event-ID`, up to `u64::MAX`) reads as "ahead of the
/// history" on every backend: no records, the true top and epoch.
async fn history_after_huge_offset(fx: &Fixture) {
    let k = fx.job("huge");
    fx.apply1(&k, 12, &[1, 2, 3], &quiet()).await;
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

async fn history_is_bounded(fx: &Fixture) {
    let k = fx.job("bounded");
    let opts = ApplyOptions {
        history_max: 5,
        ..quiet()
    };
    fx.apply1(&k, 1, &[1, 2, 3], &opts).await;
    fx.apply1(&k, 1, &[4, 5, 6, 7, 8], &opts).await;
    let page = history(fx, &k, Offset::ZERO, 100).await;
    assert_eq!(page.top, Offset(8));
    assert_eq!(page.first, Some(Offset(4)));
    let offs: Vec<u64> = page.records.iter().map(|r| r.offset.0).collect();
    assert_eq!(offs, vec![4, 5, 6, 7, 8]);
    // A trimmed event is still known: re-applying it is a no-op.
    let r = fx.apply1(&k, 1, &[2], &opts).await;
    assert_eq!(offsets(&r), vec![(2, false)]);
}

async fn history_expires(fx: &Fixture) {
    let k = fx.job("ttl");
    let opts = ApplyOptions {
        history_ttl: Duration::from_millis(300),
        state_ttl: Duration::from_millis(300),
        ..quiet()
    };
    let r = fx.apply1(&k, 21, &[1, 2], &opts).await;
    assert_eq!(r.epoch, Epoch(21));
    let page = history(fx, &k, Offset::ZERO, 10).await;
    assert_eq!(page.epoch, Some(Epoch(21)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let page = history(fx, &k, Offset::ZERO, 10).await;
    assert_eq!(page.epoch, None, "meta expired");
    assert!(page.records.is_empty());
    assert_eq!(page.first, None);
    assert_eq!(fx.b().get_state(&k).await.unwrap(), None);

    // Re-created: new epoch, offsets from 1 again, old seqs are new again.
    let r = fx.apply1(&k, 22, &[2], &quiet()).await;
    assert_eq!(r.epoch, Epoch(22));
    assert_eq!(offsets(&r), vec![(1, true)]);
    let page = history(fx, &k, Offset::ZERO, 10).await;
    assert_eq!(page.epoch, Some(Epoch(22)));
    assert_eq!(page.records.len(), 1);
}

async fn epoch_is_stable(fx: &Fixture) {
    let k = fx.job("epoch");
    let e1 = Epoch::random();
    let r = fx.apply1(&k, e1.0, &[1], &quiet()).await;
    assert_eq!(r.epoch, e1);
    for _ in 0..3 {
        let r = fx.apply1(&k, Epoch::random().0, &[2, 3], &quiet()).await;
        assert_eq!(r.epoch, e1);
    }
    assert_eq!(fx.b().get_state(&k).await.unwrap().unwrap().epoch, e1);
    assert_eq!(history(fx, &k, Offset::ZERO, 1).await.epoch, Some(e1));
}

conformance_tests!(
    apply_assigns_gap_free_offsets,
    apply_batch_of_jobs,
    reapply_is_noop,
    state_never_regresses,
    history_after_offset,
    history_after_huge_offset,
    history_is_bounded,
    history_expires,
    epoch_is_stable,
);
