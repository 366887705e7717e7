//! Rate limiting with GCRA (the generic cell rate algorithm): a quota, the decision for
//! one request, and the two places the count can live — [`local`] (this process, with
//! `governor`) and [`shared`] (Redis, one Lua script, shared by every instance).
//!
//! Both use the same arithmetic, governor's: with `T = period / limit` (the emission
//! interval) and a burst of `B`, a key remembers one instant, its theoretical arrival
//! time `tat`. A request at `now` is allowed when `now >= tat - (B - 1)·T`, and then
//! moves `tat` to `max(tat, now) + T`. A fresh key admits `B` requests at once, then one
//! every `T`.

pub mod local;
pub mod shared;

use std::time::Duration;

pub use tollgate_policy::quota::Quota;

use crate::redis::StoreError;
use crate::BoxFuture;

/// Where a rate-limit count lives: in this process ([`local::LocalLimiter`]) or in Redis,
/// shared by every instance ([`shared::SharedLimiter`]).
pub trait RateStore: Send + Sync {
    /// Decides one request for `key` under `quota`, and counts it if allowed.
    fn decide<'a>(
        &'a self,
        worker: usize,
        key: String,
        quota: &'a Quota,
    ) -> BoxFuture<'a, Result<Decision, StoreError>>;
}

/// The decisions a quota makes. (The quota itself is configuration, validated once by
/// the policy crate; what it decides is this crate's.)
pub trait Decide {
    /// The decision for an allowed request that left `remaining` requests of burst.
    fn allowed(&self, remaining: u32) -> Decision;
    /// The decision for a refused request that may be retried after `retry_after`.
    fn denied(&self, retry_after: Duration) -> Decision;
}

impl Decide for Quota {
    fn allowed(&self, remaining: u32) -> Decision {
        let remaining = remaining.min(self.burst());
        Decision {
            allowed: true,
            limit: self.burst(),
            remaining,
            // Each used unit of burst comes back after one interval; this is exact right
            // after a request and at most one interval high otherwise.
            reset: self
                .interval()
                .checked_mul(self.burst() - remaining)
                .unwrap_or(Duration::MAX),
            retry_after: Duration::ZERO,
        }
    }

    fn denied(&self, retry_after: Duration) -> Decision {
        Decision {
            allowed: false,
            limit: self.burst(),
            remaining: 0,
            // At `retry_after` one request is back; the other `B - 1` follow one
            // interval apart.
            reset: self
                .interval()
                .checked_mul(self.burst() - 1)
                .and_then(|d| d.checked_add(retry_after))
                .unwrap_or(Duration::MAX),
            retry_after,
        }
    }
}

/// The outcome for one request against one quota, and what its headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// What the headers advertise as the limit: the quota's burst, which GCRA
    /// guarantees per window (`burst × interval`); `remaining` never exceeds it.
    pub limit: u32,
    /// Requests that could be made right now, after this one.
    pub remaining: u32,
    /// Time until the whole burst is available again.
    pub reset: Duration,
    /// For a refused request: time until one request will be allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// `reset` in whole seconds, rounded up: a client that waits this long finds the
    /// quota full.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }

    /// `retry_after` in whole seconds, rounded up and at least 1 on a refusal, so a
    /// client that honours `Retry-After` is never refused again for being early.
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            0
        } else {
            ceil_secs(self.retry_after).max(1)
        }
    }

    /// Whether `self` is closer to exhaustion than `other`, and so the decision a
    /// client should be told about: a refusal over an allowance (the longer wait among
    /// refusals), then fewer remaining, then the longer reset.
    pub fn is_tighter_than(&self, other: &Decision) -> bool {
        match (self.allowed, other.allowed) {
            (false, true) => true,
            (true, false) => false,
            (false, false) => self.retry_after > other.retry_after,
            (true, true) => (other.remaining, self.reset) > (self.remaining, other.reset),
        }
    }
}

/// A duration in whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    /// A quota from plain numbers, for this module's tests and its children's.
    pub(crate) fn quota(limit: u32, period_ms: u64, burst: u32) -> Quota {
        Quota::new(
            NonZeroU32::new(limit).unwrap(),
            Duration::from_millis(period_ms),
            NonZeroU32::new(burst).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_advertised_limit_is_the_burst_and_remaining_never_exceeds_it() {
        let q = quota(600, 60_000, 100);
        let fresh = q.allowed(99);
        assert_eq!((fresh.limit, fresh.remaining), (100, 99));
        assert_eq!(q.denied(Duration::from_millis(100)).limit, 100);
    }

    #[test]
    fn reset_counts_one_interval_per_used_unit_of_burst() {
        let q = quota(10, 1000, 5);
        let d = q.allowed(4);
        assert_eq!(d.reset, Duration::from_millis(100));
        assert_eq!(d.reset_secs(), 1);
        let d = q.allowed(0);
        assert_eq!(d.reset, Duration::from_millis(500));
        let d = q.denied(Duration::from_millis(40));
        assert_eq!(d.reset, Duration::from_millis(440));
        assert_eq!((d.remaining, d.retry_after_secs()), (0, 1));
        // A day-long quota: seconds, rounded up.
        let d = quota(1000, 86_400_000, 1000).allowed(998);
        assert_eq!(d.reset, Duration::from_millis(172_800));
        assert_eq!(d.reset_secs(), 173);
    }

    #[test]
    fn retry_after_is_rounded_up_and_never_zero_on_a_refusal() {
        let q = quota(1, 60_000, 1);
        assert_eq!(q.denied(Duration::from_millis(1)).retry_after_secs(), 1);
        assert_eq!(
            q.denied(Duration::from_millis(59_001)).retry_after_secs(),
            60
        );
        assert_eq!(q.denied(Duration::from_secs(60)).retry_after_secs(), 60);
        assert_eq!(q.allowed(0).retry_after_secs(), 0);
    }

    #[test]
    fn the_tighter_decision_is_a_refusal_then_the_fewest_remaining() {
        let a = quota(10, 1000, 10);
        let b = quota(100, 60_000, 100);
        assert!(a.allowed(2).is_tighter_than(&b.allowed(50)));
        assert!(!b.allowed(50).is_tighter_than(&a.allowed(2)));
        assert!(b
            .denied(Duration::from_secs(1))
            .is_tighter_than(&a.allowed(0)));
        assert!(b
            .denied(Duration::from_secs(9))
            .is_tighter_than(&a.denied(Duration::from_secs(1))));
        // Equal remaining: the one that takes longer to refill.
        assert!(b.allowed(3).is_tighter_than(&a.allowed(3)));
    }
}
