//! Jittered exponential backoff between retries of a failing backend call.

use std::time::Duration;

/// Exponential backoff between retries of a failing backend call.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    pub(super) fn new() -> Self {
        Self { next: Self::MIN }
    }

    pub(super) fn reset(&mut self) {
        self.next = Self::MIN;
    }

    pub(super) async fn wait(&mut self) {
        let jitter = rand::random::<u64>() % (self.next.as_millis() as u64 / 4 + 1);
        tokio::time::sleep(self.next + Duration::from_millis(jitter)).await;
        self.next = (self.next * 2).min(Self::MAX);
    }
}
