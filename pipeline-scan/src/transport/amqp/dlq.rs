//! [`Dlq`]: inspect, replay and purge the dead-letter queue.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::connection::{confirm_channel, connect, AmqpConfig, Recovery};
use super::error::AmqpError;
use super::publish::{header_str, publish_envelope};
use super::topology::Topology;
use crate::pipeline::{Envelope, JobStore};

/// One dead-lettered step, as listed by [`Dlq::list`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DlqEntry {
    /// The job (when the body decodes).
    pub job_id: Option<String>,
    /// The failed stage name (header `x-stage`).
    pub stage: Option<String>,
    /// The last attempt.
    pub attempt: Option<u32>,
    /// Why it was dead-lettered (header `x-reason`).
    pub reason: Option<String>,
    /// The message body (the envelope JSON), lossy UTF-8.
    pub body: String,
}

/// Dead-letter queue operations (`pipeline-scan dlq list|replay|purge`).
pub struct Dlq {
    conn: Connection,
    channel: Channel,
    topology: Topology,
}

impl std::fmt::Debug for Dlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlq")
            .field("queue", &self.topology.dlq())
            .finish_non_exhaustive()
    }
}

impl Dlq {
    /// Connects and declares the topology.
    pub async fn connect(config: &AmqpConfig, topology: Topology) -> Result<Self, AmqpError> {
        let conn = connect(config, "dlq", Recovery::Caller).await?;
        let channel = confirm_channel(&conn).await?;
        topology.declare(&channel).await?;
        Ok(Self {
            conn,
            channel,
            topology,
        })
    }

    /// Messages in the DLQ.
    pub async fn len(&self) -> Result<u32, AmqpError> {
        let q = self
            .channel
            .queue_declare(
                self.topology.dlq().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.message_count())
    }

    /// Whether the DLQ is empty.
    pub async fn is_empty(&self) -> Result<bool, AmqpError> {
        Ok(self.len().await? == 0)
    }

    /// The DLQ's next message on `ch`, fetched unacked (closing `ch` returns
    /// every unacked one to the queue); `None` when it is empty.
    async fn next_unacked(&self, ch: &Channel) -> Result<Option<Delivery>, AmqpError> {
        let msg = ch
            .basic_get(
                self.topology.dlq().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        Ok(msg.map(|m| m.delivery))
    }

    /// Up to `limit` entries, oldest first, without removing them (they are
    /// fetched unacked on a separate channel that is then closed, which
    /// returns them to the queue).
    pub async fn list(&self, limit: usize) -> Result<Vec<DlqEntry>, AmqpError> {
        let ch = self.conn.create_channel().await?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(d) = self.next_unacked(&ch).await? else {
                break;
            };
            let env: Option<Envelope> = serde_json::from_slice(&d.data).ok();
            out.push(DlqEntry {
                job_id: env.as_ref().map(|e| e.job_id.to_string()),
                attempt: env.as_ref().map(|e| e.attempt),
                stage: header_str(&d.properties, "x-stage"),
                reason: header_str(&d.properties, "x-reason"),
                body: String::from_utf8_lossy(&d.data).into_owned(),
            });
        }
        let _ = ch.close(200, "list done".into()).await;
        Ok(out)
    }

    /// Re-enqueues up to `limit` dead-lettered steps at their failed stage
    /// as the job's next run (attempt 1, seqs shifted by
    /// [`SeqScheme::in_run`](crate::pipeline::SeqScheme::in_run)), clearing
    /// each job's terminal marker in `store` first so the job can finish. Undecodable messages stay in the DLQ. Returns how
    /// many were replayed.
    pub async fn replay(&self, store: &JobStore, limit: usize) -> Result<usize, AmqpError> {
        let ch = self.conn.create_channel().await?;
        let mut replayed = 0;
        let mut seen = 0;
        while seen < limit {
            let Some(d) = self.next_unacked(&ch).await? else {
                break;
            };
            seen += 1;
            // Undecodable: left unacked, returned to the queue when the channel closes.
            let Ok(env) = serde_json::from_slice::<Envelope>(&d.data) else {
                continue;
            };
            let env = env.into_replay();
            store
                .clear_terminal(&env.job_id)
                .await
                .map_err(AmqpError::Store)?;
            let queue = self.topology.stage_queue(env.stage);
            publish_envelope(&self.channel, &self.topology, &queue, &env, None).await?;
            d.acker.ack(BasicAckOptions::default()).await?;
            replayed += 1;
        }
        let _ = ch.close(200, "replay done".into()).await;
        Ok(replayed)
    }

    /// Deletes every DLQ message; returns how many there were.
    pub async fn purge(&self) -> Result<u32, AmqpError> {
        Ok(self
            .channel
            .queue_purge(self.topology.dlq().into(), QueuePurgeOptions::default())
            .await?)
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, "dlq done".into()).await;
    }
}
