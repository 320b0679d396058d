//! [`RedisBackend`]: the production backend, on redis-rs.
//!
//! ## Connections
//! - One auto-reconnecting multiplexed connection ([`ConnectionManager`]) for
//!   every non-blocking command. Commands from all tasks are pipelined over it.
//! - Blocking reads ([`ReadFrom::New`] with a `block`) never run on the shared
//!   connection: a `BLOCK` would stall every command queued behind it. Each
//!   blocking call checks a dedicated connection out of a small idle pool (or
//!   opens one) and returns it afterwards. Such a connection has no redis-rs
//!   response timeout; the call is bounded instead by `block + block_margin`,
//!   so the client-side timeout is never shorter than the server-side `BLOCK`
//!   (the old Python system's socket timeout was, and lost reads). A
//!   connection that failed or timed out is dropped, never reused.
//! - [`Backend::subscriber`] opens a dedicated pub/sub connection per call.
//!
//! ## Scripts
//! The multi-step operations (apply, read history, get state, deduplicated
//! append, claim) are Lua scripts sent with `EVALSHA`; batches go out as one
//! pipeline. When the server answers `NOSCRIPT` (restart, `SCRIPT FLUSH`) the
//! script is loaded and only the failed calls are sent again.
//!
//! Seqs are compared exactly inside Lua (as decimal strings: by length, then
//! lexicographically), so the full `u64` range is safe. Offsets are Lua
//! numbers and stay exact up to 2^53.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisError, Script, Value};
use tokio::sync::mpsc;

use super::{
    dead_letter_fields, AckRequest, AppendOutcome, AppendRequest, Applied, ApplyJob, ApplyOptions,
    ApplyResult, Backend, BackendResult, ClaimResult, ConsumerStats, DeadLetter, Delivered,
    GroupStats, HistoryPage, JobState, PubSubMessage, ReadFrom, StreamEntry, StreamId, Subscriber,
    SubscriberHandle,
};
use crate::codec::{Fields, Payload, Record};
use crate::error::BackendError;
use crate::event::{Epoch, Offset};
use crate::keys::JobKeys;

/// Capacity of a subscriber's message channel.
pub const SUBSCRIBER_CAPACITY: usize = 65_536;

/// How long the subscriber task waits for room in a full message channel
/// before it gives up and closes the subscription (the owner then reconnects
/// and treats messages as missed, instead of memory growing without bound).
const SUBSCRIBER_FULL_GRACE: Duration = Duration::from_secs(5);

/// Connection settings of a [`RedisBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// Response timeout of the shared (non-blocking) connection. Never used
    /// for blocking reads.
    pub response_timeout: Duration,
    /// Timeout of each connection attempt.
    pub connection_timeout: Duration,
    /// Extra time a blocking read may take beyond its `BLOCK` before the
    /// client gives up on the connection.
    pub block_margin: Duration,
    /// Idle dedicated connections kept for blocking reads.
    pub blocking_pool_idle: usize,
    /// Reconnect attempts of the shared connection before a command fails.
    pub reconnect_retries: usize,
    /// Redis Cluster: apply each job in its own script call (a job's keys
    /// share its `{job_id}` slot; different jobs' keys do not). On a single
    /// server one call applies the whole batch, which is much cheaper.
    pub cluster: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            block_margin: Duration::from_secs(5),
            blocking_pool_idle: 16,
            reconnect_retries: 4,
            cluster: false,
        }
    }
}

/// The apply script; see the module docs of [`crate::backend`] and the job
/// hash layout in [`JobKeys`].
///
/// Applies any number of jobs in one call (one call per job on a cluster,
/// where a job's keys share a slot but different jobs' keys do not).
/// KEYS: per job the hash, the eco2 state string ('' key name when none:
/// then it is not touched) and the live channel name; then, when acking,
/// the shard stream.
/// ARGV: history_max, ttl_ms (hash), state_ttl_ms (eco2 string), publish
/// (0/1), now_ms, ttl refresh interval ms, number of entries to ack `k`,
/// then (when `k > 0`) the group and `k` entry ids, then per job: epoch
/// candidate, extra channel ('' = none), n, and n pairs (seq, payload).
/// Returns per job `{epoch, off1, new1, off2, new2, ...}`. The XACK comes
/// after every job's writes: a script that fails half-way acks nothing, so
/// the entries are re-read and re-applied (a no-op for what was applied).
/// The PUBLISHes come last of all, so only committed offsets go live.
///
/// Per job the script makes one HMGET (meta and the dedupe entries of all
/// its events), one HSET (offsets, history, state, top) and one PUBLISH per
/// event: Redis CPU per event is dominated by the number of calls.
const APPLY_LUA: &str = r#"
local function seq_gt(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local hist_max = tonumber(ARGV[1])
local ttl, state_ttl = ARGV[2], ARGV[3]
local publish = ARGV[4] == '1'
local now = tonumber(ARGV[5])
local refresh_every = tonumber(ARGV[6])
local n_ack = tonumber(ARGV[7])
local a = 8
local ack_from = a + 1
if n_ack > 0 then a = a + 1 + n_ack end
local out = {}
-- Live messages wait until every write of the call is done: a server that
-- refuses writes (OOM under noeviction, NOREPLICAS) still accepts PUBLISH,
-- and a message for an offset that was never committed would later name
-- another event. Once the first write succeeded Redis lets the script
-- finish, so nothing is published unless everything was committed.
local pubs = {}
for j = 0, math.floor(#KEYS / 3) - 1 do
  local job, state, live = KEYS[j * 3 + 1], KEYS[j * 3 + 2], KEYS[j * 3 + 3]
  local cand, extra, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local fields = {'epoch', 'top', 'hf', 'sq', 'rx'}
  for k = 0, n - 1 do fields[6 + k] = 's' .. ARGV[a + 2 * k] end
  local m = redis.call('HMGET', job, unpack(fields))
  local epoch, top, hf, sq, rx = m[1], tonumber(m[2]) or 0, tonumber(m[3]) or 1, m[4], tonumber(m[5]) or 0
  local set = {}
  if not epoch then
    epoch = cand
    set[#set + 1] = 'epoch'
    set[#set + 1] = epoch
    set[#set + 1] = 'hf'
    set[#set + 1] = '1'
  end
  local res = {epoch}
  local seen = {}
  local pushed = 0
  local best_seq, best_payload, best_off = nil, nil, nil
  for k = 1, n do
    local seq, payload = ARGV[a], ARGV[a + 1]
    a = a + 2
    local off = m[5 + k] or seen[seq]
    local new = 0
    if not off then
      top = top + 1
      off = string.format('%d', top)
      seen[seq] = off
      set[#set + 1] = 's' .. seq
      set[#set + 1] = off
      set[#set + 1] = 'h' .. off
      set[#set + 1] = payload
      new = 1
      pushed = pushed + 1
      if (not sq or seq_gt(seq, sq)) and (not best_seq or seq_gt(seq, best_seq)) then
        best_seq, best_payload, best_off = seq, payload, off
      end
    end
    res[#res + 1] = off
    res[#res + 1] = new
    if publish then
      pubs[#pubs + 1] = live
      pubs[#pubs + 1] = epoch .. ':' .. off .. ':' .. payload
      if extra ~= '' then
        pubs[#pubs + 1] = extra
        pubs[#pubs + 1] = payload
      end
    end
  end
  if pushed > 0 then
    set[#set + 1] = 'top'
    set[#set + 1] = string.format('%d', top)
    if top - hf + 1 > hist_max then
      local new_hf = top - hist_max + 1
      local drop = {}
      for o = hf, new_hf - 1 do drop[#drop + 1] = 'h' .. string.format('%d', o) end
      for s = 1, #drop, 1000 do
        redis.call('HDEL', job, unpack(drop, s, math.min(s + 999, #drop)))
      end
      set[#set + 1] = 'hf'
      set[#set + 1] = string.format('%d', new_hf)
    end
  end
  if best_seq then
    set[#set + 1] = 'sq'
    set[#set + 1] = best_seq
    set[#set + 1] = 'so'
    set[#set + 1] = best_off
    set[#set + 1] = 'st'
    set[#set + 1] = best_payload
    if state ~= '' then redis.call('SET', state, best_payload, 'PX', state_ttl) end
  end
  -- TTLs are refreshed when due, not on every event: a refresh is another
  -- call, and the bound only needs to hold to within refresh_every.
  local refresh = now - rx >= refresh_every
  if refresh then
    set[#set + 1] = 'rx'
    set[#set + 1] = string.format('%d', now)
  end
  if #set > 0 then redis.call('HSET', job, unpack(set)) end
  if refresh then
    redis.call('PEXPIRE', job, ttl)
    if state ~= '' and not best_seq then redis.call('PEXPIRE', state, state_ttl) end
  end
  out[#out + 1] = res
end
if n_ack > 0 then
  redis.call('XACK', KEYS[#KEYS], ARGV[ack_from - 1], unpack(ARGV, ack_from, ack_from + n_ack - 1))
end
for i = 1, #pubs, 2 do redis.call('PUBLISH', pubs[i], pubs[i + 1]) end
return out
"#;

/// How often the apply script refreshes a busy job's TTLs: every 1/16 of the
/// shortest TTL, so a key lives at least 15/16 of its TTL after its last
/// update, for one extra call per refresh instead of per event.
fn ttl_refresh_ms(shortest_ttl_ms: u64) -> u64 {
    shortest_ttl_ms / 16
}

/// Largest offset passed into a script: Lua numbers are exact integers
/// only up to 2^53, and a job never holds 2^52 events.
const MAX_SCRIPT_OFFSET: u64 = 1 << 52;

/// KEYS: job hash. ARGV: after, limit.
/// Returns `{epoch|nil, top, first|nil, start, payloads}`: the payloads have
/// offsets `start, start + 1, ...`.
const READ_HISTORY_LUA: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'epoch', 'top', 'hf')
if not m[1] then return {false, false, false, 0, {}} end
local top = tonumber(m[2]) or 0
local first = tonumber(m[3]) or 1
if top < first then return {m[1], m[2], false, 0, {}} end
local start = tonumber(ARGV[1]) + 1
if start < first then start = first end
local last = math.min(top, start + tonumber(ARGV[2]) - 1)
local entries = {}
if last >= start then
  local names = {}
  for o = start, last do names[#names + 1] = 'h' .. string.format('%d', o) end
  entries = redis.call('HMGET', KEYS[1], unpack(names))
end
return {m[1], m[2], string.format('%d', first), string.format('%d', start), entries}
"#;

/// KEYS: job hash. Returns `{epoch, top, sq, so, st}` (nil when absent).
const GET_STATE_LUA: &str = r#"
return redis.call('HMGET', KEYS[1], 'epoch', 'top', 'sq', 'so', 'st')
"#;

/// Idempotent appends, any number per call.
/// KEYS: per request its marker and stream.
/// ARGV: per request ttl_ms, maxlen ('' = none), 2 × field count, fields...
/// Returns per request `{id, duplicate}`.
const APPEND_DEDUPE_LUA: &str = r#"
local out = {}
local a = 1
for i = 1, #KEYS, 2 do
  local marker, stream = KEYS[i], KEYS[i + 1]
  local ttl, maxlen = ARGV[a], ARGV[a + 1]
  local first = a + 3
  local last = a + 2 + tonumber(ARGV[a + 2])
  a = last + 1
  local old = redis.call('GET', marker)
  if old then
    out[#out + 1] = {old, 1}
  else
    local id
    if maxlen ~= '' then
      id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, first, last))
    else
      id = redis.call('XADD', stream, '*', unpack(ARGV, first, last))
    end
    redis.call('SET', marker, id, 'PX', ttl)
    out[#out + 1] = {id, 0}
  end
end
return out
"#;

/// KEYS: stream. ARGV: group, consumer, min_idle_ms, count.
/// Returns `{{{id, deliveries, fields}...}, {deleted id...}}`.
const CLAIM_LUA: &str = r#"
local pend = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
if #pend == 0 then return {{}, {}} end
local ids, counts = {}, {}
for i, p in ipairs(pend) do
  ids[i] = p[1]
  counts[p[1]] = tonumber(p[4]) or 0
end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))
local got, out = {}, {}
for _, e in ipairs(claimed) do
  if type(e) == 'table' and e[1] and type(e[2]) == 'table' then
    got[e[1]] = true
    out[#out + 1] = {e[1], (counts[e[1]] or 0) + 1, e[2]}
  end
end
local deleted = {}
for _, id in ipairs(ids) do
  if not got[id] then deleted[#deleted + 1] = id end
end
if #deleted > 0 then redis.call('XACK', KEYS[1], ARGV[1], unpack(deleted)) end
return {out, deleted}
"#;

struct Scripts {
    apply: Script,
    read_history: Script,
    get_state: Script,
    append_dedupe: Script,
    claim: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            apply: Script::new(APPLY_LUA),
            read_history: Script::new(READ_HISTORY_LUA),
            get_state: Script::new(GET_STATE_LUA),
            append_dedupe: Script::new(APPEND_DEDUPE_LUA),
            claim: Script::new(CLAIM_LUA),
        }
    }
}

struct Inner {
    client: Client,
    conn: ConnectionManager,
    config: RedisConfig,
    blocking_idle: Mutex<Vec<MultiplexedConnection>>,
    scripts: Scripts,
}

/// The redis-rs backend. Cheap to clone (all clones share connections).
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// The apply script over `jobs` (one call on a single server, one per
    /// job on a cluster), acking `ack` in the same call when given (single
    /// server only).
    async fn apply_scripted(
        &self,
        jobs: &[ApplyJob],
        opts: &ApplyOptions,
        ack: Option<AckRequest<'_>>,
    ) -> BackendResult<Vec<ApplyResult>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let script = &self.inner.scripts.apply;
        let history_ttl = ms(opts.history_ttl);
        let state_ttl = ms(opts.state_ttl);
        let job_ttl = history_ttl.max(state_ttl);
        let call = |jobs: &[ApplyJob], ack: Option<AckRequest<'_>>| {
            let mut c = redis::cmd("EVALSHA");
            c.arg(script.get_hash())
                .arg(jobs.len() * 3 + usize::from(ack.is_some()));
            for job in jobs {
                let k = &job.keys;
                c.arg(&k.meta)
                    .arg(k.state.as_deref().unwrap_or(""))
                    .arg(&k.live);
            }
            if let Some(ack) = &ack {
                c.arg(ack.stream);
            }
            c.arg(opts.history_max)
                .arg(job_ttl)
                .arg(state_ttl)
                .arg(if opts.publish { "1" } else { "0" })
                .arg(crate::event::now_ms())
                .arg(ttl_refresh_ms(history_ttl.min(state_ttl)));
            match &ack {
                Some(ack) => {
                    c.arg(ack.ids.len()).arg(ack.group);
                    for id in ack.ids {
                        c.arg(id.to_string());
                    }
                }
                None => {
                    c.arg(0);
                }
            }
            for job in jobs {
                c.arg(job.epoch.0)
                    .arg(job.extra_channel.as_deref().unwrap_or(""))
                    .arg(job.events.len());
                for e in &job.events {
                    c.arg(e.seq).arg(&e.payload.0[..]);
                }
            }
            c
        };
        // One call for the whole batch on a single server; on a cluster one
        // call per job (its keys share the `{job_id}` slot), pipelined.
        let cmds: Vec<Cmd> = if self.inner.config.cluster {
            jobs.chunks(1).map(|one| call(one, None)).collect()
        } else {
            vec![call(jobs, ack)]
        };
        let replies = self.eval_pipeline(script, cmds, Resend::AfterDrop).await?;
        let mut per_job = Vec::with_capacity(jobs.len());
        for r in replies {
            let v = r.map_err(map_err)?;
            per_job.extend(array(&v, "apply reply")?.iter().cloned());
        }
        if per_job.len() != jobs.len() {
            return Err(protocol(format!(
                "apply reply covers {} of {} jobs",
                per_job.len(),
                jobs.len()
            )));
        }
        jobs.iter()
            .zip(per_job)
            .map(|(job, r)| parse_apply(&r, job.events.len()))
            .collect()
    }
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`) with the
    /// default [`RedisConfig`].
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        Self::connect_with(url, RedisConfig::default()).await
    }

    /// Connects with explicit settings.
    pub async fn connect_with(url: &str, config: RedisConfig) -> Result<Self, BackendError> {
        let client = Client::open(url)
            .map_err(|e| BackendError::Connection(format!("invalid redis url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connection_timeout))
            .set_number_of_retries(config.reconnect_retries)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(map_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                config,
                blocking_idle: Mutex::new(Vec::new()),
                scripts: Scripts::new(),
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The underlying redis-rs client (for extra connections).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Runs one command; an idempotent one ([`Resend::AfterDrop`]) is sent
    /// once more when the connection dropped under it.
    async fn query(&self, cmd: &Cmd, resend: Resend) -> Result<Value, RedisError> {
        match self.query_once(cmd).await {
            Err(e) if resend == Resend::AfterDrop && is_connection_error(&e) => {
                self.query_once(cmd).await
            }
            r => r,
        }
    }

    async fn query_once(&self, cmd: &Cmd) -> Result<Value, RedisError> {
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
    async fn eval_pipeline(
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

    async fn eval_one(
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

    async fn checkout_blocking(&self) -> BackendResult<MultiplexedConnection> {
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

    fn checkin_blocking(&self, conn: MultiplexedConnection) {
        if let Ok(mut pool) = self.inner.blocking_idle.lock() {
            if pool.len() < self.inner.config.blocking_pool_idle {
                pool.push(conn);
            }
        }
    }

    /// Runs a blocking command on a dedicated connection, bounded by
    /// `block + block_margin`.
    async fn query_blocking(&self, cmd: &Cmd, block: Duration) -> Result<Value, BlockingError> {
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
            Err(_) => Err(BlockingError::Backend(BackendError::Connection(format!(
                "blocking read got no reply within {limit:?}"
            )))),
        }
    }
}

enum BlockingError {
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
enum Resend {
    /// Running it twice is the same as once (reads, `SET`, `XACK`, the
    /// apply and history scripts).
    AfterDrop,
    /// A second run would differ (`XADD`, `SET NX`, `XCLAIM`'s delivery
    /// counts): the caller decides.
    Never,
}

/// A pipeline that failed as a whole.
enum PipelineError {
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
async fn run_pipeline_resend(
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

async fn run_pipeline(
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
        return Err(PipelineError::Backend(BackendError::Protocol(format!(
            "pipeline of {} commands got {} replies",
            cmds.len(),
            values.len()
        ))));
    }
    Ok(values
        .into_iter()
        .map(|v| match v {
            Value::ServerError(e) => Err(e.into()),
            v => Ok(v),
        })
        .collect())
}

fn evalsha(script: &Script, keys: &[&str]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len()).arg(keys);
    c
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

// ---------------------------------------------------------------------------
// Errors

fn server_code(e: &RedisError) -> Option<String> {
    if let Some(code) = e.code() {
        return Some(code.to_owned());
    }
    e.clone()
        .into_server_errors()
        .and_then(|errs| errs.first().map(|(_, se)| se.code().to_owned()))
}

fn is_noscript(e: &RedisError) -> bool {
    server_code(e).as_deref() == Some("NOSCRIPT")
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

fn map_err(e: RedisError) -> BackendError {
    map_err_ctx(e, None)
}

fn map_group_err(e: RedisError, stream: &str, group: &str) -> BackendError {
    map_err_ctx(e, Some((stream, group)))
}

fn map_err_ctx(e: RedisError, group: Option<(&str, &str)>) -> BackendError {
    if let Some(code) = server_code(&e) {
        return match code.as_str() {
            "NOGROUP" => match group {
                Some((stream, group)) => BackendError::NoGroup {
                    stream: stream.to_owned(),
                    group: group.to_owned(),
                },
                None => BackendError::Server(e.to_string()),
            },
            // The server is up but refuses for now: (re)starting, failing
            // over, busy, out of memory under `noeviction`, short of
            // replicas, or unable to persist. Retry later; never a reason to
            // dead-letter the event being written.
            "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "BUSY" | "OOM"
            | "NOREPLICAS" | "MISCONF" => BackendError::Unavailable(e.to_string()),
            _ => BackendError::Server(e.to_string()),
        };
    }
    if is_connection_error(&e) {
        return BackendError::Connection(e.to_string());
    }
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendError::Protocol(e.to_string()),
        ErrorKind::Io => BackendError::Connection(e.to_string()),
        _ => BackendError::Server(e.to_string()),
    }
}

fn protocol(what: impl Into<String>) -> BackendError {
    BackendError::Protocol(what.into())
}

// ---------------------------------------------------------------------------
// Reply parsing (never panics on reply data)

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

fn str_of(v: &Value) -> Option<&str> {
    bytes_of(v).and_then(|b| std::str::from_utf8(b).ok())
}

fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Double(d) if *d >= 0.0 && d.fract() == 0.0 => Some(*d as u64),
        other => str_of(other).and_then(|s| s.parse().ok()),
    }
}

fn opt_u64(v: &Value, what: &str) -> BackendResult<Option<u64>> {
    match v {
        Value::Nil => Ok(None),
        other => u64_of(other)
            .map(Some)
            .ok_or_else(|| protocol(format!("{what}: expected an integer, got {other:?}"))),
    }
}

fn array_of(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Push { data, .. } => Some(data),
        _ => None,
    }
}

fn array<'a>(v: &'a Value, what: &str) -> BackendResult<&'a [Value]> {
    array_of(v).ok_or_else(|| protocol(format!("{what}: expected an array, got {v:?}")))
}

fn stream_id_of(v: &Value) -> BackendResult<StreamId> {
    str_of(v)
        .ok_or_else(|| protocol(format!("expected a stream id, got {v:?}")))?
        .parse()
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs_of(v: &Value) -> BackendResult<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Ok(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Nil => Ok(Vec::new()),
        other => {
            let a = array(other, "field list")?;
            if a.len() % 2 != 0 {
                return Err(protocol("field list of odd length"));
            }
            Ok(a.chunks_exact(2).map(|c| (&c[0], &c[1])).collect())
        }
    }
}

fn fields_of(v: &Value) -> BackendResult<Fields> {
    pairs_of(v)?
        .into_iter()
        .map(|(k, val)| {
            let k = bytes_of(k).ok_or_else(|| protocol("non-string field name"))?;
            let val = bytes_of(val).ok_or_else(|| protocol("non-string field value"))?;
            // Lossy names: a poison entry must still be readable (and
            // dead-lettered), never block its shard with a decode error.
            Ok((
                String::from_utf8_lossy(k).into_owned(),
                Bytes::copy_from_slice(val),
            ))
        })
        .collect()
}

/// `[id, fields|nil]`.
fn entry_of(v: &Value) -> BackendResult<StreamEntry> {
    let a = array(v, "stream entry")?;
    let id = stream_id_of(a.first().ok_or_else(|| protocol("empty stream entry"))?)?;
    let fields = match a.get(1) {
        None | Some(Value::Nil) => Vec::new(),
        Some(f) => fields_of(f)?,
    };
    Ok(StreamEntry { id, fields })
}

fn entries_of(v: &Value) -> BackendResult<Vec<StreamEntry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        other => array(other, "entries")?.iter().map(entry_of).collect(),
    }
}

/// XREAD/XREADGROUP reply: nil, `[[stream, entries]...]` or a RESP3 map.
fn xread_entries(v: &Value) -> BackendResult<Vec<StreamEntry>> {
    let mut out = Vec::new();
    match v {
        Value::Nil => {}
        Value::Map(m) => {
            for (_, entries) in m {
                out.extend(entries_of(entries)?);
            }
        }
        other => {
            for s in array(other, "xreadgroup reply")? {
                let pair = array(s, "xreadgroup stream")?;
                if let Some(entries) = pair.get(1) {
                    out.extend(entries_of(entries)?);
                }
            }
        }
    }
    Ok(out)
}

fn find_field<'a>(pairs: &[(&'a Value, &'a Value)], name: &str) -> Option<&'a Value> {
    pairs
        .iter()
        .find(|(k, _)| bytes_of(k) == Some(name.as_bytes()))
        .map(|(_, v)| *v)
}

fn parse_apply(v: &Value, events: usize) -> BackendResult<ApplyResult> {
    let a = array(v, "apply reply")?;
    if a.len() != 1 + 2 * events {
        return Err(protocol(format!(
            "apply reply has {} items for {events} events",
            a.len()
        )));
    }
    let epoch = u64_of(&a[0]).ok_or_else(|| protocol("apply reply: bad epoch"))?;
    let applied = a[1..]
        .chunks_exact(2)
        .map(|c| {
            let offset = u64_of(&c[0]).ok_or_else(|| protocol("apply reply: bad offset"))?;
            let new = u64_of(&c[1]).ok_or_else(|| protocol("apply reply: bad flag"))?;
            Ok(Applied {
                offset: Offset(offset),
                new: new == 1,
            })
        })
        .collect::<BackendResult<Vec<_>>>()?;
    Ok(ApplyResult {
        epoch: Epoch(epoch),
        applied,
    })
}

// ---------------------------------------------------------------------------
// Subscriber

struct RedisSubscriberHandle {
    sink: PubSubSink,
}

#[async_trait]
impl SubscriberHandle for RedisSubscriberHandle {
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        self.sink.clone().subscribe(channels).await.map_err(map_err)
    }

    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        self.sink
            .clone()
            .unsubscribe(channels)
            .await
            .map_err(map_err)
    }
}

// ---------------------------------------------------------------------------

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> BackendResult<()> {
        let v = self
            .query(&redis::cmd("PING"), Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        match str_of(&v) {
            Some("PONG") => Ok(()),
            _ => Err(protocol(format!("PING answered {v:?}"))),
        }
    }

    async fn append_batch(&self, reqs: Vec<AppendRequest>) -> BackendResult<Vec<AppendOutcome>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let script = &self.inner.scripts.append_dedupe;
        // Deduplicated appends are idempotent; a plain XADD sent twice
        // would add a second entry.
        let resend = if reqs.iter().all(|r| r.dedupe.is_some()) {
            Resend::AfterDrop
        } else {
            Resend::Never
        };
        if let Some(r) = reqs.iter().find(|r| r.fields.is_empty()) {
            return Err(BackendError::Server(format!(
                "append to {}: an entry needs at least one field",
                r.stream
            )));
        }
        // Consecutive deduplicated requests share one script call (the
        // per-call overhead dominates Redis CPU); plain appends are XADDs.
        // Runs keep the requests' order.
        let mut cmds = Vec::new();
        let mut runs: Vec<(bool, usize)> = Vec::new();
        for run in reqs.chunk_by(|a, b| a.dedupe.is_some() == b.dedupe.is_some()) {
            if run[0].dedupe.is_some() {
                let mut c = redis::cmd("EVALSHA");
                c.arg(script.get_hash()).arg(run.len() * 2);
                for r in run {
                    let key = r.dedupe.as_ref().map_or("", |d| d.key.as_str());
                    c.arg(key).arg(&r.stream);
                }
                for r in run {
                    let ttl = r.dedupe.as_ref().map_or(1, |d| ms(d.ttl));
                    c.arg(ttl);
                    match r.maxlen {
                        Some(n) => c.arg(n),
                        None => c.arg(""),
                    };
                    c.arg(r.fields.len() * 2);
                    for (k, v) in &r.fields {
                        c.arg(k.as_str()).arg(&v[..]);
                    }
                }
                cmds.push(c);
                runs.push((true, run.len()));
            } else {
                for r in run {
                    let mut c = redis::cmd("XADD");
                    c.arg(&r.stream);
                    if let Some(n) = r.maxlen {
                        c.arg("MAXLEN").arg("~").arg(n);
                    }
                    c.arg("*");
                    for (k, v) in &r.fields {
                        c.arg(k.as_str()).arg(&v[..]);
                    }
                    cmds.push(c);
                    runs.push((false, 1));
                }
            }
        }
        let results = self.eval_pipeline(script, cmds, resend).await?;
        let mut out = Vec::with_capacity(reqs.len());
        for ((dedupe, n), res) in runs.into_iter().zip(results) {
            let v = res.map_err(map_err)?;
            if !dedupe {
                out.push(AppendOutcome {
                    id: stream_id_of(&v)?,
                    duplicate: false,
                });
                continue;
            }
            let items = array(&v, "append reply")?;
            if items.len() != n {
                return Err(protocol(format!(
                    "append reply has {} items for {n} requests",
                    items.len()
                )));
            }
            for item in items {
                let a = array(item, "append item")?;
                let id = a.first().ok_or_else(|| protocol("empty append item"))?;
                let duplicate = a.get(1).and_then(u64_of).unwrap_or(0) == 1;
                let id = stream_id_of(id)
                    .map_err(|_| protocol(format!("dedupe marker holds no stream id: {id:?}")))?;
                out.push(AppendOutcome { id, duplicate });
            }
        }
        Ok(out)
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> BackendResult<()> {
        let mut c = redis::cmd("XGROUP");
        c.arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM");
        match self.query(&c, Resend::AfterDrop).await {
            Ok(_) => Ok(()),
            Err(e) if server_code(&e).as_deref() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(map_group_err(e, stream, group)),
        }
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
    ) -> BackendResult<Vec<StreamEntry>> {
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        // BLOCK 0 means "forever" to Redis: a zero block is a plain read.
        let block = match from {
            ReadFrom::New => block.filter(|b| !b.is_zero()),
            ReadFrom::Pending => None,
        };
        if let Some(b) = block {
            c.arg("BLOCK").arg(ms(b));
        }
        c.arg("STREAMS").arg(stream).arg(match from {
            ReadFrom::Pending => "0",
            ReadFrom::New => ">",
        });
        // A pending read is a plain read; a `>` read resent after a drop
        // at worst leaves the first read's entries pending for this
        // consumer, where the router's pending drain finds them.
        let v = match block {
            None => self
                .query(&c, Resend::AfterDrop)
                .await
                .map_err(|e| map_group_err(e, stream, group))?,
            Some(b) => match self.query_blocking(&c, b).await {
                Ok(v) => v,
                Err(BlockingError::Backend(e)) => return Err(e),
                Err(BlockingError::Redis(e)) => return Err(map_group_err(e, stream, group)),
            },
        };
        xread_entries(&v)
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> BackendResult<ClaimResult> {
        if count == 0 {
            return Ok(ClaimResult::default());
        }
        let script = &self.inner.scripts.claim;
        let mut c = evalsha(script, &[stream]);
        c.arg(group)
            .arg(consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(count);
        let v = self
            .eval_one(script, c, Some((stream, group)), Resend::Never)
            .await?;
        let a = array(&v, "claim reply")?;
        let (claimed, deleted) = match a {
            [c, d] => (array(c, "claimed")?, array(d, "deleted")?),
            _ => return Err(protocol("claim reply must have two parts")),
        };
        let claimed = claimed
            .iter()
            .map(|item| {
                let t = array(item, "claimed entry")?;
                match t {
                    [id, n, fields] => Ok(Delivered {
                        entry: StreamEntry {
                            id: stream_id_of(id)?,
                            fields: fields_of(fields)?,
                        },
                        deliveries: u64_of(n)
                            .ok_or_else(|| protocol("claimed entry: bad delivery count"))?,
                    }),
                    _ => Err(protocol("claimed entry must have three parts")),
                }
            })
            .collect::<BackendResult<Vec<_>>>()?;
        let deleted = deleted
            .iter()
            .map(stream_id_of)
            .collect::<BackendResult<Vec<_>>>()?;
        Ok(ClaimResult { claimed, deleted })
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> BackendResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut c = redis::cmd("XACK");
        c.arg(stream).arg(group);
        for id in ids {
            c.arg(id.to_string());
        }
        let v = self
            .query(&c, Resend::AfterDrop)
            .await
            .map_err(|e| map_group_err(e, stream, group))?;
        u64_of(&v).ok_or_else(|| protocol(format!("XACK answered {v:?}")))
    }

    async fn group_stats(&self, stream: &str, group: &str) -> BackendResult<GroupStats> {
        let mut groups = redis::cmd("XINFO");
        groups.arg("GROUPS").arg(stream);
        let mut consumers = redis::cmd("XINFO");
        consumers.arg("CONSUMERS").arg(stream).arg(group);
        let mut len = redis::cmd("XLEN");
        len.arg(stream);
        let mut conn = self.conn();
        let results =
            run_pipeline_resend(&mut conn, &[groups, consumers, len], Resend::AfterDrop).await?;
        let no_group = || BackendError::NoGroup {
            stream: stream.to_owned(),
            group: group.to_owned(),
        };
        let mut it = results.into_iter();
        let (Some(groups), Some(consumers), Some(len)) = (it.next(), it.next(), it.next()) else {
            return Err(protocol("group stats: missing replies"));
        };
        let groups = match groups {
            Ok(v) => v,
            // "ERR no such key": no stream, hence no group.
            Err(e) if server_code(&e).as_deref() == Some("ERR") => return Err(no_group()),
            Err(e) => return Err(map_group_err(e, stream, group)),
        };
        let mut stats = GroupStats::default();
        let mut found = false;
        for g in array(&groups, "xinfo groups")? {
            let pairs = pairs_of(g)?;
            if find_field(&pairs, "name").and_then(bytes_of) != Some(group.as_bytes()) {
                continue;
            }
            found = true;
            stats.pending = find_field(&pairs, "pending").and_then(u64_of).unwrap_or(0);
            stats.lag = match find_field(&pairs, "lag") {
                Some(v) => opt_u64(v, "lag")?,
                None => None,
            };
        }
        if !found {
            return Err(no_group());
        }
        let consumers = consumers.map_err(|e| map_group_err(e, stream, group))?;
        for c in array(&consumers, "xinfo consumers")? {
            let pairs = pairs_of(c)?;
            let name = find_field(&pairs, "name")
                .and_then(bytes_of)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| protocol("consumer without name"))?;
            stats.consumers.push(ConsumerStats {
                name,
                pending: find_field(&pairs, "pending").and_then(u64_of).unwrap_or(0),
                idle_ms: find_field(&pairs, "idle").and_then(u64_of).unwrap_or(0),
            });
        }
        let len = len.map_err(map_err)?;
        stats.length = u64_of(&len).ok_or_else(|| protocol(format!("XLEN answered {len:?}")))?;
        Ok(stats)
    }

    async fn delete_consumer(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> BackendResult<u64> {
        let mut c = redis::cmd("XGROUP");
        c.arg("DELCONSUMER").arg(stream).arg(group).arg(consumer);
        let v = self
            .query(&c, Resend::Never)
            .await
            .map_err(|e| map_group_err(e, stream, group))?;
        u64_of(&v).ok_or_else(|| protocol(format!("XGROUP DELCONSUMER answered {v:?}")))
    }

    async fn apply(
        &self,
        jobs: Vec<ApplyJob>,
        opts: &ApplyOptions,
    ) -> BackendResult<Vec<ApplyResult>> {
        self.apply_scripted(&jobs, opts, None).await
    }

    async fn apply_and_ack(
        &self,
        jobs: Vec<ApplyJob>,
        opts: &ApplyOptions,
        ack: AckRequest<'_>,
    ) -> BackendResult<Vec<ApplyResult>> {
        if self.inner.config.cluster || jobs.is_empty() || ack.ids.is_empty() {
            // On a cluster the stream lives in another slot than the jobs
            // (and with no jobs there is no script call to ack in): ack after.
            return super::apply_then_ack(self, jobs, opts, ack).await;
        }
        self.apply_scripted(&jobs, opts, Some(ack)).await
    }

    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let cmds: Vec<Cmd> = messages
            .iter()
            .map(|(ch, payload)| {
                let mut c = redis::cmd("PUBLISH");
                c.arg(ch.as_str()).arg(&payload[..]);
                c
            })
            .collect();
        let mut conn = self.conn();
        for r in run_pipeline(&mut conn, &cmds).await? {
            r.map_err(map_err)?;
        }
        Ok(())
    }

    async fn subscriber(&self) -> BackendResult<Subscriber> {
        let pubsub = tokio::time::timeout(
            self.inner.config.connection_timeout,
            self.inner.client.get_async_pubsub(),
        )
        .await
        .map_err(|_| BackendError::Connection("pub/sub connect timed out".into()))?
        .map_err(map_err)?;
        let (sink, mut stream) = pubsub.split();
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => break,
                    m = stream.next() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                let out = PubSubMessage {
                    channel: msg.get_channel_name().to_owned(),
                    payload: Bytes::copy_from_slice(msg.get_payload_bytes()),
                };
                match tx.try_send(out) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                    Err(mpsc::error::TrySendError::Full(out)) => {
                        match tokio::time::timeout(SUBSCRIBER_FULL_GRACE, tx.send(out)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break,
                            Err(_) => {
                                tracing::warn!(
                                    "subscriber channel full for {SUBSCRIBER_FULL_GRACE:?}; \
                                     closing the subscription"
                                );
                                break;
                            }
                        }
                    }
                }
            }
            // Dropping `stream` closes the connection; dropping `tx` ends the
            // receiver, which tells the owner to reconnect.
        });
        Ok(Subscriber {
            handle: Box::new(RedisSubscriberHandle { sink }),
            messages: rx,
        })
    }

    async fn get_state(&self, keys: &JobKeys) -> BackendResult<Option<JobState>> {
        let script = &self.inner.scripts.get_state;
        let c = evalsha(script, &[&keys.meta]);
        let v = self.eval_one(script, c, None, Resend::AfterDrop).await?;
        let a = array(&v, "state reply")?;
        let [epoch, top, sq, so, state] = a else {
            return Err(protocol("state reply must have five parts"));
        };
        let (Some(epoch), Some(state)) = (opt_u64(epoch, "epoch")?, bytes_of(state)) else {
            return Ok(None);
        };
        Ok(Some(JobState {
            epoch: Epoch(epoch),
            top: Offset(opt_u64(top, "top")?.unwrap_or(0)),
            seq: opt_u64(sq, "state seq")?.unwrap_or(0),
            record: Record {
                offset: Offset(opt_u64(so, "state offset")?.unwrap_or(0)),
                payload: Payload(Bytes::copy_from_slice(state)),
            },
        }))
    }

    async fn read_history(
        &self,
        keys: &JobKeys,
        after: Offset,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        let script = &self.inner.scripts.read_history;
        let mut c = evalsha(script, &[&keys.meta]);
        // Lua numbers are doubles: an offset past 2^53 would turn into a
        // float (and a garbage `start`). No job reaches 2^52 offsets, so
        // anything above reads as "past the top", exactly as it should.
        c.arg(after.0.min(MAX_SCRIPT_OFFSET)).arg(limit);
        let v = self.eval_one(script, c, None, Resend::AfterDrop).await?;
        let a = array(&v, "history reply")?;
        let [epoch, top, first, start, payloads] = a else {
            return Err(protocol("history reply must have five parts"));
        };
        let Some(epoch) = opt_u64(epoch, "epoch")? else {
            return Ok(HistoryPage::default());
        };
        let start = opt_u64(start, "start")?.unwrap_or(0);
        let records = array(payloads, "history payloads")?
            .iter()
            .map_while(bytes_of)
            .enumerate()
            .map(|(i, payload)| Record {
                offset: Offset(start + i as u64),
                payload: Payload(Bytes::copy_from_slice(payload)),
            })
            .collect::<Vec<_>>();
        Ok(HistoryPage {
            epoch: Some(Epoch(epoch)),
            top: Offset(opt_u64(top, "top")?.unwrap_or(0)),
            first: opt_u64(first, "first")?.map(Offset),
            records,
        })
    }

    async fn dead_letter(&self, dl: DeadLetter<'_>) -> BackendResult<StreamId> {
        let DeadLetter {
            dlq,
            source,
            group,
            entry,
            ..
        } = dl;
        let fields = dead_letter_fields(&dl);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut xadd = redis::cmd("XADD");
        // Exact trimming: dead letters are rare, and the bound must hold
        // even for a few large entries (`~` trims only whole stream nodes).
        xadd.arg(dlq)
            .arg("MAXLEN")
            .arg("=")
            .arg(dl.limits.maxlen.max(1))
            .arg("*");
        for (k, v) in &fields {
            xadd.arg(k.as_str()).arg(&v[..]);
        }
        pipe.add_command(xadd);
        pipe.cmd("XACK")
            .arg(source)
            .arg(group)
            .arg(entry.id.to_string())
            .ignore();
        let v: Vec<Value> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| map_group_err(e, source, group))?;
        stream_id_of(
            v.first()
                .ok_or_else(|| protocol("empty dead-letter reply"))?,
        )
    }

    async fn range(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
    ) -> BackendResult<Vec<StreamEntry>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut c = redis::cmd("XRANGE");
        c.arg(stream);
        match after {
            Some(id) => c.arg(format!("({id}")),
            None => c.arg("-"),
        };
        c.arg("+").arg("COUNT").arg(count);
        let v = self.query(&c, Resend::AfterDrop).await.map_err(map_err)?;
        entries_of(&v)
    }

    async fn delete_entries(&self, stream: &str, ids: &[StreamId]) -> BackendResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut c = redis::cmd("XDEL");
        c.arg(stream);
        for id in ids {
            c.arg(id.to_string());
        }
        let v = self.query(&c, Resend::AfterDrop).await.map_err(map_err)?;
        u64_of(&v).ok_or_else(|| protocol(format!("XDEL answered {v:?}")))
    }

    async fn stream_len(&self, stream: &str) -> BackendResult<u64> {
        let v = self
            .query(redis::cmd("XLEN").arg(stream), Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        u64_of(&v).ok_or_else(|| protocol(format!("XLEN answered {v:?}")))
    }

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
            .query(redis::cmd("GET").arg(key), Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        match v {
            Value::Nil => Ok(None),
            other => bytes_of(&other)
                .map(|b| Some(Bytes::copy_from_slice(b)))
                .ok_or_else(|| protocol(format!("GET answered {other:?}"))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_with_deleted_data() {
        let v = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"s".to_vec()),
            Value::Array(vec![
                Value::Array(vec![
                    Value::BulkString(b"1-1".to_vec()),
                    Value::Array(vec![
                        Value::BulkString(b"k".to_vec()),
                        Value::BulkString(b"v".to_vec()),
                    ]),
                ]),
                Value::Array(vec![Value::BulkString(b"2-0".to_vec()), Value::Nil]),
            ]),
        ])]);
        let entries = xread_entries(&v).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, StreamId::new(1, 1));
        assert_eq!(
            entries[0].fields,
            vec![("k".to_owned(), Bytes::from_static(b"v"))]
        );
        assert!(entries[1].is_deleted());
        assert!(xread_entries(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn bad_replies_are_protocol_errors() {
        assert!(matches!(
            xread_entries(&Value::Int(3)),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            entry_of(&Value::Array(vec![])),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            parse_apply(&Value::Array(vec![Value::Int(1)]), 1),
            Err(BackendError::Protocol(_))
        ));
        assert!(matches!(
            fields_of(&Value::Array(vec![Value::Int(1)])),
            Err(BackendError::Protocol(_))
        ));
    }
}
