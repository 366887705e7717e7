//! The Redis connection the features that share state use (rate limits, callback
//! nonces; later the ledger and sessions): one per `[store]`, kept across reloads while
//! its settings hold, so a reload neither reconnects nor resets the circuit breaker.

use std::sync::Arc;

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use tollgate_state::redis::{Redis, StoreError};

use tollgate_policy::Snapshot;

use crate::metrics::Label;

/// `[store]`'s Redis: none, one, or one that cannot be used (every feature then follows
/// its failure mode).
pub struct RedisLink {
    redis: Option<Result<Arc<Redis>, StoreError>>,
}

impl RedisLink {
    /// The connection, when `[store]` names a usable one.
    pub fn redis(&self) -> Option<&Arc<Redis>> {
        self.redis.as_ref().and_then(|r| r.as_ref().ok())
    }

    /// `None` without `[store]`; the error when the configured Redis cannot be used.
    pub fn configured(&self) -> Option<Result<&Arc<Redis>, &StoreError>> {
        self.redis.as_ref().map(|r| r.as_ref())
    }
}

impl RedisLink {
    /// The connection `snapshot`'s `[store]` names, the previous one if its settings did
    /// not change. (Built before the parts, which are given it.)
    pub fn connect(snapshot: &Snapshot, previous: Option<&Self>, workers: usize) -> Self {
        let Some(settings) = snapshot.store.redis.as_ref() else {
            return RedisLink { redis: None };
        };
        if let Some(redis) = previous
            .and_then(RedisLink::redis)
            .filter(|r| r.settings() == settings)
        {
            return RedisLink {
                redis: Some(Ok(Arc::clone(redis))),
            };
        }
        let redis = match Redis::new(settings.clone(), workers) {
            Ok(redis) => Ok(Arc::new(redis)),
            Err(e) => {
                // Not a silent switch to this process: each feature's failure mode applies.
                tracing::error!(error = %e, "cannot use the configured redis; shared state follows each feature's failure mode");
                Err(StoreError::Redis(e))
            }
        };
        RedisLink { redis: Some(redis) }
    }

    /// The connection's metrics: errors and the circuit breaker.
    pub fn register_metrics(&self, registry: &mut Registry) {
        use std::sync::atomic::Ordering;
        let Some(redis) = self.redis() else {
            return;
        };
        let errors = redis.errors();
        let by_reason = Family::<Label, Counter>::default();
        for (reason, counter) in [
            ("timeout", &errors.timeouts),
            ("error", &errors.failures),
            ("skipped", &errors.skipped),
        ] {
            by_reason
                .get_or_create(&[("reason", reason)])
                .inc_by(counter.load(Ordering::Relaxed));
        }
        registry.register(
            "tollgate_redis_errors",
            "Redis calls that gave no answer, by reason (skipped: the circuit was open)",
            by_reason,
        );
        registry.register(
            "tollgate_redis_circuit_open",
            "Whether Redis is being skipped after repeated failures",
            ConstGauge::new(i64::from(redis.breaker().is_open())),
        );
        registry.register(
            "tollgate_redis_circuit_opened",
            "Times the Redis circuit opened",
            ConstCounter::new(redis.breaker().times_opened()),
        );
    }
}
