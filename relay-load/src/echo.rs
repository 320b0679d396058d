//! The SSE-path ceiling: a raw loopback TCP/HTTP server that frames events
//! exactly as the gateway does (native JSON, `relay_sse::sse` framing) and
//! writes them straight to the subscribed connections — no Redis, no
//! router, no resume. The same producers and clients run against it, so
//! the relay's figures can be read as a fraction of what loopback HTTP,
//! JSON and SSE framing alone allow on this machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use relay_core::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Subs = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>>>;

/// A running echo server.
#[derive(Clone)]
pub struct Echo {
    addr: SocketAddr,
    subs: Subs,
}

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echo").field("addr", &self.addr).finish()
    }
}

impl Echo {
    /// Binds 127.0.0.1:0 and serves `GET /e/{job}` as an event stream.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let subs: Subs = Arc::default();
        let s = subs.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve(sock, s.clone()));
            }
        });
        Ok(Self { addr, subs })
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Subscribed connections.
    pub fn subscribers(&self) -> usize {
        self.subs
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Frames `events` and writes each to its job's subscribers.
    pub fn publish(&self, events: &[Event]) {
        let Ok(mut subs) = self.subs.lock() else {
            return;
        };
        for e in events {
            let Some(list) = subs.get_mut(e.job_id.as_str()) else {
                continue;
            };
            let data = serde_json::to_vec(e).unwrap_or_default();
            let mut buf = BytesMut::with_capacity(data.len() + 64);
            let id = format!("1:{}", e.seq);
            relay_sse::sse::put_event(&mut buf, Some(&id), Some(e.stage.as_str()), &data);
            let frame = buf.freeze();
            list.retain(|tx| tx.send(frame.clone()).is_ok());
        }
    }
}

async fn serve(mut sock: TcpStream, subs: Subs) {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    let Some(job) = path.strip_prefix("/e/") else {
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    if let Ok(mut m) = subs.lock() {
        m.entry(job.to_owned()).or_default().push(tx);
    }
    if sock
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
              connection: close\r\n\r\nretry: 2000\n\n",
        )
        .await
        .is_err()
    {
        return;
    }
    let mut out = BytesMut::new();
    while let Some(frame) = rx.recv().await {
        out.extend_from_slice(&frame);
        // Coalesce whatever is already queued (as the gateway does).
        while let Ok(more) = rx.try_recv() {
            out.extend_from_slice(&more);
        }
        let terminal = is_done(&out);
        if sock.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        if terminal {
            break;
        }
    }
    let _ = sock.shutdown().await;
}

fn is_done(frame: &[u8]) -> bool {
    frame.windows(12).any(|w| w == b"event: done\n")
}

/// Producers' sink for the echo path.
pub struct EchoSink(pub Echo);

#[async_trait::async_trait]
impl crate::produce::Sink for EchoSink {
    async fn publish(&self, events: &[Event]) -> anyhow::Result<()> {
        self.0.publish(events);
        Ok(())
    }
}
