//! [`PubSub`] on fred: pipelined `PUBLISH`, and dedicated subscriber
//! clients: one per [`PubSub::subscriber`] call on a single server, one per
//! master on a cluster (classic `SUBSCRIBE`, each channel on the master
//! serving its slot at the time; see `RedisBackend`'s `pubsub` for why
//! that keeps working when slots move).
//!
//! ## What fred changes, and how the contract still holds
//! - fred writes `SUBSCRIBE`/`UNSUBSCRIBE` and drops their replies, so the
//!   call returns before the server acted on it. The handle follows each
//!   with a `PING` on the same connection: its answer comes after the
//!   server processed the subscription, so a message published after
//!   [`SubscriberHandle::subscribe`] returned reaches the subscriber.
//! - A subscriber client has no reconnection: fred would resubscribe by
//!   itself and hide the messages lost meanwhile. Its connection ending
//!   ends [`Subscriber::messages`], and so does a missed liveness probe (a
//!   `PING` every few seconds, for a node that vanished without closing the
//!   TCP connection, or a subscription fred dropped without telling), so
//!   the owner resubscribes and recovers from history.
//! - fred hands messages over through a bounded broadcast; a forwarder that
//!   falls behind it has lost messages and ends the subscriber too. Memory
//!   stays bounded: the broadcast, plus [`SUBSCRIBER_CAPACITY`] messages,
//!   plus a grace period before a subscriber that does not read is closed.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::cluster::ClusterRouting;
use fred::types::{ClusterHash, CustomCommand, Message, Value};
use tokio::sync::{broadcast, mpsc, watch};

use super::cmd::Cmd;
use super::conn::{Dedicated, Resend};
use super::error::map_err;
use super::reply::owned_bytes;
use super::topology;
use super::FredBackend;
use crate::backend::redis::{RedisTopology, SUBSCRIBER_CAPACITY};
use crate::backend::{BackendResult, PubSub, PubSubMessage, Subscriber, SubscriberHandle};
use crate::error::BackendError;
use crate::keys::slot;

/// How long the forwarding task waits for room in a full message channel
/// before it closes the subscription (as RedisBackend).
const SUBSCRIBER_FULL_GRACE: Duration = Duration::from_secs(5);

/// How often each subscriber connection is probed with `PING`, and how
/// long the answer may take.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// `PING` on a subscriber connection (allowed in subscribed mode; fred
/// passes its `["pong", ""]` answer through).
fn ping() -> CustomCommand {
    CustomCommand::new_static("PING", ClusterHash::Random, false)
}

/// Waits for a `PING` answer on `client`'s connection, within `limit`.
async fn ping_within(client: &Client, limit: Duration) -> BackendResult<()> {
    match tokio::time::timeout(limit, client.custom::<Value, Value>(ping(), Vec::new())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(map_err(e)),
        Err(_) => Err(BackendError::Connection(
            format!("subscriber connection did not answer PING within {limit:?}").into(),
        )),
    }
}

/// One subscriber connection's control side.
#[derive(Clone)]
struct Control {
    client: Client,
    /// Bound on the confirming `PING`.
    timeout: Duration,
}

impl Control {
    /// (Un)subscribes `channels`, then waits until the server has done it.
    async fn change(&self, channels: Vec<String>, subscribe: bool) -> BackendResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        let r = if subscribe {
            self.client.subscribe(channels).await
        } else {
            self.client.unsubscribe(channels).await
        };
        r.map_err(map_err)?;
        ping_within(&self.client, self.timeout).await
    }
}

#[async_trait]
impl SubscriberHandle for Control {
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()> {
        self.change(channels.to_vec(), true).await
    }

    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()> {
        self.change(channels.to_vec(), false).await
    }
}

/// A cluster subscriber's control side: each channel goes to the master
/// that served its slot when the subscriber opened.
struct ClusterControl {
    routing: ClusterRouting,
    /// One per master, with its `host:port`.
    nodes: Vec<(String, Control)>,
}

impl ClusterControl {
    /// `channels` grouped by the connection of their slot's master (the
    /// first one for a slot the map does not cover, which still receives
    /// it over the cluster bus).
    fn by_node(&self, channels: &[String]) -> HashMap<usize, Vec<String>> {
        let mut out: HashMap<usize, Vec<String>> = HashMap::new();
        for ch in channels {
            let node = self
                .routing
                .get_server(slot(ch))
                .and_then(|s| {
                    let addr = format!("{}:{}", s.host, s.port);
                    self.nodes.iter().position(|(a, _)| *a == addr)
                })
                .unwrap_or(0);
            out.entry(node).or_default().push(ch.clone());
        }
        out
    }

    async fn change(&self, channels: &[String], subscribe: bool) -> BackendResult<()> {
        for (node, chans) in self.by_node(channels) {
            let Some((_, control)) = self.nodes.get(node) else {
                continue;
            };
            control.change(chans, subscribe).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl SubscriberHandle for ClusterControl {
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()> {
        self.change(channels, true).await
    }

    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()> {
        self.change(channels, false).await
    }
}

#[async_trait]
impl PubSub for FredBackend {
    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let cmds: Vec<Cmd> = messages
            .iter()
            .map(|(ch, payload)| {
                // Routed (and grouped on a cluster) by the channel, as
                // redis-rs routes PUBLISH.
                let mut c = Cmd::keyed("PUBLISH", ch);
                c.arg(ch).arg(payload);
                c
            })
            .collect();
        for r in self.pipeline(&cmds, Resend::Never).await? {
            r.map_err(map_err)?;
        }
        Ok(())
    }

    async fn subscriber(&self) -> BackendResult<Subscriber> {
        let topology = &self.inner.topology;
        if topology.is_cluster() {
            return self.cluster_subscriber(topology).await;
        }
        // A new client asks the sentinels again: after a failover the
        // owner's reconnect lands on the new master.
        let config = topology::config_of(topology)?;
        let conn = Dedicated::open(config, &self.inner.config, true).await?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let (stop_tx, stop) = watch::channel(false);
        let control = self.control(&conn);
        let messages = conn.client.message_rx();
        tokio::spawn(forward(conn, messages, tx, stop, stop_tx));
        Ok(Subscriber {
            handle: Box::new(control),
            messages: rx,
        })
    }
}

impl FredBackend {
    fn control(&self, conn: &Dedicated) -> Control {
        Control {
            client: conn.client.clone(),
            timeout: self.inner.config.response_timeout,
        }
    }

    /// One subscriber client per master of the cluster, their messages
    /// merged; any of them failing ends the whole subscriber.
    async fn cluster_subscriber(&self, topology: &RedisTopology) -> BackendResult<Subscriber> {
        let mut slots = Cmd::new("CLUSTER");
        slots.arg("SLOTS");
        let v = self
            .query(&slots, Resend::AfterDrop)
            .await
            .map_err(map_err)?;
        let default_host = match topology {
            RedisTopology::Cluster(c) => c.seeds().first().map(|(h, _)| h.clone()),
            _ => None,
        }
        .unwrap_or_default();
        let routing = ClusterRouting::from_cluster_slots(v, default_host).map_err(map_err)?;
        let masters = routing.unique_primary_nodes();
        if masters.is_empty() {
            return Err(BackendError::Unavailable(
                "the cluster serves no slots".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let (stop_tx, stop) = watch::channel(false);
        let mut nodes = Vec::with_capacity(masters.len());
        for m in &masters {
            let config = topology::node_config(topology, &m.host, m.port)?;
            // On failure the connections opened so far end with `stop_tx`.
            let conn = match Dedicated::open(config, &self.inner.config, true).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return Err(e);
                }
            };
            nodes.push((format!("{}:{}", m.host, m.port), self.control(&conn)));
            let messages = conn.client.message_rx();
            tokio::spawn(forward(
                conn,
                messages,
                tx.clone(),
                stop.clone(),
                stop_tx.clone(),
            ));
        }
        Ok(Subscriber {
            handle: Box::new(ClusterControl { routing, nodes }),
            messages: rx,
        })
    }
}

/// Forwards one connection's messages to `tx` until the connection ends,
/// misses a probe, fred's broadcast overflows, the receiver goes away or
/// `stop` is raised. Ending raises `raise` (so the other connections of a
/// cluster subscriber end too) and drops the connection; dropping `tx`
/// ends the receiver once every connection's task is done, which tells the
/// owner to reconnect.
async fn forward(
    mut conn: Dedicated,
    mut messages: broadcast::Receiver<Message>,
    tx: mpsc::Sender<PubSubMessage>,
    mut stop: watch::Receiver<bool>,
    raise: watch::Sender<bool>,
) {
    let client = conn.client.clone();
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.reset();
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => break,
            Ok(()) = stop.changed() => break,
            _ = conn.task() => {
                tracing::warn!("subscriber connection lost; closing the subscription");
                break;
            }
            _ = ticks.tick() => {
                if let Err(e) = ping_within(&client, PROBE_EVERY).await {
                    tracing::warn!(error = %e, "subscriber connection missed its probe; closing the subscription");
                    break;
                }
                continue;
            }
            m = messages.recv() => match m {
                Ok(m) => m,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "subscriber fell behind the client; closing the subscription");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        let out = PubSubMessage {
            channel: msg.channel.to_string(),
            // PUBLISH payloads are bulk strings: anything else is empty.
            payload: owned_bytes(&msg.value).unwrap_or_default(),
        };
        match tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => break,
            Err(mpsc::error::TrySendError::Full(out)) => {
                match tokio::time::timeout(SUBSCRIBER_FULL_GRACE, tx.send(out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::warn!(
                            "subscriber channel full for {SUBSCRIBER_FULL_GRACE:?}; \
                             closing the subscription"
                        );
                        break;
                    }
                }
            }
        }
    }
    let _ = raise.send(true);
    // Dropping `conn` aborts its connection task (closing the connection);
    // dropping `tx` ends the receiver with the other tasks' senders.
}
