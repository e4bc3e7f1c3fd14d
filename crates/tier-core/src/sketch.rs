//! Small, bounded structures that watch key frequencies: a space-saving top-k of hot keys (shown by
//! the CLI, never as metric labels) and a count-min sketch with aging (the `on_hits(n)` backfill
//! policy). Both cost O(1) memory in the number of keys.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

/// Space-saving top-k (Metwally et al.): at most `capacity` counters; a new key replaces the one
/// with the smallest count and inherits it (+1), so counts are over-estimates by at most the
/// replaced minimum, and every key seen more than `n / capacity` times is kept.
#[derive(Debug)]
pub struct HotKeys {
    capacity: usize,
    inner: Mutex<HashMap<Bytes, u64>>,
}

impl HotKeys {
    /// A sketch that tracks up to `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(HashMap::with_capacity(capacity.max(1))),
        }
    }

    /// Count one (sampled) access of `key`.
    pub fn record(&self, key: &[u8]) {
        // Poisoning only happens if a panic occurred while holding the lock; the map of counts
        // stays valid (each update is one insert), so recover it.
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get_mut(key) {
            *c += 1;
            return;
        }
        if map.len() < self.capacity {
            map.insert(Bytes::copy_from_slice(key), 1);
            return;
        }
        let min = map.iter().min_by_key(|(_, c)| **c).map(|(k, c)| (k.clone(), *c));
        if let Some((victim, count)) = min {
            map.remove(&victim);
            map.insert(Bytes::copy_from_slice(key), count + 1);
        }
    }

    /// The `n` hottest keys with their (estimated) counts, hottest first.
    pub fn top(&self, n: usize) -> Vec<(Bytes, u64)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(Bytes, u64)> = map.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

const ROWS: usize = 4;

/// Count-min sketch of 4 rows with periodic halving ("aging"), as in TinyLFU: `estimate` is an
/// over-estimate of recent accesses; every `window` increments all counters are halved.
#[derive(Debug)]
pub struct FrequencySketch {
    inner: Mutex<SketchInner>,
}

#[derive(Debug)]
struct SketchInner {
    width: usize,
    counters: Vec<u16>,
    additions: u64,
    window: u64,
}

fn hash(key: &[u8], seed: u64) -> u64 {
    // FNV-1a mixed with the row seed; good enough to spread keys over a sketch row.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 29)
}

impl FrequencySketch {
    /// A sketch sized for about `expected_keys` distinct keys; counts age every
    /// `10 × expected_keys` increments.
    pub fn new(expected_keys: usize) -> Self {
        let width = expected_keys.max(64).next_power_of_two();
        Self {
            inner: Mutex::new(SketchInner {
                width,
                counters: vec![0; width * ROWS],
                additions: 0,
                window: (width as u64) * 10,
            }),
        }
    }

    /// Count one access and return the new estimate.
    pub fn increment(&self, key: &[u8]) -> u32 {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let width = s.width;
        let mut est = u16::MAX;
        for row in 0..ROWS {
            let i = row * width + (hash(key, row as u64) as usize & (width - 1));
            s.counters[i] = s.counters[i].saturating_add(1);
            est = est.min(s.counters[i]);
        }
        s.additions += 1;
        if s.additions >= s.window {
            s.additions /= 2;
            for c in &mut s.counters {
                *c /= 2;
            }
        }
        u32::from(est)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_keys_keeps_the_heavy_hitters() {
        let hot = HotKeys::new(16); // n/k < 1429: both hot keys are guaranteed
        for i in 0..10_000u32 {
            hot.record(format!("cold:{i}").as_bytes());
            if i % 3 == 0 {
                hot.record(b"hot:a");
            }
            if i % 7 == 0 {
                hot.record(b"hot:b");
            }
        }
        let top = hot.top(2);
        assert_eq!(top[0].0, Bytes::from_static(b"hot:a"));
        assert_eq!(top[1].0, Bytes::from_static(b"hot:b"));
        assert!(top[0].1 >= 3334, "space-saving never under-counts a kept key");
    }

    #[test]
    fn sketch_counts_and_ages() {
        let s = FrequencySketch::new(64);
        assert_eq!(s.increment(b"k"), 1);
        assert_eq!(s.increment(b"k"), 2);
        for _ in 0..98 {
            s.increment(b"k");
        }
        assert!(s.increment(b"k") >= 101, "count-min never under-counts");
        for i in 0..5000u32 {
            s.increment(&i.to_le_bytes());
        }
        let after = s.increment(b"k");
        assert!(after < 60, "counts age: {after}");
    }
}
