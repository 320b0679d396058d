//! [`JobLog`] in memory: the job hash semantics of the Redis apply script.

use std::time::Instant;

use async_trait::async_trait;

use super::*;
use crate::backend::*;

#[async_trait]
impl JobLog for MemoryBackend {
    async fn apply(
        &self,
        jobs: &[ApplyJob],
        opts: &ApplyOptions,
    ) -> BackendResult<Vec<ApplyResult>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tick(now);
        Ok(jobs
            .iter()
            .map(|job| inner.apply_job(job, opts, now))
            .collect())
    }

    async fn get_state(&self, keys: &JobKeys) -> BackendResult<Option<JobState>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(d) = get_live(&mut inner.jobs, &keys.meta, now) else {
            return Ok(None);
        };
        let Some((seq, record)) = &d.state else {
            return Ok(None);
        };
        Ok(Some(JobState {
            epoch: Epoch(d.epoch),
            top: Offset(d.top),
            seq: *seq,
            record: record.clone(),
        }))
    }

    async fn read_history(
        &self,
        keys: &JobKeys,
        after: Offset,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(d) = get_live(&mut inner.jobs, &keys.meta, now) else {
            return Ok(HistoryPage::default());
        };
        Ok(HistoryPage {
            epoch: Some(Epoch(d.epoch)),
            top: Offset(d.top),
            first: d.hist.front().map(|r| r.offset),
            records: d
                .hist
                .iter()
                .filter(|r| r.offset > after)
                .take(limit)
                .cloned()
                .collect(),
        })
    }
}
