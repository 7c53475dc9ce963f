//! How long jobs wait and run: a lock-free histogram a pool records into and
//! [`DurationSummary`], what [`PoolStats`](crate::PoolStats) reports from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: a bucket spans at most a quarter of its lower bound, so a
/// percentile is within 25% of the true value.
const SUB_BITS: u32 = 2;
const SUBS: usize = 1 << SUB_BITS;
/// Every `u64` nanosecond count has a bucket: 64 powers of two, `SUBS` each.
const BUCKETS: usize = 64 * SUBS;

/// The bucket of a duration in nanoseconds: exact below `SUBS`, then by its highest bit and
/// the `SUB_BITS` bits below it.
fn bucket_of(nanos: u64) -> usize {
    if nanos < SUBS as u64 {
        return nanos as usize;
    }
    let msb = 63 - nanos.leading_zeros();
    let sub = (nanos >> (msb - SUB_BITS)) as usize & (SUBS - 1);
    ((msb - SUB_BITS + 1) as usize) * SUBS + sub
}

/// The largest duration, in nanoseconds, that falls in `bucket`.
fn upper_of(bucket: usize) -> u64 {
    if bucket < SUBS {
        return bucket as u64;
    }
    let octave = (bucket / SUBS) as u32 + SUB_BITS - 1;
    let sub = (bucket % SUBS) as u64;
    let low = (1u64 << octave) | (sub << (octave - SUB_BITS));
    low.saturating_add((1u64 << (octave - SUB_BITS)) - 1)
}

/// Durations recorded from any thread without a lock.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    total_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total_nanos: AtomicU64::new(0),
            max_nanos: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Histogram").field(&self.summary()).finish()
    }
}

impl Histogram {
    /// Records `took`, from any thread.
    pub(crate) fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Records `took` with plain loads and stores instead of read-modify-writes: for a
    /// histogram only one thread records into (a process pool's supervision thread), which
    /// records every job. Were two threads to record, some counts would be lost, nothing
    /// worse.
    pub(crate) fn record_from_one_thread(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bump = |cell: &AtomicU64, by: u64| {
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(by),
                Ordering::Relaxed,
            );
        };
        bump(&self.buckets[bucket_of(nanos)], 1);
        bump(&self.total_nanos, nanos);
        if nanos > self.max_nanos.load(Ordering::Relaxed) {
            self.max_nanos.store(nanos, Ordering::Relaxed);
        }
    }

    /// What has been recorded so far (read without a lock: a job recorded meanwhile may be
    /// in some figures and not others).
    pub(crate) fn summary(&self) -> DurationSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return DurationSummary::default();
        }
        let max = self.max_nanos.load(Ordering::Relaxed);
        let quantile = |q: f64| {
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (bucket, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Duration::from_nanos(upper_of(bucket).min(max));
                }
            }
            Duration::from_nanos(max)
        };
        let total = self.total_nanos.load(Ordering::Relaxed);
        DurationSummary {
            count,
            mean: Duration::from_nanos(total / count.max(1)),
            p50: quantile(0.50),
            p90: quantile(0.90),
            p99: quantile(0.99),
            max: Duration::from_nanos(max),
        }
    }
}

/// A distribution of durations: how many, their mean, three percentiles and the largest,
/// in [`PoolStats`](crate::PoolStats).
///
/// Percentiles come from buckets a quarter of an octave wide, so each is within 25% above
/// the true value (never above `max`); `count`, `mean` and `max` are exact for what was
/// recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct DurationSummary {
    /// How many durations were recorded.
    pub count: u64,
    /// Their mean.
    pub mean: Duration,
    /// Half were at most this long.
    pub p50: Duration,
    /// 90% were at most this long.
    pub p90: Duration,
    /// 99% were at most this long.
    pub p99: Duration,
    /// The longest.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_lands_in_a_bucket_that_holds_it() {
        for nanos in (0..5_000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let bucket = bucket_of(nanos);
            assert!(bucket < BUCKETS, "{nanos}");
            assert!(upper_of(bucket) >= nanos, "{nanos} above its bucket");
            if bucket > 0 {
                assert!(upper_of(bucket - 1) < nanos, "{nanos} belongs lower");
            }
        }
        for shift in 3..63 {
            let n = 1u64 << shift;
            let width = upper_of(bucket_of(n)) - n + 1;
            assert_eq!(width, n / 4, "a quarter of an octave at 2^{shift}");
        }
    }

    #[test]
    fn the_summary_reads_percentiles_within_a_quarter() {
        let histogram = Histogram::default();
        assert_eq!(histogram.summary(), DurationSummary::default());
        for micros in 1..=1000 {
            histogram.record(Duration::from_micros(micros));
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 1000);
        assert_eq!(summary.max, Duration::from_micros(1000));
        assert_eq!(summary.mean, Duration::from_nanos(500_500));
        for (got, want) in [(summary.p50, 500), (summary.p90, 900), (summary.p99, 990)] {
            let want = Duration::from_micros(want);
            assert!(got >= want && got <= want * 5 / 4, "{got:?} for {want:?}");
        }
    }
}
