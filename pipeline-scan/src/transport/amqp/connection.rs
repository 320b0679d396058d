//! Broker settings and connections.

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
    /// Longest wait between reconnect attempts.
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

/// Connects, naming the connection `{connection_name}-{role}`.
pub(super) async fn connect(config: &AmqpConfig, role: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("{}-{role}", config.connection_name).into());
    Ok(Connection::connect(&config.url, props).await?)
}

/// A channel in publisher-confirm mode.
pub(super) async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}
