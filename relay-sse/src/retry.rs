//! Bounded retry of a backend read that failed transiently (a reconnect, a
//! timeout): a few attempts with a doubling pause, so a short backend
//! hiccup does not end every stream, while a persistent failure still
//! surfaces as an error.

use std::time::Duration;

/// Runs `f` until it succeeds, fails with a non-transient error, or failed
/// transiently 8 times more (pauses 50 ms doubling up to 2 s).
pub(crate) async fn retry<T, F, Fut>(mut f: F) -> Result<T, relay_core::BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, relay_core::BackendError>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempts < 8 => {
                attempts += 1;
                tracing::debug!(error = %e, attempts, "backend read failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}
