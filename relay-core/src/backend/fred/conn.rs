//! Connection roles. Commands share one fred client; a blocking read
//! checks out a dedicated client (fred's blocked state is per client: a
//! `BLOCK` on the shared one would hold every command behind it);
//! subscribers open their own (see `pubsub`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, ClusterInterface, TransactionInterface};
use fred::types::config::{Config, Options};
use fred::types::{ConnectHandle, Value};

use super::cmd::Cmd;
use super::error::{
    is_connection_error, is_noscript, is_redirect_refused, map_err, map_err_ctx, protocol,
    server_code,
};
use super::scripts::Script;
use super::topology::{self, Role};
use super::FredBackend;
use crate::backend::redis::RedisConfig;
use crate::backend::BackendResult;
use crate::error::BackendError;

/// Connects `client` (its first connection, without retry) and returns
/// the task that drives it. Bounded even if fred's own connection timeout
/// does not cover every step (Sentinel: the sentinel, then the master).
pub(super) async fn start(
    client: &Client,
    connect_timeout: Duration,
) -> BackendResult<ConnectHandle> {
    let limit = connect_timeout * 2 + Duration::from_secs(1);
    match tokio::time::timeout(limit, client.init()).await {
        Ok(Ok(task)) => Ok(task),
        Ok(Err(e)) => Err(map_err(e)),
        Err(_) => {
            // The connection task stops itself after its one attempt; ask
            // it to, in case it got through meanwhile.
            let client = client.clone();
            tokio::spawn(async move {
                let _ = client.quit().await;
            });
            Err(BackendError::Connection(
                format!("no connection within {limit:?}").into(),
            ))
        }
    }
}

/// A client of its own (a blocking reader, a subscriber connection) and
/// the task driving its connection. Dropping it aborts the task, which
/// closes the connection: nothing lingers, not even a read still blocked.
pub(super) struct Dedicated {
    pub(super) client: Client,
    task: ConnectHandle,
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dedicated {
    /// Opens a dedicated client of `config`.
    pub(super) async fn open(
        config: Config,
        settings: &RedisConfig,
        subscriber: bool,
    ) -> BackendResult<Self> {
        let client = topology::client(config, settings, Role::Dedicated, subscriber)?;
        let task = start(&client, settings.connection_timeout).await?;
        Ok(Self { client, task })
    }

    /// Whether its connection is gone (it has no reconnection).
    pub(super) fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// The connection task, to wait for its end.
    pub(super) fn task(&mut self) -> &mut ConnectHandle {
        &mut self.task
    }
}

/// Whether a command may be sent a second time when the connection dropped
/// under it (the first may or may not have run). The same rules as
/// `RedisBackend`'s.
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
    Fred(Error),
    Backend(BackendError),
}

impl From<PipelineError> for BackendError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Fred(e) => map_err(e),
            PipelineError::Backend(e) => e,
        }
    }
}

/// A blocking read that failed.
pub(super) enum BlockingError {
    Backend(BackendError),
    Fred(Error),
}

/// One result per pipelined command.
pub(super) type Replies = Vec<Result<Value, Error>>;

impl FredBackend {
    fn clustered(&self) -> bool {
        self.inner.topology.is_cluster()
    }

    /// Runs one command; an idempotent one ([`Resend::AfterDrop`]) is sent
    /// once more when the connection dropped under it.
    pub(super) async fn query(&self, cmd: &Cmd, resend: Resend) -> Result<Value, Error> {
        match self.query_once(cmd).await {
            Err(e) if resend == Resend::AfterDrop && is_connection_error(&e) => {
                self.query_once(cmd).await
            }
            r => r,
        }
    }

    /// Runs one command; one that fred gave up at a redirection goes again
    /// on its own in a `MULTI`/`EXEC` (see [`transacted`]).
    pub(super) async fn query_once(&self, cmd: &Cmd) -> Result<Value, Error> {
        let shared = &self.inner.shared;
        match shared
            .custom::<Value, Value>(cmd.custom(), cmd.args.clone())
            .await
        {
            Err(e) if self.clustered() && is_redirect_refused(&e) => transacted(shared, cmd).await,
            r => r,
        }
    }

    /// Runs `cmds` as one pipeline (on a cluster one per key slot, see
    /// [`Self::run_pipeline`]); sent once more when the connection dropped
    /// under it and `resend` allows.
    pub(super) async fn pipeline(
        &self,
        cmds: &[Cmd],
        resend: Resend,
    ) -> Result<Replies, PipelineError> {
        match self.run_pipeline(cmds).await {
            Err(PipelineError::Fred(e))
                if resend == Resend::AfterDrop && is_connection_error(&e) =>
            {
                self.run_pipeline(cmds).await
            }
            r => r,
        }
    }

    /// On a cluster a pipeline stays within one slot, as RedisBackend's:
    /// the commands are grouped by the slot of their key into one pipeline
    /// per slot (keeping their order within it: a job's or a channel's
    /// commands stay in order), and the slots' pipelines go out
    /// concurrently. One slot's pipeline failing as a whole fails its
    /// commands, not the other slots'.
    async fn run_pipeline(&self, cmds: &[Cmd]) -> Result<Replies, PipelineError> {
        if self.clustered() && cmds.len() > 1 {
            let mut by_slot: BTreeMap<Option<u16>, Vec<usize>> = BTreeMap::new();
            for (i, c) in cmds.iter().enumerate() {
                by_slot.entry(c.slot).or_default().push(i);
            }
            if by_slot.len() > 1 {
                let groups: Vec<Vec<usize>> = by_slot.into_values().collect();
                let sent = groups.iter().map(|idx| {
                    let group: Vec<Cmd> = idx.iter().map(|&i| cmds[i].clone()).collect();
                    async move { self.one_pipeline(&group).await }
                });
                let replies = futures::future::join_all(sent).await;
                let mut out: Vec<Option<Result<Value, Error>>> = vec![None; cmds.len()];
                for (idx, reply) in groups.iter().zip(replies) {
                    match reply {
                        Ok(results) => {
                            for (&i, r) in idx.iter().zip(results) {
                                out[i] = Some(r);
                            }
                        }
                        Err(PipelineError::Fred(e)) => {
                            for &i in idx {
                                out[i] = Some(Err(e.clone()));
                            }
                        }
                        Err(e @ PipelineError::Backend(_)) => return Err(e),
                    }
                }
                return Ok(out
                    .into_iter()
                    .map(|r| {
                        r.unwrap_or_else(|| {
                            Err(Error::new(
                                fred::error::ErrorKind::Protocol,
                                "a pipelined command got no reply",
                            ))
                        })
                    })
                    .collect());
            }
        }
        self.one_pipeline(cmds).await
    }

    /// Runs `cmds` as one fred pipeline (on a cluster: all in one slot).
    async fn one_pipeline(&self, cmds: &[Cmd]) -> Result<Replies, PipelineError> {
        let pipe = self.inner.shared.pipeline();
        for c in cmds {
            // Queues the command; fails only if it cannot be queued.
            let _: Value = pipe
                .custom(c.custom(), c.args.clone())
                .await
                .map_err(PipelineError::Fred)?;
        }
        let mut results = pipe.try_all::<Value>().await;
        if self.clustered()
            && results
                .iter()
                .any(|r| matches!(r, Err(e) if is_redirect_refused(e)))
        {
            // fred fails the whole pipeline with the first refused
            // redirection; the slot is moving or has moved.
            return Ok(self.one_by_one(cmds).await);
        }
        if results.len() == cmds.len() {
            // A lost connection fails the whole pipeline: fred then reports
            // one error for all of it.
            if results.len() == 1 && matches!(&results[0], Err(e) if is_connection_error(e)) {
                if let Some(Err(e)) = results.pop() {
                    return Err(PipelineError::Fred(e));
                }
            }
            return Ok(results);
        }
        match results.pop() {
            Some(Err(e)) if results.is_empty() => Err(PipelineError::Fred(e)),
            _ => Err(PipelineError::Backend(protocol(format!(
                "pipeline of {} commands got {} replies",
                cmds.len(),
                results.len() + 1
            )))),
        }
    }

    /// Sends `cmds` one at a time, in order, each in a `MULTI`/`EXEC` of
    /// its own (see [`transacted`]): a cluster pipeline of one slot that
    /// fred gave up at a redirection. As in `RedisBackend`, whose pipelines
    /// the importing node lets in only their first command after one
    /// `ASKING`, each command goes on its own. Commands of the pipeline
    /// that had run already (fred reports only the first redirection, and
    /// wrote the rest of the pipeline meanwhile; in one slot they may name
    /// keys not moved yet) run once more: relay's pipelined commands are
    /// idempotent, or plain `XADD`s whose repeats the router drops by seq.
    async fn one_by_one(&self, cmds: &[Cmd]) -> Replies {
        let mut out = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            out.push(transacted(&self.inner.shared, cmd).await);
        }
        out
    }

    /// Runs `cmds` (EVALSHA calls of `script`) as one pipeline; calls that
    /// failed with NOSCRIPT are sent once more as `EVAL`, and with [`Resend::AfterDrop`] the whole
    /// pipeline is sent once more when the connection dropped under it.
    pub(super) async fn eval_pipeline(
        &self,
        script: &Script,
        cmds: Vec<Cmd>,
        resend: Resend,
    ) -> BackendResult<Replies> {
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
            // Sent again as EVAL (which also caches the script on the node
            // that runs it), as RedisBackend does.
            let again: Vec<Cmd> = retry
                .iter()
                .map(|&i| cmds[i].as_eval(script.text))
                .collect();
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

    /// With [`RedisConfig::min_replicas_ack`], waits (`WAIT`) until that
    /// many replicas have the shared client's writes: on one server on its
    /// connection; on a cluster on its connection to every master (the
    /// fewest acknowledgements count), as redis-rs routes `WAIT`.
    pub(super) async fn wait_replicas(&self) -> BackendResult<()> {
        let Some(ack) = self.inner.config.min_replicas_ack else {
            return Ok(());
        };
        let mut wait = Cmd::new("WAIT");
        wait.arg(ack.replicas).arg(ms(ack.timeout));
        let acked = if self.clustered() {
            let mut fewest = None::<u64>;
            for r in self.on_every_master(&wait).await? {
                let v = super::reply::to_redis_value(r.map_err(map_err)?);
                let n = super::reply::u64_of(&v)
                    .ok_or_else(|| protocol(format!("WAIT answered {v:?}")))?;
                fewest = Some(fewest.map_or(n, |f| f.min(n)));
            }
            fewest.unwrap_or(0)
        } else {
            let v = super::reply::to_redis_value(self.query_once(&wait).await.map_err(map_err)?);
            super::reply::u64_of(&v).ok_or_else(|| protocol(format!("WAIT answered {v:?}")))?
        };
        if acked >= u64::from(ack.replicas) {
            Ok(())
        } else {
            Err(BackendError::Unavailable(
                format!(
                    "only {acked} of {} replicas acknowledged the write within {:?}",
                    ack.replicas, ack.timeout
                )
                .into(),
            ))
        }
    }

    /// Runs `cmd` on the shared client's connection to every master of the
    /// cluster (from fred's slot map), concurrently.
    async fn on_every_master(&self, cmd: &Cmd) -> BackendResult<Replies> {
        let shared = &self.inner.shared;
        let masters = shared
            .cached_cluster_state()
            .map(|s| s.unique_primary_nodes())
            .unwrap_or_default();
        if masters.is_empty() {
            return Err(BackendError::Unavailable("no cluster slot map yet".into()));
        }
        let sent = masters.into_iter().map(|node| async move {
            shared
                .with_cluster_node(node)
                .custom::<Value, Value>(cmd.custom(), cmd.args.clone())
                .await
        });
        Ok(futures::future::join_all(sent).await)
    }

    /// A dedicated client (on a cluster, a cluster client of its own), from
    /// the idle pool or new.
    async fn checkout_blocking(&self) -> BackendResult<Dedicated> {
        let idle = self.inner.blocking_idle.lock().ok().and_then(|mut pool| {
            pool.retain(|d| !d.ended());
            pool.pop()
        });
        if let Some(d) = idle {
            return Ok(d);
        }
        let config = topology::config_of(&self.inner.topology)?;
        Dedicated::open(config, &self.inner.config, false).await
    }

    fn checkin_blocking(&self, d: Dedicated) {
        if d.ended() {
            return;
        }
        if let Ok(mut pool) = self.inner.blocking_idle.lock() {
            if pool.len() < self.inner.config.blocking_pool_idle {
                pool.push(d);
            }
        }
    }

    /// Runs a blocking command on a dedicated client, bounded by `block +
    /// block_margin`. A client whose read failed on the connection, or did
    /// not answer in time, is closed.
    pub(super) async fn query_blocking(
        &self,
        cmd: &Cmd,
        block: Duration,
    ) -> Result<Value, BlockingError> {
        let d = self
            .checkout_blocking()
            .await
            .map_err(BlockingError::Backend)?;
        let limit = block + self.inner.config.block_margin;
        let until = Instant::now() + block;
        let read = async {
            match d
                .client
                .custom::<Value, Value>(cmd.custom(), cmd.args.clone())
                .await
            {
                Err(e) if self.clustered() && is_redirect_refused(&e) => {
                    poll_transacted(&d.client, cmd, until).await
                }
                r => r,
            }
        };
        match tokio::time::timeout(limit, read).await {
            Ok(Ok(v)) => {
                self.checkin_blocking(d);
                Ok(v)
            }
            Ok(Err(e)) => {
                // A plain server error leaves the connection usable; a
                // demoted master's (READONLY/MASTERDOWN) does not.
                if !is_connection_error(&e)
                    && !matches!(server_code(&e), Some("READONLY" | "MASTERDOWN") | None)
                {
                    self.checkin_blocking(d);
                }
                Err(BlockingError::Fred(e))
            }
            Err(_) => Err(BlockingError::Backend(BackendError::Connection(
                format!("blocking read got no reply within {limit:?}").into(),
            ))),
        }
    }
}

/// Redirections a `MULTI`/`EXEC` may follow (fred's default allowance):
/// an `ASK` to the importing node, a `MOVED` if the slot's move completes
/// meanwhile, and a few more.
const TRANSACTION_REDIRECTIONS: u32 = 5;

/// The options of every command queued in a transaction: the clients
/// allow plain commands no redirection (see `topology::client`), and
/// fred takes a transaction's allowance from its commands.
pub(super) fn in_transaction() -> Options {
    Options {
        max_redirections: Some(TRANSACTION_REDIRECTIONS),
        ..Options::default()
    }
}

/// How often [`poll_transacted`] reads again.
const POLL: Duration = Duration::from_millis(50);

/// Runs `cmd` alone in a `MULTI`/`EXEC` on the cluster client `client`:
/// what follows a redirection fred refused to (see
/// `topology::client`). fred sends a transaction with nothing else in
/// flight, to the slot's owner, and follows an `ASK` with `ASKING` and the
/// whole transaction on the importing node (`ASKING` holds until `EXEC`),
/// a `MOVED` after refreshing its slot map. A command that blocks does not
/// in a transaction: it answers at once.
async fn transacted(client: &Client, cmd: &Cmd) -> Result<Value, Error> {
    let mut custom = cmd.custom();
    custom.blocking = false;
    let tx = client.multi();
    let _: Value = tx
        .with_options(&in_transaction())
        .custom(custom, cmd.args.clone())
        .await?;
    // EXEC answers an array of one reply, or the command's error.
    match tx.exec::<Value>(false).await? {
        Value::Array(mut replies) if replies.len() == 1 => Ok(replies.remove(0)),
        other => Err(Error::new(
            ErrorKind::Protocol,
            format!("EXEC of one command answered {other:?}"),
        )),
    }
}

/// A blocking read that fred refused to follow to another node: read in a
/// `MULTI`/`EXEC` (see [`transacted`]), where it does not block, again
/// every [`POLL`] until it returns entries or `until`. Only while its
/// slot moves.
async fn poll_transacted(client: &Client, cmd: &Cmd, until: Instant) -> Result<Value, Error> {
    loop {
        let v = transacted(client, cmd).await?;
        if !matches!(v, Value::Null) || Instant::now() + POLL >= until {
            return Ok(v);
        }
        tokio::time::sleep(POLL).await;
    }
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
