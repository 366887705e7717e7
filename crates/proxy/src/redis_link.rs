//! The Redis connection the features that share state use (rate limits, callback
//! nonces; later the ledger and sessions): one per `[store]`, kept across reloads while
//! its settings hold, so a reload neither reconnects nor resets the circuit breaker.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// What connections replaced by a reload counted: counters live as long as the
    /// process, so a `[store]` edit must not set them back to zero.
    retired: Arc<Retired>,
}

/// The counts of connections a reload replaced.
#[derive(Debug, Default)]
struct Retired {
    timeouts: AtomicU64,
    failures: AtomicU64,
    skipped: AtomicU64,
    opened: AtomicU64,
}

impl Retired {
    fn add(&self, redis: &Redis) {
        let errors = redis.errors();
        for (total, count) in [
            (&self.timeouts, &errors.timeouts),
            (&self.failures, &errors.failures),
            (&self.skipped, &errors.skipped),
        ] {
            total.fetch_add(count.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.opened
            .fetch_add(redis.breaker().times_opened(), Ordering::Relaxed);
    }
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
        let retired = previous.map_or_else(Arc::default, |p| Arc::clone(&p.retired));
        let kept = previous
            .and_then(RedisLink::redis)
            .filter(|r| snapshot.store.redis.as_ref() == Some(r.settings()));
        if let Some(redis) = kept {
            return RedisLink {
                redis: Some(Ok(Arc::clone(redis))),
                retired,
            };
        }
        if let Some(replaced) = previous.and_then(RedisLink::redis) {
            retired.add(replaced);
        }
        let Some(settings) = snapshot.store.redis.as_ref() else {
            return RedisLink {
                redis: None,
                retired,
            };
        };
        let redis = match Redis::new(settings.clone(), workers) {
            Ok(redis) => Ok(Arc::new(redis)),
            Err(e) => {
                // Not a silent switch to this process: each feature's failure mode applies.
                tracing::error!(error = %e, "cannot use the configured redis; shared state follows each feature's failure mode");
                Err(StoreError::Redis(e))
            }
        };
        RedisLink {
            redis: Some(redis),
            retired,
        }
    }

    /// The connection's metrics: errors and the circuit breaker.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let Some(redis) = self.redis() else {
            return;
        };
        let errors = redis.errors();
        let retired = &self.retired;
        let by_reason = Family::<Label, Counter>::default();
        for (reason, counter, before) in [
            ("timeout", &errors.timeouts, &retired.timeouts),
            ("error", &errors.failures, &retired.failures),
            ("skipped", &errors.skipped, &retired.skipped),
        ] {
            by_reason
                .get_or_create(&[("reason", reason)])
                .inc_by(counter.load(Ordering::Relaxed) + before.load(Ordering::Relaxed));
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
            ConstCounter::new(
                redis.breaker().times_opened() + retired.opened.load(Ordering::Relaxed),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tollgate_policy::sources::InMemory;

    fn snapshot(instances: u32) -> Snapshot {
        let gateway = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[routing]\npolicies = \"p\"\n[store]\nredis_url = \"redis://127.0.0.1:9\"\ninstances = {instances}\n"
        );
        let sources = InMemory::new()
            .file("/t/gateway.toml", gateway.as_str())
            .file(
                "/t/p/a.toml",
                "[[route]]\nname = \"x\"\npath = \"/x/*\"\nauth = \"none\"\n",
            );
        tollgate_policy::load_from(Path::new("/t/gateway.toml"), &sources).expect("loads")
    }

    fn exported(link: &RedisLink) -> String {
        let mut registry = Registry::default();
        link.register_metrics(&mut registry);
        crate::metrics::encode(&registry, false).0
    }

    #[test]
    fn a_reload_that_replaces_the_connection_keeps_its_counts() {
        let first = RedisLink::connect(&snapshot(2), None, 1);
        let redis = first.redis().expect("configured");
        redis.errors().failures.fetch_add(5, Ordering::Relaxed);
        redis.errors().skipped.fetch_add(7, Ordering::Relaxed);
        // Another `[store]`: another connection, the same counters going on.
        let second = RedisLink::connect(&snapshot(3), Some(&first), 1);
        assert!(!Arc::ptr_eq(
            first.redis().expect("configured"),
            second.redis().expect("configured")
        ));
        second
            .redis()
            .expect("configured")
            .errors()
            .failures
            .fetch_add(1, Ordering::Relaxed);
        let text = exported(&second);
        assert!(
            text.contains("tollgate_redis_errors_total{reason=\"error\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_redis_errors_total{reason=\"skipped\"} 7"),
            "{text}"
        );
        // Unchanged settings: the same connection, nothing counted twice.
        let third = RedisLink::connect(&snapshot(3), Some(&second), 1);
        assert!(exported(&third).contains("tollgate_redis_errors_total{reason=\"error\"} 6"));
    }
}
