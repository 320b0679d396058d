//! Connection roles. Commands share one auto-reconnecting multiplexed
//! connection; a blocking read checks out a dedicated connection (a `BLOCK`
//! would stall every command queued behind it on a shared one); pub/sub
//! subscribers open their own (see `pubsub`). Keeping the roles apart is
//! what lets a cluster topology give each its own per-node connections.

use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, Script, Value};

use super::error::{is_connection_error, is_noscript, map_err, map_err_ctx, protocol};
use super::RedisBackend;
use crate::backend::BackendResult;
use crate::error::BackendError;

impl RedisBackend {
    pub(super) fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

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
        let v: Value = cmd.query_async(&mut self.conn()).await?;
        match v {
            Value::ServerError(e) => Err(e.into()),
            v => Ok(v),
        }
    }

    /// Runs `cmds` (EVALSHA calls of `script`) as one pipeline; calls that
    /// failed with NOSCRIPT are re-sent once after loading the script, and
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
        let mut conn = self.conn();
        let mut results = run_pipeline_resend(&mut conn, &cmds, resend).await?;
        let retry: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if is_noscript(e)))
            .map(|(i, _)| i)
            .collect();
        if !retry.is_empty() {
            script.load_async(&mut conn).await.map_err(map_err)?;
            let again: Vec<Cmd> = retry.iter().map(|&i| cmds[i].clone()).collect();
            let redo = run_pipeline(&mut conn, &again).await?;
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

    pub(super) async fn checkout_blocking(&self) -> BackendResult<MultiplexedConnection> {
        let idle = self
            .inner
            .blocking_idle
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop());
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.config.connection_timeout))
            .set_response_timeout(None);
        self.inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(map_err)
    }

    pub(super) fn checkin_blocking(&self, conn: MultiplexedConnection) {
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
        let mut conn = self
            .checkout_blocking()
            .await
            .map_err(BlockingError::Backend)?;
        let limit = block + self.inner.config.block_margin;
        match tokio::time::timeout(limit, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(Value::ServerError(e))) => {
                self.checkin_blocking(conn);
                Err(BlockingError::Redis(e.into()))
            }
            Ok(Ok(v)) => {
                self.checkin_blocking(conn);
                Ok(v)
            }
            Ok(Err(e)) => {
                if !is_connection_error(&e) {
                    self.checkin_blocking(conn);
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

/// [`run_pipeline`], sent once more when the connection dropped under it
/// and `resend` allows.
pub(super) async fn run_pipeline_resend(
    conn: &mut ConnectionManager,
    cmds: &[Cmd],
    resend: Resend,
) -> Result<Vec<Result<Value, RedisError>>, PipelineError> {
    match run_pipeline(conn, cmds).await {
        Err(PipelineError::Redis(e)) if resend == Resend::AfterDrop && is_connection_error(&e) => {
            run_pipeline(conn, cmds).await
        }
        r => r,
    }
}

pub(super) async fn run_pipeline(
    conn: &mut ConnectionManager,
    cmds: &[Cmd],
) -> Result<Vec<Result<Value, RedisError>>, PipelineError> {
    let mut pipe = Pipeline::with_capacity(cmds.len());
    pipe.ignore_errors();
    for c in cmds {
        pipe.add_command(c.clone());
    }
    let values: Vec<Value> = pipe.query_async(conn).await.map_err(PipelineError::Redis)?;
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

pub(super) fn evalsha(script: &Script, keys: &[&str]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len()).arg(keys);
    c
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
