//! The Lua scripts, one file per operation under `scripts/`, each naming
//! its KEYS and ARGV at the top. They are embedded at build time and sent
//! with `EVALSHA` (a call answered `NOSCRIPT` is sent again as `EVAL`).

use std::collections::HashMap;

use redis::Script;

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
            apply: script(include_str!("scripts/apply.lua")),
            read_history: script(include_str!("scripts/read_history.lua")),
            get_state: script(include_str!("scripts/get_state.lua")),
            append_dedupe: script(include_str!("scripts/append_dedupe.lua")),
            claim: script(include_str!("scripts/claim.lua")),
            lease: script(include_str!("scripts/lease.lua")),
            heartbeat: script(include_str!("scripts/heartbeat.lua")),
            sources,
        }
    }

    /// The source of `script`; `None` for a script that is not one of
    /// these.
    pub(super) fn source(&self, script: &Script) -> Option<&'static str> {
        self.sources.get(script.get_hash()).copied()
    }
}

/// How often the apply script refreshes a busy job's TTLs: every 1/16 of the
/// shortest TTL, so a key lives at least 15/16 of its TTL after its last
/// update, for one extra call per refresh instead of per event.
pub(super) fn ttl_refresh_ms(shortest_ttl_ms: u64) -> u64 {
    shortest_ttl_ms / 16
}

/// Largest offset passed into a script: Lua numbers are exact integers
/// only up to 2^53, and a job never holds 2^52 events.
pub(super) const MAX_SCRIPT_OFFSET: u64 = 1 << 52;
