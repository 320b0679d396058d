//! One command as the backend builds it: a name, its arguments, and the
//! hash slot it is routed by on a cluster. Commands go to fred as custom
//! commands, so fred neither rewrites their arguments nor parses their
//! replies (the backend's own parsing in `reply` never panics), and the
//! slot is computed here, the way `RedisBackend` groups its pipelines.

use bytes::Bytes;
use fred::types::{ClusterHash, CustomCommand, Value};

use crate::keys::slot_of_bytes;

/// A command with its arguments (all sent as bulk strings: numbers are
/// formatted in decimal, so `u64`s beyond `i64` stay exact).
#[derive(Clone, Debug)]
pub(super) struct Cmd {
    name: &'static str,
    pub(super) args: Vec<Value>,
    /// The slot of the key the command is routed by; `None`: any node.
    pub(super) slot: Option<u16>,
    /// Whether the command may block its connection (`BLOCK`).
    blocking: bool,
}

impl Cmd {
    /// A command without a key (routed to any node on a cluster).
    pub(super) fn new(name: &'static str) -> Self {
        Self {
            name,
            args: Vec::new(),
            slot: None,
            blocking: false,
        }
    }

    /// A command routed by `key` (not itself added as an argument).
    pub(super) fn keyed(name: &'static str, key: &str) -> Self {
        Self {
            slot: Some(slot_of_bytes(key.as_bytes())),
            ..Self::new(name)
        }
    }

    /// `EVALSHA sha numkeys keys...`, routed by the first key.
    pub(super) fn evalsha(sha: &str, keys: &[&str]) -> Self {
        let mut c = match keys.first() {
            Some(first) => Self::keyed("EVALSHA", first),
            None => Self::new("EVALSHA"),
        };
        c.arg(sha).arg(keys.len());
        for k in keys {
            c.arg(*k);
        }
        c
    }

    /// This `EVALSHA` as an `EVAL` of `source` (same keys, arguments and
    /// slot): what answers a `NOSCRIPT` without a separate `SCRIPT LOAD`,
    /// which on a cluster would have to reach the very node (an importing
    /// one during a slot move, a just-promoted replica) that lacks it.
    pub(super) fn as_eval(&self, source: &str) -> Self {
        let mut c = self.clone();
        c.name = "EVAL";
        if let Some(first) = c.args.first_mut() {
            *first = Value::from(source);
        }
        c
    }

    /// Marks the command as blocking its connection.
    pub(super) fn blocking(mut self) -> Self {
        self.blocking = true;
        self
    }

    /// Appends an argument.
    pub(super) fn arg(&mut self, a: impl Arg) -> &mut Self {
        self.args.push(a.into_value());
        self
    }

    /// The fred custom command, routed by the slot.
    pub(super) fn custom(&self) -> CustomCommand {
        let hash = match self.slot {
            Some(s) => ClusterHash::Custom(s),
            None => ClusterHash::Random,
        };
        CustomCommand::new_static(self.name, hash, self.blocking)
    }
}

/// What a command argument can be made of.
pub(super) trait Arg {
    fn into_value(self) -> Value;
}

impl Arg for &str {
    fn into_value(self) -> Value {
        Value::from(self.to_owned())
    }
}

impl Arg for &String {
    fn into_value(self) -> Value {
        Value::from(self.clone())
    }
}

impl Arg for String {
    fn into_value(self) -> Value {
        Value::from(self)
    }
}

impl Arg for &[u8] {
    fn into_value(self) -> Value {
        Value::Bytes(Bytes::copy_from_slice(self))
    }
}

impl Arg for &Bytes {
    fn into_value(self) -> Value {
        Value::Bytes(self.clone())
    }
}

macro_rules! decimal_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn into_value(self) -> Value {
                Value::from(self.to_string())
            }
        }
    )*};
}
decimal_arg!(u64, usize, u32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_the_first_key_and_formats_numbers_exactly() {
        let c = Cmd::evalsha("abc", &["relay:{scan:3}:events", "other"]);
        assert_eq!(c.slot, Some(crate::keys::slot("scan:3")));
        assert_eq!(c.args.len(), 4);
        assert_eq!(Cmd::evalsha("abc", &[]).slot, None);
        let mut x = Cmd::keyed("XADD", "s");
        x.arg(u64::MAX);
        assert_eq!(x.args[0].as_str().as_deref(), Some("18446744073709551615"));
        assert!(matches!(x.custom().cluster_hash, ClusterHash::Custom(_)));
        assert!(matches!(
            Cmd::new("PING").custom().cluster_hash,
            ClusterHash::Random
        ));
    }
}
