//! Small, bounded structures that watch key frequencies: a filtered space-saving top-k of hot
//! keys (shown by the CLI, never as metric labels) and a count-min sketch with aging (the
//! `on_hits(n)` backfill policy). Both cost O(1) memory in the number of keys.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

/// Top-k of hot keys by filtered space-saving (Homem & Carvalho, 2010): at most `capacity`
/// monitored keys with their counts, and in front of them a fixed array of bucket counters that
/// counts the keys outside the top-k by hash.
///
/// Invariants:
/// - A monitored key's count never under-counts its records: it starts from its bucket's count,
///   which holds every record of every unmonitored key of that bucket, and an evicted key's count
///   goes back to its bucket.
/// - A key enters the top-k once its bucket's count reaches the smallest monitored count, so a
///   key recorded more often than the least of the top-k gets in (as with plain space-saving);
///   a stream of one-off keys (the common case of a large key space) does not churn the top-k,
///   and such a record costs two hashes and one addition under the lock: no allocation, no scan.
#[derive(Debug)]
pub struct HotKeys {
    capacity: usize,
    inner: Mutex<TopK>,
}

#[derive(Debug)]
struct TopK {
    monitored: HashMap<Bytes, u64>,
    /// Records of unmonitored keys by bucket (`hash & (len - 1)`); a power of two long.
    buckets: Vec<u64>,
    /// A lower bound of the smallest monitored count (exact after each admission scan; counts
    /// only grow in between).
    min: u64,
}

/// Seed of the bucket hash (fixed: which bucket a key lands in does not depend on the process).
const BUCKET_SEED: u64 = 0x686f_745f_6b65_7973;

impl TopK {
    /// The bucket that counts `key` while it is not monitored.
    fn bucket(&self, key: &[u8]) -> usize {
        hash(key, BUCKET_SEED) as usize & (self.buckets.len() - 1)
    }
}

impl HotKeys {
    /// A sketch that tracks up to `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // Eight buckets per monitored key (the filter then rarely admits a key by collision),
        // within bounds whatever the capacity asked for.
        let buckets = capacity.saturating_mul(8).clamp(64, 1 << 16).next_power_of_two();
        Self {
            capacity,
            inner: Mutex::new(TopK {
                monitored: HashMap::with_capacity(capacity.min(1024)),
                buckets: vec![0; buckets],
                min: 0,
            }),
        }
    }

    /// Count one (sampled) access of `key`.
    pub fn record(&self, key: &[u8]) {
        // Poisoning only happens if a panic occurred while holding the lock; the counts stay
        // valid (each update is one insert or one addition), so recover them.
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = t.monitored.get_mut(key) {
            *c += 1;
            return;
        }
        let b = t.bucket(key);
        let count = t.buckets[b] + 1;
        if t.monitored.len() < self.capacity {
            t.monitored.insert(Bytes::copy_from_slice(key), count);
            return;
        }
        if count < t.min {
            t.buckets[b] = count;
            return;
        }
        // The bucket caught up with the (lower bound of the) smallest count: find the real one.
        let Some((victim, least)) =
            t.monitored.iter().min_by_key(|(_, c)| **c).map(|(k, c)| (k.clone(), *c))
        else {
            return;
        };
        if count < least {
            t.min = least;
            t.buckets[b] = count;
            return;
        }
        t.monitored.remove(&victim);
        let vb = t.bucket(&victim);
        t.buckets[vb] = t.buckets[vb].max(least);
        t.monitored.insert(Bytes::copy_from_slice(key), count);
        t.min = t.monitored.values().copied().min().unwrap_or(0);
    }

    /// The `n` hottest keys with their (estimated) counts, hottest first.
    pub fn top(&self, n: usize) -> Vec<(Bytes, u64)> {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(Bytes, u64)> = t.monitored.iter().map(|(k, c)| (k.clone(), *c)).collect();
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
    fn one_off_keys_do_not_displace_hot_ones() {
        let hot = HotKeys::new(4);
        for _ in 0..50 {
            for k in [&b"hot:a"[..], b"hot:b", b"hot:c", b"hot:d"] {
                hot.record(k);
            }
        }
        // 500 keys seen once each, over 64 buckets: no bucket reaches 50. Plain space-saving
        // would have replaced all four hot keys by the fourth of them.
        for i in 0..500u32 {
            hot.record(format!("once:{i}").as_bytes());
        }
        let top = hot.top(4);
        let keys: Vec<&[u8]> = top.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, [&b"hot:a"[..], b"hot:b", b"hot:c", b"hot:d"]);
        assert!(top.iter().all(|(_, c)| *c == 50), "hits of a monitored key are exact: {top:?}");
    }

    #[test]
    fn a_key_that_turns_hot_gets_in_with_a_count_that_is_not_under() {
        let hot = HotKeys::new(2);
        for _ in 0..10 {
            hot.record(b"a");
            hot.record(b"b");
        }
        for _ in 0..25 {
            hot.record(b"c");
        }
        let top = hot.top(2);
        assert_eq!(top[0].0, Bytes::from_static(b"c"), "{top:?}");
        assert!(top[0].1 >= 25, "{top:?}");
    }

    #[test]
    fn any_capacity_builds() {
        let hot = HotKeys::new(usize::MAX);
        hot.record(b"k");
        assert_eq!(hot.top(1), vec![(Bytes::from_static(b"k"), 1)]);
        let one = HotKeys::new(0);
        one.record(b"k");
        assert_eq!(one.top(5).len(), 1);
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
