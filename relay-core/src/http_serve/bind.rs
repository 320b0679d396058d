//! Binding a listener with an error an operator can act on.
//!
//! `TcpListener::bind` fails with "Address already in use (os error 98)",
//! which does not say *which* of a process's listeners clashed. Every
//! binary binds through [`bind`], so the error names the address (and the
//! `io::ErrorKind` is kept for callers that branch on it).

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the operating system said.
    #[source]
    pub source: io::Error,
}

/// Binds a TCP listener on `addr`; the error names the address.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| io::Error::new(source.kind(), BindError { addr, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clash_names_the_address_and_keeps_the_kind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<BindError>());
        assert_eq!(inner.map(|b| b.addr), Some(addr));
    }
}
