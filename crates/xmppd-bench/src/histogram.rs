//! A lock-free log-linear latency histogram shared by every connection task.
//!
//! Values (microseconds) fall into 64 linear sub-buckets per power of two, so a reported
//! percentile is within 1/64 (~1.6%) of the true sample; the maximum is kept exactly.
//! One fixed array of atomics replaces per-task sample vectors, which would cost memory
//! per connection and an allocation per message.

use std::sync::atomic::{AtomicU64, Ordering};

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values up to 2^40 µs (12 days) are bucketed; larger ones land in the last bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) * SUB as usize;

pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
    total: AtomicU64,
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            total: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

/// Bucket of a value: values below SUB map to themselves, then each power of two above
/// is split into SUB equal parts.
fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..SUB
    let b = ((shift + 1) as u64 * SUB + sub) as usize;
    b.min(BUCKETS - 1)
}

/// The largest value that falls into bucket `b`.
fn bucket_high(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let shift = b / SUB - 1;
    let sub = b % SUB;
    ((SUB + sub + 1) << shift) - 1
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    pub fn mean(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum.load(Ordering::Relaxed) as f64 / n as f64,
        }
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket holding the
    /// ceil(q·n)-th sample, capped by the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_high(b).min(self.max());
            }
        }
        self.max()
    }

    /// p50/p90/p99/max and the mean, in milliseconds, for the report.
    pub fn summary_ms(&self) -> serde_json::Value {
        let ms = |us: u64| us as f64 / 1000.0;
        serde_json::json!({
            "samples": self.count(),
            "p50_ms": ms(self.quantile(0.50)),
            "p90_ms": ms(self.quantile(0.90)),
            "p99_ms": ms(self.quantile(0.99)),
            "max_ms": ms(self.max()),
            "mean_ms": self.mean() / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 30, u64::MAX / 2]) {
            let b = bucket(v);
            assert!(b >= last, "bucket order at {v}");
            last = b;
            if b < BUCKETS - 1 {
                let high = bucket_high(b);
                assert!(high >= v, "{v} above its bucket's bound {high}");
                assert!(
                    (high - v) as f64 <= v as f64 / 64.0 + 1.0,
                    "bucket too wide at {v}"
                );
            }
        }
    }

    #[test]
    fn percentiles_of_uniform_samples() {
        let h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1000);
        let within = |got: u64, want: f64| (got as f64 - want).abs() <= want / 64.0 + 1.0;
        assert!(within(h.quantile(0.5), 500.0), "{}", h.quantile(0.5));
        assert!(within(h.quantile(0.9), 900.0), "{}", h.quantile(0.9));
        assert!(within(h.quantile(0.99), 990.0), "{}", h.quantile(0.99));
        assert_eq!(h.quantile(1.0), 1000);
        assert!((h.mean() - 500.5).abs() < 1e-9);
    }

    #[test]
    fn small_values_are_exact_and_empty_is_zero() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in [3, 3, 7] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(0.99), 7);
    }
}
