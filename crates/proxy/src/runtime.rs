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
        snapshot: Snapshot,
        previous: Option<&Active>,
        workers: usize,
        on_keys_changed: &Arc<dyn Fn() + Send + Sync>,
    ) -> Active {
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
