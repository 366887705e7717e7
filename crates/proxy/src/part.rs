//! The shape of runtime state: one part per feature, built for each published snapshot,
//! carrying over from the previous one whatever still holds, and registering its own
//! metrics at each scrape. [`crate::runtime::Active`] is made of parts; adding a feature that keeps
//! state (the ledger, the session store) is one more part.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tollgate_policy::Snapshot;

use crate::redis_link::RedisLink;

/// What building a part may look at.
pub struct Build<'a> {
    pub snapshot: &'a Snapshot,
    /// Data-plane workers (each has its own connections).
    pub workers: usize,
    /// The Redis connection of this snapshot's `[store]` (built first; parts that share
    /// state through Redis take it from here).
    pub redis: &'a RedisLink,
    /// Called when a remote key set changes (clears verified tokens).
    pub on_keys_changed: &'a Arc<dyn Fn() + Send + Sync>,
}

/// A feature's runtime state.
pub trait Part: Sized {
    /// The state for `build.snapshot`, carrying over what still holds from `previous`.
    fn build(build: &Build, previous: Option<&Self>) -> Self;

    /// Registers the feature's metrics for one scrape: handles to its counters (which
    /// outlive the registry), or values read now.
    fn register_metrics(&self, _registry: &mut Registry) {}
}
