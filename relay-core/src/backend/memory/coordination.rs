//! [`Coordination`] in memory: leases and heartbeats under the one lock.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::backend::*;

#[async_trait]
impl Coordination for MemoryBackend {
    async fn try_lease(&self, key: &str, owner: &str, ttl: Duration) -> BackendResult<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(holder) = get_live(&mut inner.kv, key, now) {
            if holder.as_ref() != owner.as_bytes() {
                return Ok(false);
            }
        }
        inner.kv.insert(
            key.to_owned(),
            Expiring {
                value: Bytes::copy_from_slice(owner.as_bytes()),
                expires: Some(now + ttl),
            },
        );
        Ok(true)
    }

    async fn release_lease(&self, key: &str, owner: &str) -> BackendResult<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        if get_live(&mut inner.kv, key, now).is_some_and(|h| h.as_ref() == owner.as_bytes()) {
            inner.kv.remove(key);
        }
        Ok(())
    }

    async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BackendResult<Vec<String>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let members = inner.members.entry(group.to_owned()).or_default();
        members.insert(member.to_owned(), now + ttl);
        members.retain(|_, until| *until > now);
        let mut live: Vec<String> = members.keys().cloned().collect();
        live.sort();
        Ok(live)
    }
}
