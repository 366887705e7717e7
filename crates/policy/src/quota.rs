//! A rate-limit quota, validated once: the configuration refuses what the limiters
//! could not count exactly, so no limit is ever dropped at run time.
//!
//! The arithmetic is GCRA's (see `tollgate_state::rate`): with `T = period / limit` (the
//! emission interval) and a burst of `B`, a fresh key admits `B` requests at once, then
//! one every `T`.

use std::num::NonZeroU32;
use std::time::Duration;

/// How much a key may do: `limit` requests per `period`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
}

/// Why numbers are not a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("more than one request per microsecond is not a limit")]
    TooFine,
    #[error("a full burst would take over ten years to come back; use a shorter period or a smaller burst")]
    TooLong,
}

impl Quota {
    /// The longest time a full burst may take to come back: ten years (beyond that the
    /// arithmetic in nanoseconds, and in Lua's doubles, stops being exact).
    pub const MAX_REFILL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

    /// A quota, unless its emission interval (`period / limit`) is under a microsecond
    /// (the resolution the Redis script counts in) or a full burst would take longer than
    /// [`Quota::MAX_REFILL`] to come back.
    pub fn new(
        limit: NonZeroU32,
        period: Duration,
        burst: NonZeroU32,
    ) -> Result<Quota, QuotaError> {
        let quota = Quota {
            limit,
            period,
            burst,
        };
        if quota.interval() < Duration::from_micros(1) {
            return Err(QuotaError::TooFine);
        }
        match quota.interval().checked_mul(burst.get()) {
            Some(refill) if refill <= Quota::MAX_REFILL => Ok(quota),
            _ => Err(QuotaError::TooLong),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit.get()
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The burst, as the non-zero count it is.
    pub fn burst_count(&self) -> NonZeroU32 {
        self.burst
    }

    /// `T`: the time one request's allowance takes to come back.
    pub fn interval(&self) -> Duration {
        self.period / self.limit.get()
    }

    /// The window the whole burst takes to come back (`burst × interval`): what the
    /// rate-limit headers advertise as the policy's window.
    pub fn window(&self) -> Duration {
        self.interval().saturating_mul(self.burst())
    }

    /// This quota split evenly over `instances` (each share at least 1): what one
    /// instance may allow on its own while the shared count is unreachable.
    pub fn share(&self, instances: NonZeroU32) -> Quota {
        let split =
            |n: NonZeroU32| NonZeroU32::new(n.get() / instances.get()).unwrap_or(NonZeroU32::MIN);
        Quota {
            limit: split(self.limit),
            period: self.period,
            burst: split(self.burst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(limit: u32, period_ms: u64, burst: u32) -> Result<Quota, QuotaError> {
        Quota::new(
            NonZeroU32::new(limit).unwrap(),
            Duration::from_millis(period_ms),
            NonZeroU32::new(burst).unwrap(),
        )
    }

    #[test]
    fn interval_and_window() {
        let q = quota(600, 60_000, 100).unwrap();
        assert_eq!(q.interval(), Duration::from_millis(100));
        assert_eq!(q.window(), Duration::from_secs(10));
        assert_eq!(
            quota(3, 1000, 1).unwrap().interval(),
            Duration::from_nanos(333_333_333)
        );
    }

    #[test]
    fn what_cannot_be_counted_exactly_is_refused() {
        assert_eq!(quota(2_000_000, 1000, 1), Err(QuotaError::TooFine));
        assert!(quota(1_000_000, 1000, 1).is_ok());
        assert_eq!(
            quota(1, 366 * 24 * 3600 * 1000, 11),
            Err(QuotaError::TooLong)
        );
    }

    #[test]
    fn a_share_divides_limit_and_burst_but_never_below_one() {
        let q = quota(100, 60_000, 30)
            .unwrap()
            .share(NonZeroU32::new(3).unwrap());
        assert_eq!((q.limit(), q.burst()), (33, 10));
        assert_eq!(q.period(), Duration::from_secs(60));
        let q = quota(2, 1000, 2)
            .unwrap()
            .share(NonZeroU32::new(3).unwrap());
        assert_eq!((q.limit(), q.burst()), (1, 1));
    }
}
