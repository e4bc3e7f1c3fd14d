//! [`RedisGenerations`]: tag generations shared by the fleet.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tier_core::spi::{
    fresh_generation_start, BackplaneEvent, GenerationStore, Invalidation, TAG_CLOCK_PREFIX,
};
use tier_core::TierError;

use crate::backplane::{EventHook, RedisBackplane};
use crate::commands;
use crate::connection::{slot, RedisConnection};
use crate::keys::{KeyPrefix, DEFAULT_GENERATION_PREFIX};
use crate::metrics::Labels;
use crate::nodes::{self, default_node_breaker, Deadline, Master, Nodes};

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
/// In a Redis Cluster each master has a circuit breaker of its own (as inside
/// [`RedisTier`](crate::RedisTier), see its docs): the tags whose generation keys live on a
/// lost master answer `CircuitOpen` at once (their entries are served only as stale under
/// fail-safe, their `invalidate_tag` fails), the other tags keep answering, and a failure
/// attributed to a master is returned partial, so that the hierarchy's breaker of the whole
/// store (its fleet-state guard) stays closed. Each call is bounded a little below the
/// hierarchy's fleet-state timeout ([`mounted`](GenerationStore::mounted)). The breakers'
/// states are the gauge `tier_redis_node_breaker_state{tier="generations"}`, with the key
/// prefix as the `cache` label (a store may serve several caches).
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
    masters: Arc<Masters>,
}

/// The per-master breakers of a Cluster (`crate::nodes`), started by the first call (their
/// task reads the topology and probes masters that are out) and stopped with the last clone
/// of the store; and the bound of each call.
#[derive(Default)]
struct Masters {
    nodes: OnceLock<Option<Arc<Nodes>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    deadline: Deadline,
}

impl Drop for Masters {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
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
        Self {
            conn,
            prefix: KeyPrefix::from_static(DEFAULT_GENERATION_PREFIX),
            cache: None,
            masters: Arc::default(),
        }
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

    /// Each Redis Cluster master this store has seen, with its circuit breaker's state, sorted
    /// by address (see the type's docs); empty on a standalone server and before the first call.
    pub fn node_breakers(&self) -> Vec<(String, tier_core::BreakerState)> {
        match self.masters.nodes.get() {
            Some(Some(nodes)) => nodes.states(),
            _ => Vec::new(),
        }
    }

    /// The Redis key of `tag`'s generation.
    pub fn redis_key(&self, tag: &str) -> Vec<u8> {
        self.prefix.key(tag.as_bytes())
    }

    /// The Redis key of `cache`'s clear floor.
    pub fn floor_key(&self, cache: &str) -> Vec<u8> {
        self.prefix.key(format!("\0floor:{cache}").as_bytes())
    }

    /// The per-master breakers, in a Cluster (started here, at the first call: a runtime is
    /// running then).
    fn nodes(&self) -> Option<&Arc<Nodes>> {
        if !self.conn.is_cluster() {
            return None;
        }
        self.masters
            .nodes
            .get_or_init(|| {
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                let labels = Labels {
                    cache: String::from_utf8_lossy(self.prefix.as_bytes()).into_owned(),
                    tier: "generations".into(),
                };
                let nodes =
                    Arc::new(Nodes::new(default_node_breaker(), Arc::new(RwLock::new(labels))));
                let task =
                    runtime.spawn(nodes::run(nodes.clone(), self.conn.clone(), Duration::ZERO));
                *self.masters.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
                Some(nodes)
            })
            .as_ref()
    }

    /// The bound of one call: the connection's operation timeout, and below the hierarchy's
    /// fleet-state timeout once mounted (its master's failure comes first).
    fn bound(&self) -> Duration {
        let op = self.conn.op_timeout();
        self.masters.deadline.get().map_or(op, |d| d.min(op))
    }

    /// Run `call` (given its bound) on the master of `key`, under that master's breaker (see
    /// the type's docs); as is while the master is not known (standalone, no topology yet).
    async fn on_master<T, Fut>(
        &self,
        key: &[u8],
        call: impl FnOnce(Duration) -> Fut,
    ) -> Result<T, TierError>
    where
        Fut: Future<Output = Result<T, TierError>>,
    {
        let bound = self.bound();
        let Some((nodes, master)) = self.nodes().and_then(|n| Some((n, n.master_of(slot(key))?)))
        else {
            return call(bound).await;
        };
        nodes.admit(&master, 1, false)?;
        nodes.record(&master, call(bound).await)
    }

    async fn read(&self, tags: &[Arc<str>]) -> Result<Vec<Option<u64>>, TierError> {
        let keys: Vec<Vec<u8>> = tags.iter().map(|t| self.redis_key(t)).collect();
        let bound = Some(self.bound());
        let Some(nodes) = self.nodes() else {
            return self.conn.mget_within(bound, "generations", &keys).await;
        };
        // One `MGET` per master (per slot inside it), each under its master's breaker: a tag
        // of a master that is out fails the read at once, before anything is sent.
        let mut groups: Vec<(Option<Arc<Master>>, Vec<usize>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let master = nodes.master_of(slot(key));
            let same = |g: &Option<Arc<Master>>| match (g, &master) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            match groups.iter_mut().find(|(g, _)| same(g)) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((master, vec![i])),
            }
        }
        for (master, idx) in &groups {
            if let Some(master) = master {
                nodes.admit(master, idx.len(), false)?;
            }
        }
        let keys = &keys;
        let replies =
            futures::future::try_join_all(groups.iter().map(|(master, idx)| async move {
                let of: Vec<Vec<u8>> = idx.iter().map(|&i| keys[i].clone()).collect();
                let got = self.conn.mget_within::<Option<u64>>(bound, "generations", &of).await;
                let got = match master {
                    Some(master) => nodes.record(master, got)?,
                    None => got?,
                };
                Ok::<_, TierError>((idx, got))
            }))
            .await?;
        let mut gens = vec![None; keys.len()];
        for (idx, got) in replies {
            for (&i, g) in idx.iter().zip(got) {
                gens[i] = g;
            }
        }
        Ok(gens)
    }

    /// The generations of `tags` as `known` has them, each missing one created.
    async fn stamp_known(
        &self,
        tags: &[Arc<str>],
        known: Vec<Option<u64>>,
    ) -> Result<Vec<u64>, TierError> {
        let mut out = Vec::with_capacity(tags.len());
        for (tag, g) in tags.iter().zip(known) {
            out.push(match g {
                Some(g) => g,
                None => self.create(tag).await?,
            });
        }
        Ok(out)
    }

    /// The generation of `tag`, created with a fresh start when missing (`SET NX GET`: the
    /// value in place wins a race).
    async fn create(&self, tag: &str) -> Result<u64, TierError> {
        let start = fresh_generation_start();
        let key = self.redis_key(tag);
        let cmd = commands::set_nx_get(&key, &start.to_string());
        let before: Option<u64> = self
            .on_master(&key, |bound| self.conn.query_within(Some(bound), "generation stamp", &cmd))
            .await?;
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
        self.stamp_known(tags, known).await
    }

    async fn stamp_uncached(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError> {
        let known = self.read(tags).await?;
        if let Some(cache) = &self.cache {
            // A cached copy older than what Redis has now is of a bump not delivered yet.
            let outdated: Vec<&Arc<str>> = {
                let map = cache.map();
                tags.iter()
                    .zip(&known)
                    .filter(|(t, g)| map.get(*t).is_some_and(|(c, _)| Some(*c) != **g))
                    .map(|(t, _)| t)
                    .collect()
            };
            outdated.into_iter().for_each(|t| cache.forget(Some(t)));
        }
        self.stamp_known(tags, known).await
    }

    async fn bump(&self, tag: &str) -> Result<u64, TierError> {
        let key = self.redis_key(tag);
        let start = fresh_generation_start();
        let build = |form| commands::generation_bump(&key, start, form);
        let g: u64 = self
            .on_master(&key, |bound| self.conn.script_within(Some(bound), "generation bump", build))
            .await?;
        if let Some(cache) = &self.cache {
            // Our own bump is not delivered back by the backplane: drop the old value here.
            cache.forget(Some(tag));
        }
        Ok(g)
    }

    async fn floor(&self, cache: &str) -> Result<u64, TierError> {
        let key = self.floor_key(cache);
        let cmd = commands::get(&key);
        let floor: Option<u64> = self
            .on_master(&key, |bound| self.conn.query_within(Some(bound), "clear floor", &cmd))
            .await?;
        Ok(floor.unwrap_or(0))
    }

    async fn raise_floor(&self, cache: &str, at: u64) -> Result<u64, TierError> {
        let key = self.floor_key(cache);
        let build = |form| commands::raise_floor(&key, at, form);
        self.on_master(&key, |bound| self.conn.script_within(Some(bound), "clear floor", build))
            .await
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

    fn mounted(&self, fleet_timeout: Duration) {
        // Given to several hierarchies: the shortest of their timeouts.
        let bound = match self.masters.deadline.get() {
            Some(d) => d.min(nodes::deadline_for(fleet_timeout)),
            None => nodes::deadline_for(fleet_timeout),
        };
        self.masters.deadline.set_deadline(bound);
    }
}
