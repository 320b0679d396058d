//! The key scheme: which Redis keys and channels a profile uses.
//!
//! The native layout is Redis Cluster safe: every script and transaction
//! touches keys of one hash slot.
//! - A shard stream and its companions share the hash tag `{domain:shard}`:
//!   `relay:{scan:3}:events`, the producer's dedupe markers
//!   `relay:{scan:3}:pub:<job>:<seq>` (written with the entry by one
//!   script) and the shard's dead-letter stream `relay:{scan:3}:dlq` (the
//!   move to it and the ack of the source entry are one transaction).
//! - A job's keys share the hash tag `{job_id}`: `relay:scan:{job}:job`
//!   and its live channel `relay:scan:{job}:live`.
//!
//! The eco2 profile uses the Python system's names unchanged; its per-job
//! history and live channel (which the Python system did not have) use
//! the native names beside them. Those names (`scan:events:N`, the
//! producer's `published:…` markers, `scan:state:<job>`) have no hash
//! tags, so the eco2 profile runs on a standalone or Sentinel-managed
//! server only ([`KeySpace::cluster_safe`]).

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::event::{Domain, JobId};

/// Which wire format the deployment speaks. Its name (`Display`, `FromStr`)
/// is the lowercase variant name, as in serde.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(strum::Display, strum::EnumString)]
#[strum(
    serialize_all = "lowercase",
    parse_err_ty = String,
    parse_err_fn = unknown_profile
)]
pub enum Profile {
    /// relay's own format: `relay:{domain}:…` keys, msgpack/json bodies,
    /// `{epoch}:{offset}` SSE ids.
    #[default]
    Native,
    /// The Python Eco² system's format (see docs/ECO2_WIRE.md).
    Eco2,
}

/// `Profile::from_str`'s error (what the `--profile` flag reports).
fn unknown_profile(name: &str) -> String {
    format!("unknown profile {name:?} (expected native or eco2)")
}

/// The shard a job's events go to: the first 8 bytes of md5(job_id) as a
/// big-endian integer, modulo `shards` (the eco2 function, used by both profiles).
///
/// ```
/// assert_eq!(relay_core::keys::shard_for("abc-123", 4), 2);
/// ```
pub fn shard_for(job_id: &str, shards: u32) -> u32 {
    let digest = Md5::digest(job_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) % u64::from(shards.max(1))) as u32
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag
/// (the part between the first `{` and the next `}`, when not empty),
/// else of the whole key, modulo 16384.
///
/// ```
/// assert_eq!(relay_core::keys::slot("relay:{scan:3}:events"), relay_core::keys::slot("scan:3"));
/// ```
pub fn slot(key: &str) -> u16 {
    slot_of_bytes(key.as_bytes())
}

/// [`slot`] of a key given as bytes.
pub fn slot_of_bytes(bytes: &[u8]) -> u16 {
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16_slot(tagged.unwrap_or(bytes))
}

fn crc16_slot(bytes: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(bytes) % 16384
}

/// The keys of one job's routed data.
///
/// Everything the router keeps for a job lives in ONE hash, so applying an
/// event costs one read and one write however much it updates: `epoch`,
/// `top` (highest offset), `hf` (first retained history offset), `sq`/`so`/
/// `st` (state seq, offset and payload), `rx` (when TTLs were last
/// refreshed), `s<seq>` → offset (idempotency) and `h<offset>` → payload (the
/// bounded history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobKeys {
    /// The job hash (see above).
    pub meta: String,
    /// eco2 only: the Python system's state string (`{domain}:state:{job}`),
    /// written with every state change beside the hash's copy.
    pub state: Option<String>,
    /// Pub/Sub channel carrying live envelopes for this job.
    pub live: String,
}

/// Key names for one profile and domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpace {
    profile: Profile,
    domain: Domain,
    shards: u32,
}

impl KeySpace {
    /// A key space for `domain` with `shards` shard streams (at least 1).
    pub fn new(profile: Profile, domain: Domain, shards: u32) -> Self {
        Self {
            profile,
            domain,
            shards: shards.max(1),
        }
    }

    /// The profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of a job.
    pub fn shard_of(&self, job: &JobId) -> u32 {
        shard_for(job.as_str(), self.shards)
    }

    /// The shard stream producers append to.
    pub fn shard_stream(&self, shard: u32) -> String {
        match self.profile {
            Profile::Native => format!("{}:events", self.shard_base(shard)),
            Profile::Eco2 => format!("{}:events:{shard}", self.domain),
        }
    }

    /// `relay:{domain:shard}`: the prefix of a shard's keys, whose hash
    /// tag keeps them in one cluster slot.
    fn shard_base(&self, shard: u32) -> String {
        format!("relay:{{{}:{shard}}}", self.domain)
    }

    /// Whether every multi-key operation on this key space stays in one
    /// Redis Cluster slot. The eco2 names are the Python system's, fixed
    /// by its producers, and carry no hash tags.
    pub fn cluster_safe(&self) -> bool {
        self.profile == Profile::Native
    }

    /// All shard streams.
    pub fn shard_streams(&self) -> Vec<String> {
        (0..self.shards).map(|s| self.shard_stream(s)).collect()
    }

    /// The dead-letter stream for the entries of `shard` that cannot be
    /// routed: one per shard in the native profile (in the shard's slot,
    /// so the move is one transaction on a cluster), one for all shards
    /// in the eco2 profile.
    pub fn dlq_stream(&self, shard: u32) -> String {
        match self.profile {
            Profile::Native => format!("{}:dlq", self.shard_base(shard)),
            Profile::Eco2 => format!("{}:events:dlq", self.domain),
        }
    }

    /// Every dead-letter stream of the domain, each once.
    pub fn dlq_streams(&self) -> Vec<String> {
        match self.profile {
            Profile::Native => (0..self.shards).map(|s| self.dlq_stream(s)).collect(),
            Profile::Eco2 => vec![self.dlq_stream(0)],
        }
    }

    /// The lease that makes one router of `group` the owner of `shard`
    /// (see [`crate::backend::Coordination`]).
    pub fn shard_lease(&self, group: &str, shard: u32) -> String {
        format!("{}:owner:{group}", self.shard_stream(shard))
    }

    /// The membership hash of the routers of `group`.
    pub fn router_members(&self, group: &str) -> String {
        match self.profile {
            Profile::Native => format!("relay:{}:routers:{group}", self.domain),
            Profile::Eco2 => format!("{}:events:routers:{group}", self.domain),
        }
    }

    /// Default consumer group of the router.
    pub fn default_group(&self) -> &'static str {
        match self.profile {
            Profile::Native => "relay-router",
            Profile::Eco2 => "eventrouter",
        }
    }

    /// Per-job keys.
    pub fn job(&self, job: &JobId) -> JobKeys {
        let base = format!("relay:{}:{{{}}}", self.domain, job);
        JobKeys {
            meta: format!("{base}:job"),
            state: match self.profile {
                Profile::Native => None,
                Profile::Eco2 => Some(format!("{}:state:{job}", self.domain)),
            },
            live: format!("{base}:live"),
        }
    }

    /// The producer-side idempotency marker for `(job, seq)`, in the slot
    /// of the job's shard stream (eco2 also keys it by stage, as the
    /// Python producer does).
    pub fn publish_marker(&self, job: &JobId, stage: &str, seq: u64) -> String {
        match self.profile {
            Profile::Native => format!("{}:pub:{job}:{seq}", self.shard_base(self.shard_of(job))),
            Profile::Eco2 => format!("published:{job}:{stage}:{seq}"),
        }
    }

    /// eco2 only: the shard Pub/Sub channel the Python gateways subscribe to.
    pub fn eco2_shard_channel(&self, shard: u32) -> String {
        format!("sse:events:{shard}")
    }

    /// The channel a gateway publishes to itself to probe its subscription.
    pub fn probe_channel(&self, instance: &str) -> String {
        format!("relay:{}:probe:{instance}", self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_parse_back_and_an_unknown_one_says_what_is_expected() {
        for (profile, name) in [(Profile::Native, "native"), (Profile::Eco2, "eco2")] {
            assert_eq!(profile.to_string(), name);
            assert_eq!(name.parse::<Profile>(), Ok(profile));
        }
        assert_eq!(
            "Eco2".parse::<Profile>(),
            Err("unknown profile \"Eco2\" (expected native or eco2)".to_owned())
        );
    }

    #[test]
    fn wire_md_shard_vectors() {
        let cases = [
            (
                "fc052f15-449f-4ce4-aa96-99d400ed7865",
                0x9c7f94569f848894u64,
                0,
                4,
            ),
            (
                "904fb02f-3e06-482c-b271-e641d3275d6b",
                0xe20260c44d1ca55d,
                1,
                5,
            ),
            ("abc-123", 0x6351623c8cef86fe, 2, 6),
            ("test-job", 0x28688d1dc6243795, 1, 5),
        ];
        for (job, head, m4, m8) in cases {
            let d = Md5::digest(job.as_bytes());
            assert_eq!(
                u64::from_be_bytes(d[..8].try_into().unwrap()),
                head,
                "{job}"
            );
            assert_eq!(shard_for(job, 4), m4, "{job} % 4");
            assert_eq!(shard_for(job, 8), m8, "{job} % 8");
        }
    }

    #[test]
    fn native_keys_share_hash_tag() {
        let ks = KeySpace::new(Profile::Native, Domain::new("scan").unwrap(), 4);
        let job = JobId::new("job-1").unwrap();
        let k = ks.job(&job);
        assert_eq!(k.meta, "relay:scan:{job-1}:job");
        assert_eq!(k.state, None);
        assert_eq!(k.live, "relay:scan:{job-1}:live");
        assert_eq!(ks.shard_stream(3), "relay:{scan:3}:events");
        assert_eq!(ks.dlq_stream(3), "relay:{scan:3}:dlq");
        assert_eq!(ks.dlq_streams().len(), 4);
        assert_eq!(
            ks.publish_marker(&job, "vision", 7),
            format!("relay:{{scan:{}}}:pub:job-1:7", ks.shard_of(&job))
        );
    }

    /// Every group of keys one script or transaction touches, per the
    /// backend's scripts (`backend/scripts/*.lua`) and the
    /// dead-letter transaction, lands in one cluster slot.
    #[test]
    fn every_multi_key_operation_stays_in_one_cluster_slot() {
        let ks = KeySpace::new(Profile::Native, Domain::new("scan").unwrap(), 16);
        for j in 0..500 {
            let job = JobId::new(format!("job-{j}")).unwrap();
            let shard = ks.shard_of(&job);
            let stream = ks.shard_stream(shard);
            // append_dedupe.lua: marker + shard stream.
            let marker = ks.publish_marker(&job, "vision", j);
            assert_eq!(slot(&marker), slot(&stream), "{marker} vs {stream}");
            // Dead-lettering: XADD to the shard's DLQ + XACK on the stream.
            assert_eq!(slot(&ks.dlq_stream(shard)), slot(&stream));
            // apply.lua / read_history.lua / get_state.lua: the job hash
            // and its live channel (SPUBLISH-able from the script).
            let k = ks.job(&job);
            assert_eq!(slot(&k.meta), slot(&k.live), "{k:?}");
            assert_eq!(k.state, None);
            // lease.lua and heartbeat.lua touch one key each.
        }
        // The 16 shard streams do not all share a slot (they spread over
        // the cluster's nodes).
        let slots: std::collections::HashSet<u16> =
            ks.shard_streams().iter().map(|s| slot(s)).collect();
        assert_eq!(slots.len(), 16);
        assert!(!KeySpace::new(Profile::Eco2, Domain::new("scan").unwrap(), 4).cluster_safe());
    }

    #[test]
    fn slot_follows_the_redis_cluster_rules() {
        // Vectors from the Redis Cluster specification.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), crc16_slot(b"foo{}{bar}"));
        assert_eq!(slot("foo{{bar}}zap"), crc16_slot(b"{bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
    }

    #[test]
    fn eco2_keys_match_wire_md() {
        let ks = KeySpace::new(Profile::Eco2, Domain::new("scan").unwrap(), 4);
        let job = JobId::new("abc-123").unwrap();
        assert_eq!(ks.shard_stream(2), "scan:events:2");
        assert_eq!(ks.job(&job).state.as_deref(), Some("scan:state:abc-123"));
        assert_eq!(ks.eco2_shard_channel(2), "sse:events:2");
        assert_eq!(
            ks.publish_marker(&job, "vision", 10),
            "published:abc-123:vision:10"
        );
        assert_eq!(ks.default_group(), "eventrouter");
    }
}
