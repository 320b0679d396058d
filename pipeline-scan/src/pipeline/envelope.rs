//! The message a transport moves between stages.

use relay_core::JobId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The message a transport moves between stages: one step of one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The job.
    pub job_id: JobId,
    /// The submitting user.
    pub user_id: String,
    /// 0-based index of the stage to run.
    pub stage: usize,
    /// 1-based attempt of that stage.
    pub attempt: u32,
    /// The stage input (the previous stage's output), JSON.
    pub input: Value,
    /// W3C traceparent of the submitting request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The job's run: 0 for the original run, +1 for each dead-letter replay.
    /// Every event of run `r` has its seq shifted by `r ×`
    /// [`SeqScheme::run_stride`](super::SeqScheme::run_stride), so a replayed run's events are new events
    /// (not deduplicated against the failed run's) and its terminal event
    /// outranks the earlier `failed` in the router state (see
    /// [`SeqScheme::in_run`](super::SeqScheme::in_run)).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Envelope {
    /// The first step of a new job.
    pub fn first(job_id: JobId, user_id: impl Into<String>, input: Value) -> Self {
        Self {
            job_id,
            user_id: user_id.into(),
            stage: 0,
            attempt: 1,
            input,
            traceparent: None,
            run: 0,
        }
    }

    /// This dead-lettered step prepared for a replay: the next run, attempt 1.
    pub fn into_replay(mut self) -> Self {
        self.run = self.run.saturating_add(1);
        self.attempt = 1;
        self
    }
}
