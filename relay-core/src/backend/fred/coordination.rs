//! [`Coordination`] on fred: the lease and heartbeat scripts.

use std::time::Duration;

use async_trait::async_trait;

use super::cmd::Cmd;
use super::conn::{ms, Resend};
use super::reply::{array, str_of, to_redis_value, u64_of};
use super::FredBackend;
use crate::backend::{BackendResult, Coordination};

#[async_trait]
impl Coordination for FredBackend {
    async fn try_lease(&self, key: &str, owner: &str, ttl: Duration) -> BackendResult<bool> {
        let script = &self.inner.scripts.lease;
        let mut c = Cmd::evalsha(&script.sha, &[key]);
        c.arg("take").arg(owner).arg(ms(ttl));
        // Taking or renewing twice is the same as once.
        let v = self.eval_one(script, c, None, Resend::AfterDrop).await?;
        Ok(u64_of(&to_redis_value(v)) == Some(1))
    }

    async fn release_lease(&self, key: &str, owner: &str) -> BackendResult<()> {
        let script = &self.inner.scripts.lease;
        let mut c = Cmd::evalsha(&script.sha, &[key]);
        c.arg("release").arg(owner).arg(0u64);
        self.eval_one(script, c, None, Resend::AfterDrop).await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> BackendResult<Vec<String>> {
        let script = &self.inner.scripts.heartbeat;
        let mut c = Cmd::evalsha(&script.sha, &[group]);
        c.arg(member).arg(ms(ttl)).arg(crate::event::now_ms());
        let v = self.eval_one(script, c, None, Resend::AfterDrop).await?;
        let mut live: Vec<String> = array(&to_redis_value(v), "heartbeat reply")?
            .iter()
            .filter_map(|m| str_of(m).map(str::to_owned))
            .collect();
        live.sort();
        Ok(live)
    }
}
