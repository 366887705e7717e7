//! Replay protection: a provider callback's nonce is remembered for a window, and only
//! its first use counts.
//!
//! [`NonceStore`] is the shape every kind of state here takes: a trait with an
//! in-process implementation ([`LocalNonces`]) and a Redis one ([`RedisNonces`], one
//! `SET NX PX` per nonce, so every instance sharing the Redis sees every nonce).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::redis::{Redis, StoreError};
use crate::BoxFuture;

/// Where nonces are remembered.
pub trait NonceStore: Send + Sync {
    /// Records `key` for `window`: `Ok(true)` if it was not already recorded.
    fn first_use<'a>(
        &'a self,
        worker: usize,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// Nonces in this process. Bounded: past `capacity` entries the oldest are forgotten
/// early (only validly signed callbacks are recorded, so only the provider's own volume
/// can fill it).
#[derive(Debug)]
pub struct LocalNonces {
    inner: Mutex<Entries>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Entries {
    keys: HashSet<String>,
    /// Keys in the order they expire (every window of one store's callers is the same
    /// for one key, and a key is kept until its own expiry).
    expiry: VecDeque<(Instant, String)>,
}

impl LocalNonces {
    pub fn new(capacity: usize) -> LocalNonces {
        LocalNonces {
            inner: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
        }
    }

    /// [`NonceStore::first_use`] at a given instant (the clock is injected for tests).
    pub fn first_use_at(&self, key: &str, window: Duration, now: Instant) -> bool {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while entries.expiry.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, old)) = entries.expiry.pop_front() {
                entries.keys.remove(&old);
            }
        }
        if entries.keys.contains(key) {
            return false;
        }
        while entries.keys.len() >= self.capacity {
            match entries.expiry.pop_front() {
                Some((_, old)) => {
                    entries.keys.remove(&old);
                }
                None => break,
            }
        }
        entries.keys.insert(key.to_owned());
        // Windows differ per webhook: keep the queue ordered by expiry.
        let at = now + window;
        let position = entries
            .expiry
            .iter()
            .rposition(|(other, _)| *other <= at)
            .map_or(0, |p| p + 1);
        entries.expiry.insert(position, (at, key.to_owned()));
        true
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NonceStore for LocalNonces {
    fn first_use<'a>(
        &'a self,
        _worker: usize,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let first = self.first_use_at(key, window, Instant::now());
        Box::pin(async move { Ok(first) })
    }
}

/// Nonces in Redis, shared by every instance.
pub struct RedisNonces {
    redis: Arc<Redis>,
}

impl RedisNonces {
    pub fn new(redis: Arc<Redis>) -> RedisNonces {
        RedisNonces { redis }
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }
}

impl NonceStore for RedisNonces {
    fn first_use<'a>(
        &'a self,
        worker: usize,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let full = format!("{}:nonce:{key}", self.redis.settings().key_prefix);
        let millis = window.as_millis().max(1) as u64;
        Box::pin(async move {
            let set: Option<String> = self
                .redis
                .call(worker, |mut connection| {
                    let full = full.clone();
                    async move {
                        redis::cmd("SET")
                            .arg(&full)
                            .arg(1)
                            .arg("NX")
                            .arg("PX")
                            .arg(millis)
                            .query_async(&mut connection)
                            .await
                    }
                })
                .await?;
            Ok(set.is_some())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_counts_once_within_its_window() {
        let store = LocalNonces::new(100);
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        assert!(store.first_use_at("a", w, t0));
        assert!(!store.first_use_at("a", w, t0 + Duration::from_secs(59)));
        assert!(store.first_use_at("b", w, t0));
        // The window is over: the nonce is forgotten.
        assert!(store.first_use_at("a", w, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn capacity_forgets_the_oldest_first() {
        let store = LocalNonces::new(2);
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        assert!(store.first_use_at("a", w, t0));
        assert!(store.first_use_at("b", w, t0));
        assert!(store.first_use_at("c", w, t0));
        assert_eq!(store.len(), 2);
        assert!(!store.first_use_at("c", w, t0));
        assert!(store.first_use_at("a", w, t0));
    }

    #[test]
    fn windows_of_different_lengths_expire_in_order() {
        let store = LocalNonces::new(100);
        let t0 = Instant::now();
        assert!(store.first_use_at("long", Duration::from_secs(100), t0));
        assert!(store.first_use_at("short", Duration::from_secs(10), t0));
        let later = t0 + Duration::from_secs(11);
        assert!(store.first_use_at("short", Duration::from_secs(10), later));
        assert!(!store.first_use_at("long", Duration::from_secs(100), later));
    }
}
