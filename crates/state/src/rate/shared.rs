//! The limiter shared by every instance: the same GCRA as [`super::local`], as one Lua
//! script in Redis — atomic, on Redis's clock, at most one round trip per decision.
//!
//! The script is sent once (`SCRIPT LOAD`) and then called by its SHA1 (`EVALSHA`); a
//! Redis that lost it (a restart) gets it again on the next call. Keys carry a hash tag
//! so that in Redis Cluster all of one caller's keys share a slot, and they expire on
//! their own once the caller's allowance is full again.
//!
//! Decisions are coalesced per worker: one pipeline is in flight at a time, and the
//! decisions asked for meanwhile go together in the next. In it, decisions whose keys
//! share a hash tag (so a Cluster slot) share one `EVALSHA`, which reads and writes a
//! repeated key once; other tags get their own. An idle gateway sends each decision at
//! once; a busy one sends many per write, saving a system call, a Redis wake-up and a
//! script run per decision — on loopback those cost more than the arithmetic.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Decide, Decision, Quota};
use crate::redis::{Link, Redis, StoreError};

const GCRA: &str = include_str!("gcra.lua");

/// At most this many decisions go in one pipeline: one long script would hold up Redis
/// for every instance.
const MAX_BATCH: usize = 256;

/// One decision waiting for its batch.
struct Call {
    /// Made by [`key`]: the hash tag is between the first `{` and the next `}`.
    key: String,
    interval_us: u64,
    burst: u32,
    reply: oneshot::Sender<Result<i64, StoreError>>,
}

/// Decides requests against quotas kept in Redis.
pub struct SharedLimiter {
    redis: Arc<Redis>,
    script: redis::Script,
    /// Per worker: the queue its batch sender reads, started on first use.
    queues: Vec<OnceLock<mpsc::UnboundedSender<Call>>>,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl SharedLimiter {
    pub fn new(redis: Arc<Redis>, workers: usize) -> Arc<SharedLimiter> {
        Arc::new(SharedLimiter {
            redis,
            script: redis::Script::new(GCRA),
            queues: (0..workers.max(1)).map(|_| OnceLock::new()).collect(),
        })
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// Decides one request for `key` (made with [`key`]) from worker `worker`; must run
    /// on that worker's runtime.
    pub async fn check(
        self: &Arc<Self>,
        worker: usize,
        key: String,
        quota: &Quota,
    ) -> Result<Decision, StoreError> {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            key,
            // Rounded up: never more generous than the in-process count.
            interval_us: u64::try_from(quota.interval().as_nanos().div_ceil(1000))
                .unwrap_or(u64::MAX),
            burst: quota.burst(),
            reply,
        };
        let timeout = self.redis.settings().timeout;
        if self.queue(worker).send(call).is_err() {
            return Err(StoreError::Timeout(timeout));
        }
        // The pipeline in flight, then this call's own, each bounded by the timeout.
        let outcome = match tokio::time::timeout(timeout * 2, answer).await {
            Ok(Ok(outcome)) => outcome?,
            _ => return Err(StoreError::Timeout(timeout)),
        };
        // See gcra.lua: remaining when allowed, -(retry in µs) - 1 when not.
        Ok(match u32::try_from(outcome) {
            Ok(remaining) => quota.allowed(remaining),
            Err(_) => quota.denied(Duration::from_micros(
                outcome.saturating_add(1).unsigned_abs(),
            )),
        })
    }

    fn queue(self: &Arc<Self>, worker: usize) -> &mpsc::UnboundedSender<Call> {
        self.queues[worker % self.queues.len()].get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            // The task holds a weak reference: when the limiter goes (a reload with
            // other settings), the queue closes and the task ends.
            tokio::spawn(send_batches(Arc::downgrade(self), worker, receiver));
            sender
        })
    }

    /// Sends one batch as a pipeline, one script call per hash tag, and answers every
    /// call in it.
    async fn run(&self, worker: usize, mut batch: Vec<Call>) {
        // Callers that gave up (timed out, or their client left) were already answered
        // by their failure mode: counting them in Redis too would charge them twice.
        batch.retain(|call| !call.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        // Stable: within a tag, decisions keep the order they were asked in.
        batch.sort_by(|a, b| hash_tag(&a.key).cmp(hash_tag(&b.key)));
        let hash = self.script.get_hash();
        let mut pipe = redis::pipe();
        let mut groups: Vec<usize> = Vec::new();
        for (i, call) in batch.iter().enumerate() {
            let same_tag = i > 0 && hash_tag(&batch[i - 1].key) == hash_tag(&call.key);
            match groups.last_mut() {
                Some(n) if same_tag => *n += 1,
                _ => groups.push(1),
            }
        }
        let mut start = 0;
        for &n in &groups {
            let calls = &batch[start..start + n];
            let command = pipe.cmd("EVALSHA").arg(hash).arg(n);
            for call in calls {
                command.arg(&call.key);
            }
            for call in calls {
                command.arg(call.interval_us).arg(call.burst);
            }
            start += n;
        }
        let script = &self.script;
        let pipe = &pipe;
        let cluster = self.redis.is_cluster();
        let result: Result<Vec<Vec<i64>>, StoreError> = self
            .redis
            .call(worker, |mut connection| async move {
                let sent = match cluster {
                    false => pipe.query_async(&mut connection).await,
                    // Each tag's script goes to its own node, all at once.
                    true => each_on_its_node(pipe, &connection).await,
                };
                match sent {
                    // Redis restarted and lost the script: load it, then try again.
                    Err(e) if e.code() == Some("NOSCRIPT") => {
                        script.prepare_invoke().load_async(&mut connection).await?;
                        match cluster {
                            false => pipe.query_async(&mut connection).await,
                            true => each_on_its_node(pipe, &connection).await,
                        }
                    }
                    other => other,
                }
            })
            .await;
        match result {
            Ok(replies)
                if replies.len() == groups.len()
                    && replies.iter().zip(&groups).all(|(r, &n)| r.len() == n) =>
            {
                for (call, value) in batch.into_iter().zip(replies.into_iter().flatten()) {
                    let _ = call.reply.send(Ok(value));
                }
            }
            Ok(_) => {
                let e = redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "redis answered a pipeline with the wrong number of replies",
                ));
                for call in batch {
                    let _ = call.reply.send(Err(StoreError::Redis(e.clone())));
                }
            }
            Err(e) => {
                for call in batch {
                    let _ = call.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The hash tag of a key made by [`key`]: what Redis Cluster hashes to pick the slot.
fn hash_tag(key: &str) -> &str {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(key, |(tag, _)| tag)
}

/// One worker's sender: waits for a call, takes every call queued behind it, sends them
/// as one pipeline, repeats.
async fn send_batches(
    limiter: Weak<SharedLimiter>,
    worker: usize,
    mut queue: mpsc::UnboundedReceiver<Call>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.run(worker, batch).await;
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

impl super::RateStore for Arc<SharedLimiter> {
    fn decide<'a>(
        &'a self,
        worker: usize,
        key: String,
        quota: &'a Quota,
    ) -> crate::BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.check(worker, key, quota))
    }
}

/// The pipeline's commands (one script call per hash tag), each sent on its own and
/// all awaited together: on a cluster the tags live on different nodes.
async fn each_on_its_node(
    pipe: &redis::Pipeline,
    connection: &Link,
) -> redis::RedisResult<Vec<Vec<i64>>> {
    let calls = pipe.cmd_iter().map(|command| {
        let mut connection = connection.clone();
        async move { command.query_async::<Vec<i64>>(&mut connection).await }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_tag_is_the_first_key_part() {
        let k = key("tollgate", "per-client", "client=acme", "|route=login");
        assert_eq!(k, "tollgate:rl:{client=acme}:per-client|route=login");
        assert_eq!(hash_tag(&k), "client=acme");
    }
}
