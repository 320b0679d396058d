//! The job store: per-job records in the backend that make redelivery
//! idempotent.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use relay_core::backend::KvStore;
use relay_core::{BackendError, Domain, JobId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Per-job bookkeeping in a key-value store that makes redelivery
/// idempotent: stage completion records (with the stage output) and the
/// terminal marker.
#[derive(Clone)]
pub struct JobStore {
    kv: Arc<dyn KvStore>,
    domain: Domain,
    ttl: Duration,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// A job's terminal outcome as recorded in its marker (so a redelivered
/// step can re-emit exactly the same terminal event after a crash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalRecord {
    /// True for `done`, false for the terminal failure.
    pub done: bool,
    /// The failed stage (failures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The failure reason (failures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The run that reached this outcome (its terminal event's seq is shifted
    /// by it; see [`Envelope::run`](super::Envelope::run)).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
}

/// A job's records as a step finds them ([`JobStore::step_records`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecords {
    /// The job's terminal outcome, once it has one.
    pub terminal: Option<TerminalRecord>,
    /// The stage's recorded output and `completed` event data, once it
    /// completed.
    pub completed: Option<(Value, Value)>,
}

/// A stored terminal marker; an unreadable one counts as a failure (the
/// job must not run again).
fn terminal_record(raw: &[u8]) -> TerminalRecord {
    serde_json::from_slice(raw).unwrap_or(TerminalRecord {
        done: false,
        stage: None,
        error: Some("unreadable terminal record".into()),
        run: 0,
    })
}

/// A stored stage record; an unreadable one counts as not completed (the
/// stage runs again).
fn stage_record(raw: &[u8]) -> Option<(Value, Value)> {
    serde_json::from_slice::<StageRecord>(raw)
        .ok()
        .map(|r| (r.o, r.d))
}

/// A completed stage's record: its output and its `completed` event data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StageRecord {
    o: Value,
    d: Value,
}

impl JobStore {
    /// A store in `kv` for `domain`, records living `ttl`.
    pub fn new(kv: Arc<dyn KvStore>, domain: Domain, ttl: Duration) -> Self {
        Self { kv, domain, ttl }
    }

    /// The key-value store the records live in.
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    fn stage_key(&self, job: &JobId, stage: usize) -> String {
        format!("pipeline:{}:{{{}}}:stage:{stage}", self.domain, job)
    }

    fn terminal_key(&self, job: &JobId) -> String {
        format!("pipeline:{}:{{{}}}:terminal", self.domain, job)
    }

    /// The recorded output and `completed` event data of a completed stage.
    pub async fn completed(
        &self,
        job: &JobId,
        stage: usize,
    ) -> Result<Option<(Value, Value)>, BackendError> {
        let raw = self.kv.get(&self.stage_key(job, stage)).await?;
        Ok(raw.as_deref().and_then(stage_record))
    }

    /// What a step needs to know before it runs, read in one round trip:
    /// the job's terminal record and the stage's completion record.
    pub async fn step_records(
        &self,
        job: &JobId,
        stage: usize,
    ) -> Result<StepRecords, BackendError> {
        let keys = [self.terminal_key(job), self.stage_key(job, stage)];
        let values = self.kv.get_many(&keys).await?;
        // A short answer must not read as "no terminal record": the step
        // would run again.
        let [terminal, completed]: [Option<Bytes>; 2] =
            values.try_into().map_err(|v: Vec<_>| {
                BackendError::Protocol(
                    format!("get_many answered {} values for 2 keys", v.len()).into(),
                )
            })?;
        Ok(StepRecords {
            terminal: terminal.as_deref().map(terminal_record),
            completed: completed.as_deref().and_then(stage_record),
        })
    }

    /// Records a stage's completion with its output and event data.
    pub async fn record_completed(
        &self,
        job: &JobId,
        stage: usize,
        output: &Value,
        data: &Value,
    ) -> Result<(), BackendError> {
        let rec = StageRecord {
            o: output.clone(),
            d: data.clone(),
        };
        let raw = serde_json::to_vec(&rec).unwrap_or_default();
        self.kv
            .set(
                &self.stage_key(job, stage),
                Bytes::from(raw),
                Some(self.ttl),
            )
            .await
    }

    /// Claims the job's terminal outcome atomically (`SET NX`). Returns the
    /// record in force: `record` itself when this call claimed it, or the
    /// earlier one.
    pub(super) async fn claim_terminal(
        &self,
        job: &JobId,
        record: TerminalRecord,
    ) -> Result<TerminalRecord, BackendError> {
        let key = self.terminal_key(job);
        let raw = serde_json::to_vec(&record).unwrap_or_default();
        if self
            .kv
            .set_nx(&key, Bytes::from(raw), Some(self.ttl))
            .await?
        {
            return Ok(record);
        }
        Ok(self.terminal_record(job).await?.unwrap_or(record))
    }

    /// The job's terminal record, if it has one.
    pub async fn terminal_record(
        &self,
        job: &JobId,
    ) -> Result<Option<TerminalRecord>, BackendError> {
        let raw = self.kv.get(&self.terminal_key(job)).await?;
        Ok(raw.as_deref().map(terminal_record))
    }

    /// The job's terminal outcome if it has one: `Some(true)` done, `Some(false)` failed.
    pub async fn terminal(&self, job: &JobId) -> Result<Option<bool>, BackendError> {
        Ok(self.terminal_record(job).await?.map(|r| r.done))
    }

    /// Clears the terminal marker so a replayed job can finish (dead-letter replay).
    pub async fn clear_terminal(&self, job: &JobId) -> Result<(), BackendError> {
        self.kv.delete(&[self.terminal_key(job)]).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::backend::BackendResult;

    /// A store whose `get_many` answers one value fewer than asked.
    struct ShortAnswers;

    #[async_trait::async_trait]
    impl KvStore for ShortAnswers {
        async fn set_nx(&self, _: &str, _: Bytes, _: Option<Duration>) -> BackendResult<bool> {
            Ok(true)
        }
        async fn set(&self, _: &str, _: Bytes, _: Option<Duration>) -> BackendResult<()> {
            Ok(())
        }
        async fn get(&self, _: &str) -> BackendResult<Option<Bytes>> {
            Ok(None)
        }
        async fn delete(&self, _: &[String]) -> BackendResult<u64> {
            Ok(0)
        }
        async fn get_many(&self, keys: &[String]) -> BackendResult<Vec<Option<Bytes>>> {
            Ok(vec![None; keys.len().saturating_sub(1)])
        }
    }

    #[tokio::test]
    async fn a_short_answer_is_a_protocol_error_not_a_missing_record() {
        let store = JobStore::new(
            Arc::new(ShortAnswers),
            Domain::new("scan").expect("domain"),
            Duration::from_secs(60),
        );
        let job = JobId::new("job-1").expect("job id");
        match store.step_records(&job, 0).await {
            Err(BackendError::Protocol(e)) => {
                assert!(e.to_string().contains("1 values for 2 keys"), "{e}")
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }
}
