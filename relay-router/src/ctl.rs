//! `relayctl`: operate a relay deployment from a terminal.
//!
//! Human-readable tables by default, `--json` for scripts.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use relay_core::backend::{AppendRequest, Backend, StreamEntry, StreamId, DLQ_TRUNCATED_PREFIX};
use relay_core::cli::{ConnectionArgs, LogFormat};
use relay_core::codec::field;
use relay_core::{
    Decoded, Event, JobId, KeySpace, LiveEnvelope, Offset, Publisher, PublisherConfig, Record,
    Status,
};
use serde_json::json;

/// Operate a relay deployment: publish, inspect jobs, follow them live,
/// watch the shards and manage the dead-letter stream.
#[derive(Debug, Parser)]
#[command(name = "relayctl", version)]
pub struct CtlArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Consumer group the routers use (default: the profile's).
    #[arg(long, env = "RELAY_GROUP", global = true)]
    pub group: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, env = "RELAY_JSON", global = true)]
    pub json: bool,
    /// Log format (logs go to stderr).
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// relayctl subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish one event (idempotent per job and seq).
    Publish {
        /// Job id.
        job: String,
        /// Producer seq.
        #[arg(long, env = "RELAY_SEQ")]
        seq: u64,
        /// Stage name.
        #[arg(long, env = "RELAY_STAGE")]
        stage: String,
        /// started, progress, completed or failed.
        #[arg(long, env = "RELAY_STATUS", default_value = "progress")]
        status: Status,
        /// Percent complete.
        #[arg(long, env = "RELAY_PROGRESS")]
        progress: Option<u8>,
        /// JSON payload.
        #[arg(long, env = "RELAY_DATA")]
        data: Option<String>,
    },
    /// Show a job's current state.
    State {
        /// Job id.
        job: String,
    },
    /// Show a job's history.
    History(HistoryArgs),
    /// Follow a job live, like its SSE stream, until its terminal event.
    Tail(TailArgs),
    /// Pending, lag and dead-letter size per shard.
    Stats,
    /// Issue a stream access token for a job (what the gateway's
    /// `--auth-secret` checks). Needs no Redis.
    Token {
        /// Job id.
        job: String,
        /// Validity in seconds.
        #[arg(long, env = "RELAY_TOKEN_TTL", default_value_t = 600)]
        ttl: u64,
        /// HMAC secret shared with the gateways.
        #[arg(
            long = "auth-secret",
            env = "RELAY_AUTH_SECRET",
            hide_env_values = true
        )]
        secret: String,
    },
    /// Manage the dead-letter stream.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

/// `relayctl history` arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Job id.
    pub job: String,
    /// Only entries after this offset.
    #[arg(long, env = "RELAY_AFTER", default_value_t = 0)]
    pub after: u64,
    /// At most this many entries.
    #[arg(long, env = "RELAY_LIMIT", default_value_t = 1000)]
    pub limit: usize,
}

/// `relayctl tail` arguments.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Job id.
    pub job: String,
    /// Start after this offset (default: replay the whole history).
    #[arg(long, env = "RELAY_AFTER", default_value_t = 0)]
    pub after: u64,
    /// Give up after this many seconds without the terminal event (0: never).
    #[arg(long, env = "RELAY_TIMEOUT_SECS", default_value_t = 0)]
    pub timeout_secs: u64,
}

/// Dead-letter actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead-lettered entries.
    List {
        /// At most this many.
        #[arg(long, env = "RELAY_LIMIT", default_value_t = 100)]
        limit: usize,
    },
    /// Append entries back to their source stream and remove them from the DLQ.
    Replay {
        /// Entry ids to replay (default: all).
        ids: Vec<String>,
    },
    /// Delete entries from the DLQ (default: all).
    Purge {
        /// Entry ids to delete (default: all).
        ids: Vec<String>,
    },
}

/// Runs one relayctl command, writing to `out`.
pub async fn run(args: CtlArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    if let Command::Token { job, ttl, secret } = &args.command {
        return token(out, job, *ttl, secret, args.json);
    }
    let backend = args
        .conn
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.conn.describe()))?;
    let keys = args.conn.key_space();
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| keys.default_group().to_owned());
    let ctx = Ctx {
        backend,
        keys,
        group,
        json: args.json,
    };
    match args.command {
        Command::Publish {
            job,
            seq,
            stage,
            status,
            progress,
            data,
        } => {
            ctx.publish(out, &job, seq, &stage, status, progress, data)
                .await
        }
        Command::State { job } => ctx.state(out, &job).await,
        Command::History(a) => ctx.history(out, a).await,
        Command::Tail(a) => ctx.tail(out, a).await,
        Command::Stats => ctx.stats(out).await,
        // Handled above, before connecting; kept for exhaustiveness.
        Command::Token { job, ttl, secret } => token(out, &job, ttl, &secret, ctx.json),
        Command::Dlq { action } => match action {
            DlqAction::List { limit } => ctx.dlq_list(out, limit).await,
            DlqAction::Replay { ids } => ctx.dlq_replay(out, &ids).await,
            DlqAction::Purge { ids } => ctx.dlq_purge(out, &ids).await,
        },
    }
}

/// `relayctl token`: prints a token for `job` valid for `ttl` seconds.
fn token(
    out: &mut (dyn Write + Send),
    job: &str,
    ttl: u64,
    secret: &str,
    json: bool,
) -> anyhow::Result<()> {
    if secret.is_empty() {
        bail!("--auth-secret (or RELAY_AUTH_SECRET) must not be empty");
    }
    if ttl == 0 {
        bail!("--ttl must be at least 1 second");
    }
    let job = JobId::new(job).map_err(|e| anyhow!("invalid job id: {e}"))?;
    let expires = relay_core::auth::now_unix().saturating_add(ttl);
    let token = relay_core::auth::issue_at(secret.as_bytes(), &job, expires);
    if json {
        let v = json!({"job_id": job.as_str(), "token": token, "expires_at": expires, "ttl": ttl});
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{token}")?;
    }
    Ok(())
}

struct Ctx {
    backend: Arc<dyn Backend>,
    keys: KeySpace,
    group: String,
    json: bool,
}

/// One record rendered for output.
fn record_json(r: &Record) -> serde_json::Value {
    match r.payload.decode() {
        Ok(Decoded::Native(e)) => json!({"offset": r.offset.0, "event": e}),
        Ok(Decoded::Eco2(e)) => {
            let v: serde_json::Value =
                serde_json::from_slice(&e.raw).unwrap_or(serde_json::Value::Null);
            json!({"offset": r.offset.0, "event": v})
        }
        Err(err) => json!({"offset": r.offset.0, "error": err.to_string()}),
    }
}

fn record_line(r: &Record) -> String {
    match r.payload.decode() {
        Ok(Decoded::Native(e)) => format!(
            "{:>6}  {:>6}  {:<10} {:<10} {:>4}  {}",
            r.offset.0,
            e.seq,
            e.stage,
            e.status,
            e.progress.map(|p| format!("{p}%")).unwrap_or_default(),
            if e.data.is_null() {
                String::new()
            } else {
                e.data.to_string()
            }
        ),
        Ok(Decoded::Eco2(e)) => {
            // The eco2 record is the producer's JSON: progress is an integer
            // or "", the payload is `result` (empty when there is none).
            let v: serde_json::Value =
                serde_json::from_slice(&e.raw).unwrap_or(serde_json::Value::Null);
            let progress = v
                .get("progress")
                .and_then(serde_json::Value::as_u64)
                .map(|p| format!("{p}%"))
                .unwrap_or_default();
            let data = match v.get("result") {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            format!(
                "{:>6}  {:>6}  {:<10} {:<10} {:>4}  {}",
                r.offset.0, e.seq, e.stage, e.status, progress, data
            )
        }
        Err(err) => format!("{:>6}  undecodable: {err}", r.offset.0),
    }
}

const RECORD_HEADER: &str = "OFFSET     SEQ  STAGE      STATUS     PROG  DATA";

fn entry_json(e: &StreamEntry) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = e
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v))))
        .collect();
    json!({"id": e.id.to_string(), "fields": fields})
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &self,
        out: &mut (dyn Write + Send),
        job: &str,
        seq: u64,
        stage: &str,
        status: Status,
        progress: Option<u8>,
        data: Option<String>,
    ) -> anyhow::Result<()> {
        let mut e = Event::new(self.keys.domain().as_str(), job, seq, stage, status)?;
        e.progress = progress;
        if let Some(d) = data {
            e.data = serde_json::from_str(&d).context("--data must be JSON")?;
        }
        // By hand, a retry should say it was one: dedupe at append.
        let config = PublisherConfig {
            dedupe: relay_core::DedupeAt::Append,
            ..PublisherConfig::default()
        };
        let p = Publisher::new(self.backend.clone(), self.keys.clone(), config);
        let r = p.publish(&e).await?;
        if self.json {
            writeln!(
                out,
                "{}",
                json!({"id": r.id.to_string(), "duplicate": r.duplicate})
            )?;
        } else if r.duplicate {
            writeln!(out, "duplicate of {} (nothing appended)", r.id)?;
        } else {
            writeln!(out, "appended {}", r.id)?;
        }
        Ok(())
    }

    async fn state(&self, out: &mut (dyn Write + Send), job: &str) -> anyhow::Result<()> {
        let job = JobId::new(job)?;
        let Some(s) = self.backend.get_state(&self.keys.job(&job)).await? else {
            bail!("job {job} has no state (unknown or expired)");
        };
        if self.json {
            let mut v = record_json(&s.record);
            v["epoch"] = json!(s.epoch.0);
            v["top"] = json!(s.top.0);
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "job {job}  epoch {}  top offset {}  state seq {}",
                s.epoch, s.top, s.seq
            )?;
            writeln!(out, "{RECORD_HEADER}")?;
            writeln!(out, "{}", record_line(&s.record))?;
        }
        Ok(())
    }

    async fn history(&self, out: &mut (dyn Write + Send), a: HistoryArgs) -> anyhow::Result<()> {
        let (job, after, limit) = (JobId::new(a.job)?, a.after, a.limit);
        let page = self
            .backend
            .read_history(&self.keys.job(&job), Offset(after), limit)
            .await?;
        if self.json {
            let recs: Vec<_> = page.records.iter().map(record_json).collect();
            writeln!(
                out,
                "{}",
                json!({"epoch": page.epoch.map(|e| e.0), "top": page.top.0,
                       "first": page.first.map(|f| f.0), "records": recs})
            )?;
            return Ok(());
        }
        let Some(epoch) = page.epoch else {
            bail!("job {job} has no history (unknown or expired)");
        };
        writeln!(
            out,
            "job {job}  epoch {epoch}  offsets {}..={}",
            page.first.map(|f| f.0).unwrap_or(0),
            page.top
        )?;
        writeln!(out, "{RECORD_HEADER}")?;
        for r in &page.records {
            writeln!(out, "{}", record_line(r))?;
        }
        Ok(())
    }

    async fn tail(&self, out: &mut (dyn Write + Send), a: TailArgs) -> anyhow::Result<()> {
        let (job, after, timeout_secs) = (JobId::new(a.job)?, a.after, a.timeout_secs);
        let keys = self.keys.job(&job);
        let deadline = (timeout_secs > 0)
            .then(|| tokio::time::Instant::now() + Duration::from_secs(timeout_secs));
        if !self.json {
            writeln!(out, "{RECORD_HEADER}")?;
        }
        let mut last = Offset(after);
        let mut epoch = None;
        'connection: loop {
            // Subscribe first, then catch up from history: nothing published
            // in between can be missed, and offsets drop the overlap.
            let mut sub = self.backend.subscriber().await?;
            sub.handle
                .subscribe(std::slice::from_ref(&keys.live))
                .await?;
            let mut need_history = true;
            loop {
                if need_history {
                    need_history = false;
                    loop {
                        let page = self.backend.read_history(&keys, last, 500).await?;
                        if let (Some(known), Some(now)) = (epoch, page.epoch) {
                            if known != now {
                                writeln!(out, "-- history was re-created (epoch {known} -> {now}); restarting from its start")?;
                                last = Offset::ZERO;
                            }
                        }
                        epoch = page.epoch.or(epoch);
                        if let Some(first) = page.first {
                            if first.0 > last.0 + 1 {
                                writeln!(
                                    out,
                                    "-- offsets {}..{} were trimmed from history",
                                    last.0 + 1,
                                    first.0 - 1
                                )?;
                            }
                        }
                        let n = page.records.len();
                        for r in page.records {
                            if self.emit(out, &r, &mut last)? {
                                return Ok(());
                            }
                        }
                        if n < 500 {
                            break;
                        }
                    }
                }
                let wait = match deadline {
                    Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
                    None => Duration::from_secs(3600),
                };
                if wait.is_zero() {
                    bail!("timed out before the terminal event");
                }
                let msg = match tokio::time::timeout(wait, sub.messages.recv()).await {
                    Ok(Some(m)) => m,
                    Ok(None) => continue 'connection, // subscriber lost: resubscribe and catch up
                    Err(_) => continue,
                };
                let Ok(env) = LiveEnvelope::decode(&msg.payload) else {
                    continue;
                };
                if epoch.is_some_and(|e| e != env.epoch) || env.record.offset.0 > last.0 + 1 {
                    need_history = true; // gap or new history: re-read
                    continue;
                }
                if env.record.offset > last && self.emit(out, &env.record, &mut last)? {
                    return Ok(());
                }
            }
        }
    }

    /// Prints a record; true when it is the terminal event.
    fn emit(
        &self,
        out: &mut (dyn Write + Send),
        r: &Record,
        last: &mut Offset,
    ) -> anyhow::Result<bool> {
        if r.offset <= *last {
            return Ok(false);
        }
        *last = r.offset;
        if self.json {
            writeln!(out, "{}", record_json(r))?;
        } else {
            writeln!(out, "{}", record_line(r))?;
        }
        out.flush()?;
        Ok(r.payload.decode().map(|d| d.is_terminal()).unwrap_or(false))
    }

    async fn stats(&self, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for shard in 0..self.keys.shards() {
            let stream = self.keys.shard_stream(shard);
            let st = match self.backend.group_stats(&stream, &self.group).await {
                Ok(s) => s,
                Err(relay_core::BackendError::NoGroup { .. }) => Default::default(),
                Err(e) => return Err(e.into()),
            };
            let length = if st.length == 0 {
                self.backend.stream_len(&stream).await?
            } else {
                st.length
            };
            rows.push((shard, stream, length, st));
        }
        let mut dlq = 0;
        for stream in self.keys.dlq_streams() {
            dlq += self.backend.stream_len(&stream).await?;
        }
        if self.json {
            let shards: Vec<_> = rows
                .iter()
                .map(|(shard, stream, length, st)| {
                    json!({"shard": shard, "stream": stream, "length": length, "pending": st.pending,
                           "lag": st.lag, "consumers": st.consumers.iter().map(|c| json!({
                               "name": c.name, "pending": c.pending, "idle_ms": c.idle_ms})).collect::<Vec<_>>()})
                })
                .collect();
            writeln!(
                out,
                "{}",
                json!({"group": self.group, "shards": shards, "dlq": dlq})
            )?;
            return Ok(());
        }
        writeln!(
            out,
            "group {}  dead-letter streams {} : {dlq} entries",
            self.group,
            self.keys.dlq_streams().join(",")
        )?;
        let width = rows
            .iter()
            .map(|(_, stream, ..)| stream.len())
            .max()
            .unwrap_or(0)
            .max("STREAM".len());
        writeln!(
            out,
            "{:<5} {:<width$} {:>9} {:>8} {:>8} {:>9}",
            "SHARD", "STREAM", "LENGTH", "PENDING", "LAG", "CONSUMERS"
        )?;
        for (shard, stream, length, st) in &rows {
            writeln!(
                out,
                "{:<5} {:<width$} {:>9} {:>8} {:>8} {:>9}",
                shard,
                stream,
                length,
                st.pending,
                st.lag.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                st.consumers.len()
            )?;
        }
        // Consumers in a table of their own: interleaved under each shard
        // they broke the shard table's columns.
        let consumers: Vec<_> = rows
            .iter()
            .flat_map(|(shard, _, _, st)| st.consumers.iter().map(move |c| (shard, c)))
            .collect();
        if !consumers.is_empty() {
            let name_width = consumers
                .iter()
                .map(|(_, c)| c.name.len())
                .max()
                .unwrap_or(0)
                .max("CONSUMER".len());
            writeln!(out)?;
            writeln!(
                out,
                "{:<5} {:<name_width$} {:>8} {:>10}",
                "SHARD", "CONSUMER", "PENDING", "IDLE_MS"
            )?;
            for (shard, c) in consumers {
                writeln!(
                    out,
                    "{:<5} {:<name_width$} {:>8} {:>10}",
                    shard, c.name, c.pending, c.idle_ms
                )?;
            }
        }
        Ok(())
    }

    /// Every dead-letter entry (of `ids` when not empty), each with the
    /// dead-letter stream holding it (one per shard in the native profile).
    async fn dlq_entries(&self, ids: &[String]) -> anyhow::Result<Vec<(String, StreamEntry)>> {
        let wanted: Vec<StreamId> = ids
            .iter()
            .map(|s| s.parse::<StreamId>().map_err(|e| anyhow!("{e}")))
            .collect::<anyhow::Result<_>>()?;
        let mut all = Vec::new();
        for dlq in self.keys.dlq_streams() {
            let mut after = None;
            loop {
                let page = self.backend.range(&dlq, after, 1000).await?;
                let n = page.len();
                after = page.last().map(|e| e.id);
                all.extend(
                    page.into_iter()
                        .filter(|e| wanted.is_empty() || wanted.contains(&e.id))
                        .map(|e| (dlq.clone(), e)),
                );
                if n < 1000 {
                    break;
                }
            }
        }
        Ok(all)
    }

    async fn dlq_list(&self, out: &mut (dyn Write + Send), limit: usize) -> anyhow::Result<()> {
        let mut entries = Vec::new();
        for dlq in self.keys.dlq_streams() {
            if entries.len() >= limit {
                break;
            }
            let page = self
                .backend
                .range(&dlq, None, limit - entries.len())
                .await?;
            entries.extend(page);
        }
        if self.json {
            let v: Vec<_> = entries.iter().map(entry_json).collect();
            writeln!(out, "{}", serde_json::Value::Array(v))?;
            return Ok(());
        }
        writeln!(
            out,
            "{:<22} {:<22} {:<24} {:>4}  REASON",
            "DLQ ID", "ORIGINAL ID", "SOURCE", "DELIV"
        )?;
        for e in &entries {
            let f = |k: &str| {
                field(&e.fields, k)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            writeln!(
                out,
                "{:<22} {:<22} {:<24} {:>4}  {}",
                e.id,
                f("id"),
                f("source"),
                f("deliveries"),
                f("reason")
            )?;
        }
        writeln!(out, "{} entries", entries.len())?;
        Ok(())
    }

    async fn dlq_replay(&self, out: &mut (dyn Write + Send), ids: &[String]) -> anyhow::Result<()> {
        let entries = self.dlq_entries(ids).await?;
        let mut replayed = 0;
        for (dlq, e) in &entries {
            let source = field(&e.fields, "source")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .ok_or_else(|| anyhow!("dead-letter entry {} has no source", e.id))?;
            let fields: Vec<(String, Bytes)> = e
                .fields
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("f.").map(|k| (k.to_owned(), v.clone())))
                .collect();
            if fields.is_empty() {
                writeln!(out, "skipping {}: no original fields to replay", e.id)?;
                continue;
            }
            if let Some((name, what)) = e
                .fields
                .iter()
                .find_map(|(k, v)| k.strip_prefix(DLQ_TRUNCATED_PREFIX).map(|k| (k, v)))
            {
                writeln!(
                    out,
                    "skipping {}: field {name:?} was cut when dead-lettered (size and sha256: {}); it cannot be replayed",
                    e.id,
                    String::from_utf8_lossy(what)
                )?;
                continue;
            }
            let r = self
                .backend
                .append(AppendRequest {
                    stream: source.clone(),
                    fields,
                    maxlen: None,
                    dedupe: None,
                })
                .await?;
            self.backend.delete_entries(dlq, &[e.id]).await?;
            replayed += 1;
            if !self.json {
                writeln!(out, "replayed {} -> {source} {}", e.id, r.id)?;
            }
        }
        if self.json {
            writeln!(out, "{}", json!({"replayed": replayed}))?;
        } else {
            writeln!(out, "{replayed} entries replayed")?;
        }
        Ok(())
    }

    async fn dlq_purge(&self, out: &mut (dyn Write + Send), ids: &[String]) -> anyhow::Result<()> {
        let entries = self.dlq_entries(ids).await?;
        let mut n = 0;
        for (dlq, e) in &entries {
            n += self.backend.delete_entries(dlq, &[e.id]).await?;
        }
        if self.json {
            writeln!(out, "{}", json!({"purged": n}))?;
        } else {
            writeln!(out, "{n} entries purged")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use relay_core::backend::memory::MemoryBackend;
    use relay_core::backend::ReadFrom;
    use relay_core::{Domain, Profile};

    use super::*;

    #[test]
    fn every_flag_reads_a_relay_env_var() {
        use clap::CommandFactory;
        let missing = relay_core::cli::flags_without_env(&CtlArgs::command(), "RELAY_");
        assert!(missing.is_empty(), "flags without RELAY_* env: {missing:?}");
    }

    #[test]
    fn an_eco2_record_shows_its_progress_and_result() {
        let raw = br#"{"job_id":"j1","stage":"vision","status":"progress","seq":3,"ts":"1.5","progress":25,"result":{"label":"paper"},"stream_id":"1-0"}"#;
        let r = Record {
            offset: Offset(3),
            payload: relay_core::Payload(Bytes::from_static(raw)),
        };
        let line = record_line(&r);
        assert!(line.contains("25%"), "{line}");
        assert!(line.ends_with(r#"{"label":"paper"}"#), "{line}");
        assert!(
            !line.contains("1-0"),
            "the stream id is not the data: {line}"
        );
    }

    #[tokio::test]
    async fn stats_keeps_every_shard_row_in_the_header_columns() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let keys = KeySpace::new(Profile::Native, Domain::new("scan").unwrap(), 2);
        let group = keys.default_group().to_owned();
        for shard in 0..2 {
            let stream = keys.shard_stream(shard);
            backend.ensure_group(&stream, &group).await.unwrap();
            // A consumer with a long name on each shard: its row must not
            // land inside the shard table.
            let consumer = format!("router-with-a-rather-long-consumer-name-{shard}");
            backend
                .read_group(&stream, &group, &consumer, ReadFrom::New, 1, None)
                .await
                .unwrap();
        }
        let ctx = Ctx {
            backend,
            keys,
            group,
            json: false,
        };
        let mut out = Vec::new();
        ctx.stats(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let tables: Vec<&str> = text.split("\n\n").collect();
        assert_eq!(
            tables.len(),
            2,
            "a shard table and a consumer table: {text}"
        );
        for table in tables {
            let lines: Vec<&str> = table.lines().filter(|l| !l.starts_with("group ")).collect();
            let header = lines[0];
            // Every column ends where its header ends (right-aligned numbers).
            let ends = |l: &str| -> Vec<usize> {
                l.char_indices()
                    .filter(|&(i, c)| c != ' ' && l[i + 1..].starts_with(' ') || i + 1 == l.len())
                    .map(|(i, _)| i)
                    .collect()
            };
            for row in &lines[1..] {
                assert_eq!(row.len(), header.len(), "row {row:?} vs header {header:?}");
                assert_eq!(
                    ends(row).last(),
                    ends(header).last(),
                    "row {row:?} vs header {header:?}"
                );
            }
        }
    }
}
