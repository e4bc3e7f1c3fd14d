//! Batches through the hierarchy beside their peer, 100 single-key calls, in the same run:
//! - `batch/memory_disk/insert_many_100` vs `insert_100`: `Cache::insert_many` of 100 keys vs
//!   100 sequential `Cache::insert`s, memory → disk (both tiers written).
//! - `batch/memory_disk/get_many_100_l1` vs `get_100_l1`: 100 L1 hits.
//! - `batch/memory_disk/get_many_100_disk` vs `get_100_disk`: the memory tier switched off, so
//!   every key is a disk hit.
//! - with `TIER_BENCH_REDIS_URL` (or `TIER_TEST_REDIS_URL`) set, the same against memory →
//!   Redis (`batch/memory_redis/…`, the memory tier switched off for the gets); skipped
//!   otherwise.
//!
//! Values: the Redis benches' user record (~200 bytes). A current-thread runtime, as in the
//! Redis bench (the disk tier's writer and read threads are its own).
//!
//! `cargo bench -p tier-benches --bench batch`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput};
use tier_benches::{user, User};
use tier_core::{Cache, TierPolicy};
use tier_disk::DiskTier;
use tier_memory::MemoryTier;
use tier_redis::{RedisConnection, RedisTier};
use tokio::runtime::Runtime;

const N: u64 = 100;

fn policy() -> TierPolicy {
    TierPolicy::fresh(Duration::from_secs(3600)).timeout(Duration::from_millis(200))
}

fn compare(c: &mut Criterion, rt: &Runtime, group: &str, cache: &Cache<User>, lower: &str) {
    let keys: Vec<_> = (0..N).map(|i| cache.key(format!("user:{i}"))).collect();
    let items = || keys.iter().cloned().zip((0..N).map(user));
    let mut g = c.benchmark_group(format!("batch/{group}"));
    g.throughput(Throughput::Elements(N));
    g.bench_function("insert_many_100", |b| {
        b.iter(|| rt.block_on(cache.insert_many(items())).unwrap());
    });
    g.bench_function("insert_100", |b| {
        b.iter(|| {
            rt.block_on(async {
                for (k, v) in items() {
                    cache.insert(k, v).await.unwrap();
                }
            })
        });
    });
    rt.block_on(cache.insert_many(items())).unwrap();
    let mut gets = |suffix: &str| {
        g.bench_function(format!("get_many_100_{suffix}"), |b| {
            b.iter(|| {
                let found = rt.block_on(cache.get_many(&keys));
                assert!(found.iter().all(Option::is_some));
            });
        });
        g.bench_function(format!("get_100_{suffix}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    for k in &keys {
                        assert!(cache.get(k).await.is_some());
                    }
                })
            });
        });
    };
    if group == "memory_disk" {
        gets("l1");
    }
    // Every key from the lower tier: the memory tier switched off (no backfill either).
    cache.set_tier_enabled("memory", false);
    gets(lower);
    cache.set_tier_enabled("memory", true);
    g.finish();
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskTier::builder(dir.path()).capacity_bytes(256 << 20).build().unwrap();
    let cache: Cache<User> = Cache::builder("bench")
        .tier(MemoryTier::builder().build(), policy())
        .tier(disk, policy())
        .build()
        .unwrap();
    compare(&mut c, &rt, "memory_disk", &cache, "disk");
    drop(cache);
    let url =
        ["TIER_BENCH_REDIS_URL", "TIER_TEST_REDIS_URL"].iter().find_map(|v| std::env::var(v).ok());
    match url {
        Some(url) => {
            let cache = rt.block_on(async {
                let tier = RedisTier::builder(RedisConnection::standalone(url))
                    .prefix("bench:batches:")
                    .build()
                    .await
                    .unwrap();
                Cache::<User>::builder("bench")
                    .tier(MemoryTier::builder().build(), policy())
                    .tier(tier, policy())
                    .build()
                    .unwrap()
            });
            compare(&mut c, &rt, "memory_redis", &cache, "redis");
            rt.block_on(cache.clear()).unwrap();
        }
        None => eprintln!("batch/memory_redis skipped: set TIER_BENCH_REDIS_URL to run it"),
    }
    c.final_summary();
}
