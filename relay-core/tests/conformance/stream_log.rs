//! [`StreamLog`](relay_core::backend::StreamLog): appends with producer dedupe, consumer groups, pending
//! lists, claims and delivery counts, dead letters, blocking reads.

use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::backend::{
    AppendRequest, DeadLetter, DeadLetterLimits, Dedupe, ReadFrom, StreamId, DLQ_TRUNCATED_PREFIX,
};
use relay_core::codec::field;
use relay_core::BackendError;

use crate::support::{
    conformance_tests, fields, ids, plain, read_group, spawn_read, Fixture, GROUP,
};

async fn idempotent_append(fx: &Fixture) {
    let stream = fx.key("events:0");
    let req = AppendRequest {
        stream: stream.clone(),
        fields: fields(&[("job", "j1"), ("seq", "10")]),
        maxlen: Some(1000),
        dedupe: Some(Dedupe {
            key: fx.key("{j1}:pub:10"),
            ttl: Duration::from_secs(60),
        }),
    };
    let first = fx.b().append(req.clone()).await.unwrap();
    assert!(!first.duplicate);
    let again = fx.b().append(req.clone()).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.id, first.id, "a duplicate returns the original id");
    assert_eq!(fx.b().stream_len(&stream).await.unwrap(), 1);

    // Within one batch, too; and plain appends are never deduplicated.
    let mut other = req.clone();
    other.dedupe = Some(Dedupe {
        key: fx.key("{j1}:pub:11"),
        ttl: Duration::from_secs(60),
    });
    let out = fx
        .b()
        .append_batch(vec![
            other.clone(),
            other,
            req,
            plain(&stream, 1),
            plain(&stream, 1),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    assert!(!out[0].duplicate);
    assert!(out[1].duplicate);
    assert_eq!(out[1].id, out[0].id);
    assert!(out[2].duplicate);
    assert_eq!(out[2].id, first.id);
    assert!(!out[3].duplicate && !out[4].duplicate);
    assert!(out[3].id < out[4].id && out[0].id < out[3].id && first.id < out[0].id);
    assert_eq!(fx.b().stream_len(&stream).await.unwrap(), 4);
    let entries = fx.b().range(&stream, None, 10).await.unwrap();
    assert_eq!(
        ids(&entries),
        vec![first.id, out[0].id, out[3].id, out[4].id]
    );
    assert_eq!(entries[0].fields, fields(&[("job", "j1"), ("seq", "10")]));
}

async fn group_starts_at_beginning(fx: &Fixture) {
    let s = fx.key("grp-start");
    let a = fx.b().append(plain(&s, 1)).await.unwrap();
    let b = fx.b().append(plain(&s, 2)).await.unwrap();
    fx.b().ensure_group(&s, GROUP).await.unwrap();
    fx.b().ensure_group(&s, GROUP).await.unwrap(); // idempotent
    let got = fx.read(&s, "c1", ReadFrom::New, 10).await;
    assert_eq!(ids(&got), vec![a.id, b.id]);
    assert_eq!(got[0].fields, plain(&s, 1).fields);

    // ensure_group creates the stream.
    let empty = fx.key("grp-empty");
    fx.b().ensure_group(&empty, GROUP).await.unwrap();
    assert_eq!(fx.b().stream_len(&empty).await.unwrap(), 0);
    assert!(fx.read(&empty, "c1", ReadFrom::New, 10).await.is_empty());
}

async fn missing_group_is_nogroup(fx: &Fixture) {
    let s = fx.key("nogroup");
    fx.b().append(plain(&s, 1)).await.unwrap();
    let err = fx
        .b()
        .read_group(&s, "missing", "c", ReadFrom::New, 10, None)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::NoGroup { .. }), "{err:?}");
    let err = fx.b().group_stats(&s, "missing").await.unwrap_err();
    assert!(matches!(err, BackendError::NoGroup { .. }), "{err:?}");
    let err = fx
        .b()
        .group_stats(&fx.key("no-stream"), "missing")
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::NoGroup { .. }), "{err:?}");
    assert!(!err.is_transient());
}

async fn pending_reread_after_crash(fx: &Fixture) {
    let s = fx.key("pending");
    fx.grouped_stream(&s, 3).await;
    let first = fx.read(&s, "c1", ReadFrom::New, 10).await;
    assert_eq!(first.len(), 3);
    // "Crash": no ack. On restart the consumer re-reads its own pending.
    let again = fx.read(&s, "c1", ReadFrom::Pending, 10).await;
    assert_eq!(again, first);
    let limited = fx.read(&s, "c1", ReadFrom::Pending, 2).await;
    assert_eq!(ids(&limited), ids(&first[..2]));
    let none = fx.read(&s, "c1", ReadFrom::New, 10).await;
    assert!(none.is_empty(), "nothing new");
    let other = fx.read(&s, "c2", ReadFrom::Pending, 10).await;
    assert!(other.is_empty(), "pending is per consumer");
    assert_eq!(fx.b().ack(&s, GROUP, &ids(&first)).await.unwrap(), 3);
    let after = fx.read(&s, "c1", ReadFrom::Pending, 10).await;
    assert!(after.is_empty());
}

async fn ack_removes_pending(fx: &Fixture) {
    let s = fx.key("ack");
    fx.grouped_stream(&s, 3).await;
    let st = fx.stats(&s).await;
    assert_eq!((st.length, st.pending, st.lag), (3, 0, Some(3)));
    let got = fx.read(&s, "c1", ReadFrom::New, 10).await;
    let st = fx.stats(&s).await;
    assert_eq!((st.length, st.pending, st.lag), (3, 3, Some(0)));
    assert_eq!(st.consumers.len(), 1);
    assert_eq!(st.consumers[0].name, "c1");
    assert_eq!(st.consumers[0].pending, 3);

    assert_eq!(fx.b().ack(&s, GROUP, &ids(&got[..2])).await.unwrap(), 2);
    assert_eq!(fx.b().ack(&s, GROUP, &ids(&got[..2])).await.unwrap(), 0);
    assert_eq!(fx.b().ack(&s, GROUP, &[]).await.unwrap(), 0);
    let st = fx.stats(&s).await;
    assert_eq!(st.pending, 1);
    assert_eq!(st.consumers[0].pending, 1);

    assert_eq!(fx.b().delete_consumer(&s, GROUP, "c1").await.unwrap(), 1);
    let st = fx.stats(&s).await;
    assert!(st.consumers.is_empty());
    assert_eq!(
        st.pending, 0,
        "deleting a consumer drops its pending entries"
    );
}

async fn claim_after_idle(fx: &Fixture) {
    let s = fx.key("claim");
    fx.grouped_stream(&s, 2).await;
    let read = fx.read(&s, "A", ReadFrom::New, 10).await;
    assert_eq!(read.len(), 2);
    let early = fx.claim(&s, "B", Duration::from_secs(5), 10).await;
    assert!(
        early.claimed.is_empty() && early.deleted.is_empty(),
        "not idle yet"
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = fx.claim(&s, "B", Duration::from_millis(50), 10).await;
    assert!(c.deleted.is_empty());
    let got: Vec<(StreamId, u64)> = c
        .claimed
        .iter()
        .map(|d| (d.entry.id, d.deliveries))
        .collect();
    assert_eq!(got, vec![(read[0].id, 2), (read[1].id, 2)]);
    assert_eq!(c.claimed[0].entry, read[0]);

    let st = fx.stats(&s).await;
    let pend = |name: &str| {
        st.consumers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.pending)
    };
    assert_eq!(pend("B"), Some(2));
    assert_eq!(pend("A"), Some(0));
    let mine = fx.read(&s, "B", ReadFrom::Pending, 10).await;
    assert_eq!(ids(&mine), ids(&read));

    // Claimed entries are fresh again, and count bounds a claim.
    let none = fx.claim(&s, "C", Duration::from_millis(50), 10).await;
    assert!(none.claimed.is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let one = fx.claim(&s, "C", Duration::from_millis(50), 1).await;
    assert_eq!(one.claimed.len(), 1);
    assert_eq!(one.claimed[0].entry.id, read[0].id);
    // 2 (claim by B) + 1 (B re-read its pending list) + 1 (this claim).
    assert_eq!(
        one.claimed[0].deliveries, 4,
        "re-reads and claims both count"
    );
}

async fn delivery_count_increments(fx: &Fixture) {
    let s = fx.key("deliveries");
    let a = fx.grouped_stream(&s, 1).await[0];
    fx.read(&s, "c0", ReadFrom::New, 10).await;
    for round in 2..=5u64 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let c = fx
            .claim(&s, &format!("c{round}"), Duration::from_millis(20), 10)
            .await;
        assert_eq!(c.claimed.len(), 1, "round {round}");
        assert_eq!(c.claimed[0].entry.id, a);
        assert_eq!(c.claimed[0].deliveries, round);
    }
}

async fn claim_reports_deleted_entries(fx: &Fixture) {
    let s = fx.key("claim-deleted");
    fx.grouped_stream(&s, 3).await;
    let read = fx.read(&s, "A", ReadFrom::New, 10).await;
    assert_eq!(fx.b().delete_entries(&s, &[read[1].id]).await.unwrap(), 1);
    // The owner re-reading its pending list sees the deleted entry empty.
    let pend = fx.read(&s, "A", ReadFrom::Pending, 10).await;
    assert_eq!(ids(&pend), ids(&read));
    assert!(!pend[0].is_deleted());
    assert!(pend[1].is_deleted());
    assert!(!pend[2].is_deleted());

    tokio::time::sleep(Duration::from_millis(60)).await;
    let c = fx.claim(&s, "B", Duration::from_millis(20), 10).await;
    assert_eq!(
        ids(&c
            .claimed
            .iter()
            .map(|d| d.entry.clone())
            .collect::<Vec<_>>()),
        vec![read[0].id, read[2].id]
    );
    assert_eq!(c.deleted, vec![read[1].id]);
    let st = fx.stats(&s).await;
    assert_eq!(st.pending, 2, "deleted entries leave the pending list");
}

async fn dead_letter_moves_and_acks(fx: &Fixture) {
    let s = fx.key("dl-src");
    let dlq = fx.key("dlq");
    fx.b().ensure_group(&s, GROUP).await.unwrap();
    fx.b()
        .append(AppendRequest {
            stream: s.clone(),
            fields: fields(&[("job", "j"), ("body", "\u{1}garbage")]),
            maxlen: None,
            dedupe: None,
        })
        .await
        .unwrap();
    let got = fx.read(&s, "c", ReadFrom::New, 10).await;
    let entry = &got[0];
    let id = fx
        .b()
        .dead_letter(DeadLetter {
            dlq: &dlq,
            source: &s,
            group: GROUP,
            entry,
            reason: "undecodable body",
            deliveries: 5,
            limits: DeadLetterLimits::default(),
        })
        .await
        .unwrap();
    let dl = fx.b().range(&dlq, None, 10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].id, id);
    let f = &dl[0].fields;
    let text = |k: &str| field(f, k).map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(text("reason").as_deref(), Some("undecodable body"));
    assert_eq!(text("source"), Some(s.clone()));
    assert_eq!(text("id"), Some(entry.id.to_string()));
    assert_eq!(text("deliveries").as_deref(), Some("5"));
    assert_eq!(text("f.job").as_deref(), Some("j"));
    assert_eq!(text("f.body").as_deref(), Some("\u{1}garbage"));
    let st = fx.stats(&s).await;
    assert_eq!(st.pending, 0, "dead-lettered entries are acked");
    assert_eq!(st.length, 1, "the source entry itself stays");
    assert!(
        f.iter().all(|(k, _)| !k.starts_with(DLQ_TRUNCATED_PREFIX)),
        "nothing was cut: {f:?}"
    );
}

/// G6 for poison: the dead-letter stream keeps at most `maxlen`
/// entries, and values over `max_field_bytes` are stored cut, with
/// their size and SHA-256.
async fn dead_letter_is_bounded(fx: &Fixture) {
    let s = fx.key("dl-bounded");
    let dlq = fx.key("dlq-bounded");
    fx.b().ensure_group(&s, GROUP).await.unwrap();
    let big = "x".repeat(1000);
    for i in 0..12 {
        fx.b()
            .append(AppendRequest {
                stream: s.clone(),
                fields: fields(&[("n", &i.to_string()), ("body", &big)]),
                maxlen: None,
                dedupe: None,
            })
            .await
            .unwrap();
    }
    let got = fx.read(&s, "c", ReadFrom::New, 100).await;
    assert_eq!(got.len(), 12);
    let limits = DeadLetterLimits {
        maxlen: 5,
        max_field_bytes: 100,
    };
    for entry in &got {
        let dl = DeadLetter {
            dlq: &dlq,
            source: &s,
            group: GROUP,
            entry,
            reason: "poison",
            deliveries: 1,
            limits,
        };
        assert!(dl.truncates());
        fx.b().dead_letter(dl).await.unwrap();
    }
    let dl = fx.b().range(&dlq, None, 100).await.unwrap();
    assert_eq!(dl.len(), 5, "trimmed to maxlen, oldest first");
    let f = &dl[4].fields;
    assert_eq!(field(f, "f.n").map(|v| v.to_vec()), Some(b"11".to_vec()));
    assert_eq!(field(f, "f.body").map(|v| v.len()), Some(100));
    assert_eq!(field(f, "t.n"), None, "short fields are kept whole");
    let marker = String::from_utf8_lossy(field(f, "t.body").expect("cut marker")).into_owned();
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(big.as_bytes()));
    assert_eq!(marker, format!("1000 {digest}"));
    assert_eq!(fx.stats(&s).await.pending, 0);
}

async fn blocking_read_wakes_on_append(fx: &Fixture) {
    let s = fx.key("block");
    fx.b().ensure_group(&s, GROUP).await.unwrap();
    let start = Instant::now();
    let reader = spawn_read(fx.backend(), &s, "c", 10, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = fx.b().append(plain(&s, 1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(4), reader)
        .await
        .expect("blocked read did not wake")
        .unwrap()
        .unwrap();
    assert_eq!(ids(&got), vec![a.id]);
    assert!(start.elapsed() < Duration::from_secs(4));

    // Nothing arrives: an empty result after about `block`.
    let start = Instant::now();
    let block = Some(Duration::from_millis(300));
    let got = read_group(fx.b(), &s, "c", ReadFrom::New, 10, block)
        .await
        .unwrap();
    assert!(got.is_empty());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "returned after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "returned after {took:?}");

    // Pending reads never block.
    let start = Instant::now();
    let block = Some(Duration::from_secs(5));
    let got = read_group(fx.b(), &s, "c", ReadFrom::Pending, 10, block)
        .await
        .unwrap();
    assert_eq!(ids(&got), vec![a.id]);
    assert!(start.elapsed() < Duration::from_secs(2));
}

async fn concurrent_blocking_reads(fx: &Fixture) {
    // Several blocked readers must not stall each other or other commands.
    let s = fx.key("block-many");
    fx.b().ensure_group(&s, GROUP).await.unwrap();
    let readers: Vec<_> = (0..4)
        .map(|i| {
            spawn_read(
                fx.backend(),
                &s,
                &format!("c{i}"),
                1,
                Duration::from_secs(5),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    fx.b().ping().await.unwrap();
    fx.kv()
        .set(&fx.key("k"), Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "commands stalled behind blocked reads: {:?}",
        start.elapsed()
    );
    for i in 0..4 {
        fx.b().append(plain(&s, i)).await.unwrap();
    }
    let mut total = 0;
    for r in readers {
        let got = tokio::time::timeout(Duration::from_secs(4), r)
            .await
            .expect("reader did not wake")
            .unwrap()
            .unwrap();
        total += got.len();
    }
    assert_eq!(total, 4);
}

async fn range_delete_len(fx: &Fixture) {
    let s = fx.key("range");
    assert_eq!(fx.b().stream_len(&s).await.unwrap(), 0);
    assert!(fx.b().range(&s, None, 10).await.unwrap().is_empty());
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(fx.b().append(plain(&s, i)).await.unwrap().id);
    }
    let got = fx.b().range(&s, None, 10).await.unwrap();
    assert_eq!(ids(&got), all);
    assert_eq!(got[2].fields, plain(&s, 2).fields);
    let got = fx.b().range(&s, Some(all[1]), 2).await.unwrap();
    assert_eq!(ids(&got), all[2..4].to_vec());
    let got = fx.b().range(&s, Some(all[4]), 10).await.unwrap();
    assert!(got.is_empty());
    assert!(fx.b().range(&s, None, 0).await.unwrap().is_empty());

    let missing = StreamId::new(1, 0);
    assert_eq!(
        fx.b().delete_entries(&s, &[all[0], missing]).await.unwrap(),
        1
    );
    assert_eq!(fx.b().delete_entries(&s, &[]).await.unwrap(), 0);
    assert_eq!(fx.b().stream_len(&s).await.unwrap(), 4);
    let got = fx.b().range(&s, None, 10).await.unwrap();
    assert_eq!(ids(&got), all[1..].to_vec());
}

conformance_tests!(
    idempotent_append,
    group_starts_at_beginning,
    missing_group_is_nogroup,
    pending_reread_after_crash,
    ack_removes_pending,
    claim_after_idle,
    delivery_count_increments,
    claim_reports_deleted_entries,
    dead_letter_moves_and_acks,
    dead_letter_is_bounded,
    blocking_read_wakes_on_append,
    concurrent_blocking_reads,
    range_delete_len,
);
