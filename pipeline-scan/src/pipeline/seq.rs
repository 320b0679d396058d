//! The event seq scheme of a pipeline's jobs, runs included.

/// The event seq scheme of an `n`-stage pipeline (stage indices 1-based):
/// queued 0; stage `i` started `10i`, completed `10i+1`, failed `10i+2`;
/// job done `10(n+1)+1`; job failed `10(n+1)+9`. For the four scan stages this
/// is exactly the eco2 scheme (vision 10/11/12 … done 51, failed 59).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqScheme {
    stages: u64,
}

impl SeqScheme {
    /// The scheme for `stages` stages.
    pub fn new(stages: usize) -> Self {
        Self {
            stages: stages as u64,
        }
    }

    /// The `queued` event.
    pub fn queued(&self) -> u64 {
        0
    }

    /// Stage `i` (1-based) started.
    pub fn started(&self, i: usize) -> u64 {
        10 * i as u64
    }

    /// Stage `i` (1-based) completed.
    pub fn completed(&self, i: usize) -> u64 {
        10 * i as u64 + 1
    }

    /// Stage `i` (1-based) failed for good.
    pub fn failed(&self, i: usize) -> u64 {
        10 * i as u64 + 2
    }

    /// The job's `done` (completed) event.
    pub fn done(&self) -> u64 {
        10 * (self.stages + 1) + 1
    }

    /// The job's terminal failure (`done` stage, status failed).
    pub fn job_failed(&self) -> u64 {
        10 * (self.stages + 1) + 9
    }

    /// The seq distance between two runs of a job: the smallest power of ten
    /// above [`job_failed`](Self::job_failed) (100 for the scan pipeline).
    pub fn run_stride(&self) -> u64 {
        let mut stride = 10;
        while stride <= self.job_failed() {
            stride *= 10;
        }
        stride
    }

    /// `seq` as emitted in run `run` of a job (0: the original run; `r`: the
    /// `r`-th dead-letter replay): `seq + run × run_stride`.
    ///
    /// Why runs shift seqs: a replay happens after the job's terminal
    /// `failed` (seq 59 for scans) was published. Re-using the original seqs
    /// would make the publisher and the router drop the replay's events as
    /// duplicates of the failed run's (the restarted stage's `started`), and
    /// the replay's `done` (51) would rank below `failed` (59), so the router
    /// state — which keeps the highest seq (G3) — would keep saying `failed`
    /// after the job completed. Shifted, run `r`'s events are new (job, seq)
    /// pairs appended after the failed run's in the history, and its terminal
    /// event has the highest seq of the job, so the state, the `/state`
    /// route, the result API and a gateway snapshot all agree on the outcome.
    /// Run 0 is exactly the eco2 scheme; stage, status, progress and the SSE
    /// event names are unchanged in every run, so eco2 clients (which read
    /// those, not seq) work unchanged. A replay of the same dead letter twice
    /// (crash between re-enqueue and ack) uses the same run, so its events
    /// deduplicate.
    pub fn in_run(&self, seq: u64, run: u32) -> u64 {
        seq + u64::from(run) * self.run_stride()
    }

    /// Progress percentage when stage `i` (1-based) starts.
    pub fn progress_started(&self, i: usize) -> u8 {
        (100 * (i as u64 - 1).min(self.stages) / self.stages.max(1)) as u8
    }

    /// Progress percentage when stage `i` (1-based) completes.
    pub fn progress_completed(&self, i: usize) -> u8 {
        (100 * (i as u64).min(self.stages) / self.stages.max(1)) as u8
    }
}

/// The stage name of the event the API emits when a job is accepted.
pub const QUEUED_STAGE: &str = "queued";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_scheme_matches_eco2_for_four_stages() {
        let s = SeqScheme::new(4);
        for (i, name) in ["vision", "rule", "answer", "reward"].iter().enumerate() {
            let i = i + 1;
            assert_eq!(s.started(i), relay_core::eco2::seq_for(name, "started"));
            assert_eq!(s.completed(i), relay_core::eco2::seq_for(name, "completed"));
            assert_eq!(s.failed(i), relay_core::eco2::seq_for(name, "failed"));
        }
        assert_eq!(s.queued(), relay_core::eco2::seq_for("queued", "started"));
        assert_eq!(s.done(), relay_core::eco2::seq_for("done", "completed"));
        assert_eq!(s.job_failed(), relay_core::eco2::seq_for("done", "failed"));
        assert_eq!(s.run_stride(), 100);
        assert_eq!(s.in_run(s.done(), 0), 51);
        assert_eq!(s.in_run(s.done(), 1), 151);
        assert!(s.in_run(s.queued(), 1) > s.job_failed());
        assert_eq!(SeqScheme::new(9).run_stride(), 1000);
        assert_eq!(s.progress_started(1), 0);
        assert_eq!(s.progress_completed(1), 25);
        assert_eq!(s.progress_completed(4), 100);
    }
}
