//! [`PubSub`] on Redis: pipelined `PUBLISH`, and dedicated RESP2
//! subscriber connections: one per [`PubSub::subscriber`] call on a single
//! server, one per master node on a cluster.
//!
//! ## On a cluster
//! Classic `PUBLISH` reaches every node over the cluster bus, so a
//! subscription made on any node receives the channel's messages whatever
//! slot it hashes to and wherever that slot moves. A cluster subscriber
//! opens one connection per master and subscribes each channel on the
//! master serving its slot at the time, which spreads the delivery work
//! over the nodes. A slot moving later does not break that subscription
//! (the old owner still receives the channel); it only makes delivery
//! less even until the owner's next reconnect. A node that fails closes
//! its connection or stops answering the liveness `PING`; either ends
//! the whole subscriber, so the owner resubscribes on the current masters
//! and catches up from history, as after any lost connection.
//!
//! The cost of classic pub/sub on a cluster is that every message crosses
//! the bus to every node; see docs/ARCHITECTURE.md (Topologies) for what
//! that means for scaling.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use redis::aio::{PubSub as RedisPubSub, PubSubSink, PubSubStream};
use redis::{Client, Cmd, Value};
use tokio::sync::{mpsc, watch};

use super::conn::Resend;
use super::error::map_err;
use super::link::{Link, Target};
use super::topology::ClusterTopology;
use super::RedisBackend;
use crate::backend::{BackendResult, PubSub, PubSubMessage, Subscriber, SubscriberHandle};
use crate::error::BackendError;
use crate::keys::slot;

/// Capacity of a subscriber's message channel.
pub const SUBSCRIBER_CAPACITY: usize = 65_536;

/// How long the subscriber task waits for room in a full message channel
/// before it gives up and closes the subscription (the owner then reconnects
/// and treats messages as missed, instead of memory growing without bound).
const SUBSCRIBER_FULL_GRACE: Duration = Duration::from_secs(5);

/// How often each node connection of a cluster subscriber is probed with
/// `PING`, and how long the answer may take: a node that vanished without
/// closing its TCP connection must still end the subscriber.
const NODE_PROBE_EVERY: Duration = Duration::from_secs(5);

struct RedisSubscriberHandle {
    sink: PubSubSink,
}

#[async_trait]
impl SubscriberHandle for RedisSubscriberHandle {
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        self.sink.clone().subscribe(channels).await.map_err(map_err)
    }

    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        self.sink
            .clone()
            .unsubscribe(channels)
            .await
            .map_err(map_err)
    }
}

/// A cluster subscriber's control side: each channel goes to the master
/// that served its slot when the subscriber opened.
struct ClusterSubscriberHandle {
    /// `(first slot, last slot, index into sinks)`.
    ranges: Vec<(u16, u16, usize)>,
    sinks: Vec<PubSubSink>,
}

impl ClusterSubscriberHandle {
    /// `channels` grouped by the sink of their slot's master (the first
    /// master for a slot the map does not cover, which still receives it).
    fn by_node<'a>(&self, channels: &'a [String]) -> HashMap<usize, Vec<&'a str>> {
        let mut out: HashMap<usize, Vec<&str>> = HashMap::new();
        for ch in channels {
            let s = slot(ch);
            let node = self
                .ranges
                .iter()
                .find(|(first, last, _)| (*first..=*last).contains(&s))
                .map_or(0, |(_, _, node)| *node);
            out.entry(node).or_default().push(ch);
        }
        out
    }
}

impl ClusterSubscriberHandle {
    /// (Un)subscribes `channels`, each on its master's connection.
    async fn change(&self, channels: &[String], subscribe: bool) -> BackendResult<()> {
        for (node, chans) in self.by_node(channels) {
            let mut sink = self.sinks[node].clone();
            let r = if subscribe {
                sink.subscribe(chans).await
            } else {
                sink.unsubscribe(chans).await
            };
            r.map_err(map_err)?;
        }
        Ok(())
    }
}

#[async_trait]
impl SubscriberHandle for ClusterSubscriberHandle {
    async fn subscribe(&self, channels: &[String]) -> BackendResult<()> {
        self.change(channels, true).await
    }

    async fn unsubscribe(&self, channels: &[String]) -> BackendResult<()> {
        self.change(channels, false).await
    }
}

#[async_trait]
impl PubSub for RedisBackend {
    async fn publish_batch(&self, messages: Vec<(String, Bytes)>) -> BackendResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let cmds: Vec<Cmd> = messages
            .iter()
            .map(|(ch, payload)| {
                let mut c = redis::cmd("PUBLISH");
                c.arg(ch.as_str()).arg(&payload[..]);
                c
            })
            .collect();
        for r in self.pipeline(&cmds, Resend::Never).await? {
            r.map_err(map_err)?;
        }
        Ok(())
    }

    async fn subscriber(&self) -> BackendResult<Subscriber> {
        // On the current node; after a failover the owner's reconnect
        // lands here and so follows the new master.
        let link = self.usable_link().await.map_err(map_err)?;
        let client = match &link.target {
            Target::Node(client) => client.clone(),
            Target::Cluster { topology, .. } => {
                return self.cluster_subscriber(&link, topology).await;
            }
        };
        let (sink, stream) = self.open_pubsub(&link, &client).await?.split();
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(forward(stream, None, tx, stop, None));
        Ok(Subscriber {
            handle: Box::new(RedisSubscriberHandle { sink }),
            messages: rx,
        })
    }
}

impl RedisBackend {
    /// A pub/sub connection to `client`'s node, bounded by the connection
    /// timeout; a failure is reported to `link`.
    async fn open_pubsub(&self, link: &Link, client: &Client) -> BackendResult<RedisPubSub> {
        match tokio::time::timeout(
            self.inner.config.connection_timeout,
            client.get_async_pubsub(),
        )
        .await
        {
            Err(_) => Err(BackendError::Connection("pub/sub connect timed out".into())),
            Ok(Err(e)) => {
                self.observe(&e, link.generation).await;
                Err(map_err(e))
            }
            Ok(Ok(p)) => Ok(p),
        }
    }

    /// One pub/sub connection per master of the cluster, their messages
    /// merged; any of them failing ends the whole subscriber.
    async fn cluster_subscriber(
        &self,
        link: &Link,
        topology: &ClusterTopology,
    ) -> BackendResult<Subscriber> {
        let (masters, ranges) = self.slot_map().await?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let (stop_tx, stop) = watch::channel(false);
        let mut sinks = Vec::with_capacity(masters.len());
        for (host, port) in &masters {
            let client = topology.node_client(host, *port)?;
            let (sink, stream) = self.open_pubsub(link, &client).await?.split();
            tokio::spawn(forward(
                stream,
                Some(sink.clone()),
                tx.clone(),
                stop.clone(),
                Some(stop_tx.clone()),
            ));
            sinks.push(sink);
        }
        Ok(Subscriber {
            handle: Box::new(ClusterSubscriberHandle { ranges, sinks }),
            messages: rx,
        })
    }
}

/// Forwards one connection's messages to `tx` until the connection ends,
/// the receiver goes away or `stop` is raised; when `probe` is given, also
/// until the node misses a `PING`. Ending raises `raise` (so the other
/// connections of a cluster subscriber end too), and dropping `tx` ends
/// the receiver once every connection's task is done, which tells the
/// owner to reconnect.
async fn forward(
    mut stream: PubSubStream,
    probe: Option<PubSubSink>,
    tx: mpsc::Sender<PubSubMessage>,
    mut stop: watch::Receiver<bool>,
    raise: Option<watch::Sender<bool>>,
) {
    let mut ticks = tokio::time::interval(NODE_PROBE_EVERY);
    ticks.reset();
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => break,
            // (A dropped sender, as on a single server, never stops it.)
            Ok(()) = stop.changed() => break,
            _ = ticks.tick(), if probe.is_some() => {
                let Some(sink) = &probe else { continue };
                let pong = tokio::time::timeout(NODE_PROBE_EVERY, sink.clone().ping::<Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    tracing::warn!("a cluster node missed its pub/sub probe; closing the subscription");
                    break;
                }
                continue;
            }
            m = stream.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let out = PubSubMessage {
            channel: msg.get_channel_name().to_owned(),
            payload: Bytes::copy_from_slice(msg.get_payload_bytes()),
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
    if let Some(raise) = raise {
        let _ = raise.send(true);
    }
    // Dropping `stream` closes the connection; dropping `tx` ends the
    // receiver (with the other tasks' senders), which tells the owner to
    // reconnect.
}
