//! Latency histograms in the Prometheus text format: fixed buckets from 100 µs to 30 s,
//! atomic counts, nothing allocated when a value is observed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds.
const BOUNDS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// One histogram: the count of values in each bucket (not cumulative: one increment an
/// observation; the exposition adds them up), their number and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BOUNDS_US.iter().position(|bound| us <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The series of `name` with `labels` (`a="x",b="y"`, or empty): cumulative
    /// buckets, `+Inf`, sum and count. The `# HELP`/`# TYPE` lines are the caller's.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(labels),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let h = Histogram::default();
        for ms in [0, 3, 3, 700, 40_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "t_seconds", "route=\"r\"");
        assert!(
            out.contains("t_seconds_bucket{route=\"r\",le=\"0.0001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"r\",le=\"0.005\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"r\",le=\"1\"} 4\n"),
            "{out}"
        );
        // 40 s is past the last bound: only +Inf counts it.
        assert!(
            out.contains("t_seconds_bucket{route=\"r\",le=\"30\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"r\",le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("t_seconds_sum{route=\"r\"} 40.706\n"), "{out}");
        assert!(out.contains("t_seconds_count{route=\"r\"} 5\n"), "{out}");
        let mut bare = String::new();
        h.render(&mut bare, "t_seconds", "");
        assert!(bare.contains("t_seconds_bucket{le=\"+Inf\"} 5\n"), "{bare}");
        assert!(bare.contains("t_seconds_count 5\n"), "{bare}");
    }
}
