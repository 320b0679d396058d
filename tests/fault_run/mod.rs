//! A run of the real binaries through a fault, shared by the end-to-end
//! tests of the Redis topologies (`e2e_sentinel`, `e2e_cluster`): a
//! producer publishing event `n` of every job in round `n` (retrying a
//! round until it is acknowledged), an SSE client following every job from
//! before its first event, and the exact check of what the router applied
//! (each job's history gap-free, `1..=total`). The fault itself is the
//! test's: it runs concurrently with [`Producer::run`], waiting for a round
//! with [`Producer::reached`], and can hold the producer back
//! ([`Producer::hold_from`], [`Producer::release`]) so that some rounds
//! are published only after the fault is over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use relay_core::backend::Backend;
use relay_core::{Event, JobId, KeySpace, Offset, PublishError, Publisher};
use tokio::sync::watch;

use crate::sse_clients::{follow, step, ClientPlan, ClientTask, LIMIT};

/// One SSE client per job, following it until `done` from before its first
/// event; every fourth drops its connection every five events and resumes,
/// every third reads CRLF line ends.
pub fn follow_every_job(addr: SocketAddr, jobs: &[String]) -> Vec<ClientTask> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client");
    jobs.iter()
        .enumerate()
        .map(|(j, job)| {
            let url = format!("http://{addr}/v1/jobs/{job}/events");
            let plan = ClientPlan {
                drop_every: (j % 4 == 0).then_some(5),
                crlf: j % 3 == 0,
                seed: j as u64 + 1,
            };
            let task = tokio::spawn(follow(http.clone(), url, plan, &["done"]));
            (job.clone(), "follower", task)
        })
        .collect()
}

/// Publishes `total` rounds (round `n`: event `n` of every job).
pub struct Producer {
    publisher: Publisher,
    jobs: Vec<String>,
    total: u64,
    /// Pause between two rounds.
    pause: Duration,
    /// Rounds acknowledged so far.
    published: watch::Sender<usize>,
    /// The highest round the producer may publish now.
    allowed: watch::Sender<usize>,
    retries: AtomicUsize,
}

impl Producer {
    /// A producer of `total` events for each of `jobs`, pausing `pause`
    /// between rounds.
    pub fn new(publisher: Publisher, jobs: &[String], total: u64, pause: Duration) -> Self {
        Self {
            publisher,
            jobs: jobs.to_vec(),
            total,
            pause,
            published: watch::Sender::new(0),
            allowed: watch::Sender::new(total as usize),
            retries: AtomicUsize::new(0),
        }
    }

    /// Publishes every round, retrying a round until it is acknowledged:
    /// every failure in between must be transient. Relay's apply is
    /// idempotent by seq, so a retried round whose first attempt did land
    /// is applied once.
    ///
    /// # Panics
    /// On a permanent error.
    pub async fn run(&self) {
        for n in 1..=self.total {
            let mut allowed = self.allowed.subscribe();
            allowed
                .wait_for(|&a| a >= n as usize)
                .await
                .expect("the producer owns the sender");
            let batch: Vec<Event> = self
                .jobs
                .iter()
                .map(|job| step(job, n, self.total))
                .collect();
            loop {
                match self.publisher.publish_batch(&batch).await {
                    Ok(_) => break,
                    Err(PublishError::Backend(e)) if e.is_transient() => {
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("round {n}: permanent error {e:?}"),
                }
            }
            self.published.send_replace(n as usize);
            tokio::time::sleep(self.pause).await;
        }
    }

    /// Waits until round `n` is acknowledged (hang guard: [`LIMIT`]).
    pub async fn reached(&self, n: usize) {
        let mut published = self.published.subscribe();
        tokio::time::timeout(LIMIT, published.wait_for(|&p| p >= n))
            .await
            .unwrap_or_else(|_| panic!("producer mid-run: round {n} not reached within {LIMIT:?}"))
            .expect("the producer owns the sender");
    }

    /// The producer publishes no round from `n` on until [`Self::release`].
    pub fn hold_from(&self, n: usize) {
        self.allowed.send_replace(n.saturating_sub(1));
    }

    /// Lets the producer publish every round.
    pub fn release(&self) {
        self.allowed.send_replace(self.total as usize);
    }

    /// Rounds acknowledged so far.
    pub fn published(&self) -> usize {
        *self.published.borrow()
    }

    /// Transient failures the producer retried.
    pub fn retries(&self) -> usize {
        self.retries.load(Ordering::Relaxed)
    }
}

/// Every job's history holds offsets `1..=total`, gap-free, each once:
/// every event the producer saw acknowledged was applied once.
///
/// # Panics
/// Naming the first job whose history differs.
pub async fn expect_gap_free_histories(
    backend: &dyn Backend,
    keys: &KeySpace,
    jobs: &[String],
    total: u64,
    when: &str,
) {
    for job in jobs {
        let id = JobId::new(job.clone()).expect("job id");
        let page = backend
            .read_history(&keys.job(&id), Offset(0), total as usize * 2)
            .await
            .expect("history");
        let offsets: Vec<u64> = page.records.iter().map(|r| r.offset.0).collect();
        assert_eq!(
            offsets,
            (1..=total).collect::<Vec<_>>(),
            "{job}: history {when}"
        );
    }
}
