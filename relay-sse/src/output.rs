//! Where a session's chunks go: the [`Output`] trait, written to by
//! [`Session::stream`](crate::session::Session::stream), and [`ChannelOut`],
//! the bounded channel feeding an axum response body. The gateway's own
//! front implements [`Output`] on the socket (`front::SocketOut`).

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
        let send = self.0.send(chunk);
        tokio::pin!(send);
        let mut resync = false;
        let result = loop {
            tokio::select! {
                r = &mut send => break r.map_err(|_| CloseReason::ClientGone),
                // Same rule as the socket: the live inbox overflowed while
                // the body would not take more.
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
}
