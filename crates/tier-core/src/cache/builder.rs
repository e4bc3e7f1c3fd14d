//! [`CacheBuilder`]: tiers, policies and options of a hierarchy.

use super::trace::TraceKeys;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::background;
use super::behind::{Behind, Configured, OriginWriter, QueueSeal};
use super::handle::Cache;
use super::hierarchy::{Categories, Hierarchy, Parts};
use super::options::{CacheValue, EarlyRefresh, FailSafe, Options, WriteBehind};
use super::sealer::Sealer;
use super::tiers::{Level, Tiers, MAX_TIERS};
use crate::backplane::{Backplane, ReconnectPolicy};
use crate::envelope::{Compression, Serializer};
use crate::error::CacheError;
use crate::generations::{GenerationStore, LocalGenerations};
use crate::layer::Mount;
use crate::lock::{DistributedLock, LockOptions};
use crate::metrics::TierMetrics;
use crate::policy::{BackfillPolicy, TierPolicy};
use crate::sketch::FrequencySketch;
use crate::tier::{Tier, TierContext};

/// Builds a [`Cache`]. Tiers are read in the order they are added (the first is L1).
#[must_use]
pub struct CacheBuilder<V> {
    name: String,
    tiers: Vec<(Arc<dyn Tier>, TierPolicy)>,
    sealer: Sealer,
    opts: Options,
    generations: Option<Arc<dyn GenerationStore>>,
    backplane: Option<(Arc<dyn Backplane>, ReconnectPolicy)>,
    lock: Option<(Arc<dyn DistributedLock>, LockOptions)>,
    categories: Option<Categories>,
    hot_keys: usize,
    gauge_interval: Duration,
    behind: Option<Configured<V>>,
    _v: PhantomData<fn() -> V>,
}

impl<V: CacheValue> CacheBuilder<V> {
    pub(super) fn new(name: String) -> Self {
        Self {
            name,
            tiers: Vec::new(),
            sealer: Sealer::default(),
            opts: Options::default(),
            generations: None,
            backplane: None,
            lock: None,
            categories: None,
            hot_keys: 32,
            gauge_interval: Duration::from_secs(1),
            behind: None,
            _v: PhantomData,
        }
    }

    /// Add a tier below the ones already added, with its policy.
    pub fn tier(mut self, tier: impl Tier, policy: TierPolicy) -> Self {
        self.tiers.push((Arc::new(tier), policy));
        self
    }

    /// Add a tier that is shared with other code (an `Arc`).
    pub fn tier_arc(mut self, tier: Arc<dyn Tier>, policy: TierPolicy) -> Self {
        self.tiers.push((tier, policy));
        self
    }

    /// Serve stale values when the loader fails (any durations; see [`FailSafe`]). Default: off.
    pub fn fail_safe(mut self, fail_safe: FailSafe) -> Self {
        self.opts.fail_safe = Some(fail_safe);
        self
    }

    /// When a stale value exists and the load takes longer than this, answer with the stale
    /// value and let the load finish in the background. Any duration (zero answers the stale
    /// value at once; `Duration::MAX` never). Default: none.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.opts.soft_timeout = Some(timeout);
        self
    }

    /// Give up a load after this long (a loader error for fail-safe purposes). Range: more than
    /// zero (the builder refuses zero); `Duration::MAX` is no limit. Default: none.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.opts.hard_timeout = Some(timeout);
        self
    }

    /// Refresh fresh entries in the background before they expire (ranges: see
    /// [`EarlyRefresh`]; the builder refuses values outside them). Default: off.
    pub fn early_refresh(mut self, refresh: EarlyRefresh) -> Self {
        self.opts.early_refresh = Some(refresh);
        self
    }

    /// How keys appear in the `tracing` span of each `get_or_load` (target `tier`, level
    /// DEBUG): hashed, truncated, raw or not at all. Default: [`TraceKeys::Hashed`].
    pub fn trace_keys(mut self, keys: TraceKeys) -> Self {
        self.opts.trace_keys = keys;
        self
    }

    /// Answer a stale hit at once and refresh it in the background. Default: off.
    pub fn stale_while_revalidate(mut self, yes: bool) -> Self {
        self.opts.stale_while_revalidate = yes;
        self
    }

    /// Backfill before answering instead of in the background (deterministic, slower).
    /// Default: false (backfill never delays the answer).
    pub fn synchronous_backfill(mut self, yes: bool) -> Self {
        self.opts.sync_backfill = yes;
        self
    }

    /// At most this many background backfills at once; more are skipped (load shedding, counted
    /// in `cache_backfills_shed_total`). Any count (0 skips every background backfill;
    /// synchronous backfill is not shed). Default: 1024.
    pub fn max_pending_backfills(mut self, n: usize) -> Self {
        self.opts.max_pending_backfills = n;
        self
    }

    /// Payloads of at least this many bytes are compressed when it helps. Any size
    /// (`usize::MAX` never compresses). Default: 1024.
    pub fn compress_threshold(mut self, bytes: usize) -> Self {
        self.sealer.codec.compress_threshold = bytes;
        self
    }

    /// Seal every value written to a byte tier (disk, Redis) under `keyring`'s current key, and
    /// open what is read with any of its keys (see [`crate::seal`]). With a keyring, an entry
    /// in clear, sealed with a key it lacks, or altered is a miss (plus
    /// `tier_decode_errors_total`). The L1's decoded objects are not affected. Default: none
    /// (values in clear).
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    pub fn keyring(mut self, keyring: crate::seal::Keyring) -> Self {
        self.sealer.keyring = Some(keyring);
        self
    }

    /// The serializer values are written with in byte tiers (disk, Redis): MessagePack,
    /// JSON (readable, for debugging) or CBOR (feature `cbor`). Entries
    /// written by any built-in serializer are read, so it can be changed on a warm cache. One
    /// not built in fails [`build`](Self::build). Default: [`Serializer::MessagePack`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tier_core::{Cache, Compression, Serializer, TierPolicy};
    /// use tier_memory::MemoryTier;
    ///
    /// let cache: Cache<String> = Cache::builder("users")
    ///     .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
    ///     .serializer(Serializer::Json)
    ///     .compression(None)
    ///     .build()?;
    /// # Ok::<(), tier_core::CacheError>(())
    /// ```
    pub fn serializer(mut self, serializer: Serializer) -> Self {
        self.sealer.codec.serializer = serializer;
        self
    }

    /// The compression of payloads of at least [`compress_threshold`](Self::compress_threshold)
    /// bytes (kept only when it saves space): [`Compression::Lz4`] (fast),
    /// [`Compression::Zstd`] (smaller; feature `zstd`, level from
    /// [`zstd_level`](Self::zstd_level)) or `None` (off). Entries compressed by any built-in
    /// compression are read. Default: `Some(Compression::Lz4)`.
    pub fn compression(mut self, compression: impl Into<Option<Compression>>) -> Self {
        self.sealer.codec.compression = compression.into();
        self
    }

    /// The zstd level, 1 (fastest) ..= 22 (smallest); others fail [`build`](Self::build) when
    /// zstd is chosen. Default: 3.
    pub fn zstd_level(mut self, level: i32) -> Self {
        self.sealer.codec.zstd_level = level;
        self
    }

    /// Where tag generations, namespace versions and the clear floor live. Default:
    /// [`LocalGenerations`] — persisted in the state file of the first local tier that keeps
    /// one (the disk tier: they survive restarts), else in this process only.
    pub fn generations(mut self, store: Arc<dyn GenerationStore>) -> Self {
        self.generations = Some(store);
        self
    }

    /// Bound on each call to a part of the fleet state (generations, namespace, clear floor,
    /// fleet lock, backplane publish); each part also has a breaker of its own. A part that
    /// does not answer in time is skipped as unavailable (see the crate's coherence docs).
    /// Range: more than zero. Default: 100 ms.
    pub fn fleet_state_timeout(mut self, timeout: Duration) -> Self {
        self.opts.fleet_timeout = timeout;
        self
    }

    /// δ, the documented propagation bound: with a backplane that confirms delivery
    /// ([`Backplane::confirms_delivery`]), local entries are served as fresh only while the
    /// last proof of delivery is younger than this (the lease). Range: more than zero.
    /// Default: 100 ms.
    pub fn propagation_bound(mut self, bound: Duration) -> Self {
        self.opts.propagation_bound = bound;
        self
    }

    /// Publish invalidations to, and apply them from, other instances; `on_gap` says what to do
    /// with the local tiers when messages may have been missed ([`ReconnectPolicy::CatchUp`]
    /// is the usual choice). Default: none.
    pub fn backplane(mut self, backplane: Arc<dyn Backplane>, on_gap: ReconnectPolicy) -> Self {
        self.backplane = Some((backplane, on_gap));
        self
    }

    /// One instance of the fleet loads a cold key; the others wait for it (ranges: see
    /// [`LockOptions`]; the builder refuses values outside them). Default: none.
    pub fn distributed_lock(
        mut self,
        lock: Arc<dyn DistributedLock>,
        options: LockOptions,
    ) -> Self {
        self.lock = Some((lock, options));
        self
    }

    /// Add a `category` label to `tier_requests_total`: `classify` maps a key to one of `names`;
    /// anything else counts as `other`. Keep `names` small (it multiplies series).
    pub fn key_categories<F>(mut self, names: &[&'static str], classify: F) -> Self
    where
        F: Fn(&[u8]) -> &str + Send + Sync + 'static,
    {
        let mut names: Vec<&'static str> =
            names.iter().copied().filter(|n| *n != "other").collect();
        names.push("other");
        self.categories = Some(Categories { names, classify: Arc::new(classify) });
        self
    }

    /// How many hot keys the top-k sketch keeps, and one access in how many is recorded
    /// (rounded up to a power of two, so that the hit path draws it with a mask, not a
    /// division). Any values: a capacity of 0 counts as 1 (its counters stay bounded whatever
    /// the capacity), a sample of 0 as 1, one above 2^63 as 2^63. Default: 32 keys, 1 in 64.
    pub fn hot_keys(mut self, capacity: usize, sample_one_in: u64) -> Self {
        self.hot_keys = capacity;
        self.opts.hot_key_sample = sample_one_in;
        self
    }

    /// Write behind: [`Cache::write_behind`] writes the cache tiers at once and queues the
    /// origin write, which `writer` is handed in batches by a background task (options and
    /// their ranges: [`WriteBehind`]). The queue is kept by the first local tier that keeps one
    /// (the disk tier, in its directory: durable, replayed when the directory is opened again);
    /// without one it is in memory — **lossy**, said at build in a WARN line. Default: none.
    pub fn write_behind<W: OriginWriter<V>>(mut self, writer: W, options: WriteBehind) -> Self {
        self.behind = Some(Configured { writer: Box::new(writer), opts: options });
        self
    }

    /// Build the hierarchy. Fails with [`CacheError::Config`] on an empty or ambiguous
    /// configuration, or a setting out of its documented range (the message names it).
    ///
    /// When called inside a tokio runtime it starts background tasks (gauges, backplane
    /// listener); they end when the last clone of the cache is dropped.
    pub fn build(self) -> Result<Cache<V>, CacheError> {
        let names = self.check()?;
        let categories: Vec<&'static str> =
            self.categories.as_ref().map(|c| c.names.clone()).unwrap_or_default();
        let levels = (self.tiers.into_iter().zip(names))
            .map(|((tier, policy), name)| mount(&self.name, tier, name, policy, &categories))
            .collect();
        crate::metrics::describe();
        let (backplane, reconnect) = match self.backplane {
            Some((b, r)) => (Some(b), r),
            None => (None, ReconnectPolicy::default()),
        };
        let tiers = Tiers::new(levels);
        let behind = match self.behind {
            Some(configured) => {
                let seal = QueueSeal::new(&self.name, &self.sealer);
                Some(Arc::new(behind_queue(&self.name, &tiers, configured, seal)?))
            }
            None => None,
        };
        // The first local tier that keeps a durable state holds what the hierarchy must not
        // forget across restarts.
        let state =
            tiers.iter().filter(|(_, l)| !l.is_shared()).find_map(|(_, l)| l.tier().state_store());
        let (generations, local) = match self.generations {
            Some(store) => (store, None),
            None => {
                let local = Arc::new(match &state {
                    Some(state) => LocalGenerations::persisted(state.clone()),
                    None => LocalGenerations::new(),
                });
                (local.clone() as Arc<dyn GenerationStore>, Some(local))
            }
        };
        generations.mounted(self.opts.fleet_timeout);
        let hierarchy = Arc::new(
            Hierarchy::new(Parts {
                name: self.name,
                tiers,
                sealer: self.sealer,
                opts: Options { reconnect, ..self.opts }.checked()?,
                generations,
                shared_generations: local.is_none(),
                backplane,
                lock: self.lock,
                categories: self.categories,
                hot_keys: self.hot_keys,
                state,
            })
            .with_behind(behind),
        );
        let start_up = hierarchy.restore(local.as_deref());
        background::start(&hierarchy, self.gauge_interval, start_up);
        Ok(Cache::from_hierarchy(hierarchy))
    }

    /// The tiers' names, or why the configuration is refused.
    fn check(&self) -> Result<Vec<String>, CacheError> {
        let refuse = |why: String| Err(CacheError::Config(why));
        if self.tiers.is_empty() {
            return refuse("a cache needs at least one tier".into());
        }
        if self.tiers.len() > MAX_TIERS {
            return refuse(format!("at most {MAX_TIERS} tiers"));
        }
        if self.name.is_empty() {
            return refuse("a cache needs a name".into());
        }
        if let Some(Err(why)) = self.lock.as_ref().map(|(_, opts)| opts.check()) {
            return refuse(why);
        }
        if let Err(why) = self.sealer.codec.check() {
            return refuse(why);
        }
        let mut names: Vec<String> = Vec::with_capacity(self.tiers.len());
        for (tier, policy) in &self.tiers {
            let name = policy.name.clone().unwrap_or_else(|| tier.name().to_string());
            if name.is_empty() {
                return refuse("a tier has no name: name it with TierPolicy::name".into());
            }
            if names.contains(&name) {
                return refuse(format!("two tiers named {name:?}: name one with TierPolicy::name"));
            }
            if let Err(why) = policy.check() {
                return refuse(format!("tier {name}: {why}"));
            }
            names.push(name);
        }
        Ok(names)
    }
}

/// The write-behind queue of cache `name`: in the first local tier that keeps one, else in
/// memory (said loudly).
fn behind_queue<V: CacheValue>(
    name: &str,
    tiers: &Tiers,
    configured: Configured<V>,
    seal: QueueSeal,
) -> Result<Behind<V>, CacheError> {
    let opts = configured.opts.checked()?;
    let mut queue = None;
    for (_, level) in tiers.iter().filter(|(_, l)| !l.is_shared()) {
        match level.tier().write_queue() {
            Ok(None) => {}
            Ok(Some(q)) => {
                queue = Some(q);
                break;
            }
            Err(e) => return Err(CacheError::Tier { tier: level.name().to_string(), source: e }),
        }
    }
    if queue.is_none() {
        tracing::warn!(cache = name, "write-behind queue in memory (no local tier keeps one, e.g. a disk tier): writes not yet written to the origin are LOST when the process stops or crashes");
    }
    Ok(Behind::new(name, configured.writer, opts, queue, seal))
}

/// Mount `tier` as tier `name` of cache `cache`: tell it its labels, wrap it in its policy's
/// layers (innermost first), make its metric handles.
fn mount(
    cache: &str,
    tier: Arc<dyn Tier>,
    name: String,
    policy: TierPolicy,
    categories: &[&'static str],
) -> Level {
    let mut ctx = TierContext::new(cache, name.as_str());
    ctx.timeout = policy.call_timeout();
    tier.attach(&ctx);
    let mount = Mount::new(&ctx, tier.storage(), tier.is_shared());
    // Only the innermost layer wraps the tier itself: what it says of its calls holds there.
    let innermost = Mount { bounded: ctx.timeout.is_some() && tier.bounds_calls(), ..mount };
    let wrapped =
        policy.layers().iter().enumerate().fold(tier, |tier, (i, layer)| {
            layer.wrap(tier, if i == 0 { &innermost } else { &mount })
        });
    let metrics = TierMetrics::new(cache, &name, categories);
    if wrapped.breaker_state().is_none() {
        metrics.breaker.set(0.0);
    }
    let frequency = match policy.backfill {
        BackfillPolicy::OnHits(_) => Some(FrequencySketch::new(4096)),
        _ => None,
    };
    Level::new(wrapped, name, policy, metrics, frequency)
}
