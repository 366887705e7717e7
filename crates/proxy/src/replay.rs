//! Provider-callback nonces, remembered so that a captured callback cannot be replayed
//! (used by stage 5, authenticate).
//!
//! Every nonce is recorded in this process; with `[store]` Redis, in Redis too, so that
//! every instance sees every nonce; without it, in the embedded store's file
//! (`[store] path`), so that a restart forgets none. A callback counts only if neither
//! has seen its nonce. While Redis (or the file) cannot answer, the process's own memory
//! decides alone: a replay sent to another instance during an outage would pass, which
//! is counted and logged — refusing every callback instead would lose the provider's
//! status updates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use tollgate_policy::snapshot::{RouteAuth, Snapshot, Webhook};
use tollgate_state::replay::{EmbeddedNonces, LocalNonces, NonceStore, RedisNonces};

use crate::part::{Build, Part};

/// Nonces kept in process at most (about 100 bytes each).
const LOCAL_CAPACITY: usize = 1_000_000;

/// The nonce memory of one published snapshot.
pub struct Replay {
    /// Shared with every snapshot, so a reload forgets nothing.
    local: Arc<LocalNonces>,
    shared: Option<RedisNonces>,
    /// Without Redis: the file, and where it is.
    durable: Option<(std::path::PathBuf, Arc<EmbeddedNonces>)>,
    counts: Arc<ReplayCounts>,
}

/// Outcomes, kept across reloads.
#[derive(Debug, Default)]
pub struct ReplayCounts {
    pub replayed: Counter,
    /// Decided in process alone because Redis could not answer.
    pub fallback: Counter,
}

impl Part for Replay {
    fn build(build: &Build, previous: Option<&Self>) -> Self {
        Replay {
            local: previous.map_or_else(
                || Arc::new(LocalNonces::new(LOCAL_CAPACITY)),
                |p| Arc::clone(&p.local),
            ),
            shared: build
                .redis
                .redis()
                .map(|redis| RedisNonces::new(Arc::clone(redis))),
            durable: durable(build, previous),
            counts: previous.map_or_else(Arc::default, |p| Arc::clone(&p.counts)),
        }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "tollgate_callback_replays",
            "Provider callbacks refused because their nonce was seen before",
            self.counts.replayed.clone(),
        );
        registry.register(
            "tollgate_callback_nonce_fallbacks",
            "Callback nonces checked in this process alone because Redis (or the store file) could not answer",
            self.counts.fallback.clone(),
        );
    }
}

/// The embedded nonce file, when nonces are checked and no Redis shares them: the
/// previous snapshot's if it is the same file.
fn durable(
    build: &Build,
    previous: Option<&Replay>,
) -> Option<(std::path::PathBuf, Arc<EmbeddedNonces>)> {
    if build.redis.redis().is_some() || !checks_nonces(build.snapshot) {
        return None;
    }
    let path = &build.snapshot.store.path;
    if let Some(kept) = previous
        .and_then(|p| p.durable.as_ref())
        .filter(|(p, _)| p == path)
    {
        return Some(kept.clone());
    }
    match EmbeddedNonces::open(path) {
        Ok(nonces) => Some((path.clone(), Arc::new(nonces))),
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot open the callback nonce store: nonces are remembered in this process only, and a restart forgets them");
            None
        }
    }
}

fn checks_nonces(snapshot: &Snapshot) -> bool {
    snapshot.routes.iter().any(|route| {
        matches!(&route.auth, RouteAuth::Webhook(hook) if matches!(**hook, Webhook::PlivoV3 { .. }))
    })
}

impl Replay {
    /// Records `key` for `window`: whether this is its first use.
    pub async fn first_use(&self, worker: usize, key: &str, window: Duration) -> bool {
        let here = self.local.first_use_at(key, window, Instant::now());
        let first = match (&self.shared, &self.durable) {
            (Some(shared), _) => match shared.first_use(worker, key, window).await {
                Ok(everywhere) => here && everywhere,
                Err(e) => {
                    self.counts.fallback.inc();
                    tracing::warn!(error = %e, "callback nonce checked in this process only: redis did not answer");
                    here
                }
            },
            (None, Some((_, durable))) => match durable.first_use(key, window).await {
                Ok(kept) => here && kept,
                Err(e) => {
                    self.counts.fallback.inc();
                    tracing::warn!(error = %e, "callback nonce checked in this process only: the store file did not answer");
                    here
                }
            },
            (None, None) => here,
        };
        if !first {
            self.counts.replayed.inc();
        }
        first
    }
}
