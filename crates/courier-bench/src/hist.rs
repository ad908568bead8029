//! A latency histogram with about 1.5% precision: 64 linear sub-buckets per power of two, values
//! in nanoseconds. Small enough to send between processes as JSON and merge.

use serde_json::{Value, json};

/// Sub-buckets per power of two.
const SUB: u64 = 64;
/// Values below this are counted exactly.
const EXACT: u64 = 2 * SUB;
/// Enough buckets for values up to 2^50 ns (about 13 days).
const BUCKETS: usize = (SUB * 45) as usize;

/// Counts of values in logarithmic buckets.
#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    // `shift` drops the bits below the 7 most significant ones; `v >> shift` is in [64, 128).
    let shift = 64 - v.leading_zeros() as u64 - 7;
    ((SUB * shift + (v >> shift)) as usize).min(BUCKETS - 1)
}

fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let shift = i / SUB - 1;
    let low = (i - SUB * shift) << shift;
    // The middle of the bucket.
    low + ((1u64 << shift) >> 1)
}

impl Hist {
    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
    }

    /// How many values were counted.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value below which a fraction `q` of the counted values lie; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i);
            }
        }
        value(BUCKETS - 1)
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Sparse JSON form: `[[bucket, count], ...]`.
    pub fn to_json(&self) -> Value {
        let pairs: Vec<Value> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| json!([i, c]))
            .collect();
        Value::Array(pairs)
    }

    /// Reads [`Hist::to_json`]'s form; malformed pairs are skipped.
    pub fn from_json(v: &Value) -> Hist {
        let mut h = Hist::default();
        for pair in v.as_array().into_iter().flatten() {
            let (Some(i), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                continue;
            };
            if let Some(slot) = h.counts.get_mut(i as usize) {
                *slot += c;
                h.total += c;
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_precise() {
        for v in [0u64, 1, 127, 128, 129, 1000, 123_456, 10_000_000, 1 << 40] {
            let got = value(index(v));
            let err = got.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err < 0.02, "{v} -> {got}");
        }
        let mut last = 0;
        for v in (0..1_000_000u64).step_by(7) {
            let i = index(v);
            assert!(i >= last, "index must not decrease");
            last = i;
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Hist::default();
        for v in 1..=1000u64 {
            a.record(v * 1000);
        }
        let p50 = a.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02);
        let b = Hist::from_json(&a.to_json());
        let mut c = a.clone();
        c.merge(&b);
        assert_eq!(c.len(), 2000);
        assert_eq!(c.quantile(0.99), a.quantile(0.99));
    }
}
