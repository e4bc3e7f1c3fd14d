//! L1 hit: `Cache::get` (memory tier, the whole read path: breaker, metrics, hot-key sampling,
//! downcast) against raw moka `get`s of the same `Arc<V>`, in the same run:
//! - `moka_raw`: `moka::future::Cache::get` (the peer);
//! - `moka_expiry`: the same with the weigher and per-entry expiry that `MemoryTier` configures;
//! - `moka_sync`: `moka::sync::Cache::get` with that configuration (what `MemoryTier` runs on).
//!
//! Report the ratios `tier_cache / peer`.
//!
//! Run: `cargo bench -p tier-benches --bench memory`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tier_core::{Cache, TierPolicy};
use tier_memory::MemoryTier;

#[derive(serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
    tags: Vec<String>,
}

fn user(id: u64) -> User {
    User { id, name: format!("user {id}"), tags: vec!["a".into(), "b".into()] }
}

const KEYS: u64 = 1024;

struct ExpireIn(Duration);

impl moka::Expiry<bytes::Bytes, Arc<User>> for ExpireIn {
    fn expire_after_create(
        &self,
        _k: &bytes::Bytes,
        _v: &Arc<User>,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.0)
    }
}

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache: Cache<User> = rt.block_on(async {
        let cache = Cache::builder("bench")
            .tier(
                MemoryTier::builder().max_bytes(256 << 20).build(),
                TierPolicy::fresh(Duration::from_secs(3600)),
            )
            .build()
            .unwrap();
        for i in 0..KEYS {
            cache.insert(format!("user:{i}"), user(i)).await.unwrap();
        }
        cache
    });
    let moka: moka::future::Cache<bytes::Bytes, Arc<User>> =
        moka::future::Cache::builder().max_capacity(KEYS * 2).build();
    rt.block_on(async {
        for i in 0..KEYS {
            moka.insert(bytes::Bytes::from(format!("user:{i}")), Arc::new(user(i))).await;
        }
    });
    // The same moka configured as MemoryTier configures it (byte weigher + per-entry expiry):
    // the part of the gap that is moka's own price for those features.
    let moka_expiry: moka::future::Cache<bytes::Bytes, Arc<User>> = moka::future::Cache::builder()
        .max_capacity(256 << 20)
        .weigher(|k: &bytes::Bytes, _v: &Arc<User>| k.len() as u32 + 96)
        .expire_after(ExpireIn(Duration::from_secs(3600)))
        .build();
    rt.block_on(async {
        for i in 0..KEYS {
            moka_expiry.insert(bytes::Bytes::from(format!("user:{i}")), Arc::new(user(i))).await;
        }
    });
    let moka_sync: moka::sync::Cache<bytes::Bytes, Arc<User>> = moka::sync::Cache::builder()
        .max_capacity(256 << 20)
        .weigher(|k: &bytes::Bytes, _v: &Arc<User>| k.len() as u32 + 96)
        .expire_after(ExpireIn(Duration::from_secs(3600)))
        .build();
    for i in 0..KEYS {
        moka_sync.insert(bytes::Bytes::from(format!("user:{i}")), Arc::new(user(i)));
    }
    let keys: Vec<bytes::Bytes> =
        (0..KEYS).map(|i| bytes::Bytes::from(format!("user:{i}"))).collect();

    let mut group = c.benchmark_group("l1_hit");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("moka_raw", "get"), |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let key = &keys[i];
            let moka = &moka;
            async move { black_box(moka.get(key).await) }
        })
    });
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("moka_expiry", "get"), |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let key = &keys[i];
            let moka = &moka_expiry;
            async move { black_box(moka.get(key).await) }
        })
    });
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("moka_sync", "get"), |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let key = &keys[i];
            let moka = &moka_sync;
            async move { black_box(moka.get(key)) }
        })
    });
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("tier_cache", "get"), |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let key = &keys[i];
            let cache = &cache;
            async move { black_box(cache.get(key).await) }
        })
    });
    group.finish();
}

criterion_group!(benches, l1_hit);
criterion_main!(benches);
