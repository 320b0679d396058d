//! [`KvStore`] in memory: keys with expiry.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::backend::*;

#[async_trait]
impl KvStore for MemoryBackend {
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if get_live(&mut inner.kv, key, now).is_some() {
            return Ok(false);
        }
        inner.kv.insert(
            key.to_owned(),
            Expiring {
                value,
                expires: ttl.map(|t| now + t),
            },
        );
        Ok(true)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<()> {
        let now = Instant::now();
        self.lock().kv.insert(
            key.to_owned(),
            Expiring {
                value,
                expires: ttl.map(|t| now + t),
            },
        );
        Ok(())
    }

    async fn get(&self, key: &str) -> BackendResult<Option<Bytes>> {
        let now = Instant::now();
        Ok(get_live(&mut self.lock().kv, key, now).cloned())
    }

    async fn delete(&self, keys: &[String]) -> BackendResult<u64> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut n = 0;
        for k in keys {
            let mut hit = false;
            hit |= inner.kv.remove(k).is_some_and(|e| e.live(now));
            hit |= inner.jobs.remove(k).is_some_and(|e| e.live(now));
            hit |= inner.streams.remove(k).is_some();
            n += u64::from(hit);
        }
        Ok(n)
    }
}
