//! The key scheme: which Redis keys and channels a profile uses.
//!
//! Native per-job keys share the hash tag `{job_id}` so one Lua call touches a
//! single slot (Redis Cluster safe). The eco2 profile uses the Python system's
//! names unchanged; its per-job history and live channel (which the Python
//! system did not have) use the native names beside them.

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
            Profile::Native => format!("relay:{}:events:{shard}", self.domain),
            Profile::Eco2 => format!("{}:events:{shard}", self.domain),
        }
    }

    /// All shard streams.
    pub fn shard_streams(&self) -> Vec<String> {
        (0..self.shards).map(|s| self.shard_stream(s)).collect()
    }

    /// The dead-letter stream for entries that cannot be routed.
    pub fn dlq_stream(&self) -> String {
        match self.profile {
            Profile::Native => format!("relay:{}:dlq", self.domain),
            Profile::Eco2 => format!("{}:events:dlq", self.domain),
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

    /// The producer-side idempotency marker for `(job, seq)` (eco2 also keys it
    /// by stage, as the Python producer does).
    pub fn publish_marker(&self, job: &JobId, stage: &str, seq: u64) -> String {
        match self.profile {
            Profile::Native => format!("relay:{}:{{{}}}:pub:{seq}", self.domain, job),
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
        assert_eq!(ks.shard_stream(3), "relay:scan:events:3");
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
