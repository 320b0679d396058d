//! The Lua scripts both Redis client backends send (`scripts/*.lua`, one
//! file per operation, each naming its KEYS and ARGV at the top), and the
//! constants the callers pass into them. One copy of the script text keeps
//! the redis-rs and fred backends' semantics the same by construction.

/// `apply.lua`: the apply step (see [`JobLog`](super::JobLog)), optionally acking.
pub(crate) const APPLY: &str = include_str!("scripts/apply.lua");
/// `read_history.lua`: one atomic read of a job's history page.
pub(crate) const READ_HISTORY: &str = include_str!("scripts/read_history.lua");
/// `get_state.lua`: a job's state with its epoch and top.
pub(crate) const GET_STATE: &str = include_str!("scripts/get_state.lua");
/// `append_dedupe.lua`: idempotent appends with their markers.
pub(crate) const APPEND_DEDUPE: &str = include_str!("scripts/append_dedupe.lua");
/// `claim.lua`: claim idle pending entries, report trimmed ones.
pub(crate) const CLAIM: &str = include_str!("scripts/claim.lua");
/// `lease.lua`: an expiring, exclusive lease.
pub(crate) const LEASE: &str = include_str!("scripts/lease.lua");
/// `heartbeat.lua`: membership with expiry.
pub(crate) const HEARTBEAT: &str = include_str!("scripts/heartbeat.lua");

/// How often the apply script refreshes a busy job's TTLs: every 1/16 of the
/// shortest TTL, so a key lives at least 15/16 of its TTL after its last
/// update, for one extra call per refresh instead of per event.
pub(crate) fn ttl_refresh_ms(shortest_ttl_ms: u64) -> u64 {
    shortest_ttl_ms / 16
}

/// Largest offset passed into a script: Lua numbers are exact integers
/// only up to 2^53, and a job never holds 2^52 events.
pub(crate) const MAX_SCRIPT_OFFSET: u64 = 1 << 52;
