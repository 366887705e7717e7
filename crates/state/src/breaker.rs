//! A circuit breaker: after `threshold` consecutive failures, stop trying for
//! `cooldown`, then let one probe through; its success closes the circuit again.
//!
//! While open, callers skip the remote call entirely, so an outage costs no latency.
//! Lock-free (three atomics): it sits on every rate-limited request. Time is passed in,
//! so tests drive it without sleeping.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// Instants are kept as nanoseconds since `epoch`.
    epoch: Instant,
    failures: AtomicU32,
    /// When the circuit may be probed again; 0 while closed.
    open_until: AtomicU64,
    /// A half-open probe is out.
    probing: AtomicBool,
    opened: AtomicU64,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Call,
    /// Half-open: go ahead; this call decides whether the circuit closes.
    Probe,
    /// Open: do not call; try again after the given time.
    Skip(Duration),
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration, epoch: Instant) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            epoch,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        // +1 so that "open until" is never the closed marker 0.
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    pub fn admit(&self, now: Instant) -> Admission {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Call;
        }
        let now = self.nanos(now);
        if now < until {
            return Admission::Skip(Duration::from_nanos(until - now));
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Admission::Probe
        } else {
            // Someone else's probe is out: keep skipping until it reports.
            Admission::Skip(self.cooldown)
        }
    }

    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis is answering again; circuit closed");
        }
        self.probing.store(false, Ordering::Release);
    }

    pub fn record_failure(&self, now: Instant) {
        let failed_probe = self.probing.swap(false, Ordering::AcqRel);
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let until = self.nanos(now).saturating_add(nanos_of(self.cooldown));
        if failed_probe {
            self.open_until.store(until, Ordering::Release);
        } else if failures >= self.threshold
            // Only one of several failures arriving together opens it (and says so).
            && self
                .open_until
                .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                failures,
                cooldown_ms = self.cooldown.as_millis() as u64,
                "redis keeps failing; circuit open"
            );
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// How many times the circuit has opened.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let t0 = Instant::now();
        let b = Breaker::new(3, SEC, t0);
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.admit(t0), Admission::Call);
        b.record_success();
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.admit(t0), Admission::Call, "a success resets the count");
        b.record_failure(t0);
        assert_eq!(b.admit(t0), Admission::Skip(SEC));
        assert!(b.is_open());
        assert_eq!(b.times_opened(), 1);
        let later = t0 + Duration::from_millis(600);
        assert_eq!(b.admit(later), Admission::Skip(Duration::from_millis(400)));
    }

    #[test]
    fn after_the_cooldown_one_probe_decides() {
        let t0 = Instant::now();
        let b = Breaker::new(1, SEC, t0);
        b.record_failure(t0);
        let t1 = t0 + SEC;
        assert_eq!(b.admit(t1), Admission::Probe);
        assert!(matches!(b.admit(t1), Admission::Skip(_)), "only one probe");
        // The probe fails: open for another cooldown.
        b.record_failure(t1);
        assert_eq!(
            b.admit(t1 + Duration::from_millis(500)),
            Admission::Skip(Duration::from_millis(500))
        );
        let t2 = t1 + SEC;
        assert_eq!(b.admit(t2), Admission::Probe);
        b.record_success();
        assert_eq!(b.admit(t2), Admission::Call);
        assert!(!b.is_open());
        assert_eq!(b.times_opened(), 1, "a failed probe is not a new opening");
    }
}
