//! DiskTier beside foyer's `HybridCache` (its memory part as small as it allows, so hits are
//! disk hits), same values, same run:
//! - `disk_hit/{tier-disk,foyer}/{1KiB,16KiB}`: a hit, page cache warm (and
//!   `tier-disk+spawn_blocking`: the same hit moved to tokio's blocking pool);
//! - `disk_insert/{tier-disk,foyer}/{1KiB,16KiB}`: one insert (foyer's is accepted into its
//!   write queue and written by background flushers; ours is staged: queued, readable at
//!   once, and written in batches by the tier's writer thread);
//! - `disk_reopen/tier-disk/1GiB`: open (full CRC-checked recovery) of a directory holding 1 GiB
//!   of 1 KiB records, page cache warm. Index bytes per entry are printed with it.
//!
//! `cargo bench -p tier-benches --bench disk`; shorter: add `-- --measurement-time 2`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foyer::HybridCache;
use tier_benches::envelope_of_len as envelope;
use tier_core::spi::{Entry, Tier};
use tier_disk::{DiskTier, FlushPolicy};

const SIZES: [(usize, &str, u64); 2] = [(1 << 10, "1KiB", 8192), (16 << 10, "16KiB", 2048)];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key:{i:08}"))
}

async fn foyer_cache(dir: &std::path::Path) -> HybridCache<u64, Vec<u8>> {
    tier_benches::foyer_disk_cache(dir, 512 << 20).await
}

fn disk_tier(dir: &std::path::Path, capacity: u64) -> DiskTier {
    DiskTier::builder(dir)
        .capacity_bytes(capacity)
        .segment_size(64 << 20)
        .flush(FlushPolicy::None)
        .build()
        .unwrap()
}

fn hits(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("disk_hit");
    for (len, label, n) in SIZES {
        g.throughput(Throughput::Elements(1));
        // tier-disk
        let dir = tempfile::tempdir().unwrap();
        let tier = disk_tier(dir.path(), 1 << 30);
        rt.block_on(async {
            for i in 0..n {
                tier.insert(key(i), envelope(len, i)).await.unwrap();
            }
            for i in 0..n {
                assert!(tier.get(&key(i)).await.unwrap().is_hit());
            }
        });
        let keys: Vec<Bytes> = (0..n).map(key).collect();
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("tier-disk", label), |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 7919) % keys.len();
                let k = &keys[i];
                let tier = &tier;
                async move { black_box(tier.get(k).await.unwrap()) }
            })
        });
        // The same get moved to the blocking pool, to show what `spawn_blocking` per call costs.
        let tier = std::sync::Arc::new(tier);
        g.bench_function(BenchmarkId::new("tier-disk+spawn_blocking", label), |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 7919) % keys.len();
                let (k, t) = (keys[i].clone(), std::sync::Arc::clone(&tier));
                async move {
                    let h = tokio::runtime::Handle::current();
                    black_box(tokio::task::spawn_blocking(move || h.block_on(t.get(&k))).await)
                }
            })
        });
        drop(tier);

        // foyer, same payload bytes
        let fdir = tempfile::tempdir().unwrap();
        let foyer = rt.block_on(async {
            let f = foyer_cache(fdir.path()).await;
            for i in 0..n {
                let v = envelope(len, i).envelope().unwrap().to_vec();
                f.insert(i, v);
            }
            f.storage().wait().await;
            let mut disk_hits = 0;
            for i in 0..n {
                disk_hits += usize::from(f.get(&i).await.unwrap().is_some());
            }
            assert!(disk_hits as u64 >= n * 9 / 10, "foyer kept {disk_hits} of {n}");
            f
        });
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("foyer", label), |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 7919) % n;
                let k = i;
                let f = &foyer;
                async move { black_box(f.get(&k).await.unwrap()) }
            })
        });
        rt.block_on(foyer.close()).unwrap();
    }
    g.finish();
}

fn inserts(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("disk_insert");
    for (len, label, _) in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let entries: Vec<Entry> = (0..64).map(|i| envelope(len, i)).collect();
        let dir = tempfile::tempdir().unwrap();
        let tier = disk_tier(dir.path(), 512 << 20);
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("tier-disk", label), |b| {
            b.to_async(&rt).iter(|| {
                i += 1;
                let (k, e) = (key(i % 100_000), entries[(i % 64) as usize].clone());
                let tier = &tier;
                async move { tier.insert(k, e).await.unwrap() }
            })
        });
        drop(tier);

        let fdir = tempfile::tempdir().unwrap();
        let foyer = rt.block_on(foyer_cache(fdir.path()));
        let values: Vec<Vec<u8>> = entries.iter().map(|e| e.envelope().unwrap().to_vec()).collect();
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("foyer", label), |b| {
            b.iter(|| {
                i += 1;
                black_box(foyer.insert(i % 100_000, values[(i % 64) as usize].clone()));
            })
        });
        rt.block_on(async {
            foyer.storage().wait().await;
            foyer.close().await.unwrap();
        });
    }
    g.finish();
}

fn reopen(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let capacity = 2u64 << 30; // room for 1 GiB of data plus the segments reopening adds
    let started = Instant::now();
    let (entries, index_bytes) = rt.block_on(async {
        let tier = disk_tier(dir.path(), capacity);
        let batch: Vec<Entry> = (0..64).map(|i| envelope(1000, i)).collect();
        let mut i = 0u64;
        while tier.disk_stats().written_bytes < (1 << 30) {
            tier.insert(key(i), batch[(i % 64) as usize].clone()).await.unwrap();
            i += 1;
        }
        (tier.stats().entries, tier.index_bytes())
    });
    let stats = disk_tier(dir.path(), capacity).disk_stats();
    eprintln!(
        "disk_reopen: wrote {entries} records of ~1 KiB ({} bytes written) in {:?}; index {} bytes \
         = {:.1} bytes/entry",
        stats.written_bytes,
        started.elapsed(),
        index_bytes,
        index_bytes as f64 / entries as f64
    );
    let mut g = c.benchmark_group("disk_reopen");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(stats.written_bytes));
    g.bench_function(BenchmarkId::new("tier-disk", "1GiB"), |b| {
        // Only the open is timed; closing (unmapping 1 GiB) happens outside the measurement.
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let t = disk_tier(dir.path(), capacity);
                total += started.elapsed();
                assert_eq!(t.recovery_report().corrupt, 0);
                drop(black_box(t));
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = hits, inserts, reopen
}
criterion_main!(benches);
