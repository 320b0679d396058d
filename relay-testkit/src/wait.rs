//! Waiting for a condition that another task or process brings about.
//!
//! Tests across the workspace poll ("until the gateway is ready", "until the
//! demo answers `/healthz`") with the same loop; here it is once. The limit
//! is a hang guard, generous on purpose: a test asserts on what happened,
//! never on how fast.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long to sleep between two checks.
const POLL: Duration = Duration::from_millis(10);

/// Awaits `check` every few milliseconds until it returns true.
///
/// For a plain boolean condition, pass `|| std::future::ready(cond())`.
///
/// # Panics
/// When `check` is still false after `limit`, naming `what`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let checks = AtomicU32::new(0);
        wait_until(Duration::from_secs(30), "third check", || {
            std::future::ready(checks.fetch_add(1, Ordering::SeqCst) == 2)
        })
        .await;
        assert_eq!(checks.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: not reached within")]
    async fn panics_after_the_limit() {
        wait_until(Duration::from_millis(50), "never", || {
            std::future::ready(false)
        })
        .await;
    }
}
