//! The Lua scripts (shared with the fred backend: `backend/scripts/*.lua`,
//! each naming its KEYS and ARGV at the top). They are embedded at build
//! time and sent with `EVALSHA` (a call answered `NOSCRIPT` is sent again
//! as `EVAL`).

use std::collections::HashMap;

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
    /// Each script's source by its hash (redis-rs's `Script` keeps its
    /// source to itself), for the `EVAL` that answers a `NOSCRIPT`.
    sources: HashMap<String, &'static str>,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let mut sources = HashMap::new();
        let mut script = |source: &'static str| {
            let script = Script::new(source);
            sources.insert(script.get_hash().to_owned(), source);
            script
        };
        Self {
            apply: script(text::APPLY),
            read_history: script(text::READ_HISTORY),
            get_state: script(text::GET_STATE),
            append_dedupe: script(text::APPEND_DEDUPE),
            claim: script(text::CLAIM),
            lease: script(text::LEASE),
            heartbeat: script(text::HEARTBEAT),
            sources,
        }
    }

    /// The source of `script`; `None` for a script that is not one of
    /// these.
    pub(super) fn source(&self, script: &Script) -> Option<&'static str> {
        self.sources.get(script.get_hash()).copied()
    }
}
