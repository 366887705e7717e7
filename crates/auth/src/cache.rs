//! A bounded cache of verified tokens, so a token seen again skips signature work.
//!
//! Keyed by the SHA-256 of the token (the token itself is never stored); an entry is
//! good until the token's `exp` plus leeway. Two generations bound the size: when the
//! current one is full it becomes the previous one, and a hit in the previous one is
//! promoted. That approximates LRU with O(1) work and no per-entry bookkeeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::jwt::Claims;

type Key = [u8; 32];
/// The current and the previous generation.
type Generations = (HashMap<Key, Arc<Claims>>, HashMap<Key, Arc<Claims>>);

pub struct TokenCache {
    capacity: usize,
    generations: Mutex<Generations>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            generations: Mutex::new((HashMap::new(), HashMap::new())),
        }
    }

    pub fn key(token: &str) -> Key {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The claims of a token verified earlier, if it is still unexpired at `now`.
    pub fn get(&self, key: &Key, now: u64, leeway: u64) -> Option<Arc<Claims>> {
        if self.capacity == 0 {
            return None;
        }
        let mut guard = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let (current, previous) = &mut *guard;
        let claims = match current.get(key) {
            Some(c) => Arc::clone(c),
            None => {
                let c = previous.remove(key)?;
                current.insert(*key, Arc::clone(&c));
                c
            }
        };
        if now >= claims.expires_at.saturating_add(leeway) {
            current.remove(key);
            return None;
        }
        Some(claims)
    }

    pub fn insert(&self, key: Key, claims: Arc<Claims>) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let (current, previous) = &mut *guard;
        if current.len() >= self.capacity.div_ceil(2) {
            *previous = std::mem::take(current);
        }
        current.insert(key, claims);
    }

    pub fn clear(&self) {
        let mut guard = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.clear();
        guard.1.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Arc<Claims> {
        Arc::new(Claims {
            client_id: "1".into(),
            client_id_is_integer: false,
            subject: None,
            expires_at: exp,
            key_id: None,
            session: None,
            token_id: None,
            csrf_hash: None,
        })
    }

    #[test]
    fn entries_expire_with_their_token() {
        let cache = TokenCache::new(10);
        let k = TokenCache::key("t");
        cache.insert(k, claims(100));
        assert!(cache.get(&k, 50, 0).is_some());
        assert!(cache.get(&k, 100, 0).is_none());
        assert!(
            cache.get(&k, 50, 0).is_none(),
            "an expired entry is dropped"
        );
    }

    #[test]
    fn size_stays_bounded() {
        let cache = TokenCache::new(4);
        for i in 0..100 {
            cache.insert(TokenCache::key(&i.to_string()), claims(1000));
        }
        let guard = cache.generations.lock().unwrap();
        assert!(guard.0.len() + guard.1.len() <= 4);
        drop(guard);
        // The most recent tokens are still there.
        assert!(cache.get(&TokenCache::key("99"), 0, 0).is_some());
    }
}
