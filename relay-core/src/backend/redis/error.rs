//! Server and client errors to [`BackendError`]: what is transient (retry
//! after a backoff) and what is not.

use redis::{ErrorKind, RedisError};

use crate::backend::reply::classify_error;
pub(super) use crate::backend::reply::protocol;
use crate::error::BackendError;

pub(super) fn server_code(e: &RedisError) -> Option<String> {
    if let Some(code) = e.code() {
        return Some(code.to_owned());
    }
    e.clone()
        .into_server_errors()
        .and_then(|errs| errs.first().map(|(_, se)| se.code().to_owned()))
}

pub(super) fn is_noscript(e: &RedisError) -> bool {
    server_code(e).as_deref() == Some("NOSCRIPT")
}

pub(super) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

pub(super) fn map_err(e: RedisError) -> BackendError {
    map_err_ctx(e, None)
}

pub(super) fn map_group_err(e: RedisError, stream: &str, group: &str) -> BackendError {
    map_err_ctx(e, Some((stream, group)))
}

pub(super) fn map_err_ctx(e: RedisError, group: Option<(&str, &str)>) -> BackendError {
    let code = server_code(&e);
    let connection = is_connection_error(&e);
    let e = match classify_error(e, code.as_deref(), connection, group) {
        Ok(mapped) => return mapped,
        Err(e) => e,
    };
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendError::Protocol(Box::new(e)),
        ErrorKind::Io => BackendError::Connection(Box::new(e)),
        _ => BackendError::Server(Box::new(e)),
    }
}

/// The error a server reply (`-CODE message\r\n`) turns into (tests).
#[cfg(test)]
pub(super) fn server_error(resp: &[u8]) -> RedisError {
    match redis::parse_redis_value(resp).expect("parses") {
        redis::Value::ServerError(e) => e.into(),
        other => panic!("not an error reply: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_redirections_and_releases_are_transient() {
        for reply in [
            &b"-UNBLOCKED the stream key no longer exists or was moved\r\n"[..],
            b"-MOVED 3999 127.0.0.1:6381\r\n",
            b"-ASK 3999 127.0.0.1:6381\r\n",
            b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            b"-CLUSTERDOWN The cluster is down\r\n",
        ] {
            let e = map_err(server_error(reply));
            assert!(e.is_transient(), "{}: {e}", String::from_utf8_lossy(reply));
        }
        let crossslot = map_err(server_error(
            b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
        ));
        assert!(
            !crossslot.is_transient(),
            "a key layout error is not retried"
        );
    }
}
