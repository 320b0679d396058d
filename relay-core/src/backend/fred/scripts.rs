//! The shared Lua scripts (`backend/scripts/*.lua`, the same text the
//! redis-rs backend sends), each with the SHA-1 `EVALSHA` names it by.

use crate::backend::scripts as text;
pub(super) use crate::backend::scripts::{ttl_refresh_ms, MAX_SCRIPT_OFFSET};

/// One script: its text (sent by `SCRIPT LOAD` after a `NOSCRIPT`) and
/// SHA-1.
pub(super) struct Script {
    pub(super) text: &'static str,
    pub(super) sha: String,
}

impl Script {
    fn new(text: &'static str) -> Self {
        // redis-rs's hash: the two backends name each script alike.
        let sha = redis::Script::new(text).get_hash().to_owned();
        Self { text, sha }
    }
}

pub(super) struct Scripts {
    pub(super) apply: Script,
    pub(super) read_history: Script,
    pub(super) get_state: Script,
    pub(super) append_dedupe: Script,
    pub(super) claim: Script,
    pub(super) lease: Script,
    pub(super) heartbeat: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            apply: Script::new(text::APPLY),
            read_history: Script::new(text::READ_HISTORY),
            get_state: Script::new(text::GET_STATE),
            append_dedupe: Script::new(text::APPEND_DEDUPE),
            claim: Script::new(text::CLAIM),
            lease: Script::new(text::LEASE),
            heartbeat: Script::new(text::HEARTBEAT),
        }
    }
}
