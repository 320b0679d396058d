//! A plain key-value store with TTLs, for what applications keep beside the
//! relay (the scan pipeline's idempotency records, results and grants). The
//! relay itself never uses it, so it is not a supertrait of
//! [`Backend`](super::Backend): code that needs it names it (pipeline-scan
//! holds a backend that is both).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::BackendResult;

/// Keys with optional TTLs.
///
/// Contract: every operation is atomic on its key; [`KvStore::set_nx`]
/// reports `true` to exactly one of several concurrent callers, and stays
/// correct when the connection drops under it.
#[async_trait]
pub trait KvStore: Send + Sync {
    /// Sets `key` only if absent; true when set.
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<bool>;

    /// Sets `key`.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<()>;

    /// Reads `key`.
    async fn get(&self, key: &str) -> BackendResult<Option<Bytes>>;

    /// Reads `keys`, in one round trip where the store can: the values in
    /// the order of `keys`, `None` for a missing one. Not atomic across
    /// keys. The default reads them one by one.
    async fn get_many(&self, keys: &[String]) -> BackendResult<Vec<Option<Bytes>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }

    /// Deletes keys; returns how many existed.
    async fn delete(&self, keys: &[String]) -> BackendResult<u64>;
}
