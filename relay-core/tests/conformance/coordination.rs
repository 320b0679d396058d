//! [`Coordination`](relay_core::backend::Coordination): shard leases and router membership.

use std::time::Duration;

use crate::support::{conformance_tests, Fixture};

/// Shard ownership: a lease has one holder, who can renew it; once it
/// expires (or is released) another owner takes it.
async fn lease_is_exclusive_and_expires(fx: &Fixture) {
    let key = fx.key("lease");
    let ttl = Duration::from_millis(300);
    assert!(fx.b().try_lease(&key, "a", ttl).await.unwrap());
    assert!(!fx.b().try_lease(&key, "b", ttl).await.unwrap());
    assert!(fx.b().try_lease(&key, "a", ttl).await.unwrap(), "renewal");
    fx.b().release_lease(&key, "b").await.unwrap();
    assert!(
        !fx.b().try_lease(&key, "b", ttl).await.unwrap(),
        "not b's to free"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(fx.b().try_lease(&key, "b", ttl).await.unwrap(), "expired");
    assert!(!fx.b().try_lease(&key, "a", ttl).await.unwrap());
    fx.b().release_lease(&key, "b").await.unwrap();
    assert!(fx.b().try_lease(&key, "a", ttl).await.unwrap(), "released");
}

/// Membership: every live member is listed, sorted; one whose
/// heartbeat expired is dropped.
async fn heartbeat_lists_live_members(fx: &Fixture) {
    let key = fx.key("members");
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(30);
    assert_eq!(fx.b().heartbeat(&key, "r2", long).await.unwrap(), ["r2"]);
    assert_eq!(
        fx.b().heartbeat(&key, "r1", short).await.unwrap(),
        ["r1", "r2"]
    );
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    assert_eq!(
        fx.b().heartbeat(&key, "r3", long).await.unwrap(),
        ["r2", "r3"]
    );
}

conformance_tests!(lease_is_exclusive_and_expires, heartbeat_lists_live_members,);
