//! The hierarchy: [`Cache`] and its builder.
//!
//! Invariants the code keeps (each has a test in `tests/`):
//! - **Backfill never extends life**: a copy made from a lower tier gets
//!   `min(this tier's policy from now, what the source had left)`, for `fresh_until` and
//!   `stale_until` alike.
//! - **Errors are never cached**: a loader error writes nothing (the fail-safe throttle only
//!   re-stamps a stale value that was already cached, within its `stale_until`).
//! - **Stale is served only before `stale_until`**, only when fail-safe (or stale-while-revalidate,
//!   or a soft timeout) allows it.
//! - **One load per key per process**: concurrent callers join one flight; the load runs in its
//!   own task, so a caller that is cancelled strands nobody.
//! - **Invalidation wins races**: keys are spread over 256 stripes, each a sequence number and a
//!   lock. `insert`, `invalidate` and `clear` hold the stripe's lock exclusively and bump its
//!   sequence; background writers (a load's write-through, a backfill) hold it shared, and write
//!   only if the sequence is still the one they saw before reading or loading. So once
//!   `invalidate(k)` returns, no tier holds a value of `k` written before it, and no tier is
//!   left with a value older than the last `insert(k)`.
//! - **Invalidation goes lowest tier first**, so an upper tier cannot be backfilled from a lower
//!   one in between; tags cost O(1) (generations checked on read).

mod batch;
mod builder;
mod load;
mod read;
mod write;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use builder::CacheBuilder;
pub use load::{WarmProgress, WarmReport};

use crate::backplane::{Backplane, ReconnectPolicy};
use crate::breaker::{BreakerState, CircuitBreaker};
use crate::entry::Storage;
use crate::envelope::Codec;
use crate::generations::GenerationStore;
use crate::key::KeyBuilder;
use crate::lock::{DistributedLock, LockOptions};
use crate::metrics::{CacheMetrics, TierMetrics, OBJECT_TIER_TIMING_SAMPLE};
use crate::policy::TierPolicy;
use crate::sketch::{FrequencySketch, HotKeys};
use crate::tier::{Tier, TierStats};

/// What a value type must be to live in a [`Cache`].
pub trait CacheValue: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

/// Serving stale values when the origin fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailSafe {
    /// A stale value is served at most this long after its `fresh_until` (and never after its
    /// `stale_until`).
    pub max_stale_age: Duration,
    /// After serving a stale value because the origin failed, it is served as is (without
    /// calling the origin) for this long. Default: 5 s.
    pub throttle: Duration,
}

impl FailSafe {
    /// Serve stale values up to `max_stale_age` past their freshness.
    pub fn up_to(max_stale_age: Duration) -> Self {
        Self { max_stale_age, throttle: Duration::from_secs(5) }
    }

    /// How long a stale value served on failure keeps the origin from being called again.
    /// Default: 5 s.
    #[must_use]
    pub fn throttle(mut self, throttle: Duration) -> Self {
        self.throttle = throttle;
        self
    }
}

/// Refresh a fresh entry in the background before it expires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EarlyRefresh {
    /// XFetch (Vattani et al.): refresh when `now - load_cost × beta × ln(rand) ≥ fresh_until`.
    /// `beta = 1.0` is the paper's optimum; larger refreshes earlier.
    XFetch {
        /// Eagerness.
        beta: f64,
    },
    /// Refresh once this fraction of the fresh lifetime has passed (e.g. 0.8).
    Ahead(f64),
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Go straight to the origin: no tier is read or written.
    pub bypass: bool,
    /// Tiers (by name) to skip for this call, reads and writes.
    pub skip_tiers: Vec<String>,
    /// Tags of the value loaded by this call.
    pub tags: Vec<Arc<str>>,
}

impl CallOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Bypass caching for this call.
    #[must_use]
    pub fn bypass(mut self, yes: bool) -> Self {
        self.bypass = yes;
        self
    }
    /// Skip the tier named `name` for this call.
    #[must_use]
    pub fn skip_tier(mut self, name: impl Into<String>) -> Self {
        self.skip_tiers.push(name.into());
        self
    }
    /// Tag the loaded value.
    #[must_use]
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.tags = tags.into_iter().map(|t| Arc::from(t.as_ref())).collect();
        self
    }
}

/// What an operator sees of one tier.
#[derive(Debug, Clone)]
pub struct TierInfo {
    /// Its name (the `tier` label).
    pub name: String,
    /// Objects or envelopes.
    pub storage: Storage,
    /// Shared by every instance?
    pub shared: bool,
    /// Operator switch.
    pub enabled: bool,
    /// Breaker state, when it has one.
    pub breaker: Option<BreakerState>,
    /// Entries, bytes, capacity.
    pub stats: TierStats,
}

pub(crate) struct Layer {
    pub tier: Arc<dyn Tier>,
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub name: String,
    pub policy: TierPolicy,
    pub storage: Storage,
    pub shared: bool,
    pub enabled: AtomicBool,
    pub metrics: TierMetrics,
    pub frequency: Option<FrequencySketch>,
}

impl Layer {
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether to time this call (object tiers are sampled, see [`crate::metrics`]; the sample
    /// is drawn from a thread-local generator, so an L1 hit touches no shared counter for it).
    pub(crate) fn should_time(&self) -> bool {
        match self.storage {
            Storage::Envelopes => true,
            Storage::Objects => crate::time::rand_u64().is_multiple_of(OBJECT_TIER_TIMING_SAMPLE),
        }
    }
}

pub(crate) struct Options {
    pub fail_safe: Option<FailSafe>,
    pub soft_timeout: Option<Duration>,
    pub hard_timeout: Option<Duration>,
    pub early_refresh: Option<EarlyRefresh>,
    pub stale_while_revalidate: bool,
    pub sync_backfill: bool,
    pub reconnect: ReconnectPolicy,
    /// A power of two (see `CacheBuilder::hot_keys`).
    pub hot_key_sample: u64,
    pub max_pending_backfills: usize,
}

type Classifier = Arc<dyn Fn(&[u8]) -> &str + Send + Sync>;

pub(crate) struct Categories {
    pub names: Vec<&'static str>,
    pub classify: Classifier,
}

const STRIPES: usize = 256;

/// A share of the key space: a write sequence and a lock (see the module docs).
#[derive(Default)]
pub(crate) struct Stripe {
    pub seq: AtomicU64,
    pub lock: tokio::sync::RwLock<()>,
}

pub(crate) struct Inner<V> {
    pub name: Arc<str>,
    pub layers: Vec<Layer>,
    pub codec: Codec,
    pub opts: Options,
    pub flights: Mutex<load::Flights<V>>,
    pub flight_ids: AtomicU64,
    pub generations: Arc<dyn GenerationStore>,
    pub backplane: Option<Arc<dyn Backplane>>,
    pub lock: Option<(Arc<dyn DistributedLock>, LockOptions)>,
    pub bypass: AtomicBool,
    /// Local entries created at or before this instant (Unix ms) are treated as stale
    /// (after a backplane reconnect with [`ReconnectPolicy::MarkStale`]).
    pub suspect_before: AtomicU64,
    stripes: Box<[Stripe]>,
    pub metrics: CacheMetrics,
    pub hot: HotKeys,
    /// Background backfills started and not yet finished (load shedding).
    pub backfills_pending: std::sync::atomic::AtomicUsize,
    pub categories: Option<Categories>,
    pub keys: KeyBuilder,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl<V> Inner<V> {
    pub(crate) fn stripe(&self, key: &[u8]) -> &Stripe {
        let mut h: u32 = 0x811c_9dc5;
        for b in key {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        &self.stripes[h as usize % STRIPES]
    }

    /// The write sequence of `key`'s stripe.
    pub(crate) fn seq(&self, key: &[u8]) -> u64 {
        self.stripe(key).seq.load(Ordering::Acquire)
    }

    /// Mark a change of every key without waiting for writers (namespace moves, suspect marks:
    /// writers that race simply write entries that are no longer reachable or fresh).
    pub(crate) fn bump_all_seqs(&self) {
        for s in self.stripes.iter() {
            s.seq.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Hold every stripe exclusively and bump them all (a clear).
    pub(crate) async fn lock_all(&self) -> Vec<tokio::sync::RwLockWriteGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(STRIPES);
        for s in self.stripes.iter() {
            guards.push(s.lock.write().await);
            s.seq.fetch_add(1, Ordering::AcqRel);
        }
        guards
    }

    /// Write `writes` in the background of a read or load that saw sequence `seq`: only if no
    /// insert or invalidation of the key came in between. Returns the tiers written.
    pub(crate) async fn write_if_unchanged(
        &self,
        key: &Bytes,
        seq: u64,
        writes: Vec<(usize, crate::Entry)>,
    ) -> Vec<usize>
    where
        V: CacheValue,
    {
        let stripe = self.stripe(key);
        let _shared = stripe.lock.read().await;
        if stripe.seq.load(Ordering::Acquire) != seq {
            return Vec::new();
        }
        self.write_layers(key, writes).await
    }

    #[inline]
    pub(crate) fn category(&self, key: &[u8]) -> usize {
        match &self.categories {
            None => 0,
            Some(c) => {
                let name = (c.classify)(key);
                c.names.iter().position(|n| *n == name).unwrap_or(c.names.len() - 1)
            }
        }
    }

    pub(crate) fn record_hot(&self, key: &[u8]) {
        // Sampled with a thread-local generator: no shared counter on the hit path.
        self.sample_hot(key, crate::time::rand_u64());
    }

    /// Record `key` in the hot keys when the random `draw` says so (one in `hot_key_sample`).
    #[inline]
    pub(crate) fn sample_hot(&self, key: &[u8], draw: u64) {
        if draw & (self.opts.hot_key_sample - 1) == 0 {
            self.hot.record(key);
        }
    }

    /// The tiers a flight's second look skips, as a bit mask. A flight leaves the map only after
    /// writing every tier, and it writes the in-process ones first: a caller that missed just
    /// before a previous flight wrote finds the value in an in-process tier when the hierarchy
    /// has one (so remote tiers are skipped: a slow one is not waited on twice), else in any.
    pub(crate) fn recheck_mask(&self) -> u64 {
        if !self.layers.iter().any(|l| l.storage == Storage::Objects) {
            return 0;
        }
        self.layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.storage != Storage::Objects)
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    /// Indexes of the tiers a call skips, as a bit mask.
    pub(crate) fn skip_mask(&self, opts: &CallOptions) -> u64 {
        let mut mask = 0u64;
        for name in &opts.skip_tiers {
            if let Some(i) = self.layers.iter().position(|l| &l.name == name) {
                mask |= 1 << i;
            }
        }
        mask
    }
}

impl<V> Drop for Inner<V> {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
    }
}

/// A typed hierarchy of tiers in front of an origin.
///
/// Cheap to clone (an `Arc`): clones share tiers, flights and metrics.
///
/// ```
/// use std::time::Duration;
/// use tier_core::{Cache, TierPolicy};
/// use tier_memory::MemoryTier;
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct User { name: String }
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let users: Cache<User> = Cache::builder("users")
///         .tier(MemoryTier::builder().max_bytes(16 << 20).build(), TierPolicy::fresh(Duration::from_secs(60)))
///         .build()?;
///     let key = users.key("42");
///     let user = users
///         .get_or_load(&key, || async { Ok::<_, std::io::Error>(Some(User { name: "Ada".into() })) })
///         .await?;
///     assert_eq!(user.map(|u| u.name.clone()), Some("Ada".to_string()));
///     // A second call is an L1 hit: the loader is not called.
///     let again = users.get_or_load(&key, || async { Err::<Option<User>, _>(std::io::Error::other("not called")) }).await?;
///     assert!(again.is_some());
///     users.invalidate(&key).await?;
///     assert!(users.get(&key).await.is_none());
///     Ok(())
/// }
/// ```
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<V: CacheValue> Cache<V> {
    /// Start building a hierarchy named `name` (the `cache` metric label and the key namespace).
    pub fn builder(name: impl Into<String>) -> CacheBuilder<V> {
        CacheBuilder::new(name.into())
    }

    /// The hierarchy's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The key of `id` in this cache's namespace (`name:version:id`).
    pub fn key(&self, id: impl AsRef<[u8]>) -> Bytes {
        self.inner.keys.key(id)
    }

    /// The key builder (namespace and version).
    pub fn keys(&self) -> &KeyBuilder {
        &self.inner.keys
    }

    /// Switch a tier on or off at run time (reads and writes skip a disabled tier; invalidations
    /// still try it). Returns false when no tier has that name.
    pub fn set_tier_enabled(&self, name: &str, enabled: bool) -> bool {
        match self.inner.layers.iter().find(|l| l.name == name) {
            Some(l) => {
                l.enabled.store(enabled, Ordering::Relaxed);
                tracing::info!(cache = %self.inner.name, tier = name, enabled, "tier switched");
                true
            }
            None => false,
        }
    }

    /// Bypass caching entirely (every call goes to the origin) until switched back.
    pub fn set_bypass(&self, bypass: bool) {
        self.inner.bypass.store(bypass, Ordering::Relaxed);
        tracing::info!(cache = %self.inner.name, bypass, "cache bypass switched");
    }

    /// What an operator sees of each tier, top to bottom.
    pub fn tiers(&self) -> Vec<TierInfo> {
        self.inner
            .layers
            .iter()
            .map(|l| TierInfo {
                name: l.name.clone(),
                storage: l.storage,
                shared: l.shared,
                enabled: l.enabled(),
                breaker: l.breaker.as_ref().map(|b| b.state()),
                stats: l.tier.stats(),
            })
            .collect()
    }

    /// The `n` hottest keys seen (sampled), hottest first.
    pub fn hot_keys(&self, n: usize) -> Vec<(Bytes, u64)> {
        self.inner.hot.top(n)
    }

    /// How many callers are waiting for the load of `key` in flight now (0 when none is).
    pub fn load_waiters(&self, key: impl AsRef<[u8]>) -> usize {
        let flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        // The map itself holds one receiver of each flight.
        flights.get(key.as_ref()).map_or(0, |f| f.waiters.load(Ordering::SeqCst))
    }

    /// Update the `tier_entries`, `tier_bytes` and `tier_capacity_bytes` gauges now (the
    /// hierarchy also does it every second when built inside a tokio runtime).
    pub fn report_gauges(&self) {
        self.inner.report_gauges();
    }

    fn downgrade(&self) -> Weak<Inner<V>> {
        Arc::downgrade(&self.inner)
    }
}

impl<V> Inner<V> {
    pub(crate) fn report_gauges(&self) {
        for l in &self.layers {
            let s = l.tier.stats();
            l.metrics.entries.set(s.entries as f64);
            l.metrics.bytes.set(s.bytes as f64);
            l.metrics.capacity.set(s.capacity_bytes as f64);
        }
    }
}
