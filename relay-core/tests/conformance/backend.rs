//! [`Backend`](relay_core::Backend)'s own operations: the connection check,
//! and the apply that acknowledges stream entries.

use relay_core::backend::{AckRequest, ReadFrom};
use relay_core::Offset;

use crate::support::{apply_job, conformance_tests, ids, offsets, quiet, Fixture, GROUP};

async fn ping(fx: &Fixture) {
    fx.b().ping().await.unwrap();
    assert!(!fx.b().name().is_empty());
}

async fn apply_and_ack_acks_after_applying(fx: &Fixture) {
    let s = fx.key("apply-ack");
    fx.grouped_stream(&s, 4).await;
    let got = fx.read(&s, "c1", ReadFrom::New, 10).await;
    assert_eq!(got.len(), 4);
    let (a, b) = (fx.job("apply-ack-a"), fx.job("apply-ack-b"));
    let jobs = vec![apply_job(&a, 5, &[1, 2]), apply_job(&b, 6, &[7])];
    let ack = AckRequest {
        stream: &s,
        group: GROUP,
        ids: &ids(&got[..3]),
    };
    let r = fx.b().apply_and_ack(&jobs, &quiet(), ack).await.unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(offsets(&r[0]), vec![(1, true), (2, true)]);
    assert_eq!(offsets(&r[1]), vec![(1, true)]);
    assert_eq!(
        fx.b().read_history(&a, Offset::ZERO, 10).await.unwrap().top,
        Offset(2)
    );
    assert_eq!(
        fx.stats(&s).await.pending,
        1,
        "the three acked entries left the pending list"
    );
    // Nothing to ack: a plain apply (re-applying is a no-op).
    let ack = AckRequest {
        stream: &s,
        group: GROUP,
        ids: &[],
    };
    let r = fx
        .b()
        .apply_and_ack(&[apply_job(&a, 5, &[2])], &quiet(), ack)
        .await
        .unwrap();
    assert_eq!(offsets(&r[0]), vec![(2, false)]);
    assert_eq!(fx.stats(&s).await.pending, 1);
}

conformance_tests!(ping, apply_and_ack_acks_after_applying);
