//! The Lua scripts (shared with the fred backend: `backend/scripts/*.lua`,
//! each naming its KEYS and ARGV at the top). They are embedded at build
//! time and sent with `EVALSHA` (loaded on `NOSCRIPT`).

use redis::Script;

use crate::backend::scripts as text;
pub(super) use crate::backend::scripts::{ttl_refresh_ms, MAX_SCRIPT_OFFSET};

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
