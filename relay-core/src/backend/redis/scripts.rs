//! The Lua scripts, one file per operation under `scripts/`, each naming
//! its KEYS and ARGV at the top. They are embedded at build time and sent
//! with `EVALSHA` (loaded on `NOSCRIPT`).

use redis::Script;

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
            apply: Script::new(include_str!("scripts/apply.lua")),
            read_history: Script::new(include_str!("scripts/read_history.lua")),
            get_state: Script::new(include_str!("scripts/get_state.lua")),
            append_dedupe: Script::new(include_str!("scripts/append_dedupe.lua")),
            claim: Script::new(include_str!("scripts/claim.lua")),
            lease: Script::new(include_str!("scripts/lease.lua")),
            heartbeat: Script::new(include_str!("scripts/heartbeat.lua")),
        }
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
