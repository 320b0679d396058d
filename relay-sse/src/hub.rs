//! The multiplexed live subscription: one subscriber per gateway process
//! (one connection, or one per master on a Redis Cluster), per-job
//! channel subscriptions refcounted across clients, a
//! non-blocking fan-out, reconnect with backoff and a liveness probe.
//!
//! After every (re)connection each registered client is told to re-run its
//! catch-up (messages published while the subscription was down were missed).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::backend::{Backend, PubSubMessage, SubscriberHandle};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::frame::LiveMsg;
use crate::metrics::Metrics;

/// Timing of the subscriber supervisor.
#[derive(Clone, Debug)]
pub(crate) struct HubOptions {
    /// Channel the probe is published to (unique per process).
    pub probe_channel: String,
    /// Probe when no message arrived for this long; a probe not seen back
    /// within the same time means the connection is dead.
    pub probe_interval: Duration,
    /// Bound on subscribe/unsubscribe/connect calls.
    pub op_timeout: Duration,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
}

/// Out-of-band signal to one client: re-run catch-up.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    resync: AtomicBool,
    overflow: AtomicBool,
    notify: Notify,
}

impl Signal {
    fn raise(&self) {
        self.resync.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// The client's live inbox overflowed: it must catch up from history,
    /// and a client stuck writing is slow.
    fn raise_overflow(&self) {
        self.overflow.store(true, Ordering::Release);
        self.raise();
    }

    /// Wakes the next [`Signal::notified`] again (after consuming a
    /// notification that was not handled).
    pub fn renotify(&self) {
        self.notify.notify_one();
    }

    /// Takes the overflow mark, if any (the resync request stays).
    pub fn take_overflow(&self) -> bool {
        self.overflow.swap(false, Ordering::AcqRel)
    }

    /// Takes the resync request, if any.
    pub fn take(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }

    /// Waits until raised (a raise before the call is not lost).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// One client's registration: its live inbox and its signal.
struct Slot {
    tx: mpsc::Sender<Arc<LiveMsg>>,
    signal: Arc<Signal>,
}

/// Requests to the supervisor.
enum Ctl {
    /// Subscribe to the channel (if not yet), then answer.
    Ensure(String, oneshot::Sender<()>),
    /// Unsubscribe from the channel, unless a client joined it again.
    Release(String),
}

/// What the hub handle, the supervisor and the reader task share.
struct Shared {
    /// Registered clients by channel, then by id.
    clients: RwLock<HashMap<String, HashMap<u64, Slot>>>,
    ready: AtomicBool,
    metrics: Arc<Metrics>,
    /// Highest probe token received back.
    probe_seen: AtomicU64,
    /// Last message time, ms since `origin`.
    last_msg: AtomicU64,
    origin: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn raise_all(&self) {
        let map = self.clients.read().unwrap_or_else(|p| p.into_inner());
        for slots in map.values() {
            for slot in slots.values() {
                slot.signal.raise();
            }
        }
    }

    fn fanout(&self, msg: PubSubMessage) {
        let map = self.clients.read().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = map.get(&msg.channel) {
            // Decoded once, framed at most once per framing, shared by all.
            let live = Arc::new(LiveMsg::new(&msg.payload));
            for slot in slots.values() {
                match slot.tx.try_send(live.clone()) {
                    Ok(()) => {}
                    // The client is busy: it recovers the message from history.
                    Err(mpsc::error::TrySendError::Full(_)) => slot.signal.raise_overflow(),
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }
}

/// Handle to the subscriber supervisor. Dropping the last handle stops it.
pub(crate) struct Hub {
    shared: Arc<Shared>,
    ctl: mpsc::UnboundedSender<Ctl>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// A client's registration on one live channel. Dropping it leaves.
pub(crate) struct Membership {
    hub: Arc<Hub>,
    channel: String,
    id: u64,
    /// Live messages for the channel.
    pub rx: mpsc::Receiver<Arc<LiveMsg>>,
    /// Raised when the client must re-run catch-up.
    pub signal: Arc<Signal>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let shared = &self.hub.shared;
        let mut map = shared.clients.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = map.get_mut(&self.channel) {
            slots.remove(&self.id);
            if slots.is_empty() {
                map.remove(&self.channel);
                let _ = self.hub.ctl.send(Ctl::Release(self.channel.clone()));
            }
        }
    }
}

impl Hub {
    /// Starts the supervisor on `backend` (the Pub/Sub server).
    pub fn start(backend: Arc<dyn Backend>, opts: HubOptions, metrics: Arc<Metrics>) -> Arc<Hub> {
        let shared = Arc::new(Shared {
            clients: RwLock::new(HashMap::new()),
            ready: AtomicBool::new(false),
            metrics,
            probe_seen: AtomicU64::new(0),
            last_msg: AtomicU64::new(0),
            origin: Instant::now(),
        });
        let (ctl, rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise(shared.clone(), backend, opts, rx));
        Arc::new(Hub {
            shared,
            ctl,
            next_id: AtomicU64::new(1),
        })
    }

    /// Whether the subscriber connection is up.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Registers a client on `channel` with an inbox of `capacity` messages
    /// and returns once the channel is subscribed (or the connection is down,
    /// in which case the client is signalled after the reconnect).
    pub async fn join(self: &Arc<Self>, channel: String, capacity: usize) -> Membership {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let signal = Arc::new(Signal::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = self
                .shared
                .clients
                .write()
                .unwrap_or_else(|p| p.into_inner());
            map.entry(channel.clone()).or_default().insert(
                id,
                Slot {
                    tx,
                    signal: signal.clone(),
                },
            );
        }
        let (done, wait) = oneshot::channel();
        if self.ctl.send(Ctl::Ensure(channel.clone(), done)).is_ok() {
            let _ = wait.await;
        }
        Membership {
            hub: self.clone(),
            channel,
            id,
            rx,
            signal,
        }
    }
}

/// The current subscriber connection.
struct Conn {
    handle: Box<dyn SubscriberHandle>,
    reader: JoinHandle<()>,
    generation: u64,
}

/// The supervisor task: (re)connects with backoff, subscribes and
/// unsubscribes channels on request, probes liveness, and tells every
/// client to re-run catch-up after a reconnect.
async fn supervise(
    shared: Arc<Shared>,
    backend: Arc<dyn Backend>,
    opts: HubOptions,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let min_backoff = Duration::from_millis(50);
    let mut backoff = min_backoff;
    let mut retry_at = tokio::time::Instant::now();
    let mut conn: Option<Conn> = None;
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut generation = 0u64;
    let mut connected_once = false;
    let (dead_tx, mut dead_rx) = mpsc::unbounded_channel::<u64>();
    let mut probe: Option<(u64, Instant)> = None;
    let mut token = 0u64;
    let mut tick = tokio::time::interval((opts.probe_interval / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let down = |conn: &mut Option<Conn>, subscribed: &mut HashSet<String>, why: &str| {
        if let Some(c) = conn.take() {
            tracing::warn!(reason = why, "subscriber connection down; reconnecting");
            c.reader.abort();
        }
        subscribed.clear();
        shared.ready.store(false, Ordering::Release);
        shared.metrics.subscriber_up.set(0);
    };

    loop {
        if conn.is_none() && tokio::time::Instant::now() >= retry_at {
            match connect(&shared, &backend, &opts, generation + 1, dead_tx.clone()).await {
                Ok((c, channels)) => {
                    generation = c.generation;
                    subscribed = channels;
                    conn = Some(c);
                    probe = None;
                    shared.ready.store(true, Ordering::Release);
                    shared.metrics.subscriber_up.set(1);
                    if connected_once {
                        shared.metrics.subscriber_reconnects.inc();
                        tracing::info!(generation, "subscriber reconnected");
                    }
                    connected_once = true;
                    // Anything published while we were not subscribed was missed.
                    shared.raise_all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "subscriber connect failed");
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(opts.max_backoff);
                }
            }
        }
        let sleep = tokio::time::sleep_until(retry_at);
        tokio::select! {
            cmd = ctl.recv() => match cmd {
                None => break,
                Some(Ctl::Ensure(channel, done)) => {
                    if let Some(c) = &conn {
                        if !subscribed.contains(&channel) {
                            let r = tokio::time::timeout(
                                opts.op_timeout,
                                c.handle.subscribe(std::slice::from_ref(&channel)),
                            ).await;
                            match r {
                                Ok(Ok(())) => { subscribed.insert(channel); }
                                _ => {
                                    down(&mut conn, &mut subscribed, "subscribe failed");
                                    retry_at = tokio::time::Instant::now();
                                }
                            }
                        }
                    }
                    let _ = done.send(());
                }
                Some(Ctl::Release(channel)) => {
                    let still_used = shared
                        .clients
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains_key(&channel);
                    if !still_used && subscribed.remove(&channel) {
                        if let Some(c) = &conn {
                            let r = tokio::time::timeout(
                                opts.op_timeout,
                                c.handle.unsubscribe(std::slice::from_ref(&channel)),
                            ).await;
                            if !matches!(r, Ok(Ok(()))) {
                                down(&mut conn, &mut subscribed, "unsubscribe failed");
                                retry_at = tokio::time::Instant::now();
                            }
                        }
                    }
                }
            },
            Some(g) = dead_rx.recv() => {
                if conn.as_ref().map(|c| c.generation) == Some(g) {
                    down(&mut conn, &mut subscribed, "message stream ended");
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(opts.max_backoff);
                }
            }
            _ = tick.tick() => {
                if conn.is_some() {
                    if let Some((t, sent)) = probe {
                        if shared.probe_seen.load(Ordering::Acquire) >= t {
                            probe = None;
                            backoff = min_backoff; // the connection proved alive
                        } else if sent.elapsed() >= opts.probe_interval {
                            down(&mut conn, &mut subscribed, "liveness probe missed");
                            probe = None;
                            retry_at = tokio::time::Instant::now();
                        }
                    } else {
                        let idle = shared.now_ms().saturating_sub(shared.last_msg.load(Ordering::Acquire));
                        if idle >= opts.probe_interval.as_millis() as u64 {
                            token += 1;
                            let r = tokio::time::timeout(
                                opts.op_timeout,
                                backend.publish(&opts.probe_channel, Bytes::from(token.to_string())),
                            ).await;
                            if matches!(r, Ok(Ok(()))) {
                                probe = Some((token, Instant::now()));
                            }
                        }
                    }
                }
            }
            _ = sleep, if conn.is_none() => {}
        }
    }
    if let Some(c) = conn.take() {
        c.reader.abort();
    }
    shared.ready.store(false, Ordering::Release);
}

/// Opens a subscriber connection subscribed to every registered channel
/// (and the probe channel), with a reader task fanning messages out.
async fn connect(
    shared: &Arc<Shared>,
    backend: &Arc<dyn Backend>,
    opts: &HubOptions,
    generation: u64,
    dead: mpsc::UnboundedSender<u64>,
) -> Result<(Conn, HashSet<String>), String> {
    let sub = tokio::time::timeout(opts.op_timeout, backend.subscriber())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut channels: HashSet<String> = shared
        .clients
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    let mut list: Vec<String> = channels.iter().cloned().collect();
    list.push(opts.probe_channel.clone());
    // Subscribe in bounded batches so a huge reconnect is not one command.
    for batch in list.chunks(1024) {
        tokio::time::timeout(opts.op_timeout, sub.handle.subscribe(batch))
            .await
            .map_err(|_| "subscribe timed out".to_owned())?
            .map_err(|e| e.to_string())?;
    }
    channels.remove(&opts.probe_channel);
    let mut messages = sub.messages;
    let probe_channel = opts.probe_channel.clone();
    let sh = shared.clone();
    shared.last_msg.store(shared.now_ms(), Ordering::Release);
    let reader = tokio::spawn(async move {
        while let Some(msg) = messages.recv().await {
            sh.last_msg.store(sh.now_ms(), Ordering::Release);
            if msg.channel == probe_channel {
                if let Some(t) = std::str::from_utf8(&msg.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    sh.probe_seen.fetch_max(t, Ordering::AcqRel);
                }
                continue;
            }
            sh.fanout(msg);
        }
        let _ = dead.send(generation);
    });
    Ok((
        Conn {
            handle: sub.handle,
            reader,
            generation,
        },
        channels,
    ))
}
