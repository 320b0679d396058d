//! The in-process transport: a bounded channel and a pool of tokio workers per
//! stage. The embedded default for the demo and tests.
//!
//! Retries sleep in a tracked task and re-enter the stage's channel; dead
//! letters are kept in memory ([`InProcess::dead_letters`],
//! [`InProcess::replay_dead_letters`]). Nothing is durable: steps still queued
//! when the process exits are lost (use the AMQP transport for durability).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Transport, TransportError};
use crate::pipeline::{Disposition, Engine, Envelope};

/// Worker pool sizes and channel bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InProcessConfig {
    /// Capacity of each stage's channel (submissions wait when it is full).
    pub capacity: usize,
    /// Workers per stage unless overridden.
    pub concurrency: usize,
    /// Per-stage worker counts by stage name.
    pub stage_concurrency: Vec<(String, usize)>,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            concurrency: 16,
            stage_concurrency: Vec::new(),
        }
    }
}

/// A step that failed for good.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The failed step.
    pub envelope: Envelope,
    /// Why it failed.
    pub reason: String,
}

struct Inner {
    engine: Arc<Engine>,
    senders: Vec<mpsc::Sender<Envelope>>,
    dlq: Mutex<Vec<DeadLetter>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// The in-process transport and its running workers. Cloning shares them.
#[derive(Clone)]
pub struct InProcess {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("stages", &self.inner.engine.stage_names())
            .finish_non_exhaustive()
    }
}

impl InProcess {
    /// Starts the worker pools (must be called inside a tokio runtime).
    pub fn start(engine: Arc<Engine>, config: InProcessConfig) -> Self {
        let names = engine.stage_names();
        let mut senders = Vec::with_capacity(names.len());
        let mut receivers = Vec::with_capacity(names.len());
        for _ in &names {
            let (tx, rx) = mpsc::channel(config.capacity.max(1));
            senders.push(tx);
            receivers.push(Arc::new(tokio::sync::Mutex::new(rx)));
        }
        let inner = Arc::new(Inner {
            engine,
            senders,
            dlq: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        for (idx, (name, rx)) in names.iter().zip(receivers).enumerate() {
            let workers = config
                .stage_concurrency
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| *c)
                .unwrap_or(config.concurrency)
                .max(1);
            for _ in 0..workers {
                let inner = inner.clone();
                let rx = rx.clone();
                inner.tracker.clone().spawn(worker(inner, idx, rx));
            }
        }
        Self { inner }
    }

    /// Steps that failed for good, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.inner.dlq).clone()
    }

    /// Re-runs every dead-lettered step from its failed stage as the job's
    /// next run (attempt 1, seqs shifted: see
    /// [`SeqScheme::in_run`](crate::pipeline::SeqScheme::in_run)), clearing
    /// the job's terminal marker so it can complete. Returns how many were
    /// replayed.
    pub async fn replay_dead_letters(&self) -> Result<usize, TransportError> {
        let letters: Vec<DeadLetter> = std::mem::take(&mut *lock(&self.inner.dlq));
        let n = letters.len();
        for letter in letters {
            let env = letter.envelope.into_replay();
            self.inner
                .engine
                .control()
                .store()
                .clear_terminal(&env.job_id)
                .await
                .map_err(TransportError::Store)?;
            send(&self.inner, env).await?;
        }
        Ok(n)
    }

    /// Stops taking new steps, lets running steps finish, and waits for the
    /// workers to exit. Pending retries are dropped.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn send(inner: &Inner, env: Envelope) -> Result<(), TransportError> {
    let tx = inner
        .senders
        .get(env.stage)
        .ok_or(TransportError::UnknownStage(env.stage))?;
    tokio::select! {
        r = tx.send(env) => r.map_err(|_| TransportError::Closed),
        _ = inner.shutdown.cancelled() => Err(TransportError::Closed),
    }
}

async fn worker(
    inner: Arc<Inner>,
    idx: usize,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Envelope>>>,
) {
    loop {
        let env = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            env = async { rx.lock().await.recv().await } => match env {
                Some(env) => env,
                None => return,
            },
        };
        let disposition = inner.engine.process(env).await;
        match disposition {
            Disposition::Finished => {}
            Disposition::Forward(next) => {
                if let Err(e) = send(&inner, next).await {
                    tracing::warn!(stage = idx, error = %e, "in-process forward dropped");
                }
            }
            Disposition::Retry { envelope, delay } => {
                let inner2 = inner.clone();
                inner.tracker.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {
                            if let Err(e) = send(&inner2, envelope).await {
                                tracing::warn!(error = %e, "in-process retry dropped");
                            }
                        }
                        _ = inner2.shutdown.cancelled() => {}
                    }
                });
            }
            Disposition::DeadLetter { envelope, reason } => {
                tracing::warn!(job = %envelope.job_id, stage = idx, %reason, "dead-lettered");
                lock(&inner.dlq).push(DeadLetter { envelope, reason });
            }
        }
    }
}

#[async_trait]
impl Transport for InProcess {
    fn name(&self) -> &'static str {
        "in-process"
    }

    async fn submit(&self, envelope: Envelope) -> Result<(), TransportError> {
        send(&self.inner, envelope).await
    }
}
