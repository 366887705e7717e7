//! The limiter shared by every instance: the same GCRA as [`super::local`], as one Lua
//! script in Redis — one round trip per decision, atomic, on Redis's clock.
//!
//! The script is sent once (`SCRIPT LOAD`) and then called by its SHA1 (`EVALSHA`); a
//! Redis that lost it (a restart) gets it again on the next call. Keys carry a hash tag
//! so that in Redis Cluster all of one caller's keys share a slot, and they expire on
//! their own once the caller's allowance is full again.

use std::time::Duration;

use super::{Decision, Quota};
use crate::redis::{Redis, StoreError};

const GCRA: &str = include_str!("gcra.lua");

/// Decides requests against quotas kept in Redis.
#[derive(Debug)]
pub struct SharedLimiter {
    script: redis::Script,
}

impl Default for SharedLimiter {
    fn default() -> Self {
        SharedLimiter {
            script: redis::Script::new(GCRA),
        }
    }
}

impl SharedLimiter {
    /// Decides one request for `key` (made with [`key`]) on worker `worker`'s connection.
    pub async fn check(
        &self,
        redis: &Redis,
        worker: usize,
        key: &str,
        quota: &Quota,
    ) -> Result<Decision, StoreError> {
        let interval_us = u64::try_from(quota.interval().as_micros()).unwrap_or(u64::MAX);
        let burst = quota.burst();
        let outcome: i64 = redis
            .call(worker, |mut connection| async move {
                self.script
                    .key(key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        // See gcra.lua: remaining when allowed, -(retry in µs) - 1 when not.
        Ok(match u32::try_from(outcome) {
            Ok(remaining) => quota.allowed(remaining),
            Err(_) => quota.denied(Duration::from_micros(
                outcome.saturating_add(1).unsigned_abs(),
            )),
        })
    }
}

/// The Redis key for one limit: `{prefix}:rl:{tag}:{policy}{rest}`. `tag` (the first
/// part of what the limit counts by, such as `client=acme`) is the hash tag, so every
/// key of one caller lives in one Cluster slot. None of the parts may contain `{` or `}`.
pub fn key(prefix: &str, policy: &str, tag: &str, rest: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + policy.len() + tag.len() + rest.len() + 8);
    key.push_str(prefix);
    key.push_str(":rl:{");
    key.push_str(tag);
    key.push_str("}:");
    key.push_str(policy);
    key.push_str(rest);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_tag_is_the_first_key_part() {
        assert_eq!(
            key("tollgate", "per-client", "client=acme", "|route=login"),
            "tollgate:rl:{client=acme}:per-client|route=login"
        );
    }
}
