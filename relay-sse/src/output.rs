//! Where a session's chunks go: the [`Output`] trait, written to by
//! [`Session::stream`](crate::session::Session::stream), and [`ChannelOut`],
//! the bounded channel feeding an axum response body. The gateway's own
//! front implements [`Output`] on the socket (`front::SocketOut`).

use std::future::Future;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::hub::Signal;
use crate::metrics::CloseReason;

/// Where a session's chunks go.
pub(crate) trait Output: Send {
    /// Resolves when the client is gone (cancel-safe).
    fn closed(&mut self) -> impl std::future::Future<Output = ()> + Send;
    /// Writes one chunk; an error ends the stream with that reason. A write
    /// that cannot complete while the client's live inbox overflows is a
    /// slow client. Dropping the future mid-write leaves the output
    /// unusable for further chunks (the stream then ends).
    fn write(
        &mut self,
        chunk: Bytes,
        signal: &Signal,
    ) -> impl std::future::Future<Output = Result<(), CloseReason>> + Send;
}

/// Output into a bounded channel (the body of an axum response).
pub(crate) struct ChannelOut(pub mpsc::Sender<Bytes>);

impl Output for ChannelOut {
    async fn closed(&mut self) {
        self.0.closed().await
    }

    async fn write(&mut self, chunk: Bytes, signal: &Signal) -> Result<(), CloseReason> {
        write_watching(self.0.send(chunk), signal).await
    }
}

/// Drives `write` (one chunk on its way to the client) while watching the
/// client's live inbox, for every [`Output`]: an overflow before the write
/// completes is a slow client, which then reconnects and resumes (the write
/// is abandoned mid-way); any other notification is a resync request, kept
/// for the session loop once the write is done. A failed write is a client
/// gone.
pub(crate) async fn write_watching<E>(
    write: impl Future<Output = Result<(), E>>,
    signal: &Signal,
) -> Result<(), CloseReason> {
    tokio::pin!(write);
    let mut resync = false;
    let result = loop {
        tokio::select! {
            r = &mut write => break r.map_err(|_| CloseReason::ClientGone),
            _ = signal.notified() => {
                if signal.take_overflow() {
                    return Err(CloseReason::SlowClient);
                }
                resync = true;
            }
        }
    };
    if resync {
        signal.renotify();
    }
    result
}
