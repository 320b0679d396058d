//! Request bodies whose reads time out after a pause.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus_client::metrics::counter::Counter;

use super::BoxError;

/// The error a request body read returns when the client paused longer
/// than [`ServeConfig::body_timeout`]; find it in the error's source chain
/// (e.g. to answer 408).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body: nothing received for {timeout:?}")]
pub struct BodyReadTimeout {
    /// The configured pause limit.
    pub timeout: Duration,
}

impl BodyReadTimeout {
    /// Whether `err` or one of its sources is a [`BodyReadTimeout`].
    pub fn in_chain(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if e.is::<BodyReadTimeout>() {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

/// A request body whose reads fail with [`BodyReadTimeout`] after a pause
/// longer than the configured limit. The clock runs only while the handler
/// waits for data.
pub struct ReadTimeoutBody {
    pub(super) inner: Incoming,
    pub(super) timeout: Duration,
    pub(super) sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) timeouts: Counter,
}

impl std::fmt::Debug for ReadTimeoutBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTimeoutBody")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Body for ReadTimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.sleep = None;
            this.timeouts.inc();
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout { timeout }))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
