//! Sessions in Redis, shared by every instance.
//!
//! Each family is one JSON value, `{prefix}:session:{<id>}`. The braces are a hash
//! tag, which keeps a family in one Cluster slot. The value expires when the session
//! ends. A change reads the family, applies the same rules as the embedded store
//! ([`super::decide_rotation`]), and writes the result back with a compare-and-set
//! script that writes only if the value is still the one that was read. When two
//! instances present the same token at the same moment, one wins. The other reads
//! again and sees the token spent, so it gets the grace answer (or, past the grace
//! period, a reuse). There are never two live successors.
//!
//! The revocation feed is a sorted set, `{prefix}:revocations`. Each member is an
//! encoded [`Revocation`], scored by the writer's clock in milliseconds. Instances poll
//! it from their last score minus a margin, so clocks a few seconds apart lose
//! nothing; entries seen twice do no harm. Entries older than the retention are
//! trimmed on [`SessionStore::prune`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    decide_revoke, decide_rotation, Family, Feed, Next, Revocation, Revoke, Revoked, Rotation,
    SessionError, SessionStore, When,
};
use crate::redis::Redis;
use crate::BoxFuture;

/// Writes `ARGV[2]` over `KEYS[1]` (expiring at `ARGV[3]` ms) only if it still holds
/// `ARGV[1]`: 1 if written, 0 if someone else changed it first.
const COMPARE_AND_SET: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
";

/// Attempts at a contended compare-and-set before giving up (each loser re-reads a
/// value that has just settled, so a second attempt nearly always decides).
const ATTEMPTS: usize = 8;

/// How far back, in milliseconds, a poll looks past its cursor: clock differences
/// between instances up to this size lose no revocation.
const CLOCK_MARGIN_MS: u64 = 10_000;

/// A session store in Redis.
pub struct SharedSessions {
    redis: Arc<Redis>,
    compare_and_set: redis::Script,
    /// How long feed entries are kept (the longest an access token can live).
    retention: Duration,
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSessions")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn decode(text: &str) -> Result<Family, SessionError> {
    serde_json::from_str(text).map_err(|e| SessionError::Corrupt(e.to_string()))
}

fn encode(family: &Family) -> Result<String, SessionError> {
    serde_json::to_string(family).map_err(|e| SessionError::Corrupt(e.to_string()))
}

impl SharedSessions {
    pub fn new(redis: Arc<Redis>, retention: Duration) -> SharedSessions {
        SharedSessions {
            redis,
            compare_and_set: redis::Script::new(COMPARE_AND_SET),
            retention,
        }
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    fn family_key(&self, id: &str) -> String {
        format!("{}:session:{{{id}}}", self.redis.settings().key_prefix)
    }

    fn feed_key(&self) -> String {
        format!("{}:revocations", self.redis.settings().key_prefix)
    }

    async fn get(&self, worker: usize, key: &str) -> Result<Option<String>, SessionError> {
        Ok(self
            .redis
            .call(worker, |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?)
    }

    async fn compare_and_set(
        &self,
        worker: usize,
        key: &str,
        old: &str,
        new: &str,
        expires_ms: u64,
    ) -> Result<bool, SessionError> {
        let script = &self.compare_and_set;
        let written: i64 = self
            .redis
            .call(worker, |mut c| async move {
                script
                    .key(key)
                    .arg(old)
                    .arg(new)
                    .arg(expires_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(written == 1)
    }

    async fn announce(&self, worker: usize, revocation: &Revocation) -> Result<(), SessionError> {
        let key = self.feed_key();
        let member = revocation.encode();
        let score = now_ms();
        let (key, member) = (&key, &member);
        let _: i64 = self
            .redis
            .call(worker, |mut c| async move {
                redis::cmd("ZADD")
                    .arg(key)
                    .arg(score)
                    .arg(member)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Reads family `id`, lets `decide` change it, and writes it back if it says so,
    /// retrying when another instance changed it in between. `None`: no such family.
    async fn update<T>(
        &self,
        worker: usize,
        id: &str,
        mut decide: impl FnMut(&mut Family) -> (T, bool),
    ) -> Result<Option<T>, SessionError> {
        let key = self.family_key(id);
        for _ in 0..ATTEMPTS {
            let Some(text) = self.get(worker, &key).await? else {
                return Ok(None);
            };
            let mut family = decode(&text)?;
            let (outcome, changed) = decide(&mut family);
            if !changed {
                return Ok(Some(outcome));
            }
            let new = encode(&family)?;
            let expires_ms = family.ends.saturating_mul(1000);
            if self
                .compare_and_set(worker, &key, &text, &new, expires_ms)
                .await?
            {
                return Ok(Some(outcome));
            }
        }
        Err(SessionError::Contended)
    }
}

impl SessionStore for SharedSessions {
    fn create<'a>(
        &'a self,
        worker: usize,
        family: &'a Family,
    ) -> BoxFuture<'a, Result<(), SessionError>> {
        Box::pin(async move {
            let key = self.family_key(&family.id);
            let text = encode(family)?;
            let expires_ms = family.ends.saturating_mul(1000);
            let (key, text) = (&key, &text);
            let set: Option<String> = self
                .redis
                .call(worker, |mut c| async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(text)
                        .arg("NX")
                        .arg("PXAT")
                        .arg(expires_ms)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            match set {
                Some(_) => Ok(()),
                None => Err(SessionError::Exists),
            }
        })
    }

    fn rotate<'a>(
        &'a self,
        worker: usize,
        family: &'a str,
        presented: &'a str,
        next: &'a Next,
        when: When,
    ) -> BoxFuture<'a, Result<Rotation, SessionError>> {
        Box::pin(async move {
            let outcome = self
                .update(worker, family, |f| {
                    let outcome = decide_rotation(f, presented, next, when);
                    let changed = matches!(outcome, Rotation::Rotated(_) | Rotation::Reused { .. });
                    ((outcome, f.revoked_until(when)), changed)
                })
                .await?;
            let (outcome, until) = outcome.unwrap_or((Rotation::Unknown, when.tokens_until));
            // A family already revoked is announced again: the reuse that revoked it
            // may have lost its announcement (the compare-and-set landed, the feed
            // write did not), and then no instance would refuse its access tokens.
            let revoked = match &outcome {
                Rotation::Reused { family } => Some(family.clone()),
                Rotation::Revoked => Some(family.to_owned()),
                _ => None,
            };
            if let Some(id) = revoked {
                self.announce(
                    worker,
                    &Revocation {
                        kind: Revoked::Session,
                        id,
                        until,
                    },
                )
                .await?;
            }
            Ok(outcome)
        })
    }

    fn revoke<'a>(
        &'a self,
        worker: usize,
        family: &'a str,
        proof: Option<&'a str>,
        when: When,
    ) -> BoxFuture<'a, Result<Revoke, SessionError>> {
        Box::pin(async move {
            let outcome = self
                .update(worker, family, |f| {
                    let outcome = decide_revoke(f, proof, when);
                    ((outcome, f.revoked_until(when)), outcome == Revoke::Revoked)
                })
                .await?;
            let (outcome, until) = outcome.unwrap_or((Revoke::Unknown, when.tokens_until));
            if outcome != Revoke::Unknown {
                // Announced again when already revoked: an earlier announcement may
                // have been the step that failed.
                self.announce(
                    worker,
                    &Revocation {
                        kind: Revoked::Session,
                        id: family.to_owned(),
                        until,
                    },
                )
                .await?;
            }
            Ok(outcome)
        })
    }

    fn deny_token<'a>(
        &'a self,
        worker: usize,
        token_id: &'a str,
        until: u64,
    ) -> BoxFuture<'a, Result<(), SessionError>> {
        Box::pin(async move {
            self.announce(
                worker,
                &Revocation {
                    kind: Revoked::Token,
                    id: token_id.to_owned(),
                    until,
                },
            )
            .await
        })
    }

    fn revocations(&self, worker: usize, cursor: u64) -> BoxFuture<'_, Result<Feed, SessionError>> {
        Box::pin(async move {
            let key = self.feed_key();
            let from = cursor.saturating_sub(CLOCK_MARGIN_MS);
            let key = &key;
            let items: Vec<(String, u64)> = self
                .redis
                .call(worker, |mut c| async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg(from)
                        .arg("+inf")
                        .arg("WITHSCORES")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let mut feed = Feed {
                entries: Vec::with_capacity(items.len()),
                cursor,
            };
            for (member, score) in items {
                feed.cursor = feed.cursor.max(score);
                if let Some(entry) = Revocation::decode(&member) {
                    feed.entries.push(entry);
                }
            }
            Ok(feed)
        })
    }

    fn prune(&self, worker: usize, _now: u64) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            // Families expire by themselves; feed entries are scored by when they were
            // written, and none matters longer than an access token lives.
            let key = self.feed_key();
            let before = now_ms().saturating_sub(self.retention.as_millis() as u64);
            let key = &key;
            let _: i64 = self
                .redis
                .call(worker, |mut c| async move {
                    redis::cmd("ZREMRANGEBYSCORE")
                        .arg(key)
                        .arg("-inf")
                        .arg(format!("({before}"))
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(())
        })
    }
}
