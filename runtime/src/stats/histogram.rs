//! Fixed-bucket histograms that many threads record into without a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket upper bounds of the duration histograms, in microseconds: 0.5 ms to 30 s.
pub const DURATION_BOUNDS_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Bucket upper bounds of the requests-per-instance histogram.
pub const REQUEST_COUNT_BOUNDS: &[u64] = &[1, 2, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000];

/// A histogram of `u64` values (microseconds, or a count) over fixed bounds.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [u64],
    /// One more than `bounds`: the last counts values above every bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn durations() -> Self {
        Histogram::new(DURATION_BOUNDS_US)
    }

    pub(crate) fn record(&self, value: u64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    pub(crate) fn record_duration(&self, took: Duration) {
        self.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// A copy of a histogram: how many values fell at or under each bound (not cumulative), and their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bounds, ascending, in the histogram's unit.
    pub bounds: &'static [u64],
    /// Values per bucket; one more entry than `bounds`, for values above the last bound.
    pub buckets: Vec<u64>,
    /// Sum of every value recorded, in the histogram's unit.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `(upper bound / per_unit, values in that bucket)` for each bound and `+Inf` (`per_unit` converts
    /// the histogram's unit: 1e6 from microseconds to seconds).
    pub fn buckets_in(&self, per_unit: f64) -> Vec<(f64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = self
                    .bounds
                    .get(i)
                    .map_or(f64::INFINITY, |b| *b as f64 / per_unit);
                (bound, *n)
            })
            .collect()
    }

    /// Adds another histogram of the same bounds (an empty one takes the other's bounds).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.buckets.is_empty() {
            *self = other.clone();
            return;
        }
        if self.bounds != other.bounds {
            return;
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_at_or_under_their_bound() {
        let histogram = Histogram::new(&[1, 10]);
        for value in [0, 1, 2, 10, 11, 500] {
            histogram.record(value);
        }
        let snap = histogram.snapshot();
        assert_eq!(snap.buckets, [2, 2, 2]);
        assert_eq!((snap.count(), snap.sum), (6, 524));
        assert_eq!(
            snap.buckets_in(1.0),
            [(1.0, 2), (10.0, 2), (f64::INFINITY, 2)]
        );
    }

    #[test]
    fn durations_are_kept_in_microseconds() {
        let histogram = Histogram::durations();
        histogram.record_duration(Duration::from_millis(3));
        let snap = histogram.snapshot();
        assert_eq!(snap.sum, 3_000);
        assert_eq!(snap.buckets_in(1e6)[3], (0.005, 1));
        assert_eq!(snap.buckets_in(1e6)[5].0, 0.025, "bounds print as written");
    }

    #[test]
    fn sums_add_bucket_by_bucket() {
        let histogram = Histogram::new(&[5]);
        histogram.record(3);
        let mut total = HistogramSnapshot::default();
        total.add(&histogram.snapshot());
        total.add(&histogram.snapshot());
        assert_eq!((total.buckets, total.sum), (vec![2, 0], 6));
    }
}
