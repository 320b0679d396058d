//! Connection roles. Commands share one auto-reconnecting multiplexed
//! connection; a blocking read checks out a dedicated connection (a `BLOCK`
//! would stall every command queued behind it on a shared one); pub/sub
//! subscribers open their own (see `pubsub`). Keeping the roles apart is
//! what lets a cluster topology give each its own per-node connections.
//! Every call takes its connection from the current `link` and reports a
//! failure back to it, so a Sentinel failover moves all roles to the new
//! master.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, Script, Value};

use super::error::{is_connection_error, is_noscript, map_err, map_err_ctx, protocol, server_code};
use super::link::{wants_rediscovery, Conn, Link, Target};
use super::RedisBackend;
use crate::backend::BackendResult;
use crate::error::BackendError;
use crate::keys::slot_of_bytes;

impl RedisBackend {
    /// Runs one command; an idempotent one ([`Resend::AfterDrop`]) is sent
    /// once more when the connection dropped under it.
    pub(super) async fn query(&self, cmd: &Cmd, resend: Resend) -> Result<Value, RedisError> {
        match self.query_once(cmd).await {
            Err(e) if resend == Resend::AfterDrop && is_connection_error(&e) => {
                self.query_once(cmd).await
            }
            r => r,
        }
    }

    pub(super) async fn query_once(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let link = self.usable_link().await?;
        let r = match cmd.query_async::<Value>(&mut link.conn.clone()).await {
            Ok(Value::ServerError(e)) => Err(e.into()),
            r => r,
        };
        if let Err(e) = &r {
            self.observe(e, link.generation).await;
        }
        r
    }

    /// Runs `cmds` as one pipeline on the current link (see
    /// [`run_pipeline`]); sent once more when the connection dropped under
    /// it and `resend` allows. A failure that can mean a failover, of the
    /// whole pipeline or of one command in it, is reported to the link.
    pub(super) async fn pipeline(
        &self,
        cmds: &[Cmd],
        resend: Resend,
    ) -> Result<Vec<Result<Value, RedisError>>, PipelineError> {
        match self.pipeline_once(cmds).await {
            Err(PipelineError::Redis(e))
                if resend == Resend::AfterDrop && is_connection_error(&e) =>
            {
                self.pipeline_once(cmds).await
            }
            r => r,
        }
    }

    async fn pipeline_once(
        &self,
        cmds: &[Cmd],
    ) -> Result<Vec<Result<Value, RedisError>>, PipelineError> {
        let link = self.usable_link().await.map_err(PipelineError::Redis)?;
        let r = run_pipeline(&link, cmds).await;
        let failed = match &r {
            Err(PipelineError::Redis(e)) => Some(e),
            Ok(results) => results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .find(|e| wants_rediscovery(e)),
            Err(PipelineError::Backend(_)) => None,
        };
        if let Some(e) = failed {
            self.observe(e, link.generation).await;
        }
        r
    }

    /// Runs `cmds` (EVALSHA calls of `script`) as one pipeline; calls that
    /// failed with NOSCRIPT are re-sent once as EVAL (see `as_eval`), and
    /// with [`Resend::AfterDrop`] the whole pipeline is sent once more when
    /// the connection dropped under it. Returns one result per call.
    pub(super) async fn eval_pipeline(
        &self,
        script: &Script,
        cmds: Vec<Cmd>,
        resend: Resend,
    ) -> BackendResult<Vec<Result<Value, RedisError>>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut results = self.pipeline(&cmds, resend).await?;
        let retry: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if is_noscript(e)))
            .map(|(i, _)| i)
            .collect();
        if !retry.is_empty() {
            let source =
                self.inner.scripts.source(script).ok_or_else(|| {
                    protocol(format!("no source for script {}", script.get_hash()))
                })?;
            let again = retry
                .iter()
                .map(|&i| as_eval(source, &cmds[i]))
                .collect::<BackendResult<Vec<Cmd>>>()?;
            let redo = self.pipeline(&again, Resend::Never).await?;
            for (i, r) in retry.into_iter().zip(redo) {
                results[i] = r;
            }
        }
        Ok(results)
    }

    pub(super) async fn eval_one(
        &self,
        script: &Script,
        cmd: Cmd,
        group: Option<(&str, &str)>,
        resend: Resend,
    ) -> BackendResult<Value> {
        self.eval_pipeline(script, vec![cmd], resend)
            .await?
            .pop()
            .ok_or_else(|| protocol("empty script reply"))?
            .map_err(|e| map_err_ctx(e, group))
    }

    /// With [`RedisConfig::min_replicas_ack`](super::RedisConfig), waits
    /// (`WAIT`) until that many replicas have this connection's writes.
    pub(super) async fn wait_replicas(&self) -> BackendResult<()> {
        let Some(ack) = self.inner.config.min_replicas_ack else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(ack.replicas).arg(ms(ack.timeout));
        let v = self.query_once(&wait).await.map_err(map_err)?;
        match super::reply::u64_of(&v) {
            Some(n) if n >= u64::from(ack.replicas) => Ok(()),
            Some(n) => Err(BackendError::Unavailable(
                format!(
                    "only {n} of {} replicas acknowledged the append within {:?}",
                    ack.replicas, ack.timeout
                )
                .into(),
            )),
            None => Err(protocol(format!("WAIT answered {v:?}"))),
        }
    }

    /// A dedicated connection to the current node (on a cluster: a
    /// cluster connection of its own, so a `BLOCK` never holds the shared
    /// connection to that node), from the idle pool or new, with the
    /// generation of the link it belongs to.
    async fn checkout_blocking(&self) -> BackendResult<(u64, Dedicated)> {
        let link = self.usable_link().await.map_err(map_err)?;
        let idle = self.inner.blocking_idle.lock().ok().and_then(|mut pool| {
            pool.retain(|(generation, _)| *generation == link.generation);
            pool.pop()
        });
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let opened = match &link.target {
            Target::Node(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.inner.config.connection_timeout))
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Node)
            }
            Target::Cluster { blocking, .. } => {
                blocking.get_async_connection().await.map(Conn::Cluster)
            }
        };
        match opened {
            Ok(conn) => Ok((link.generation, conn)),
            Err(e) => {
                self.observe(&e, link.generation).await;
                Err(map_err(e))
            }
        }
    }

    fn checkin_blocking(&self, conn: (u64, Dedicated)) {
        if conn.0 != self.link().generation {
            return; // the master moved: this connection is to the old one
        }
        if let Ok(mut pool) = self.inner.blocking_idle.lock() {
            if pool.len() < self.inner.config.blocking_pool_idle {
                pool.push(conn);
            }
        }
    }

    /// Runs a blocking command on a dedicated connection, bounded by
    /// `block + block_margin`.
    pub(super) async fn query_blocking(
        &self,
        cmd: &Cmd,
        block: Duration,
    ) -> Result<Value, BlockingError> {
        let (generation, mut conn) = self
            .checkout_blocking()
            .await
            .map_err(BlockingError::Backend)?;
        let limit = block + self.inner.config.block_margin;
        match tokio::time::timeout(limit, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(Value::ServerError(e))) => {
                let e: RedisError = e.into();
                if wants_rediscovery(&e) {
                    self.observe(&e, generation).await;
                } else {
                    self.checkin_blocking((generation, conn));
                }
                Err(BlockingError::Redis(e))
            }
            Ok(Ok(v)) => {
                self.checkin_blocking((generation, conn));
                Ok(v)
            }
            Ok(Err(e)) => {
                if wants_rediscovery(&e) {
                    self.observe(&e, generation).await;
                } else {
                    self.checkin_blocking((generation, conn));
                }
                Err(BlockingError::Redis(e))
            }
            Err(_) => Err(BlockingError::Backend(BackendError::Connection(
                format!("blocking read got no reply within {limit:?}").into(),
            ))),
        }
    }
}

pub(super) enum BlockingError {
    Backend(BackendError),
    Redis(RedisError),
}

/// Whether a command may be sent a second time when the connection dropped
/// under it (the first may or may not have run).
///
/// The shared connection only notices a server-side close (`CLIENT KILL`,
/// a restart, an idle timeout) when the next command fails on it; resending
/// an idempotent command once hides that from the caller instead of failing
/// one request per drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resend {
    /// Running it twice is the same as once (reads, `SET`, `XACK`, the
    /// apply and history scripts).
    AfterDrop,
    /// A second run would differ (`XADD`, `SET NX`, `XCLAIM`'s delivery
    /// counts): the caller decides.
    Never,
}

/// A pipeline that failed as a whole.
pub(super) enum PipelineError {
    Redis(RedisError),
    Backend(BackendError),
}

impl From<PipelineError> for BackendError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Redis(e) => map_err(e),
            PipelineError::Backend(e) => e,
        }
    }
}

/// A dedicated connection (blocking reads).
pub(super) type Dedicated = Conn<MultiplexedConnection>;

/// Runs `cmds` as one pipeline on `link`'s shared connection; one result
/// per command. On a cluster, where a pipeline may not cross slots, the
/// commands are grouped by the slot of their key into one pipeline per
/// slot (keeping their order within it: a job's or a channel's commands
/// stay in order), and the slots' pipelines go out concurrently, each to
/// its node.
async fn run_pipeline(
    link: &Link,
    cmds: &[Cmd],
) -> Result<Vec<Result<Value, RedisError>>, PipelineError> {
    if link.is_cluster() && cmds.len() > 1 {
        let mut by_slot: BTreeMap<Option<u16>, Vec<usize>> = BTreeMap::new();
        for (i, c) in cmds.iter().enumerate() {
            by_slot.entry(key_slot(c)).or_default().push(i);
        }
        if by_slot.len() > 1 {
            let groups: Vec<Vec<usize>> = by_slot.into_values().collect();
            let sent = groups.iter().map(|idx| {
                let group: Vec<Cmd> = idx.iter().map(|&i| cmds[i].clone()).collect();
                async move { one_pipeline(link, &group).await }
            });
            let replies = futures::future::join_all(sent).await;
            let mut out: Vec<Option<Result<Value, RedisError>>> = vec![None; cmds.len()];
            for (idx, reply) in groups.iter().zip(replies) {
                match reply {
                    Ok(results) => {
                        for (&i, r) in idx.iter().zip(results) {
                            out[i] = Some(r);
                        }
                    }
                    // One slot's pipeline failing as a whole fails its
                    // commands, not the other slots'.
                    Err(PipelineError::Redis(e)) => {
                        for &i in idx {
                            out[i] = Some(Err(e.clone()));
                        }
                    }
                    Err(e @ PipelineError::Backend(_)) => return Err(e),
                }
            }
            return Ok(out
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(no_reply())))
                .collect());
        }
    }
    one_pipeline(link, cmds).await
}

fn no_reply() -> RedisError {
    RedisError::from((redis::ErrorKind::Client, "a pipelined command got no reply"))
}

/// The hash slot of the key `cmd` is routed by: the first key of an
/// `EVALSHA`/`EVAL`, else the first argument after the command name (the
/// key, or the channel of a `PUBLISH`, which redis-rs routes by too).
/// `None` for a command without one.
fn key_slot(cmd: &Cmd) -> Option<u16> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        _ => None,
    });
    let name = args.next()?;
    let key = if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _script = args.next()?;
        let numkeys = std::str::from_utf8(args.next()?)
            .ok()?
            .parse::<u64>()
            .ok()?;
        if numkeys == 0 {
            return None;
        }
        args.next()?
    } else {
        args.next()?
    };
    Some(slot_of_bytes(key))
}

/// Runs `cmds` as one pipeline (on a cluster: all in one slot).
async fn one_pipeline(
    link: &Link,
    cmds: &[Cmd],
) -> Result<Vec<Result<Value, RedisError>>, PipelineError> {
    let mut pipe = Pipeline::with_capacity(cmds.len());
    pipe.ignore_errors();
    for c in cmds {
        pipe.add_command(c.clone());
    }
    let values: Vec<Value> = match pipe.query_async(&mut link.conn.clone()).await {
        Ok(values) => values,
        Err(e) if link.is_cluster() && cmds.len() > 1 && is_redirect(&e) => {
            return Ok(one_by_one(link, cmds).await);
        }
        Err(e) => return Err(PipelineError::Redis(e)),
    };
    if values.len() != cmds.len() {
        return Err(PipelineError::Backend(BackendError::Protocol(
            format!(
                "pipeline of {} commands got {} replies",
                cmds.len(),
                values.len()
            )
            .into(),
        )));
    }
    Ok(values
        .into_iter()
        .map(|v| match v {
            Value::ServerError(e) => Err(e.into()),
            v => Ok(v),
        })
        .collect())
}

/// Whether `e` redirects a command to another node (`ASK`, `MOVED`).
fn is_redirect(e: &RedisError) -> bool {
    matches!(server_code(e).as_deref(), Some("ASK" | "MOVED"))
}

/// Sends `cmds` one at a time, in order: a cluster pipeline that redis-rs
/// gave up on after redirections. redis-rs follows an `ASK` by sending
/// `ASKING` once, then the whole pipeline again: the importing node lets
/// in only its first command and answers the others `MOVED` (back to the
/// source, which answers `ASK` again), so a pipeline of two commands or
/// more on a key already migrated never succeeds while its slot is
/// moving. On its own each command gets its `ASKING`. The first command
/// may have run already (on the importing node, at each of redis-rs's
/// attempts) and runs once more: relay's pipelined commands are
/// idempotent, or plain `XADD`s whose repeats the router drops by seq.
async fn one_by_one(link: &Link, cmds: &[Cmd]) -> Vec<Result<Value, RedisError>> {
    let mut out = Vec::with_capacity(cmds.len());
    for cmd in cmds {
        out.push(
            match cmd.query_async::<Value>(&mut link.conn.clone()).await {
                Ok(Value::ServerError(e)) => Err(e.into()),
                r => r,
            },
        );
    }
    out
}

/// `cmd`, an `EVALSHA` of the script whose source is `source`, as an
/// `EVAL` carrying that source: it runs wherever the `EVALSHA` would (the
/// slot's master, or where a redirection leads), and that node caches the
/// script for the next `EVALSHA`. Not `SCRIPT LOAD` and the `EVALSHA`
/// again: on a cluster redis-rs sends `SCRIPT LOAD` to every node it
/// knows, replicas included, so one replica down, hung or still loading
/// its data fails it, and it silently skips a node it has no connection
/// to yet (whose `EVALSHA` then answers `NOSCRIPT` again).
fn as_eval(source: &str, cmd: &Cmd) -> BackendResult<Cmd> {
    let mut eval = redis::cmd("EVAL");
    eval.arg(source);
    // Past `EVALSHA <sha1>`: the key count, the keys, the arguments.
    for arg in cmd.args_iter().skip(2) {
        match arg {
            redis::Arg::Simple(bytes) => eval.arg(bytes),
            _ => return Err(protocol("a script call with a non-byte argument")),
        };
    }
    Ok(eval)
}

pub(super) fn evalsha(script: &Script, keys: &[&str]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len()).arg(keys);
    c
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_grouped_by_the_slot_of_their_key() {
        let script = Script::new("return 1");
        let eval = evalsha(&script, &["relay:{scan:3}:events", "other"]);
        assert_eq!(key_slot(&eval), Some(crate::keys::slot("scan:3")));
        let no_keys = evalsha(&script, &[]);
        assert_eq!(key_slot(&no_keys), None);
        let publish = redis::cmd("PUBLISH")
            .arg("relay:scan:{j1}:live")
            .arg("x")
            .clone();
        assert_eq!(key_slot(&publish), Some(crate::keys::slot("j1")));
        assert_eq!(key_slot(&redis::cmd("PING")), None);
    }

    #[test]
    fn a_script_call_is_resent_with_its_source() {
        let source = "return KEYS[1]";
        let script = Script::new(source);
        let mut call = evalsha(&script, &["relay:scan:{j1}:job", "relay:scan:{j1}:live"]);
        call.arg(7).arg(&b"\x00payload"[..]);
        let eval = as_eval(source, &call).expect("converts");
        let args: Vec<Vec<u8>> = eval
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => panic!("a byte argument"),
            })
            .collect();
        let want: Vec<&[u8]> = vec![
            b"EVAL",
            source.as_bytes(),
            b"2",
            b"relay:scan:{j1}:job",
            b"relay:scan:{j1}:live",
            b"7",
            b"\x00payload",
        ];
        assert_eq!(args, want);
        // Routed like the call it replaces.
        assert_eq!(key_slot(&eval), key_slot(&call));
    }
}
