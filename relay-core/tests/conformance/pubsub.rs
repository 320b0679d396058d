//! [`PubSub`](relay_core::backend::PubSub): live delivery, inside the apply and on its own, and what a
//! subscriber sees when its connection dies.

use std::time::Duration;

use bytes::Bytes;
use relay_core::backend::ApplyOptions;
use relay_core::{Epoch, LiveEnvelope, Offset};

use crate::support::{apply_job, assert_silent, conformance_tests, ev, quiet, recv, Fixture, Kind};

async fn publish_reaches_subscribers(fx: &Fixture) {
    let k = fx.job("live");
    let extra = fx.key("sse:events:0");
    let mut sub = fx.b().subscriber().await.unwrap();
    sub.handle
        .subscribe(&[k.live.clone(), extra.clone()])
        .await
        .unwrap();
    let mut job = apply_job(&k, 31, &[1, 2]);
    job.extra_channel = Some(extra.clone());
    let opts = ApplyOptions::default();
    assert!(opts.publish);
    fx.b().apply(&[job.clone()], &opts).await.unwrap();

    let mut live = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..4 {
        let (ch, p) = recv(&mut sub).await;
        if ch == k.live {
            live.push(LiveEnvelope::decode(&p).expect("live envelope"));
        } else {
            assert_eq!(ch, extra);
            raw.push(p);
        }
    }
    let pos: Vec<(u64, u64)> = live
        .iter()
        .map(|e| (e.epoch.0, e.record.offset.0))
        .collect();
    assert_eq!(pos, vec![(31, 1), (31, 2)]);
    assert_eq!(live[0].record.payload, ev(1).payload);
    assert_eq!(live[1].record.payload, ev(2).payload);
    assert_eq!(raw, vec![ev(1).payload.0, ev(2).payload.0]);

    // A redelivered event is published again, with its original offset.
    job.events = vec![ev(2)];
    job.extra_channel = None;
    fx.b().apply(&[job.clone()], &opts).await.unwrap();
    let (ch, p) = recv(&mut sub).await;
    assert_eq!(ch, k.live);
    let env = LiveEnvelope::decode(&p).unwrap();
    assert_eq!((env.epoch, env.record.offset), (Epoch(31), Offset(2)));

    // publish = false: the caller publishes.
    job.events = vec![ev(3)];
    fx.b().apply(&[job], &quiet()).await.unwrap();
    assert_silent(&mut sub, Duration::from_millis(200)).await;

    // publish_batch, pipelined.
    fx.b()
        .publish_batch(vec![
            (k.live.clone(), Bytes::from_static(b"a")),
            (fx.key("nobody"), Bytes::from_static(b"b")),
            (extra.clone(), Bytes::from_static(b"c")),
        ])
        .await
        .unwrap();
    // Order across channels is not part of the contract (on a cluster
    // the two channels come through different nodes).
    let mut two = vec![recv(&mut sub).await, recv(&mut sub).await];
    two.sort();
    let mut want = vec![
        (k.live.clone(), Bytes::from_static(b"a")),
        (extra.clone(), Bytes::from_static(b"c")),
    ];
    want.sort();
    assert_eq!(two, want);
    fx.b()
        .publish(&extra, Bytes::from_static(b"d"))
        .await
        .unwrap();
    assert_eq!(recv(&mut sub).await, (extra, Bytes::from_static(b"d")));
}

async fn subscribe_many_channels(fx: &Fixture) {
    let channels: Vec<String> = (0..500).map(|i| fx.key(&format!("ch:{i}"))).collect();
    let mut sub = fx.b().subscriber().await.unwrap();
    sub.handle.subscribe(&channels).await.unwrap();
    sub.handle.subscribe(&channels[..10]).await.unwrap(); // idempotent
    let all: Vec<(String, Bytes)> = channels
        .iter()
        .map(|c| (c.clone(), Bytes::from(c.clone())))
        .collect();
    fx.b().publish_batch(all.clone()).await.unwrap();
    for (c, _) in &all {
        let (ch, p) = recv(&mut sub).await;
        assert_eq!(&ch, c, "in publish order");
        assert_eq!(p, Bytes::from(c.clone()));
    }

    // Unsubscribe the odd ones: only even channels deliver afterwards.
    let odd: Vec<String> = channels.iter().skip(1).step_by(2).cloned().collect();
    sub.handle.unsubscribe(&odd).await.unwrap();
    sub.handle
        .unsubscribe(&[fx.key("never-subscribed")])
        .await
        .unwrap();
    sub.handle.subscribe(&[]).await.unwrap();
    fx.b().publish_batch(all).await.unwrap();
    fx.b()
        .publish(&channels[0], Bytes::from_static(b"end"))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let (ch, p) = recv(&mut sub).await;
        if p.as_ref() == b"end" {
            break;
        }
        got.push(ch);
    }
    let even: Vec<String> = channels.iter().step_by(2).cloned().collect();
    assert_eq!(got, even);
}

async fn subscriber_ends_when_connection_dies(fx: &Fixture) {
    // Killing connections needs a private server: on a shared
    // `REDIS_URL` server this test brings its own.
    let private;
    let fx = match fx.kind() {
        Kind::Redis(r) if !r.is_private() => {
            private = fx.private().await;
            &private
        }
        _ => fx,
    };
    let ch = fx.key("dies");
    let mut sub = fx.b().subscriber().await.unwrap();
    sub.handle
        .subscribe(std::slice::from_ref(&ch))
        .await
        .unwrap();
    fx.kill_subscribers()
        .await
        .expect("a private server allows fault injection");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while sub.messages.recv().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "messages must end when the connection is lost");
    // A new subscriber works.
    let mut sub2 = fx.b().subscriber().await.unwrap();
    sub2.handle
        .subscribe(std::slice::from_ref(&ch))
        .await
        .unwrap();
    fx.b().publish(&ch, Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(recv(&mut sub2).await.1, Bytes::from_static(b"x"));
}

conformance_tests!(
    publish_reaches_subscribers,
    subscribe_many_channels,
    subscriber_ends_when_connection_dies,
);
