//! Lock-free counters and histograms, read by whoever exports metrics.
//!
//! Counting is one relaxed atomic add, so it can sit on any path; a [`ShardedCounter`], for what
//! every connection's writer counts, adds to a cache line of the calling thread's own, so that
//! threads never fight over one line. A [`Histogram`] has fixed
//! bucket bounds chosen when it is made; an observation is two atomic adds and a short scan of
//! the bounds. Readers see each number as of some instant, not all numbers as of one instant,
//! which is what a metrics scrape needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Slots of a [`ShardedCounter`]: more than the worker threads of most machines; threads past
/// it share slots (still correct, only contended).
const SHARDS: usize = 16;

/// One slot on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

/// A monotonic count added to from many threads at a high rate (per packet written, say): each
/// thread adds to its own slot, a read sums them. One relaxed add to a line no other thread
/// writes; measured on the fanout benchmark, a shared line per packet counter cost several
/// per cent of the server's CPU on two cores.
#[derive(Debug, Default)]
pub struct ShardedCounter([Slot; SHARDS]);

fn shard() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SHARD: usize = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl ShardedCounter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// A distribution in cumulative-ready buckets: observations are integers (nanoseconds for
/// durations, plain counts otherwise) and `scale` turns them into the exported unit.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, inclusive, ascending, in observation units.
    bounds: &'static [u64],
    /// One count per bound, and a last one for observations above every bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
    scale: f64,
}

/// Bucket bounds for latencies of disk work, in nanoseconds: 50 µs to 10 s.
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Bucket bounds for sizes of groups (how many requests one commit carried).
pub const GROUP_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// One histogram's numbers at one read, in exported units.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, cumulative, ascending; the `+Inf` bucket is
    /// `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of every observation.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// A histogram of durations, exported in seconds.
    pub fn seconds() -> Self {
        Self::new(LATENCY_BOUNDS_NS, 1e-9)
    }

    /// A histogram of plain counts with `bounds`.
    pub fn counts(bounds: &'static [u64]) -> Self {
        Self::new(bounds, 1.0)
    }

    fn new(bounds: &'static [u64], scale: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one observation of `v` (in observation units).
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration (for histograms made with [`Histogram::seconds`]).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The numbers so far, cumulative per bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(self.buckets.iter())
            .map(|(&b, n)| {
                acc += n.load(Ordering::Relaxed);
                (b as f64 * self.scale, acc)
            })
            .collect();
        let count = acc + self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.scale,
            count,
        }
    }
}

/// What the store's writer did, for metrics.
#[derive(Debug)]
pub struct StoreStats {
    /// Time of each commit of a batch (its fsync is apart, in `sync_seconds`).
    pub commit_seconds: Histogram,
    /// Requests (publishes, creations, purges) each committed batch answered.
    pub group_size: Histogram,
    /// Time of each fsync: under `always` the one after each commit (covering every batch
    /// committed meanwhile), under `interval` the periodic one, and the last at close.
    pub sync_seconds: Histogram,
    /// Commits that failed (the requests in them were answered with the error).
    pub commit_failures: Counter,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            commit_seconds: Histogram::seconds(),
            group_size: Histogram::counts(GROUP_BOUNDS),
            sync_seconds: Histogram::seconds(),
            commit_failures: Counter::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counts_add_up_across_threads() {
        let c = std::sync::Arc::new(ShardedCounter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.inc();
                    }
                    c.add(5);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 4 * 1005);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = Histogram::counts(&[1, 4, 16]);
        for v in [0, 1, 2, 4, 5, 16, 17, 1000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (4.0, 4), (16.0, 6)]);
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, 1045.0);
    }

    #[test]
    fn seconds_are_scaled_from_nanoseconds() {
        let h = Histogram::seconds();
        h.observe_duration(Duration::from_millis(3));
        let s = h.snapshot();
        assert!((s.sum - 0.003).abs() < 1e-12);
        let le_5ms = s.buckets.iter().find(|(b, _)| (*b - 0.005).abs() < 1e-12);
        assert_eq!(le_5ms.map(|b| b.1), Some(1));
        assert_eq!(s.buckets[0].1, 0);
    }
}
