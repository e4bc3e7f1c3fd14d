//! The read path: walk the tiers, classify, backfill, decide on early refresh.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::load::Loader;
use super::{Cache, CacheValue, CallOptions, EarlyRefresh, Inner};
use crate::entry::{Entry, Lookup, ReadyLookup, Storage, Value};
use crate::envelope;
use crate::error::{BoxError, CacheError, TierError, TierErrorKind};
use crate::metrics::{LookupResult, OBJECT_TIER_TIMING_SAMPLE};
use crate::policy::BackfillPolicy;
use crate::time::{now_ms, rand_unit};

/// An entry found in a tier, with its decoded value (`None` for a negative entry).
pub(crate) struct Found<V> {
    pub layer: usize,
    /// The key's write sequence before the tier was read (see the module docs).
    pub seq: u64,
    pub entry: Entry,
    pub value: Option<Arc<V>>,
}

impl<V> Clone for Found<V> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer,
            seq: self.seq,
            entry: self.entry.clone(),
            value: self.value.clone(),
        }
    }
}

/// What a walk down the tiers found: the first fresh entry, and the first stale one above it.
pub(crate) struct Walk<V> {
    pub fresh: Option<Found<V>>,
    pub stale: Option<Found<V>>,
}

/// What the first tier answered without waiting ([`Inner::first_ready`]).
pub(crate) enum Ready<V> {
    /// A fresh hit: the value (`None` for a negative entry) and what early refresh reads of the
    /// entry.
    Hit { value: Option<Arc<V>>, life: Life },
    /// Walk on from this tier.
    From(usize),
}

/// What early refresh reads of a fresh entry ([`Inner::should_refresh`]).
#[derive(Clone, Copy)]
pub(crate) struct Life {
    pub created_at: u64,
    pub fresh_until: u64,
    pub load_cost_us: u32,
}

impl From<&crate::envelope::Meta> for Life {
    fn from(m: &crate::envelope::Meta) -> Self {
        Self { created_at: m.created_at, fresh_until: m.fresh_until, load_cost_us: m.load_cost_us }
    }
}

/// Whether a walk counts its lookups in `tier_requests_total` (the re-check inside a flight and
/// the lock wait do not: they are the hierarchy's own second look, not a caller's request).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counting {
    Counted,
    Quiet,
}

impl<V: CacheValue> Inner<V> {
    /// The value of the first fresh entry, walking the tiers top to bottom (the first one
    /// through [`Inner::first_ready`]); `Some(None)` is a fresh negative entry.
    pub(crate) async fn fresh_value(
        &self,
        key: &[u8],
        skip: u64,
        counting: Counting,
    ) -> Option<Option<Arc<V>>> {
        match self.first_ready(key, skip, counting) {
            Ready::Hit { value, .. } => Some(value),
            Ready::From(from) => {
                self.walk_from(key, skip, counting, from).await.fresh.map(|f| f.value)
            }
        }
    }

    /// The L1 fast path, without a future: a fresh, untagged hit in the first tier when it holds
    /// objects and can answer at once ([`Tier::get_ready`](crate::Tier::get_ready)); otherwise
    /// the tier to walk on from. A counted hit is counted and sampled for the hot keys here, a
    /// miss of tier 0 is counted here; anything else is read again by the general walk, which
    /// first takes the key's write sequence.
    ///
    /// Always inlined: as a call of its own (LLVM's choice) an L1 hit through `Cache::get` on
    /// one cache of 1,024 keys measured ~2 % slower (the `memory` bench, median over 16 code
    /// layouts; eight caches of 128 keys: no difference).
    #[inline(always)]
    pub(crate) fn first_ready(&self, key: &[u8], skip: u64, counting: Counting) -> Ready<V> {
        let Some(first) = self.layers.first() else { return Ready::From(0) };
        if first.storage != Storage::Objects || skip & 1 != 0 || !first.enabled() {
            return Ready::From(0);
        }
        let counted = counting == Counting::Counted;
        // One draw of the thread-local generator decides both samples of a counted hit: its
        // low bits the timing, its high bits the hot-key record.
        let draw = if counted { crate::time::rand_u64() } else { 1 };
        let start = draw.is_multiple_of(OBJECT_TIER_TIMING_SAMPLE).then(Instant::now);
        let result = first.tier.get_ready(key);
        if let Some(start) = start {
            first.metrics.get_duration.record(start.elapsed());
        }
        match result {
            ReadyLookup::Fresh(hit)
                if hit.meta.created_at > self.suspect_before.load(Ordering::Relaxed) =>
            {
                let value = if hit.meta.negative {
                    None
                } else {
                    match hit.value.clone().downcast::<V>() {
                        Ok(v) => Some(v),
                        // Another type under this key (a tier shared by two hierarchies): the
                        // general walk counts it as a decode error.
                        Err(_) => return Ready::From(0),
                    }
                };
                if counted {
                    first.metrics.get[self.category(key)].add(LookupResult::Hit, 1);
                    self.sample_hot(key, draw >> 32);
                }
                Ready::Hit { value, life: Life::from(&hit.meta) }
            }
            ReadyLookup::Miss => {
                if counted {
                    first.metrics.get[self.category(key)].add(LookupResult::Miss, 1);
                }
                Ready::From(1)
            }
            ReadyLookup::Fresh(_) | ReadyLookup::Ask => Ready::From(0),
        }
    }

    pub(crate) async fn walk_from(
        &self,
        key: &[u8],
        skip: u64,
        counting: Counting,
        from: usize,
    ) -> Walk<V> {
        let now = now_ms();
        let seq = self.seq(key);
        let category = if counting == Counting::Counted { self.category(key) } else { 0 };
        let mut walk = Walk { fresh: None, stale: None };
        for (i, layer) in self.layers.iter().enumerate().skip(from) {
            let count = |r: LookupResult| {
                if counting == Counting::Counted {
                    layer.metrics.get[category].add(r, 1);
                }
            };
            if skip & (1 << i) != 0 || !layer.enabled() {
                count(LookupResult::Skipped);
                continue;
            }
            let start = (counting == Counting::Counted && layer.should_time()).then(Instant::now);
            let result = layer.tier.get(key).await;
            if let Some(start) = start {
                layer.metrics.get_duration.record(start.elapsed());
            }
            let found = match result {
                Ok(Lookup::Miss) => {
                    count(LookupResult::Miss);
                    continue;
                }
                Ok(Lookup::Hit(entry) | Lookup::Stale(entry)) => {
                    self.accept(i, seq, entry, now).await
                }
                Err(e) => Err(e),
            };
            match found {
                Ok(Some((found, true))) => {
                    count(LookupResult::Hit);
                    walk.fresh = Some(found);
                    return walk;
                }
                Ok(Some((found, false))) => {
                    count(LookupResult::Stale);
                    if walk.stale.is_none() {
                        walk.stale = Some(found);
                    }
                }
                Ok(None) => count(LookupResult::Miss),
                Err(e) => count(self.tier_error(i, &e)),
            }
        }
        walk
    }

    /// Count a tier error and say which result it is.
    pub(crate) fn tier_error(&self, layer: usize, e: &TierError) -> LookupResult {
        let l = &self.layers[layer];
        match e.kind() {
            TierErrorKind::CircuitOpen | TierErrorKind::Disabled => LookupResult::Skipped,
            TierErrorKind::Timeout => LookupResult::Timeout,
            TierErrorKind::Decode => {
                l.metrics.decode_errors.increment(1);
                tracing::debug!(cache = %self.name, tier = %l.name, error = %e, "entry did not decode: miss");
                LookupResult::Miss
            }
            _ => {
                tracing::debug!(cache = %self.name, tier = %l.name, error = %e, "tier error");
                LookupResult::Error
            }
        }
    }

    /// Check an entry a tier returned: alive, tags current, not suspect; decode its value.
    /// `Ok(None)`: not usable (invalidated by a tag, expired). The bool is "fresh".
    async fn accept(
        &self,
        layer: usize,
        seq: u64,
        entry: Entry,
        now: u64,
    ) -> Result<Option<(Found<V>, bool)>, TierError> {
        if !entry.meta.is_alive(now) {
            return Ok(None);
        }
        if entry.meta.tags.is_some() && !self.tags_current(&entry.meta).await {
            return Ok(None);
        }
        let mut fresh = entry.meta.is_fresh(now);
        if fresh
            && !self.layers[layer].shared
            && entry.meta.created_at <= self.suspect_before.load(Ordering::Relaxed)
        {
            fresh = false;
        }
        let value = decode::<V>(&entry)?;
        Ok(Some((Found { layer, seq, entry, value }, fresh)))
    }

    /// Are the tag stamps of `meta` still the current generations? When the store cannot say,
    /// the answer is no: an entry that may have been invalidated is not served.
    pub(crate) async fn tags_current(&self, meta: &crate::envelope::Meta) -> bool {
        let tags = meta.tags();
        if tags.is_empty() {
            return true;
        }
        let names: Vec<Arc<str>> = tags.iter().map(|t| t.tag.clone()).collect();
        match self.generations.current(&names).await {
            Ok(current) => tags.iter().zip(current).all(|(t, g)| t.generation == g),
            Err(e) => {
                tracing::debug!(cache = %self.name, error = %e, "tag generations unavailable: miss");
                false
            }
        }
    }

    /// Should a fresh hit be refreshed now? Reads the clock only when early refresh is on.
    pub(crate) fn should_refresh(&self, meta: Life) -> bool {
        match self.opts.early_refresh {
            None => false,
            Some(EarlyRefresh::Ahead(ratio)) => {
                let life = meta.fresh_until.saturating_sub(meta.created_at) as f64;
                now_ms() as f64 >= meta.created_at as f64 + ratio.clamp(0.0, 1.0) * life
            }
            Some(EarlyRefresh::XFetch { beta }) => {
                let cost_ms = f64::from(meta.load_cost_us) / 1000.0;
                let early = -cost_ms * beta * rand_unit().ln();
                now_ms() as f64 + early >= meta.fresh_until as f64
            }
        }
    }

    /// Copy a fresh entry found in `found.layer` into the tiers above it, per their policies.
    pub(crate) async fn backfill(self: &Arc<Self>, key: &[u8], found: &Found<V>, skip: u64) {
        if found.layer == 0 {
            return;
        }
        let seq = found.seq;
        let mut writes = Vec::new();
        for j in 0..found.layer {
            let layer = &self.layers[j];
            if skip & (1 << j) != 0 || !layer.enabled() {
                continue;
            }
            let admit = match layer.policy.backfill {
                BackfillPolicy::Always => true,
                BackfillPolicy::Never => false,
                BackfillPolicy::MaxSize(max) => found.entry.size <= max,
                BackfillPolicy::OnHits(n) => {
                    layer.frequency.as_ref().is_some_and(|f| f.increment(key) >= n)
                }
            };
            if !admit || layer.policy.max_value_size.is_some_and(|m| found.entry.size > m) {
                continue;
            }
            match self.backfill_entry(j, found) {
                Ok(entry) => writes.push((j, entry)),
                Err(e) => {
                    tracing::debug!(cache = %self.name, error = %e, "backfill entry not built")
                }
            }
        }
        if writes.is_empty() {
            return;
        }
        let key = Bytes::copy_from_slice(key);
        let from = found.layer;
        if self.opts.sync_backfill {
            self.write_backfill(key, from, writes, seq).await;
            return;
        }
        // Load shedding: when the tiers above cannot keep up, skip backfills rather than queue
        // them without bound (the value is still answered; a later hit backfills).
        if self.backfills_pending.fetch_add(1, Ordering::AcqRel) >= self.opts.max_pending_backfills
        {
            self.backfills_pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics.backfills_shed.increment(1);
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            inner.write_backfill(key, from, writes, seq).await;
            inner.backfills_pending.fetch_sub(1, Ordering::AcqRel);
        });
    }

    async fn write_backfill(&self, key: Bytes, from: usize, writes: Vec<(usize, Entry)>, seq: u64) {
        for j in self.write_if_unchanged(&key, seq, writes).await {
            self.metrics.backfill(&self.layers[from].name, &self.layers[j].name).increment(1);
        }
    }

    /// The entry for tier `j` copied from `found`: never longer-lived than the source.
    fn backfill_entry(&self, j: usize, found: &Found<V>) -> Result<Entry, CacheError> {
        let now = now_ms();
        let (fresh_until, stale_until) = self.lifetime(j, now, found.entry.meta.negative);
        let src = &found.entry.meta;
        let fresh_until = fresh_until.min(src.fresh_until);
        let stale_until = stale_until.min(src.stale_until).max(fresh_until);
        self.entry_for(
            j,
            found.value.as_ref(),
            src,
            fresh_until,
            stale_until,
            found.entry.envelope(),
        )
    }
}

/// Decode the value of an entry of either form. Negative entries decode to `None`.
pub(crate) fn decode<V: CacheValue>(entry: &Entry) -> Result<Option<Arc<V>>, TierError> {
    if entry.meta.negative {
        return Ok(None);
    }
    match &entry.value {
        Value::Object(any) => any
            .clone()
            .downcast::<V>()
            .map(Some)
            .map_err(|_| TierError::decode("object tier holds a value of another type")),
        Value::Envelope(bytes) => {
            let (meta, at) = envelope::decode_meta(bytes)?;
            Ok(envelope::decode_value::<V>(bytes, &meta, at)?.map(Arc::new))
        }
    }
}

impl<V: CacheValue> Cache<V> {
    /// Look `key` up in the tiers, without loading. A fresh hit in a lower tier is backfilled.
    /// Returns `None` on a miss, a stale-only entry or a negative entry.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Option<Arc<V>> {
        let key = key.as_ref();
        if self.inner.bypass.load(Ordering::Relaxed) {
            return None;
        }
        // An L1 hit is answered here, before any await; the rest of the walk is a boxed future
        // so that this one stays small (it is moved on every call).
        match self.inner.first_ready(key, 0, Counting::Counted) {
            Ready::Hit { value, .. } => value,
            Ready::From(from) => Box::pin(self.get_below(key, from)).await,
        }
    }

    async fn get_below(&self, key: &[u8], from: usize) -> Option<Arc<V>> {
        let walk = self.inner.walk_from(key, 0, Counting::Counted, from).await;
        let found = walk.fresh?;
        self.inner.record_hot(key);
        self.inner.backfill(key, &found, 0).await;
        found.value
    }

    /// Get `key`, loading it with `loader` when no tier has it fresh.
    ///
    /// `Ok(Some(v))`: the value; `Ok(None)`: the origin says there is none (cached as a negative
    /// entry). Concurrent calls for one key share one load. The loader runs in its own task (so
    /// it is `'static`): a caller that gives up does not cancel it for the others.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: impl AsRef<[u8]>,
        loader: F,
    ) -> Result<Option<Arc<V>>, CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.get_or_load_with(key, &CallOptions::default(), loader).await
    }

    /// [`get_or_load`](Self::get_or_load) with per-call options (bypass, skipped tiers, tags).
    pub async fn get_or_load_with<F, Fut, E>(
        &self,
        key: impl AsRef<[u8]>,
        opts: &CallOptions,
        loader: F,
    ) -> Result<Option<Arc<V>>, CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let key = key.as_ref();
        let inner = &self.inner;
        if opts.bypass || inner.bypass.load(Ordering::Relaxed) {
            return Box::pin(inner.load_bypassing(Loader::new(loader))).await;
        }
        let skip = inner.skip_mask(opts);
        // An L1 hit is answered here, before any await and without boxing the loader (only an
        // early refresh needs it); the rest is a boxed future so that this one stays small.
        match inner.first_ready(key, skip, Counting::Counted) {
            Ready::Hit { value, life } => {
                if inner.should_refresh(life) {
                    let key = Bytes::copy_from_slice(key);
                    inner.start_refresh(key, Loader::new(loader), skip, opts.tags.clone());
                }
                Ok(value)
            }
            Ready::From(from) => {
                Box::pin(self.load_below(key, from, skip, opts, Loader::new(loader))).await
            }
        }
    }

    /// `get_or_load_with` past the first tier's fast path: walk on from tier `from`.
    async fn load_below(
        &self,
        key: &[u8],
        from: usize,
        skip: u64,
        opts: &CallOptions,
        loader: Loader<V>,
    ) -> Result<Option<Arc<V>>, CacheError> {
        let inner = &self.inner;
        let walk = inner.walk_from(key, skip, Counting::Counted, from).await;
        inner.record_hot(key);
        if let Some(found) = walk.fresh {
            inner.backfill(key, &found, skip).await;
            if inner.should_refresh(Life::from(&found.entry.meta)) {
                inner.start_refresh(Bytes::copy_from_slice(key), loader, skip, opts.tags.clone());
            }
            return Ok(found.value);
        }
        let key = Bytes::copy_from_slice(key);
        if let Some(stale) = &walk.stale {
            if inner.opts.stale_while_revalidate {
                inner.start_refresh(key, loader, skip, opts.tags.clone());
                inner.metrics.stale_served.increment(1);
                return Ok(stale.value.clone());
            }
        }
        let rx = inner.join_or_start(key, loader, walk.stale.clone(), skip, opts.tags.clone());
        inner.wait(rx, walk.stale.as_ref()).await
    }
}
