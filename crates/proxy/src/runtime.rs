//! What lives across requests and reloads: the published configuration and the runtime
//! state built for it, one part per feature (see [`crate::part`]).
//!
//! [`Active`] is one published snapshot with its parts: the Redis connection, the
//! upstream pools, the token verifier, the rate limiters, the callback nonces, the body
//! budget, the session store and its revocations, the token ledger, the span exporter.
//! A reload builds a new `Active` from the new snapshot and the previous parts — each
//! part decides what carries over (counts whose numbers did not change, warm
//! connections, remembered nonces) — and swaps it in whole: a request reads one
//! `Active` once and uses only that. [`Runtime`] holds the current one, and what
//! belongs to the process rather than to a snapshot: metrics, the draining flag, the
//! access-log sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tollgate_policy::Snapshot;

use crate::access_log::AccessSink;
use crate::body::Bodies;
use crate::credits::Credits;
use crate::jwks::Tokens;
use crate::limit::Limiters;
use crate::metrics::Metrics;
use crate::otlp::Traces;
use crate::part::{Build, Part};
use crate::redis_link::RedisLink;
use crate::replay::Replay;
use crate::sessions::Sessions;
use crate::upstream::Upstreams;

/// One published configuration and the state built for it.
pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub redis: RedisLink,
    pub upstreams: Upstreams,
    pub tokens: Tokens,
    pub limiters: Limiters,
    pub replay: Replay,
    pub bodies: Bodies,
    pub sessions: Sessions,
    pub credits: Credits,
    pub traces: Traces,
}

impl Active {
    fn build(
        mut snapshot: Snapshot,
        previous: Option<&Active>,
        workers: usize,
        on_keys_changed: &Arc<dyn Fn() + Send + Sync>,
    ) -> Active {
        if let Some(previous) = previous {
            keep_store_place(&mut snapshot, &previous.snapshot);
            keep_start_up_settings(&mut snapshot, &previous.snapshot);
        }
        let redis = RedisLink::connect(&snapshot, previous.map(|p| &p.redis), workers);
        let build = Build {
            snapshot: &snapshot,
            workers,
            redis: &redis,
            on_keys_changed,
        };
        let upstreams = Upstreams::build(&build, previous.map(|p| &p.upstreams));
        let tokens = Tokens::build(&build, previous.map(|p| &p.tokens));
        let limiters = Limiters::build(&build, previous.map(|p| &p.limiters));
        let replay = Replay::build(&build, previous.map(|p| &p.replay));
        let bodies = Bodies::build(&build, previous.map(|p| &p.bodies));
        let sessions = Sessions::build(&build, previous.map(|p| &p.sessions));
        let credits = Credits::build(&build, previous.map(|p| &p.credits));
        let traces = Traces::build(&build, previous.map(|p| &p.traces));
        Active {
            snapshot: Arc::new(snapshot),
            redis,
            upstreams,
            tokens,
            limiters,
            replay,
            bodies,
            sessions,
            credits,
            traces,
        }
    }

    /// Every part's metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.redis.register_metrics(registry);
        self.upstreams.register_metrics(registry);
        self.tokens.register_metrics(registry);
        self.limiters.register_metrics(registry);
        self.replay.register_metrics(registry);
        self.bodies.register_metrics(registry);
        self.sessions.register_metrics(registry);
        self.credits.register_metrics(registry);
        self.traces.register_metrics(registry);
    }
}

/// Where shared state lives (the Redis, its key prefix, the embedded store file) is
/// bound at start-up, as the ledger is: a reload that moved it would split one
/// gateway's rate limits, sessions and revocations from the other instances' (a
/// logged-out token let in again) and from the ledger, which stays. The serving
/// `[store]` is kept, with a warning; its tuning (timeouts, breaker, instances) reloads.
fn keep_store_place(snapshot: &mut Snapshot, serving: &Snapshot) {
    let (new, old) = (&snapshot.store, &serving.store);
    let same_redis = match (&new.redis, &old.redis) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.url == b.url
                && a.cluster == b.cluster
                && a.cluster_seeds == b.cluster_seeds
                && a.key_prefix == b.key_prefix
        }
        _ => false,
    };
    if same_redis && new.path == old.path {
        return;
    }
    tracing::warn!(
        "[store] redis_url, cluster, key_prefix or path changed: shared state moves only at a restart; the store in use is kept"
    );
    snapshot.store = old.clone();
}

/// What is bound when the process starts (its sockets, workers, the log's level and
/// format) keeps its serving value on a reload, with a warning naming what changed, so
/// the snapshot says what is in effect: a reload that changed the log format switched
/// the access lines alone (one stream of two formats), and one that changed `h2c` took
/// effect though the documentation says it needs a restart.
fn keep_start_up_settings(snapshot: &mut Snapshot, serving: &Snapshot) {
    let mut changed = Vec::new();
    let (new, old) = (&mut snapshot.server, &serving.server);
    if new.listen != old.listen {
        changed.push("server.listen");
        new.listen.clone_from(&old.listen);
    }
    if new.workers != old.workers {
        changed.push("server.workers");
        new.workers = old.workers;
    }
    if new.h2c != old.h2c {
        changed.push("server.h2c");
        new.h2c = old.h2c;
    }
    let tls_listen = |s: &tollgate_policy::snapshot::Server| {
        s.tls.as_ref().map(|t| t.listen.clone()).unwrap_or_default()
    };
    if tls_listen(new) != tls_listen(old) {
        // Certificates reload; the TLS listeners stay as they were bound.
        changed.push("server.tls.listen");
        if let (Some(tls), Some(bound)) = (new.tls.as_mut(), old.tls.as_ref()) {
            tls.listen.clone_from(&bound.listen);
        }
    }
    let admin_listen = |s: &Snapshot| s.admin.as_ref().map(|a| a.listen);
    if admin_listen(snapshot) != admin_listen(serving) {
        changed.push("admin.listen");
        if let (Some(admin), Some(bound)) = (snapshot.admin.as_mut(), serving.admin.as_ref()) {
            admin.listen = bound.listen;
        }
    }
    if snapshot.log.level != serving.log.level {
        changed.push("log.level");
        snapshot.log.level.clone_from(&serving.log.level);
    }
    if snapshot.log.format != serving.log.format {
        changed.push("log.format");
        snapshot.log.format = serving.log.format;
    }
    if !changed.is_empty() {
        tracing::warn!(
            settings = %changed.join(", "),
            "these settings are bound at start-up: the change takes effect after a restart"
        );
    }
}

/// The gateway's state, shared by every connection.
pub struct Runtime {
    active: ArcSwap<Active>,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
    pub access_sink: AccessSink,
    workers: usize,
    /// Clears the current token cache when a remote key set changes.
    on_keys_changed: Arc<dyn Fn() + Send + Sync>,
}

impl Runtime {
    /// The runtime for a first snapshot; must be called on a Tokio runtime (remote key
    /// sets start refreshing).
    pub fn new(snapshot: Snapshot, workers: usize, access_sink: AccessSink) -> Arc<Runtime> {
        Arc::new_cyclic(|weak: &std::sync::Weak<Runtime>| {
            let weak = weak.clone();
            let on_keys_changed: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                if let Some(runtime) = weak.upgrade() {
                    runtime.active().tokens.cache().clear();
                }
            });
            let active = Active::build(snapshot, None, workers, &on_keys_changed);
            Runtime {
                active: ArcSwap::from_pointee(active),
                metrics: Arc::new(Metrics::default()),
                draining: AtomicBool::new(false),
                access_sink,
                workers,
                on_keys_changed,
            }
        })
    }

    /// The configuration serving now.
    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// Builds the state for `snapshot` from the current one and swaps it in; requests
    /// already running finish on the old one.
    pub fn publish(&self, snapshot: Snapshot) {
        let active = Active::build(
            snapshot,
            Some(&self.active.load()),
            self.workers,
            &self.on_keys_changed,
        );
        self.active.store(Arc::new(active));
        self.metrics.count_reload(true);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The exposition of the process's metrics and every part's, as OpenMetrics text
    /// when `openmetrics` (else the Prometheus text format), with its `Content-Type`.
    pub fn render_metrics(&self, openmetrics: bool) -> (String, &'static str) {
        let mut registry = Registry::default();
        self.metrics.register(&mut registry);
        self.active.load().register_metrics(&mut registry);
        crate::metrics::encode(&registry, openmetrics)
    }
}

/// Publishes new snapshots to a running gateway (hot reload).
#[derive(Clone)]
pub struct SnapshotHandle {
    runtime: Arc<Runtime>,
}

impl SnapshotHandle {
    pub(crate) fn new(runtime: Arc<Runtime>) -> Self {
        SnapshotHandle { runtime }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.runtime.active().snapshot)
    }

    /// Swaps in a validated snapshot.
    pub fn publish(&self, snapshot: Snapshot) {
        self.runtime.publish(snapshot);
    }

    /// Records a reload that was refused; the current snapshot keeps serving.
    pub fn reload_failed(&self) {
        self.runtime.metrics.count_reload(false);
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.runtime.metrics)
    }
}
