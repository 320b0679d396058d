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

/// A condition [`wait_for`] gave up on.
#[derive(Debug, thiserror::Error)]
#[error("{what}: not reached within {limit:?}; still missing: {missing}")]
pub struct WaitTimeout {
    /// What was waited for.
    pub what: String,
    /// The hang guard.
    pub limit: Duration,
    /// What the last check said was missing.
    pub missing: String,
}

/// Awaits `check` every few milliseconds until it returns `Ok`; each `Err`
/// says what is still missing, and the last one is kept in the timeout.
///
/// The fallible [`wait_until`], for harness operations that return an
/// error instead of panicking, and whose failure should say more than
/// "not reached" (which node disagreed, which slot had no replica).
pub async fn wait_for<T, F, Fut>(
    limit: Duration,
    what: &str,
    mut check: F,
) -> Result<T, WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let missing = match check().await {
            Ok(done) => return Ok(done),
            Err(missing) => missing,
        };
        if Instant::now() >= deadline {
            return Err(WaitTimeout {
                what: what.to_owned(),
                limit,
                missing,
            });
        }
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
    async fn wait_for_returns_the_value_once_reached() {
        let checks = AtomicU32::new(0);
        let n = wait_for(Duration::from_secs(30), "third check", || {
            let n = checks.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n == 2 {
                Ok(n)
            } else {
                Err(format!("check {n}"))
            })
        })
        .await
        .expect("reached");
        assert_eq!(n, 2);
    }

    #[tokio::test]
    async fn wait_for_reports_what_was_missing_last() {
        let err = wait_for::<(), _, _>(Duration::from_millis(50), "never", || {
            std::future::ready(Err("the moon".to_owned()))
        })
        .await
        .expect_err("never reached");
        assert_eq!(err.what, "never");
        assert!(err.to_string().contains("still missing: the moon"), "{err}");
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
