//! The hierarchy: a cache's tiers with everything its operations share — options, flights,
//! write stripes, what it knows of the fleet, the fleet-state interfaces (generations,
//! backplane, lock), metrics and hot keys. It only holds them; each concern works on them in
//! its own module (reads in `lookup.rs`, loads in `load.rs`, writes in `writes.rs`, …).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use super::behind::Behind;
use super::fleet::{Guards, Kept};
use super::flight::Flights;
use super::lifetime::Entries;
use super::options::Options;
use super::rule::FleetState;
use super::sealer::Sealer;
use super::tiers::Tiers;
use super::writes::{Stripes, Writer};
use crate::backplane::{Backplane, Invalidation};
use crate::generations::GenerationStore;
use crate::key::KeyBuilder;
use crate::lock::{DistributedLock, LockOptions};
use crate::metrics::CacheMetrics;
use crate::sketch::HotKeys;
use crate::state::StateStore;

type Classifier = Arc<dyn Fn(&[u8]) -> &str + Send + Sync>;

/// The `category` label of `tier_requests_total`: names, the last one `other`, and the key's
/// classifier.
pub(super) struct Categories {
    pub names: Vec<&'static str>,
    pub classify: Classifier,
}

/// What the builder assembles a hierarchy from.
pub(super) struct Parts {
    pub name: String,
    pub tiers: Tiers,
    pub sealer: Sealer,
    pub opts: Options,
    pub generations: Arc<dyn GenerationStore>,
    /// The generation store is not the hierarchy's own local one (the fleet shares it).
    pub shared_generations: bool,
    pub backplane: Option<Arc<dyn Backplane>>,
    pub lock: Option<(Arc<dyn DistributedLock>, LockOptions)>,
    pub categories: Option<Categories>,
    pub hot_keys: usize,
    /// The local tiers' durable state, if one keeps it.
    pub state: Option<Arc<dyn StateStore>>,
}

/// A hierarchy of tiers and its shared state (see the module docs).
pub(super) struct Hierarchy<V> {
    name: Arc<str>,
    tiers: Tiers,
    sealer: Sealer,
    opts: Options,
    flights: Flights<V>,
    stripes: Stripes,
    fleet: FleetState,
    guards: Guards,
    kept: Kept,
    generations: Arc<dyn GenerationStore>,
    shared_generations: bool,
    backplane: Option<Arc<dyn Backplane>>,
    lock: Option<(Arc<dyn DistributedLock>, LockOptions)>,
    bypass: AtomicBool,
    metrics: CacheMetrics,
    hot: HotKeys,
    categories: Option<Categories>,
    /// Background backfills started and not yet finished (load shedding).
    backfills_pending: AtomicUsize,
    keys: KeyBuilder,
    /// A namespace version this instance moved to (or adopted) whose notice could not be
    /// published yet (0: none): told before the next notice and retried until told.
    untold_namespace: AtomicU64,
    /// The reads of the namespace version after writes, shared by concurrent writers.
    after_writes: super::fleet::AfterWrites,
    /// The write-behind queue and its writer, when configured.
    behind: Option<Arc<Behind<V>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<V> Hierarchy<V> {
    /// A hierarchy of `parts`, with nothing in flight.
    pub fn new(parts: Parts) -> Self {
        let metrics = CacheMetrics::new(&parts.name);
        metrics.register_event_series(|| parts.tiers.names());
        let guards = Guards::new(&parts.name, parts.opts.fleet_timeout);
        let kept = Kept::new(&parts.name, parts.state);
        Self {
            guards,
            kept,
            keys: KeyBuilder::new(parts.name.as_str()),
            untold_namespace: AtomicU64::new(0),
            after_writes: super::fleet::AfterWrites::default(),
            name: Arc::from(parts.name),
            tiers: parts.tiers,
            sealer: parts.sealer,
            opts: parts.opts,
            flights: Flights::default(),
            stripes: Stripes::default(),
            fleet: FleetState::default(),
            generations: parts.generations,
            shared_generations: parts.shared_generations,
            backplane: parts.backplane,
            lock: parts.lock,
            bypass: AtomicBool::new(false),
            metrics,
            hot: HotKeys::new(parts.hot_keys),
            categories: parts.categories,
            backfills_pending: AtomicUsize::new(0),
            behind: None,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// This hierarchy, writing behind through `behind`.
    pub fn with_behind(mut self, behind: Option<Arc<Behind<V>>>) -> Self {
        self.behind = behind;
        self
    }

    /// The write-behind queue, when the cache writes behind.
    pub fn behind(&self) -> Option<&Arc<Behind<V>>> {
        self.behind.as_ref()
    }

    /// The cache's name (the `cache` label, the key namespace).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tiers, top first.
    #[inline]
    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// The options it runs with.
    #[inline]
    pub fn opts(&self) -> &Options {
        &self.opts
    }

    /// Loads in flight.
    pub fn flights(&self) -> &Flights<V> {
        &self.flights
    }

    /// The write stripes.
    pub fn stripes(&self) -> &Stripes {
        &self.stripes
    }

    /// What this instance knows of the fleet (the usability rule's input).
    #[inline]
    pub fn fleet(&self) -> &FleetState {
        &self.fleet
    }

    /// Where tag generations live.
    pub fn generations(&self) -> &dyn GenerationStore {
        &*self.generations
    }

    /// Is the generation store shared by the fleet (not the hierarchy's own local one)? Then
    /// the namespace version and the clear floor are read from it at start and after a gap.
    pub fn shares_generations(&self) -> bool {
        self.shared_generations
    }

    /// The timeout and breaker of each part of the fleet state.
    pub fn guards(&self) -> &Guards {
        &self.guards
    }

    /// What the hierarchy keeps of the fleet locally (log position, suspect floor).
    pub fn kept(&self) -> &Kept {
        &self.kept
    }

    /// Tell every tier that `what` was applied ([`Tier::observe`](crate::spi::Tier::observe)).
    pub fn observe(&self, what: &Invalidation) {
        for (_, level) in self.tiers.iter() {
            level.tier().observe(what);
        }
    }

    /// The backplane, if any.
    pub fn backplane(&self) -> Option<&Arc<dyn Backplane>> {
        self.backplane.as_ref()
    }

    /// The fleet lock and its options, if any.
    pub fn lock(&self) -> Option<(&dyn DistributedLock, &LockOptions)> {
        self.lock.as_ref().map(|(l, o)| (&**l, o))
    }

    /// Is caching bypassed (every call goes to the origin)?
    #[inline]
    pub fn bypassed(&self) -> bool {
        self.bypass.load(Ordering::Relaxed)
    }

    /// Bypass caching, or stop.
    pub fn set_bypass(&self, bypass: bool) {
        self.bypass.store(bypass, Ordering::Relaxed);
    }

    /// The cache's metric handles.
    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    /// The sampled top-k of keys.
    pub fn hot(&self) -> &HotKeys {
        &self.hot
    }

    /// The counter of background backfills in progress.
    pub fn backfills_pending(&self) -> &AtomicUsize {
        &self.backfills_pending
    }

    /// The key builder (namespace and version).
    pub fn keys(&self) -> &KeyBuilder {
        &self.keys
    }

    /// The namespace version whose notice is still to be published (0: none).
    pub fn untold_namespace(&self) -> &AtomicU64 {
        &self.untold_namespace
    }

    /// The reads of the namespace version after writes (see `Cache::settle_namespace`).
    pub fn after_writes(&self) -> &super::fleet::AfterWrites {
        &self.after_writes
    }

    /// The writer of its tiers.
    pub fn writer(&self) -> Writer<'_> {
        Writer { cache: &self.name, tiers: &self.tiers, stripes: &self.stripes }
    }

    /// The builder of entries for its tiers.
    pub fn entries(&self) -> Entries<'_> {
        Entries { tiers: &self.tiers, sealer: &self.sealer, cache: &self.name }
    }

    /// How it writes and reads envelopes (codec, keyring).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The index of `key`'s category (0 without categories).
    #[inline]
    pub fn category(&self, key: &[u8]) -> usize {
        match &self.categories {
            None => 0,
            Some(c) => {
                let name = (c.classify)(key);
                c.names.iter().position(|n| *n == name).unwrap_or(c.names.len() - 1)
            }
        }
    }

    /// Record `key` in the hot keys, sampled (one in `hot_key_sample`) with a thread-local
    /// generator: no shared counter on the hit path.
    pub fn record_hot(&self, key: &[u8]) {
        self.sample_hot(key, crate::time::rand_u64());
    }

    /// Record `key` in the hot keys when the random `draw` says so (one in `hot_key_sample`).
    #[inline]
    pub fn sample_hot(&self, key: &[u8], draw: u64) {
        if draw & (self.opts.hot_key_sample - 1) == 0 {
            self.hot.record(key);
        }
    }

    /// Keep background tasks; they are aborted when the hierarchy is dropped.
    pub fn keep_tasks(&self, tasks: Vec<JoinHandle<()>>) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend(tasks);
    }

    /// Update every tier's gauges.
    pub fn report_gauges(&self) {
        // A recorder installed after the build: the series that move only on events appear now.
        self.metrics.register_event_series(|| self.tiers.names());
        for (_, level) in self.tiers.iter() {
            level.report_gauges();
        }
        if let Some(behind) = &self.behind {
            behind.report_gauges();
        }
    }
}

impl<V> Drop for Hierarchy<V> {
    fn drop(&mut self) {
        self.kept.flush();
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
    }
}
