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
    /// Without Redis: the store file.
    durable: Option<Arc<DurableNonces>>,
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

/// How long after a failed open the store file is tried again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// The embedded nonce file. Another process may hold it (an overlapping restart):
/// then it is tried again, at most once per [`REOPEN_AFTER`], until it opens; callbacks
/// meanwhile are decided in process and counted as fallbacks.
struct DurableNonces {
    path: std::path::PathBuf,
    state: std::sync::Mutex<(Option<Arc<EmbeddedNonces>>, Option<Instant>)>,
}

impl DurableNonces {
    fn open(path: &std::path::Path) -> DurableNonces {
        let durable = DurableNonces {
            path: path.to_path_buf(),
            state: std::sync::Mutex::new((None, None)),
        };
        durable.try_open();
        durable
    }

    /// Opens the file if it is not open and was not just tried.
    fn try_open(&self) -> Option<Arc<EmbeddedNonces>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = &state.0 {
            return Some(Arc::clone(open));
        }
        if state.1.is_some_and(|at| at.elapsed() < REOPEN_AFTER) {
            return None;
        }
        match EmbeddedNonces::open(&self.path) {
            Ok(nonces) => {
                let nonces = Arc::new(nonces);
                *state = (Some(Arc::clone(&nonces)), None);
                Some(nonces)
            }
            Err(e) => {
                let first = state.1.is_none();
                state.1 = Some(Instant::now());
                if first {
                    tracing::error!(error = %e, path = %self.path.display(), "cannot open the callback nonce store (tried again each second): until it opens, nonces are remembered in this process only");
                }
                None
            }
        }
    }

    /// The open store, opening it on the blocking pool if need be.
    async fn store(self: &Arc<Self>) -> Option<Arc<EmbeddedNonces>> {
        if let Some(open) = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
        {
            return Some(open);
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.try_open())
            .await
            .ok()
            .flatten()
    }
}

/// The embedded nonce file, when nonces are checked and no Redis shares them: the
/// previous snapshot's if it is the same file.
fn durable(build: &Build, previous: Option<&Replay>) -> Option<Arc<DurableNonces>> {
    if build.redis.redis().is_some() || !checks_nonces(build.snapshot) {
        return None;
    }
    let path = &build.snapshot.store.path;
    if let Some(kept) = previous
        .and_then(|p| p.durable.as_ref())
        .filter(|d| d.path == *path)
    {
        return Some(Arc::clone(kept));
    }
    Some(Arc::new(DurableNonces::open(path)))
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
            (None, Some(durable)) => match durable.store().await {
                Some(store) => match store.first_use(key, window).await {
                    Ok(kept) => here && kept,
                    Err(e) => {
                        self.counts.fallback.inc();
                        tracing::warn!(error = %e, "callback nonce checked in this process only: the store file did not answer");
                        here
                    }
                },
                None => {
                    self.counts.fallback.inc();
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
