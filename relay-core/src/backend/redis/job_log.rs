//! [`JobLog`] on Redis: the apply, state and history scripts.

use async_trait::async_trait;
use redis::Cmd;

use super::conn::{evalsha, ms, Resend};
use super::error::map_err;
use super::reply::{apply_results, history_reply, state_reply};
use super::scripts::{ttl_refresh_ms, MAX_SCRIPT_OFFSET};
use super::RedisBackend;
use crate::backend::{
    AckRequest, ApplyJob, ApplyOptions, ApplyResult, BackendResult, HistoryPage, JobLog, JobState,
};
use crate::event::Offset;
use crate::keys::JobKeys;

impl RedisBackend {
    /// The apply script over `jobs` (one call on a single server, one per
    /// job on a cluster), acking `ack` in the same call when given (single
    /// server only).
    pub(super) async fn apply_scripted(
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
                .arg(jobs.len() * 2 + usize::from(ack.is_some()));
            for job in jobs {
                let k = &job.keys;
                // No state string: the job hash stands in (same slot).
                c.arg(&k.meta).arg(k.state.as_deref().unwrap_or(&k.meta));
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
                    .arg(&job.keys.live)
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
        let cmds: Vec<Cmd> = if self.per_slot() {
            jobs.chunks(1).map(|one| call(one, None)).collect()
        } else {
            vec![call(jobs, ack)]
        };
        let replies = self.eval_pipeline(script, cmds, Resend::AfterDrop).await?;
        apply_results(jobs, replies.into_iter().map(|r| r.map_err(map_err)))
    }
}

#[async_trait]
impl JobLog for RedisBackend {
    async fn apply(
        &self,
        jobs: &[ApplyJob],
        opts: &ApplyOptions,
    ) -> BackendResult<Vec<ApplyResult>> {
        self.apply_scripted(jobs, opts, None).await
    }

    async fn get_state(&self, keys: &JobKeys) -> BackendResult<Option<JobState>> {
        let script = &self.inner.scripts.get_state;
        let c = evalsha(script, &[&keys.meta]);
        let v = self.eval_one(script, c, None, Resend::AfterDrop).await?;
        state_reply(&v)
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
        history_reply(&v)
    }
}
