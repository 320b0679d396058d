//! Broker settings and connections, and who recovers a lost connection:
//! lapin (the worker's, [`Recovery::Lapin`]) or the caller (the producer's
//! and the one-shot tools', [`Recovery::Caller`]). Why the split is in the
//! module docs of `worker` and `producer`.

use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};

use super::error::AmqpError;

/// Broker connection and consumer settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Queue name prefix (`scan` → `scan.vision`, …).
    pub prefix: String,
    /// Default prefetch (and concurrency) per stage consumer.
    pub prefetch: u16,
    /// Per-stage prefetch overrides by stage name.
    pub stage_prefetch: Vec<(String, u16)>,
    /// Connection name shown by `rabbitmqctl list_connections`.
    pub connection_name: String,
    /// Longest wait between reconnect attempts: of lapin's recovery of the
    /// worker's connection, and of the worker supervisor's fresh connections.
    pub reconnect_max: Duration,
}

impl AmqpConfig {
    /// Defaults for a broker URL: prefix `scan`, prefetch 8.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "scan".into(),
            prefetch: 8,
            stage_prefetch: Vec::new(),
            connection_name: "pipeline-scan".into(),
            reconnect_max: Duration::from_secs(5),
        }
    }

    pub(super) fn prefetch_for(&self, stage: &str) -> u16 {
        self.stage_prefetch
            .iter()
            .find(|(n, _)| n == stage)
            .map(|(_, p)| *p)
            .unwrap_or(self.prefetch)
            .max(1)
    }
}

/// The first wait of lapin's recovery backoff; it doubles up to
/// [`AmqpConfig::reconnect_max`].
const RECOVERY_MIN_DELAY: Duration = Duration::from_millis(100);

/// Who reconnects when a connection is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recovery {
    /// lapin: its automatic recovery reconnects (backoff from 100 ms
    /// doubling to [`AmqpConfig::reconnect_max`], never giving up, the first
    /// connect included), then re-opens every open channel with its confirm
    /// mode and prefetch, re-declares the queues declared on it and re-creates
    /// its consumers. Publishes and confirms in flight fail; deliveries not
    /// yet acked can no longer be acked and the broker redelivers them.
    Lapin,
    /// The caller: a lost connection stays lost, and the first connect fails
    /// at once when the broker is unreachable.
    Caller,
}

/// Connects, naming the connection `{connection_name}-{role}`.
pub(super) async fn connect(
    config: &AmqpConfig,
    role: &str,
    recovery: Recovery,
) -> Result<Connection, AmqpError> {
    let mut props = ConnectionProperties::default()
        .with_connection_name(format!("{}-{role}", config.connection_name).into());
    if recovery == Recovery::Lapin {
        let max = config.reconnect_max.max(RECOVERY_MIN_DELAY);
        // Unbounded: when lapin (4.12) exhausts a bounded backoff while
        // recovering, it leaves the connection `Connecting` with its I/O
        // thread gone, wakes no `wait_for_recovery` and does not come back
        // when the broker does, so the owner could not tell it from a
        // recovery still under way.
        props = props.enable_auto_recover().configure_backoff(move |b| {
            b.with_min_delay(RECOVERY_MIN_DELAY)
                .with_max_delay(max)
                .with_factor(2.0)
                .without_max_times()
        });
    }
    Ok(Connection::connect(&config.url, props).await?)
}

/// A channel in publisher-confirm mode.
pub(super) async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}
