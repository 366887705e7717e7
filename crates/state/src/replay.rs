//! Replay protection: a provider callback's nonce is remembered for a window, and only
//! its first use counts.
//!
//! [`NonceStore`] is the shape every kind of state here takes: a trait with an
//! in-process implementation ([`LocalNonces`]) and a Redis one ([`RedisNonces`], one
//! `SET NX PX` per nonce, so every instance sharing the Redis sees every nonce). A
//! single instance also writes each nonce to the embedded store ([`EmbeddedNonces`],
//! committed before the callback is forwarded), so a restart forgets none: a Plivo V3
//! signature carries no time, and its nonce is all that tells a replay.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};

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

/// Nonce → when it may be forgotten (milliseconds since the Unix epoch).
const NONCES: TableDefinition<&str, u64> = TableDefinition::new("nonces");
/// The same, ordered by that time, for forgetting.
const NONCE_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("nonce_expiry");
/// Expired nonces forgotten per write (callbacks come steadily; the table stays small).
const FORGET_PER_WRITE: usize = 16;

/// Nonces in the embedded store's file, which survive a restart.
pub struct EmbeddedNonces {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedNonces").finish_non_exhaustive()
    }
}

impl EmbeddedNonces {
    /// Opens (or creates) the nonce tables in the file at `path`.
    pub fn open(path: &std::path::Path) -> Result<EmbeddedNonces, String> {
        let db = crate::shared_redb(path).map_err(|e| e.to_string())?;
        let nonces = EmbeddedNonces { db };
        nonces.write(|_, _| Ok(())).map_err(|e| e.to_string())?;
        Ok(nonces)
    }

    /// Records `key` until `now_ms + window` unless it is recorded and unexpired:
    /// whether this is its first use. Committed durably before it returns.
    pub fn first_use_at(
        &self,
        key: &str,
        window: Duration,
        now_ms: u64,
    ) -> Result<bool, redb::Error> {
        let until = now_ms.saturating_add(window.as_millis() as u64);
        self.write(|nonces, expiry| {
            // Forget a few that are over.
            let over: Vec<(u64, String)> = expiry
                .range::<(u64, &str)>(..(now_ms, ""))?
                .take(FORGET_PER_WRITE)
                .map(|entry| entry.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                .collect::<Result<_, _>>()?;
            for (at, old) in &over {
                expiry.remove((*at, old.as_str()))?;
                if nonces.get(old.as_str())?.is_some_and(|v| v.value() == *at) {
                    nonces.remove(old.as_str())?;
                }
            }
            let seen = nonces.get(key)?.map(|v| v.value());
            if seen.is_some_and(|at| at > now_ms) {
                return Ok(false);
            }
            if let Some(at) = seen {
                expiry.remove((at, key))?;
            }
            nonces.insert(key, until)?;
            expiry.insert((until, key), ())?;
            Ok(true)
        })
    }

    fn write<T>(
        &self,
        change: impl FnOnce(
            &mut redb::Table<&str, u64>,
            &mut redb::Table<(u64, &str), ()>,
        ) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut nonces = txn.open_table(NONCES)?;
            let mut expiry = txn.open_table(NONCE_EXPIRY)?;
            change(&mut nonces, &mut expiry)?
        };
        txn.commit()?;
        Ok(out)
    }

    /// [`EmbeddedNonces::first_use_at`] now, on the blocking pool (a commit waits for
    /// the disk).
    pub async fn first_use(self: &Arc<Self>, key: &str, window: Duration) -> Result<bool, String> {
        let (this, key) = (Arc::clone(self), key.to_owned());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        tokio::task::spawn_blocking(move || this.first_use_at(&key, window, now_ms))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
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
    fn embedded_nonces_survive_a_reopen_and_expire() {
        let dir = tollgate_testkit::TempDir::new();
        let path = dir.path().join("state/store.redb");
        let w = Duration::from_secs(60);
        {
            let store = EmbeddedNonces::open(&path).unwrap();
            assert!(store.first_use_at("a", w, 1_000).unwrap());
            assert!(!store.first_use_at("a", w, 2_000).unwrap());
            assert!(store
                .first_use_at("b", Duration::from_secs(1), 1_000)
                .unwrap());
        }
        // Closed and opened again, as after a restart: still seen.
        let store = EmbeddedNonces::open(&path).unwrap();
        assert!(!store.first_use_at("a", w, 3_000).unwrap());
        // Past its window it counts again; an expired one is forgotten by later writes.
        assert!(store.first_use_at("b", w, 2_001).unwrap());
        assert!(store.first_use_at("a", w, 61_001).unwrap());
        assert!(!store.first_use_at("a", w, 61_002).unwrap());
        let txn = redb::ReadableDatabase::begin_read(&*store.db).unwrap();
        let nonces = txn.open_table(NONCES).unwrap();
        let expiry = txn.open_table(NONCE_EXPIRY).unwrap();
        use redb::ReadableTableMetadata as _;
        assert_eq!((nonces.len().unwrap(), expiry.len().unwrap()), (2, 2));
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
