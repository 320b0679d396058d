//! [`StreamLog`] on fred: `XADD` (or the dedupe script), consumer groups,
//! claims and the dead-letter move, as `RedisBackend` does them.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::{ClientLike, TransactionInterface};
use fred::types::Value;

use super::cmd::Cmd;
use super::conn::{in_transaction, ms, BlockingError, Resend};
use super::error::{map_err, map_group_err, protocol, server_code};
use super::reply::*;
use super::FredBackend;
use crate::backend::{
    dead_letter_fields, AppendOutcome, AppendRequest, BackendResult, ClaimResult, DeadLetter,
    GroupStats, ReadFrom, StreamEntry, StreamId, StreamLog,
};
use crate::error::BackendError;
use crate::keys::slot;

#[async_trait]
impl StreamLog for FredBackend {
    async fn append_batch(&self, reqs: Vec<AppendRequest>) -> BackendResult<Vec<AppendOutcome>> {
        if !self.per_slot() {
            return self.append_calls(&reqs).await;
        }
        // On a cluster a script call may not span slots: the requests of
        // each stream's slot go together (their markers share the slot),
        // in their order, and the slots' calls run concurrently.
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, r) in reqs.iter().enumerate() {
            by_slot.entry(slot(&r.stream)).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = by_slot.into_values().collect();
        let calls = groups.iter().map(|idx| {
            let group: Vec<AppendRequest> = idx.iter().map(|&i| reqs[i].clone()).collect();
            async move { self.append_calls(&group).await }
        });
        let results = futures::future::join_all(calls).await;
        let mut out: Vec<Option<AppendOutcome>> = vec![None; reqs.len()];
        for (idx, res) in groups.iter().zip(results) {
            for (&i, outcome) in idx.iter().zip(res?) {
                out[i] = Some(outcome);
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| protocol("an append got no reply")))
            .collect()
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> BackendResult<()> {
        let mut c = Cmd::keyed("XGROUP", stream);
        c.arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM");
        match self.query(&c, Resend::AfterDrop).await {
            Ok(_) => Ok(()),
            Err(e) if server_code(&e) == Some("BUSYGROUP") => Ok(()),
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
        let mut c = Cmd::keyed("XREADGROUP", stream);
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
        // As RedisBackend: a pending read is a plain read; a `>` read
        // resent after a drop at worst leaves the first read's entries
        // pending for this consumer, where the router's pending drain
        // finds them.
        let v = match block {
            None => self
                .query(&c, Resend::AfterDrop)
                .await
                .map_err(|e| map_group_err(e, stream, group))?,
            Some(b) => match self.query_blocking(&c.blocking(), b).await {
                Ok(v) => v,
                Err(BlockingError::Backend(e)) => return Err(e),
                Err(BlockingError::Fred(e)) => return Err(map_group_err(e, stream, group)),
            },
        };
        xread_entries(to_redis_value(v))
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
        let mut c = Cmd::evalsha(&script.sha, &[stream]);
        c.arg(group)
            .arg(consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(count);
        let v = self
            .eval_one(script, c, Some((stream, group)), Resend::Never)
            .await?;
        claim_reply(to_redis_value(v))
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> BackendResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut c = Cmd::keyed("XACK", stream);
        c.arg(stream).arg(group);
        for id in ids {
            c.arg(id.to_string());
        }
        let v = self
            .query(&c, Resend::AfterDrop)
            .await
            .map_err(|e| map_group_err(e, stream, group))?;
        let v = to_redis_value(v);
        u64_of(&v).ok_or_else(|| protocol(format!("XACK answered {v:?}")))
    }

    async fn group_stats(&self, stream: &str, group: &str) -> BackendResult<GroupStats> {
        let mut groups = Cmd::keyed("XINFO", stream);
        groups.arg("GROUPS").arg(stream);
        let mut consumers = Cmd::keyed("XINFO", stream);
        consumers.arg("CONSUMERS").arg(stream).arg(group);
        let mut len = Cmd::keyed("XLEN", stream);
        len.arg(stream);
        let results = self
            .pipeline(&[groups, consumers, len], Resend::AfterDrop)
            .await?;
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
            Err(e) if server_code(&e) == Some("ERR") => return Err(no_group()),
            Err(e) => return Err(map_group_err(e, stream, group)),
        };
        let Some((pending, lag)) = group_info(&to_redis_value(groups), group)? else {
            return Err(no_group());
        };
        let consumers = consumers.map_err(|e| map_group_err(e, stream, group))?;
        let mut stats = GroupStats {
            pending,
            lag,
            consumers: consumers_of(&to_redis_value(consumers))?,
            ..GroupStats::default()
        };
        let len = to_redis_value(len.map_err(map_err)?);
        stats.length = u64_of(&len).ok_or_else(|| protocol(format!("XLEN answered {len:?}")))?;
        Ok(stats)
    }

    async fn delete_consumer(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> BackendResult<u64> {
        let mut c = Cmd::keyed("XGROUP", stream);
        c.arg("DELCONSUMER").arg(stream).arg(group).arg(consumer);
        let v = self
            .query(&c, Resend::Never)
            .await
            .map_err(|e| map_group_err(e, stream, group))?;
        let v = to_redis_value(v);
        u64_of(&v).ok_or_else(|| protocol(format!("XGROUP DELCONSUMER answered {v:?}")))
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
        let mut xadd = Cmd::keyed("XADD", dlq);
        // Exact trimming: dead letters are rare, and the bound must hold
        // even for a few large entries (`~` trims only whole stream nodes).
        xadd.arg(dlq)
            .arg("MAXLEN")
            .arg("=")
            .arg(dl.limits.maxlen.max(1))
            .arg("*");
        for (k, v) in &fields {
            xadd.arg(k.as_str()).arg(v);
        }
        let mut xack = Cmd::keyed("XACK", source);
        xack.arg(source).arg(group).arg(entry.id.to_string());
        // MULTI/EXEC: the dead-letter entry and the ack together or not at
        // all (on a cluster the DLQ shares its source stream's slot).
        let tx = self.inner.shared.multi();
        for c in [&xadd, &xack] {
            let _: Value = tx
                .with_options(&in_transaction())
                .custom(c.custom(), c.args.clone())
                .await
                .map_err(|e| map_group_err(e, source, group))?;
        }
        let v: Value = tx
            .exec(true)
            .await
            .map_err(|e| map_group_err(e, source, group))?;
        dead_letter_id(array(&to_redis_value(v), "dead-letter reply")?)
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
        let mut c = Cmd::keyed("XRANGE", stream);
        c.arg(stream);
        match after {
            Some(id) => c.arg(format!("({id}")),
            None => c.arg("-"),
        };
        c.arg("+").arg("COUNT").arg(count);
        let v = self.query(&c, Resend::AfterDrop).await.map_err(map_err)?;
        entries_of(to_redis_value(v))
    }

    async fn delete_entries(&self, stream: &str, ids: &[StreamId]) -> BackendResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut c = Cmd::keyed("XDEL", stream);
        c.arg(stream);
        for id in ids {
            c.arg(id.to_string());
        }
        let v = to_redis_value(self.query(&c, Resend::AfterDrop).await.map_err(map_err)?);
        u64_of(&v).ok_or_else(|| protocol(format!("XDEL answered {v:?}")))
    }

    async fn stream_len(&self, stream: &str) -> BackendResult<u64> {
        let mut c = Cmd::keyed("XLEN", stream);
        c.arg(stream);
        let v = to_redis_value(self.query(&c, Resend::AfterDrop).await.map_err(map_err)?);
        u64_of(&v).ok_or_else(|| protocol(format!("XLEN answered {v:?}")))
    }
}

impl FredBackend {
    /// Appends `reqs` with as few calls as possible, as RedisBackend:
    /// consecutive deduplicated requests share one script call (the
    /// per-call overhead dominates Redis CPU), plain appends are `XADD`s;
    /// pipelined. On a cluster every request here is in one slot (see
    /// `append_batch`).
    async fn append_calls(&self, reqs: &[AppendRequest]) -> BackendResult<Vec<AppendOutcome>> {
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
            return Err(BackendError::Server(
                format!("append to {}: an entry needs at least one field", r.stream).into(),
            ));
        }
        let mut cmds = Vec::new();
        let mut runs: Vec<(bool, usize)> = Vec::new();
        for run in reqs.chunk_by(|a, b| a.dedupe.is_some() == b.dedupe.is_some()) {
            if run[0].dedupe.is_some() {
                // Routed by the first marker: every key of the call shares
                // its stream's slot on a cluster.
                let first = run[0].dedupe.as_ref().map_or("", |d| d.key.as_str());
                let mut c = Cmd::keyed("EVALSHA", first);
                c.arg(script.sha.as_str()).arg(run.len() * 2);
                for r in run {
                    let key = r.dedupe.as_ref().map_or("", |d| d.key.as_str());
                    c.arg(key).arg(&r.stream);
                }
                for r in run {
                    c.arg(r.dedupe.as_ref().map_or(1, |d| ms(d.ttl)));
                    match r.maxlen {
                        Some(n) => c.arg(n),
                        None => c.arg(""),
                    };
                    c.arg(r.fields.len() * 2);
                    for (k, v) in &r.fields {
                        c.arg(k.as_str()).arg(v);
                    }
                }
                cmds.push(c);
                runs.push((true, run.len()));
            } else {
                for r in run {
                    let mut c = Cmd::keyed("XADD", &r.stream);
                    c.arg(&r.stream);
                    if let Some(n) = r.maxlen {
                        c.arg("MAXLEN").arg("~").arg(n);
                    }
                    c.arg("*");
                    for (k, v) in &r.fields {
                        c.arg(k.as_str()).arg(v);
                    }
                    cmds.push(c);
                    runs.push((false, 1));
                }
            }
        }
        let results = self.eval_pipeline(script, cmds, resend).await?;
        if results.iter().any(Result::is_ok) {
            self.wait_replicas().await?;
        }
        append_outcomes(
            runs,
            results
                .into_iter()
                .map(|r| r.map(to_redis_value).map_err(map_err)),
        )
    }
}
