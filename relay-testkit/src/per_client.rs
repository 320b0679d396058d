//! One test body, one test per Redis client: see
//! [`per_redis_client!`](crate::per_redis_client).

/// Generates, for each `case` (an `async fn case(client: C)` in the calling
/// module, `C` being relay-core's `cli::RedisClient`), the test
/// `redis_rs::case` and, when the *calling* crate is built with its own
/// `fred` feature, `fred::case`: multi-threaded tokio tests running the
/// same body with each client, named so that the client shows in the test
/// list and in filters (`-- fred`).
///
/// The first argument is the client type's path (`relay_core::cli::RedisClient`):
/// this kit depends on no workspace crate (see the crate docs), so the
/// caller names it.
///
/// ```ignore
/// async fn survives_a_restart(client: RedisClient) { /* … */ }
/// relay_testkit::per_redis_client!(relay_core::cli::RedisClient; survives_a_restart);
/// ```
#[macro_export]
macro_rules! per_redis_client {
    ($client:path; $($case:ident),+ $(,)?) => {
        $crate::per_redis_client!(@on redis_rs, $client, RedisRs; $($case),+);
        #[cfg(feature = "fred")]
        $crate::per_redis_client!(@on fred, $client, Fred; $($case),+);
    };
    (@on $module:ident, $client:path, $variant:ident; $($case:ident),+) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(<$client>::$variant).await;
                }
            )+
        }
    };
}
