//! [`KvStore`] on Redis: plain strings with `PX` TTLs.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;

use super::conn::{ms, Resend};
use super::error::{is_connection_error, map_err, protocol};
use super::reply::{bytes_of, u64_of};
use super::RedisBackend;
use crate::backend::{BackendResult, KvStore};

fn get_cmd(key: &str) -> redis::Cmd {
    let mut c = redis::cmd("GET");
    c.arg(key);
    c
}

/// A `GET` reply: nil is a missing key.
fn get_reply(v: Value) -> BackendResult<Option<Bytes>> {
    match v {
        Value::Nil => Ok(None),
        other => bytes_of(&other)
            .map(|b| Some(Bytes::copy_from_slice(b)))
            .ok_or_else(|| protocol(format!("GET answered {other:?}"))),
    }
}

#[async_trait]
impl KvStore for RedisBackend {
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<bool> {
        let mut c = redis::cmd("SET");
        c.arg(key).arg(&value[..]).arg("NX");
        if let Some(t) = ttl {
            c.arg("PX").arg(ms(t));
        }
        let v = match self.query_once(&c).await {
            Err(e) if is_connection_error(&e) => {
                // The first SET NX may or may not have run before the drop:
                // send it again, and if the key exists, it is ours when it
                // holds our value.
                match self.query_once(&c).await.map_err(map_err)? {
                    Value::Nil => {
                        let stored = self.get(key).await?;
                        return Ok(stored.as_deref() == Some(&value[..]));
                    }
                    v => v,
                }
            }
            r => r.map_err(map_err)?,
        };
        Ok(!matches!(v, Value::Nil))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> BackendResult<()> {
        let mut c = redis::cmd("SET");
        c.arg(key).arg(&value[..]);
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
        let cmds: Vec<redis::Cmd> = keys.iter().map(|k| get_cmd(k)).collect();
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
        let v = self
            .query(redis::cmd("DEL").arg(keys), Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        u64_of(&v).ok_or_else(|| protocol(format!("DEL answered {v:?}")))
    }
}
