//! [`KvStore`] on fred: plain strings with `PX` TTLs.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::types::Value;

use super::cmd::Cmd;
use super::conn::{ms, Resend};
use super::error::{is_connection_error, map_err, protocol};
use super::reply::{owned_bytes, to_redis_value, u64_of};
use super::FredBackend;
use crate::backend::{BackendResult, KvStore};

fn get_cmd(key: &str) -> Cmd {
    let mut c = Cmd::keyed("GET", key);
    c.arg(key);
    c
}

/// A `GET` reply: null is a missing key.
fn get_reply(v: Value) -> BackendResult<Option<Bytes>> {
    match v {
        Value::Null => Ok(None),
        other => owned_bytes(&other)
            .map(Some)
            .ok_or_else(|| protocol(format!("GET answered {other:?}"))),
    }
}

#[async_trait]
impl KvStore for FredBackend {
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<bool> {
        let mut c = Cmd::keyed("SET", key);
        c.arg(key).arg(&value).arg("NX");
        if let Some(t) = ttl {
            c.arg("PX").arg(ms(t));
        }
        let v = match self.query_once(&c).await {
            Err(e) if is_connection_error(&e) => {
                // The first SET NX may or may not have run before the drop:
                // send it again, and if the key exists, it is ours when it
                // holds our value.
                match self.query_once(&c).await.map_err(map_err)? {
                    Value::Null => {
                        let stored = self.get(key).await?;
                        return Ok(stored.as_deref() == Some(&value[..]));
                    }
                    v => v,
                }
            }
            r => r.map_err(map_err)?,
        };
        Ok(!matches!(v, Value::Null))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<()> {
        let mut c = Cmd::keyed("SET", key);
        c.arg(key).arg(&value);
        if let Some(t) = ttl {
            c.arg("PX").arg(ms(t));
        }
        self.query(&c, Resend::AfterDrop).await.map_err(map_err)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> BackendResult<Option<Bytes>> {
        let v = self
            .query(&get_cmd(key), Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        get_reply(v)
    }

    /// One pipelined `GET` per key: one round trip, split per node on a
    /// cluster like every pipeline here.
    async fn get_many(&self, keys: &[String]) -> BackendResult<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<Cmd> = keys.iter().map(|k| get_cmd(k)).collect();
        self.pipeline(&cmds, Resend::AfterDrop)
            .await?
            .into_iter()
            .map(|r| get_reply(r.map_err(map_err)?))
            .collect()
    }

    async fn delete(&self, keys: &[String]) -> BackendResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        // On a cluster one DEL per slot (as redis-rs splits a multi-key
        // DEL), pipelined; on one server a single DEL.
        let mut by_slot: BTreeMap<u16, Cmd> = BTreeMap::new();
        let single = !self.inner.topology.is_cluster();
        for k in keys {
            let slot = if single { 0 } else { crate::keys::slot(k) };
            by_slot
                .entry(slot)
                .or_insert_with(|| Cmd::keyed("DEL", k))
                .arg(k);
        }
        let cmds: Vec<Cmd> = by_slot.into_values().collect();
        let mut deleted = 0;
        for r in self.pipeline(&cmds, Resend::AfterDrop).await? {
            let v = to_redis_value(r.map_err(map_err)?);
            deleted += u64_of(&v).ok_or_else(|| protocol(format!("DEL answered {v:?}")))?;
        }
        Ok(deleted)
    }
}
