//! Broker settings and connections, and who recovers a lost connection:
//! lapin (the worker's, [`Recovery::Lapin`]) or the caller (the producer's
//! and the one-shot tools', [`Recovery::Caller`]). Why the split is in the
//! module docs of `worker` and `producer`.

use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};

use super::error::AmqpError;

/// Broker connection and consumer settings. `Debug` shows the URL with its
/// password masked, so a config (or anything holding one) can be logged.
#[derive(Clone, PartialEq, Eq)]
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

    /// The URL with the password of its user info replaced by `***`.
    pub fn redacted_url(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return self.url.clone();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return self.url.clone();
        };
        let user = rest[..at].split_once(':').map_or(&rest[..at], |(u, _)| u);
        let masked = if user.len() < at { ":***" } else { "" };
        format!("{scheme}://{user}{masked}{}", &rest[at..])
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

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("prefetch", &self.prefetch)
            .field("stage_prefetch", &self.stage_prefetch)
            .field("connection_name", &self.connection_name)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
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

#[cfg(test)]
mod tests {
    use super::AmqpConfig;

    #[test]
    fn debug_masks_the_password() {
        let c = AmqpConfig::new("amqp://guest:s3cret@127.0.0.1:5672/%2f");
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("amqp://guest:***@127.0.0.1:5672/%2f"),
            "{text}"
        );
        for (url, shown) in [
            ("amqp://127.0.0.1:5672/%2f", "amqp://127.0.0.1:5672/%2f"),
            ("amqp://user@host/v", "amqp://user@host/v"),
            ("amqp://u:p@w@host/v", "amqp://u:***@host/v"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(AmqpConfig::new(url).redacted_url(), shown);
        }
    }
}
