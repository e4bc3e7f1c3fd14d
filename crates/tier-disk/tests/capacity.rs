//! Capacity: writing 10× the capacity never lets the directory grow past capacity + one
//! segment; and the hit ratio of a Zipf workload (printed; see the crate's report).
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{check_value, decoded, entry, segment_bytes, value_for};
use rand::{Rng, SeedableRng};
use tier_core::spi::Tier;
use tier_disk::DiskTier;

const SEGMENT: u64 = 256 << 10;
const CAPACITY: u64 = 4 << 20;

#[tokio::test]
async fn ten_times_capacity_stays_within_capacity_plus_one_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::builder(dir.path())
        .segment_size(SEGMENT)
        .capacity_bytes(CAPACITY)
        .build()
        .expect("open");
    let (mut written, mut seq, mut max_seen) = (0u64, 0u64, 0u64);
    while written < 10 * CAPACITY {
        let k = format!("k{}", seq % 50_000);
        let v = value_for(&k, seq, 500 + (seq % 1500) as usize);
        written += v.len() as u64;
        tier.insert(Bytes::from(k), entry(&v, 3_600_000)).await.expect("insert");
        if seq % 64 == 0 {
            let size = segment_bytes(dir.path());
            max_seen = max_seen.max(size);
            assert!(size <= CAPACITY + SEGMENT, "directory at {size} bytes after {written}");
        }
        seq += 1;
    }
    let stats = tier.disk_stats();
    assert!(stats.file_bytes <= CAPACITY + SEGMENT);
    assert_eq!(tier.stats().capacity_bytes, CAPACITY);
    assert!(stats.live_bytes <= stats.written_bytes);
    // Recent keys are there, and correct.
    for back in 1..50u64 {
        let s = seq - back;
        let k = format!("k{}", s % 50_000);
        let v = decoded(&tier.get(k.as_bytes()).await.expect("get")).expect("recent key present");
        assert_eq!(check_value(&k, &v), Some(s));
    }
    eprintln!(
        "wrote {written} bytes into {CAPACITY}: largest directory seen {max_seen} (limit {})",
        CAPACITY + SEGMENT
    );
}

/// A Zipf(s) sampler over `0..n` by inverse CDF.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Self(cdf)
    }
    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

async fn zipf_hit_ratio(reinsert_hot: bool) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::builder(dir.path())
        .segment_size(SEGMENT)
        .capacity_bytes(CAPACITY)
        .reinsert_hot(reinsert_hot)
        .build()
        .expect("open");
    // 20k keys of ~1 KiB (about 5× the capacity), Zipf s = 0.99, cache-aside.
    let zipf = Zipf::new(20_000, 0.99);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut hits, mut total) = (0u64, 0u64);
    for n in 0..200_000u64 {
        let k = format!("z{}", zipf.sample(&mut rng));
        let got = tier.get(k.as_bytes()).await.expect("get");
        let warm = n >= 50_000;
        if got.entry().is_some() {
            hits += u64::from(warm);
        } else {
            tier.insert(Bytes::from(k.clone()), entry(&value_for(&k, n, 1000), 3_600_000))
                .await
                .expect("insert");
        }
        total += u64::from(warm);
    }
    assert!(segment_bytes(dir.path()) <= CAPACITY + SEGMENT);
    hits as f64 / total as f64
}

#[tokio::test]
async fn zipf_hit_ratio_is_reported() {
    let fifo = zipf_hit_ratio(false).await;
    let second_chance = zipf_hit_ratio(true).await;
    eprintln!(
        "Zipf(0.99) over 20k keys x 1 KiB, capacity 4 MiB (~19% of the keys): hit ratio {:.1}% \
         FIFO, {:.1}% with hot re-insertion",
        fifo * 100.0,
        second_chance * 100.0
    );
    assert!(fifo > 0.3, "{fifo}");
    assert!(
        second_chance >= fifo,
        "re-inserting hot entries should not hurt: {second_chance} < {fifo}"
    );
}
