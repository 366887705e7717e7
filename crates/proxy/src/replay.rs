//! Provider-callback nonces, remembered so that a captured callback cannot be replayed
//! (used by stage 5, authenticate).
//!
//! Every nonce is recorded in this process; with `[store]` Redis, in Redis too, so that
//! every instance sees every nonce. A callback counts only if neither has seen its nonce.
//! While Redis cannot answer, the process's own memory decides alone: a replay sent to
//! another instance during an outage would pass, which is counted and logged — refusing
//! every callback instead would lose the provider's status updates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_state::redis::Redis;
use tollgate_state::replay::{LocalNonces, NonceStore, RedisNonces};

/// Nonces kept in process at most (about 100 bytes each).
const LOCAL_CAPACITY: usize = 1_000_000;

/// The nonce memory of one published snapshot.
pub struct Replay {
    /// Shared with every snapshot, so a reload forgets nothing.
    local: Arc<LocalNonces>,
    shared: Option<RedisNonces>,
    counts: Arc<ReplayCounts>,
}

/// Outcomes, kept across reloads.
#[derive(Debug, Default)]
pub struct ReplayCounts {
    pub replayed: AtomicU64,
    /// Decided in process alone because Redis could not answer.
    pub fallback: AtomicU64,
}

impl Replay {
    /// The in-process memory, for the first snapshot.
    pub fn local_memory() -> Arc<LocalNonces> {
        Arc::new(LocalNonces::new(LOCAL_CAPACITY))
    }

    pub fn new(
        local: Arc<LocalNonces>,
        redis: Option<Arc<Redis>>,
        counts: Arc<ReplayCounts>,
    ) -> Replay {
        Replay {
            local,
            shared: redis.map(RedisNonces::new),
            counts,
        }
    }

    /// Records `key` for `window`: whether this is its first use.
    pub async fn first_use(&self, worker: usize, key: &str, window: Duration) -> bool {
        let here = self.local.first_use_at(key, window, Instant::now());
        let first = match &self.shared {
            None => here,
            Some(shared) => match shared.first_use(worker, key, window).await {
                Ok(everywhere) => here && everywhere,
                Err(e) => {
                    self.counts.fallback.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "callback nonce checked in this process only: redis did not answer");
                    here
                }
            },
        };
        if !first {
            self.counts.replayed.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    pub fn counts(&self) -> &ReplayCounts {
        &self.counts
    }
}
