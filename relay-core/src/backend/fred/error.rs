//! fred and server errors to [`BackendError`], with the same classes as
//! `RedisBackend`: what is transient (retry after a backoff) and what is
//! not.
//!
//! fred reports a server error reply as an [`Error`] whose details are the
//! reply text (`NOGROUP No such key ...`), so the server's error code is
//! its first word; fred's own errors (I/O, timeouts, a closed client) have
//! kinds of their own and prose details.

use fred::error::{Error, ErrorKind};

use crate::backend::redis::RedisTopology;
use crate::backend::reply::classify_error;
pub(super) use crate::backend::reply::protocol;
use crate::error::BackendError;

/// A configuration the fred backend cannot connect with.
#[derive(Debug, thiserror::Error)]
pub enum FredConfigError {
    /// fred could not build a client configuration from the URL.
    #[error("invalid Redis URL for the fred client")]
    Url(#[source] Error),
    /// TLS (`rediss://`) needs a fred build with a TLS feature, which relay
    /// does not enable.
    #[error("the fred backend is built without TLS: rediss:// URLs are refused")]
    Tls,
    /// fred could not create the client.
    #[error("cannot create the fred client")]
    Client(#[source] Error),
}

impl From<FredConfigError> for BackendError {
    fn from(e: FredConfigError) -> Self {
        BackendError::Connection(Box::new(e))
    }
}

/// The first connection to a Sentinel-named master or a cluster failed:
/// which one (fred's own message names neither).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {target}")]
pub struct ConnectError {
    /// The master or cluster, by its configuration (no credentials).
    pub target: String,
    /// Why.
    #[source]
    pub source: BackendError,
}

/// The server's error code (`NOGROUP`, `READONLY`, ...), when `e` is a
/// server error reply.
pub(super) fn server_code(e: &Error) -> Option<&str> {
    if !matches!(
        e.kind(),
        ErrorKind::Unknown
            | ErrorKind::Cluster
            | ErrorKind::InvalidArgument
            | ErrorKind::InvalidCommand
            | ErrorKind::Auth
            | ErrorKind::Config
    ) {
        return None;
    }
    let code = e.details().split_whitespace().next()?;
    let is_code = code.len() >= 2
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    is_code.then_some(code)
}

pub(super) fn is_noscript(e: &Error) -> bool {
    server_code(e) == Some("NOSCRIPT")
}

/// Whether fred gave `e`'s command up at a cluster redirection (`MOVED`
/// or `ASK`) it was not allowed to follow: the node that answered did not
/// run it. The shared and dedicated cluster clients allow none (see
/// `topology::client`); the backend sends such a command again on its own
/// (see `conn`).
pub(super) fn is_redirect_refused(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Routing) && e.details().starts_with(REDIRECT_REFUSED)
}

/// fred's words for a command out of redirections.
const REDIRECT_REFUSED: &str = "Too many redirections";

/// How fred words (with [`ErrorKind::Unknown`]) that a command found no
/// connection, or lost it.
const NO_CONNECTION: &[&str] = &[
    "Failed to route command",
    "Failed to send command to router",
    "Missing expected connection",
    "Client is not initialized",
    "Too many failed write attempts",
    "Max attempts exceeded",
];

/// Whether `e` means the connection failed or was lost (the command may or
/// may not have run).
pub(super) fn is_connection_error(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Sentinel => true,
        // A refused redirection is a server's answer, not a lost connection.
        ErrorKind::Routing => !is_redirect_refused(e),
        // fred's own words for a command with no connection to go to, or
        // whose connection broke once its write attempts were used up.
        ErrorKind::Unknown => {
            server_code(e).is_none()
                && NO_CONNECTION
                    .iter()
                    .any(|prefix| e.details().starts_with(prefix))
        }
        _ => false,
    }
}

pub(super) fn map_err(e: Error) -> BackendError {
    map_err_ctx(e, None)
}

pub(super) fn map_group_err(e: Error, stream: &str, group: &str) -> BackendError {
    map_err_ctx(e, Some((stream, group)))
}

pub(super) fn map_err_ctx(e: Error, group: Option<(&str, &str)>) -> BackendError {
    // A refused redirection has no server code and is no connection
    // error: the slot is moving (or just moved), as `MOVED`/`ASK` replies.
    if is_redirect_refused(&e) {
        return BackendError::Unavailable(Box::new(e));
    }
    let connection = is_connection_error(&e);
    let code = server_code(&e).map(str::to_owned);
    let e = match classify_error(e, code.as_deref(), connection, group) {
        Ok(mapped) => return mapped,
        Err(e) => e,
    };
    match e.kind() {
        ErrorKind::Protocol | ErrorKind::Parse => BackendError::Protocol(Box::new(e)),
        // Redirections fred could not follow, the cluster being resharded
        // or down: transient.
        ErrorKind::Cluster | ErrorKind::Backpressure => BackendError::Unavailable(Box::new(e)),
        ErrorKind::Unknown if e.details().starts_with("Max redirections") => {
            BackendError::Unavailable(Box::new(e))
        }
        _ => BackendError::Server(Box::new(e)),
    }
}

/// A connection failure of the first connection, naming the Sentinel
/// master or the cluster it was for (a standalone URL is not repeated: it
/// may hold a password).
pub(super) fn naming_target(e: BackendError, topology: &RedisTopology) -> BackendError {
    let join = |addrs: &[(String, u16)]| {
        addrs
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let target = match topology {
        RedisTopology::Sentinel(s) => format!(
            "the master {:?} through the sentinels {}",
            s.master_name(),
            join(s.sentinels())
        ),
        RedisTopology::Cluster(c) => format!("the cluster through the seeds {}", join(c.seeds())),
        RedisTopology::Standalone(_) => return e,
    };
    match e {
        BackendError::Connection(_) => {
            BackendError::Connection(Box::new(ConnectError { target, source: e }))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error fred makes of a server reply (its reply parser).
    fn reply(text: &str) -> Error {
        let kind = match text.split_whitespace().next() {
            Some("MOVED" | "ASK" | "CLUSTERDOWN") => ErrorKind::Cluster,
            Some("WRONGTYPE") => ErrorKind::InvalidArgument,
            _ => ErrorKind::Unknown,
        };
        Error::new(kind, text.to_owned())
    }

    #[test]
    fn same_classes_as_the_redis_backend() {
        for text in [
            "LOADING Redis is loading the dataset in memory",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down",
            "READONLY You can't write against a read only replica.",
            "BUSY Redis is busy running a script.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "NOREPLICAS Not enough good replicas to write.",
            "MISCONF Redis is configured to save RDB snapshots",
            "UNBLOCKED the stream key no longer exists",
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
        ] {
            let e = map_err(reply(text));
            assert!(matches!(e, BackendError::Unavailable(_)), "{text}: {e:?}");
        }
        let e = map_group_err(reply("NOGROUP No such key 's'"), "s", "g");
        assert!(matches!(e, BackendError::NoGroup { .. }), "{e:?}");
        assert!(!e.is_transient());
        let e = map_err(reply("NOGROUP No such key 's'"));
        assert!(matches!(e, BackendError::Server(_)), "{e:?}");
        for text in [
            "CROSSSLOT Keys in request don't hash to the same slot",
            "ERR wrong number of arguments",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ] {
            let e = map_err(reply(text));
            assert!(matches!(e, BackendError::Server(_)), "{text}: {e:?}");
        }
        assert!(is_noscript(&reply("NOSCRIPT No matching script.")));
    }

    #[test]
    fn client_failures_are_connection_errors() {
        for e in [
            Error::new(ErrorKind::IO, "Broken pipe"),
            Error::new(ErrorKind::Timeout, "Request timed out."),
            Error::new(ErrorKind::Canceled, "Canceled."),
            Error::new(ErrorKind::Routing, "Failed to route command."),
            Error::new(
                ErrorKind::Sentinel,
                "Failed to connect to all sentinel nodes.",
            ),
            Error::new(ErrorKind::Unknown, "Too many failed write attempts."),
            Error::new(ErrorKind::Unknown, "Failed to route command."),
        ] {
            assert!(server_code(&e).is_none(), "{e:?}");
            let mapped = map_err(e);
            assert!(matches!(mapped, BackendError::Connection(_)), "{mapped:?}");
        }
        let e = map_err(Error::new(ErrorKind::Protocol, "Invalid frame."));
        assert!(matches!(e, BackendError::Protocol(_)), "{e:?}");
    }

    #[test]
    fn a_refused_redirection_is_transient_but_no_connection_error() {
        // fred's words when a command is out of redirections.
        let e = Error::new(ErrorKind::Routing, "Too many redirections.");
        assert!(is_redirect_refused(&e));
        assert!(!is_connection_error(&e));
        let mapped = map_err(e);
        assert!(matches!(mapped, BackendError::Unavailable(_)), "{mapped:?}");
        assert!(mapped.is_transient());
        // Other routing failures stay connection errors.
        let e = Error::new(ErrorKind::Routing, "Failed to route command.");
        assert!(!is_redirect_refused(&e));
        assert!(is_connection_error(&e));
    }
}
