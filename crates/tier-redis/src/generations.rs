//! [`RedisGenerations`]: tag generations shared by the fleet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tier_core::spi::{
    fresh_generation_start, BackplaneEvent, GenerationStore, Invalidation, TAG_CLOCK_PREFIX,
};
use tier_core::TierError;

use crate::backplane::{EventHook, RedisBackplane};
use crate::commands;
use crate::connection::RedisConnection;
use crate::keys::{KeyPrefix, DEFAULT_GENERATION_PREFIX};

/// Default longest time a cached generation is trusted.
pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(5);
/// A cached generation is used only while the backplane's last proof of delivery is younger
/// than this (the hierarchy's default propagation bound): while the backplane is cut off, a bump
/// it did not deliver could be missing from the cache, so generations are read from Redis.
pub const CACHE_LEASE: Duration = Duration::from_millis(100);
const MAX_CACHED_TAGS: usize = 100_000;

/// Tag generations in Redis: one integer key per tag (`prefix + tag`), bumped with `INCR`, read
/// with `MGET` (one per hash slot in a Cluster). One `invalidate_tag` is one `INCR`, whatever the
/// number of tagged entries, and reaches every instance.
///
/// Generations never go back: a missing generation is created, when an entry is first stamped
/// with it, with a start value drawn from the clock and randomness
/// ([`fresh_generation_start`]; `SET … NX GET`, so concurrent stampers agree); a bump of a
/// missing one starts from such a value too (a script: missing → start, then `INCR`). A
/// generation that is missing when read (evicted, `FLUSHALL`, a restart without persistence)
/// is *unknown*: entries stamped before are at most stale, and the next stamp starts from a
/// value no earlier life of the tag held, so old stamps never match again. Each hierarchy's clear
/// floor is a key `prefix + "\0floor:" + cache`, raised with a max script. Needs Redis 7 (or
/// Valkey) for `SET … NX GET`.
///
/// Caching: without a backplane every [`current`](GenerationStore::current) reads Redis. With
/// [`cached_with`](Self::cached_with) generations read from Redis are kept in process and
/// dropped — *before* the hierarchy sees the event — when the backplane delivers a tag
/// invalidation, a namespace, a clear or a gap, and after at most `max_age` in any case.
/// A read that raced with such a drop does not refill the cache (epoch check), so a cached value
/// is never older than the last invalidation the backplane delivered. And the cache is used
/// only while the backplane proves delivery ([`CACHE_LEASE`]: its last `Confirmed` is recent):
/// while it is cut off, every read goes to Redis.
///
/// ```no_run
/// # async fn demo(conn: tier_redis::RedisConnection, bp: tier_redis::RedisBackplane) {
/// let generations = tier_redis::RedisGenerations::new(conn).cached_with(&bp);
/// # }
/// ```
#[derive(Clone)]
pub struct RedisGenerations {
    conn: RedisConnection,
    prefix: KeyPrefix,
    cache: Option<Arc<GenerationCache>>,
}

impl std::fmt::Debug for RedisGenerations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGenerations")
            .field("prefix", &self.prefix)
            .field("cached", &self.cache.is_some())
            .finish()
    }
}

struct GenerationCache {
    map: Mutex<HashMap<Arc<str>, (u64, Instant)>>,
    /// Bumped on every drop; a read that saw another epoch does not fill the cache.
    epoch: AtomicU64,
    max_age: Duration,
    /// When the last proof of delivery was sent (Unix ms, `BackplaneEvent::Confirmed`).
    confirmed_at: AtomicU64,
}

impl GenerationCache {
    /// Is what the backplane delivered recent enough that no bump acknowledged more than
    /// [`CACHE_LEASE`] ago can be missing from it? Only then is a cached generation used.
    fn delivery_is_proven(&self) -> bool {
        let lease = u64::try_from(CACHE_LEASE.as_millis()).unwrap_or(u64::MAX);
        // The coarse clock may be behind the true time by its lag: the lease ends that much
        // earlier, so that it holds in true time.
        let now = tier_core::spi::now_ms().saturating_add(tier_core::spi::now_ms_lag());
        self.confirmed_at.load(Ordering::Acquire).saturating_add(lease) >= now
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, (u64, Instant)>> {
        // Every critical section is a single map operation: a poisoned map is consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, tag: Option<&str>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut map = self.map();
        match tag {
            Some(t) => {
                map.remove(t);
            }
            None => map.clear(),
        }
    }
}

impl EventHook for GenerationCache {
    fn on_event(&self, event: &BackplaneEvent) {
        match event {
            BackplaneEvent::Invalidate { what: Invalidation::Tag(tag), .. } => {
                self.forget(Some(tag))
            }
            BackplaneEvent::Confirmed { sent_at_ms } => {
                self.confirmed_at.fetch_max(*sent_at_ms, Ordering::AcqRel);
            }
            BackplaneEvent::Invalidate {
                what:
                    Invalidation::Key(_) | Invalidation::Written { .. } | Invalidation::Expire { .. },
                ..
            } => {}
            _ => self.forget(None),
        }
    }
}

impl RedisGenerations {
    /// Generations on `conn`, under the prefix `"tier-gen:"`, not cached.
    pub fn new(conn: RedisConnection) -> Self {
        Self { conn, prefix: KeyPrefix::from_static(DEFAULT_GENERATION_PREFIX), cache: None }
    }

    /// Prefix of generation keys; keep it apart from the tier's prefix (the tier's `clear` would
    /// otherwise reset generations). Default: `"tier-gen:"`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.prefix = KeyPrefix::new(prefix);
        self
    }

    /// Cache generations in process, kept right by `backplane`'s events (see the type's docs),
    /// each trusted at most [`DEFAULT_CACHE_MAX_AGE`].
    #[must_use]
    pub fn cached_with(self, backplane: &RedisBackplane) -> Self {
        self.cached_with_max_age(backplane, DEFAULT_CACHE_MAX_AGE)
    }

    /// Like [`cached_with`](Self::cached_with), with the longest time a cached generation is
    /// trusted.
    #[must_use]
    pub fn cached_with_max_age(mut self, backplane: &RedisBackplane, max_age: Duration) -> Self {
        let cache = Arc::new(GenerationCache {
            map: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            max_age,
            confirmed_at: AtomicU64::new(0),
        });
        let hook: Arc<dyn EventHook> = cache.clone();
        backplane.add_hook(Arc::downgrade(&hook));
        self.cache = Some(cache);
        self
    }

    /// The Redis key of `tag`'s generation.
    pub fn redis_key(&self, tag: &str) -> Vec<u8> {
        self.prefix.key(tag.as_bytes())
    }

    /// The Redis key of `cache`'s clear floor.
    pub fn floor_key(&self, cache: &str) -> Vec<u8> {
        self.prefix.key(format!("\0floor:{cache}").as_bytes())
    }

    async fn read(&self, tags: &[Arc<str>]) -> Result<Vec<Option<u64>>, TierError> {
        let keys: Vec<Vec<u8>> = tags.iter().map(|t| self.redis_key(t)).collect();
        self.conn.mget("generations", &keys).await
    }

    /// The generation of `tag`, created with a fresh start when missing (`SET NX GET`: the
    /// value in place wins a race).
    async fn create(&self, tag: &str) -> Result<u64, TierError> {
        let start = fresh_generation_start();
        let cmd = commands::set_nx_get(&self.redis_key(tag), &start.to_string());
        let before: Option<u64> = self.conn.query("generation stamp", &cmd).await?;
        Ok(before.unwrap_or(start))
    }
}

#[async_trait]
impl GenerationStore for RedisGenerations {
    async fn current(&self, tags: &[Arc<str>]) -> Result<Vec<Option<u64>>, TierError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let Some(cache) = &self.cache else { return self.read(tags).await };
        let epoch = cache.epoch.load(Ordering::SeqCst);
        if cache.delivery_is_proven() {
            let map = cache.map();
            let now = Instant::now();
            let cached: Option<Vec<Option<u64>>> = tags
                .iter()
                .map(|t| {
                    map.get(t)
                        .filter(|(_, at)| now.duration_since(*at) < cache.max_age)
                        .map(|(g, _)| Some(*g))
                })
                .collect();
            if let Some(gens) = cached {
                return Ok(gens);
            }
        }
        let gens = self.read(tags).await?;
        let mut map = cache.map();
        if cache.epoch.load(Ordering::SeqCst) == epoch {
            if map.len() + tags.len() > MAX_CACHED_TAGS {
                map.clear();
            }
            let now = Instant::now();
            // Only known generations are cached: an unknown one may be created any moment; a
            // tag clock never (it is read to tell whether an invalidation ran just now).
            for (t, g) in tags.iter().zip(&gens) {
                if t.starts_with(TAG_CLOCK_PREFIX) {
                    continue;
                }
                if let Some(g) = g {
                    map.insert(t.clone(), (*g, now));
                }
            }
        }
        Ok(gens)
    }

    async fn stamp(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError> {
        let known = self.current(tags).await?;
        let mut out = Vec::with_capacity(tags.len());
        for (tag, g) in tags.iter().zip(known) {
            out.push(match g {
                Some(g) => g,
                None => self.create(tag).await?,
            });
        }
        Ok(out)
    }

    async fn bump(&self, tag: &str) -> Result<u64, TierError> {
        let key = self.redis_key(tag);
        let start = fresh_generation_start();
        let build = |form| commands::generation_bump(&key, start, form);
        let g: u64 =
            self.conn.script_within(Some(self.conn.op_timeout()), "generation bump", build).await?;
        if let Some(cache) = &self.cache {
            // Our own bump is not delivered back by the backplane: drop the old value here.
            cache.forget(Some(tag));
        }
        Ok(g)
    }

    async fn floor(&self, cache: &str) -> Result<u64, TierError> {
        let floor: Option<u64> =
            self.conn.query("clear floor", &commands::get(&self.floor_key(cache))).await?;
        Ok(floor.unwrap_or(0))
    }

    async fn raise_floor(&self, cache: &str, at: u64) -> Result<u64, TierError> {
        let key = self.floor_key(cache);
        let build = |form| commands::raise_floor(&key, at, form);
        self.conn.script_within(Some(self.conn.op_timeout()), "clear floor", build).await
    }

    fn remote_bump(&self, tag: &str, _generation: Option<u64>) -> Option<u64> {
        // Redis already has the new generation: only the cached copy is out of date.
        if let Some(cache) = &self.cache {
            cache.forget(Some(tag));
        }
        None
    }

    fn forget_cached(&self) {
        if let Some(cache) = &self.cache {
            cache.forget(None);
        }
    }
}
