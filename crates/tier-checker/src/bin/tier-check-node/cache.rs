//! The one module of the node that touches the cache API: how the hierarchy is built
//! (memory → disk → Redis, with the Redis backplane and generations, fail-safe on), each
//! operation the workload runs, and how a read tells it was served stale. When the cache API
//! changes (the coherence work), this is the file to adapt.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tier_checker::origin::Origin;
use tier_checker::space::KeySpace;
use tier_core::{CacheError, CallOptions, FailSafe, ReconnectPolicy, TierPolicy};
use tier_disk::DiskTier;
use tier_memory::MemoryTier;
use tier_redis::{RedisBackplane, RedisConnection, RedisGenerations, RedisTier};

type Cache = tier_core::Cache<String>;

/// Where the node's tiers are.
pub struct Config {
    /// The cache Redis: one URL, or a Cluster's nodes.
    pub redis: Vec<String>,
    /// Whether `redis` is a Cluster.
    pub cluster: bool,
    /// The disk tier's directory (the same across the node's restarts).
    pub disk: PathBuf,
}

/// The node's cache.
pub struct NodeCache {
    cache: Cache,
}

const FRESH: Duration = Duration::from_secs(60);
const STALE: Duration = Duration::from_secs(60);

/// Build the hierarchy (fails while the cache Redis is unreachable: the caller retries).
pub async fn build(config: &Config) -> Result<NodeCache, String> {
    let conn = if config.cluster {
        RedisConnection::cluster(config.redis.clone())
    } else {
        RedisConnection::standalone(config.redis.first().cloned().unwrap_or_default())
    }
    .connect_timeout(Duration::from_millis(200))
    .response_timeout(Duration::from_millis(500))
    .connect()
    .await
    .map_err(|e| format!("connect to the cache Redis: {e}"))?;
    let l3 =
        RedisTier::builder(conn.clone()).build().await.map_err(|e| format!("Redis tier: {e}"))?;
    let mut backplane = RedisBackplane::builder(conn.clone());
    // TIER_CHECKER_TRACK=1: client-side caching beside the stream (standalone only).
    if !config.cluster && std::env::var("TIER_CHECKER_TRACK").is_ok_and(|v| v == "1") {
        backplane = backplane.track("chk", &l3);
    }
    let backplane = backplane.build().await.map_err(|e| format!("backplane: {e}"))?;
    let generations = RedisGenerations::new(conn).cached_with(&backplane);
    let l2 = DiskTier::builder(&config.disk)
        .capacity_bytes(8 << 20)
        .segment_size(256 << 10)
        .build()
        .map_err(|e| format!("disk tier {}: {e}", config.disk.display()))?;
    let cache = Cache::builder("chk")
        .tier(
            MemoryTier::builder().max_bytes(16 << 20).build(),
            TierPolicy::fresh(FRESH).stale(STALE).no_breaker(),
        )
        .tier(l2, TierPolicy::fresh(FRESH * 2).stale(STALE).timeout(Duration::from_millis(50)))
        .tier(l3, TierPolicy::fresh(FRESH * 4).stale(STALE).timeout(Duration::from_millis(250)))
        .generations(Arc::new(generations))
        .backplane(Arc::new(backplane), ReconnectPolicy::default())
        .fail_safe(FailSafe::up_to(STALE))
        .build()
        .map_err(|e| format!("build the cache: {}", chain(&e)))?;
    // Another instance may have moved the namespace on (what a service does at start-up).
    cache.sync_namespace().await.map_err(|e| format!("sync the namespace: {}", chain(&e)))?;
    Ok(NodeCache { cache })
}

impl NodeCache {
    fn key(&self, key: u32) -> impl AsRef<[u8]> {
        self.cache.key(KeySpace::key_id(key))
    }

    /// `get_or_load` of `key` (tagged `tag`), the loader reading the origin.
    pub async fn read(
        &self,
        key: u32,
        tag: u32,
        origin: &Origin,
    ) -> Result<Option<String>, String> {
        let origin = origin.clone();
        let opts = CallOptions::new().tags([KeySpace::tag_name(tag)]);
        self.cache
            .get_or_load_with(self.key(key), &opts, move || async move { origin.read(key).await })
            .await
            .map(|v| v.map(|v| v.as_ref().clone()))
            .map_err(|e| chain(&e))
    }

    /// `insert_with_tags`.
    pub async fn insert(&self, key: u32, tag: u32, value: String) -> Result<(), String> {
        let tags = [KeySpace::tag_name(tag)];
        self.cache.insert_with_tags(self.key(key), value, &tags).await.map_err(|e| chain(&e))
    }

    /// `invalidate`.
    pub async fn invalidate(&self, key: u32) -> Result<(), String> {
        self.cache.invalidate(self.key(key)).await.map_err(|e| chain(&e))
    }

    /// `invalidate_tag`.
    pub async fn invalidate_tag(&self, tag: u32) -> Result<(), String> {
        self.cache.invalidate_tag(&KeySpace::tag_name(tag)).await.map_err(|e| chain(&e))
    }

    /// `invalidate_namespace`.
    pub async fn invalidate_namespace(&self) -> Result<(), String> {
        self.cache.invalidate_namespace().await.map_err(|e| chain(&e))
    }

    /// `clear`.
    pub async fn clear(&self) -> Result<(), String> {
        self.cache.clear().await.map_err(|e| chain(&e))
    }
}

/// An error and its causes, on one line (a cause its error already quotes is not repeated).
fn chain(e: &CacheError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s += &format!(": {text}");
        }
        source = cause.source();
    }
    s
}

/// `cache_stale_served_total` as this process has counted it. The node runs one call at a
/// time, so a read during which it moved was served stale.
pub fn stale_served() -> u64 {
    STALE_SERVED.load(Ordering::Relaxed)
}

static STALE_SERVED: AtomicU64 = AtomicU64::new(0);

/// A metrics recorder that keeps `cache_stale_served_total` and drops everything else.
struct StaleCounter;

impl metrics::Recorder for StaleCounter {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == tier_core::metrics::CACHE_STALE_SERVED {
            metrics::Counter::from_arc(Arc::new(StaleFn))
        } else {
            metrics::Counter::noop()
        }
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

struct StaleFn;

impl metrics::CounterFn for StaleFn {
    fn increment(&self, value: u64) {
        STALE_SERVED.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        STALE_SERVED.fetch_max(value, Ordering::Relaxed);
    }
}

/// Install the recorder (before the cache is built: the hierarchy registers its counters then).
pub fn count_stale_reads() -> Result<(), String> {
    metrics::set_global_recorder(StaleCounter).map_err(|e| format!("install the recorder: {e}"))
}
