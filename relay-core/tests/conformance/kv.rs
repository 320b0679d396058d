//! [`KvStore`](relay_core::backend::KvStore): keys with TTLs. Not part of
//! `Backend`; both built-in backends offer it (the scan pipeline's records).

use std::time::Duration;

use bytes::Bytes;

use crate::support::{conformance_tests, Fixture};

async fn kv_operations(fx: &Fixture) {
    let kv = fx.kv();
    let value = |v: &'static [u8]| Bytes::from_static(v);
    let k = fx.key("kv");
    assert_eq!(kv.get(&k).await.unwrap(), None);
    assert!(kv.set_nx(&k, value(b"one"), None).await.unwrap());
    assert!(!kv.set_nx(&k, value(b"two"), None).await.unwrap());
    assert_eq!(kv.get(&k).await.unwrap(), Some(value(b"one")));
    kv.set(&k, value(b"\x00\xffbin"), None).await.unwrap();
    assert_eq!(kv.get(&k).await.unwrap(), Some(value(b"\x00\xffbin")));
    let other = fx.key("kv2");
    // In the order asked, a missing key as None, across slots on a
    // cluster: `elsewhere`'s hash tag is not the test prefix's.
    let elsewhere = format!("{{{}}}", fx.key("kv-elsewhere").replace(['{', '}'], ""));
    kv.set(&elsewhere, value(b"far"), None).await.unwrap();
    assert_eq!(
        kv.get_many(&[other.clone(), k.clone(), elsewhere.clone(), other.clone()])
            .await
            .unwrap(),
        [None, Some(value(b"\x00\xffbin")), Some(value(b"far")), None]
    );
    assert_eq!(kv.get_many(&[]).await.unwrap(), []);
    assert_eq!(kv.delete(&[elsewhere]).await.unwrap(), 1);
    assert_eq!(kv.delete(&[k.clone(), other.clone()]).await.unwrap(), 1);
    assert_eq!(kv.get(&k).await.unwrap(), None);
    assert_eq!(kv.delete(&[]).await.unwrap(), 0);

    let t = fx.key("kv-ttl");
    let ttl = Some(Duration::from_millis(200));
    assert!(kv.set_nx(&t, value(b"x"), ttl).await.unwrap());
    kv.set(&other, value(b"y"), ttl).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(kv.get(&t).await.unwrap(), None);
    assert_eq!(kv.get(&other).await.unwrap(), None);
    assert!(kv.set_nx(&t, value(b"z"), None).await.unwrap());
}

conformance_tests!(kv_operations);
