//! L1 hit: `Cache::get` (memory tier, the whole read path: breaker, metrics, hot-key sampling,
//! downcast) against raw moka `get`s of the same `Arc<V>`, in the same run:
//! - `moka_raw`: `moka::future::Cache::get` (the peer);
//! - `moka_expiry`: the same with what `MemoryTier` configures: a weigher, per-entry expiry, an
//!   eviction listener (for `tier_evictions_total`; it alone costs moka ~13 ns a hit) and
//!   foldhash for the keys (instead of SipHash: ~15 ns less a hit);
//! - `moka_sync`: `moka::sync::Cache::get` with that configuration (what `MemoryTier` runs on).
//!
//! `tier_cache` runs with no metrics recorder (the counters are no-ops), like the peers;
//! `tier_cache_prometheus` runs last, with a Prometheus recorder installed, as a production
//! service would (each hit then increments a real counter, and one in
//! `OBJECT_TIER_TIMING_SAMPLE` records a duration).
//!
//! Two shapes, each contender in both: one cache of 1,024 keys (`1x1024`, the shape),
//! and eight caches of 128 keys taken in turn (`8x128`). One moka instance alone varies by
//! about ±5 % from one run to the next (its hash seed is random, and so are its probe lengths
//! and where its entries land), as much as the difference measured here; eight instances
//! average that out (±1 % run to run), and also show what each hit touches beyond moka's own
//! memory.
//!
//! Report the ratios `tier_cache / peer`. Code layout moves them too (±10 % from one build to
//! the next, peers included): `scripts/bench-layouts memory moka_raw tier_cache` measures eight
//! shuffled layouts and reports the median ratio with its range.
//!
//! Run: `cargo bench -p tier-benches --bench memory`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tier_core::{Cache, TierPolicy};
use tier_memory::MemoryTier;
use tokio::runtime::Runtime;

#[derive(serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
    tags: Vec<String>,
}

fn user(id: u64) -> User {
    User { id, name: format!("user {id}"), tags: vec!["a".into(), "b".into()] }
}

/// The shapes measured: (caches per contender, keys per cache); 1,024 entries in each.
const SHAPES: [(usize, usize); 2] = [(1, 1024), (8, 128)];

struct ExpireIn(Duration);

impl moka::Expiry<Bytes, Arc<User>> for ExpireIn {
    fn expire_after_create(
        &self,
        _k: &Bytes,
        _v: &Arc<User>,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.0)
    }
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("user:{i}"))
}

/// `instances` caches with one memory tier holding `keys` users each.
fn tier_caches(rt: &Runtime, (instances, keys): (usize, usize)) -> Vec<Cache<User>> {
    rt.block_on(async {
        let mut caches = Vec::new();
        for _ in 0..instances {
            let cache = Cache::builder("bench")
                .tier(
                    MemoryTier::builder().max_bytes(256 << 20).build(),
                    TierPolicy::fresh(Duration::from_secs(3600)),
                )
                .build()
                .unwrap();
            for i in 0..keys {
                cache.insert(key(i), user(i as u64)).await.unwrap();
            }
            caches.push(cache);
        }
        caches
    })
}

/// Measure `$get` (an expression of `$c`, the cache, and `$k`, the key) over every
/// (instance, key) of `$shape` in turn.
macro_rules! bench {
    ($group:expr, $rt:expr, $name:expr, $shape:expr, $caches:expr, |$c:ident, $k:ident| $get:expr) => {{
        let (instances, n_keys) = $shape;
        let keys: Vec<Bytes> = (0..n_keys).map(key).collect();
        let caches = &$caches;
        let mut n = 0usize;
        let id = BenchmarkId::new($name, format!("{instances}x{n_keys}"));
        $group.bench_function(id, |b| {
            b.to_async($rt).iter(|| {
                n = n.wrapping_add(1);
                let $c = &caches[n % instances];
                let $k = &keys[(n / instances) % n_keys];
                async move { black_box($get) }
            })
        });
    }};
}

/// moka configured as `MemoryTier` configures it (byte weigher, per-entry expiry, eviction
/// listener, foldhash for the keys): the part of the gap that is moka's own price for those
/// features.
macro_rules! like_memory_tier {
    ($builder:expr) => {
        $builder
            .max_capacity(256 << 20)
            .weigher(|k: &Bytes, _v: &Arc<User>| k.len() as u32 + 96)
            .expire_after(ExpireIn(Duration::from_secs(3600)))
            .eviction_listener(|_k, _v, _cause| {})
            .build_with_hasher(foldhash::quality::RandomState::default())
    };
}

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("l1_hit");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    for shape @ (instances, keys) in SHAPES {
        let future_caches = |build: &dyn Fn() -> moka::future::Cache<Bytes, Arc<User>>| {
            let fill = |cache: moka::future::Cache<Bytes, Arc<User>>| {
                rt.block_on(async {
                    for i in 0..keys {
                        cache.insert(key(i), Arc::new(user(i as u64))).await;
                    }
                });
                cache
            };
            (0..instances).map(|_| fill(build())).collect::<Vec<_>>()
        };
        let moka_raw =
            future_caches(&|| moka::future::Cache::builder().max_capacity(keys as u64 * 2).build());
        // Filled by its own loop: `future_caches` is typed for moka's default hasher, and
        // `moka_raw`'s code stays as earlier figures measured it (moving the peer's code
        // around moved its figure by ~5 ns).
        let moka_expiry: Vec<moka::future::Cache<Bytes, Arc<User>, _>> = (0..instances)
            .map(|_| {
                let cache = like_memory_tier!(moka::future::Cache::builder());
                rt.block_on(async {
                    for i in 0..keys {
                        cache.insert(key(i), Arc::new(user(i as u64))).await;
                    }
                });
                cache
            })
            .collect();
        let moka_sync: Vec<moka::sync::Cache<Bytes, Arc<User>, _>> = (0..instances)
            .map(|_| {
                let cache = like_memory_tier!(moka::sync::Cache::builder());
                for i in 0..keys {
                    cache.insert(key(i), Arc::new(user(i as u64)));
                }
                cache
            })
            .collect();
        let tier = tier_caches(&rt, shape);
        bench!(group, &rt, "moka_raw", shape, moka_raw, |c, k| c.get(k).await);
        bench!(group, &rt, "moka_expiry", shape, moka_expiry, |c, k| c.get(k).await);
        bench!(group, &rt, "moka_sync", shape, moka_sync, |c, k| c.get(k));
        bench!(group, &rt, "tier_cache", shape, tier, |c, k| c.get(k).await);
    }
    // Last: the recorder is global, and a cache registers its counters when it is built.
    // Configured as `tier demo` configures it, with its upkeep (which drains the buffered
    // histogram samples) run every second, as `PrometheusBuilder::install` runs it every 5 s.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            tier_core::metrics::DURATION_BUCKETS,
        )
        .unwrap()
        .install_recorder()
        .unwrap();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        prometheus.run_upkeep();
    });
    for shape in SHAPES {
        let tier = tier_caches(&rt, shape);
        bench!(group, &rt, "tier_cache_prometheus", shape, tier, |c, k| c.get(k).await);
    }
    group.finish();
}

criterion_group!(benches, l1_hit);
criterion_main!(benches);
