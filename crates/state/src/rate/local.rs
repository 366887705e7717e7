//! The in-process limiter: `governor`'s keyed GCRA, one limiter per quota.
//!
//! Used when there is no Redis, and as the fallback (with a [`Quota::share`]) while Redis
//! is unreachable. The clock is a type parameter so tests drive time by hand.

use governor::clock::{Clock, FakeRelativeClock, MonotonicClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::RateLimiter;

use super::{Decide, Decision, Quota};

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Counts keys against one quota, in this process.
pub struct LocalLimiter<C: Clock = MonotonicClock> {
    quota: Quota,
    limiter: Keyed<C>,
}

impl<C: Clock> std::fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("quota", &self.quota)
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl LocalLimiter<MonotonicClock> {
    pub fn new(quota: Quota) -> Self {
        LocalLimiter::with_clock(quota, MonotonicClock)
    }
}

impl LocalLimiter<FakeRelativeClock> {
    /// A limiter on a clock that only moves when told: for tests.
    pub fn manual(quota: Quota) -> (Self, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (LocalLimiter::with_clock(quota, clock.clone()), clock)
    }
}

impl<C: Clock> LocalLimiter<C> {
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        let gcra = governor::Quota::with_period(quota.interval())
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(quota.burst_count());
        LocalLimiter {
            quota,
            limiter: RateLimiter::new(gcra, DashMapStateStore::default(), clock),
        }
    }

    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Decides one request for `key` and counts it if allowed.
    pub fn check(&self, key: &String) -> Decision {
        match self.limiter.check_key(key) {
            Ok(state) => self.quota.allowed(state.remaining_burst_capacity()),
            Err(not_until) => {
                let now = self.limiter.clock().now();
                self.quota
                    .denied(not_until.earliest_possible().duration_since(now).into())
            }
        }
    }

    /// Drops keys whose allowance is full again (they behave exactly like new keys), so
    /// memory follows the keys active within one period, not every key ever seen.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently remembered.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

impl<C: Clock + Send + Sync> super::RateStore for LocalLimiter<C>
where
    C::Instant: Send + Sync,
{
    /// Counted in this process against the limiter's own quota (`quota` must be it).
    fn decide<'a>(
        &'a self,
        _worker: usize,
        key: String,
        quota: &'a Quota,
    ) -> crate::BoxFuture<'a, Result<Decision, crate::redis::StoreError>> {
        debug_assert_eq!(*quota, self.quota);
        let decision = self.check(&key);
        Box::pin(async move { Ok(decision) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rate::tests::quota;

    fn key(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn a_fresh_key_gets_exactly_the_burst_at_once() {
        let (limiter, _clock) = LocalLimiter::manual(quota(10, 1000, 5));
        let remaining: Vec<u32> = (0..5).map(|_| limiter.check(&key("a")).remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = limiter.check(&key("a"));
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.remaining, 0);
        // Other keys are counted apart.
        assert!(limiter.check(&key("b")).allowed);
    }

    #[test]
    fn steady_rate_is_one_request_per_interval() {
        let (limiter, clock) = LocalLimiter::manual(quota(10, 1000, 1));
        assert!(limiter.check(&key("a")).allowed);
        let mut allowed = 0;
        // 10 seconds in 10 ms steps: 100 more requests, not one more or less.
        for _ in 0..1000 {
            clock.advance(Duration::from_millis(10));
            if limiter.check(&key("a")).allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 100);
    }

    #[test]
    fn retry_after_is_exactly_when_the_next_request_passes() {
        let (limiter, clock) = LocalLimiter::manual(quota(2, 1000, 2));
        assert!(limiter.check(&key("a")).allowed);
        clock.advance(Duration::from_millis(100));
        assert!(limiter.check(&key("a")).allowed);
        let refused = limiter.check(&key("a"));
        assert_eq!(refused.retry_after, Duration::from_millis(400));
        assert_eq!(refused.retry_after_secs(), 1);
        // Full again after: 400 ms for the next, then one interval for the other.
        assert_eq!(refused.reset, Duration::from_millis(900));
        clock.advance(Duration::from_millis(399));
        assert!(!limiter.check(&key("a")).allowed);
        clock.advance(Duration::from_millis(1));
        let allowed = limiter.check(&key("a"));
        assert!(allowed.allowed);
        assert_eq!(allowed.remaining, 0);
        assert_eq!(allowed.reset, Duration::from_millis(1000));
    }

    #[test]
    fn burst_comes_back_one_interval_at_a_time() {
        let (limiter, clock) = LocalLimiter::manual(quota(60, 60_000, 3));
        for _ in 0..3 {
            assert!(limiter.check(&key("a")).allowed);
        }
        clock.advance(Duration::from_secs(2));
        let d = limiter.check(&key("a"));
        // Two seconds brought two back; this request used one of them.
        assert_eq!((d.allowed, d.remaining), (true, 1));
        assert_eq!(d.reset_secs(), 2);
        clock.advance(Duration::from_secs(10));
        assert_eq!(limiter.check(&key("a")).remaining, 2);
    }

    #[test]
    fn idle_keys_are_forgotten_once_full_again() {
        let (limiter, clock) = LocalLimiter::manual(quota(1, 1000, 1));
        for i in 0..100 {
            limiter.check(&format!("k{i}"));
        }
        assert_eq!(limiter.keys(), 100);
        limiter.forget_idle();
        assert_eq!(limiter.keys(), 100, "still counting within the period");
        clock.advance(Duration::from_secs(2));
        limiter.forget_idle();
        assert_eq!(limiter.keys(), 0);
    }
}
