//! Reading the tiers: what do they hold for a key (or for many), and is it usable? Every entry
//! found goes through the usability rule (`rule.rs`); the first fresh one is the answer and
//! the first stale one above it the fallback.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::hierarchy::Hierarchy;
use super::lifetime::Life;
use super::options::CacheValue;
use super::rule::{usability, Found, Placement, TagVerdict, Usability};
use super::tags;
use super::tiers::{Level, TierSet};
use crate::entry::{Lookup, ReadyLookup};
use crate::metrics::{LookupResult, OBJECT_TIER_TIMING_SAMPLE};
use crate::time::now_ms;

/// What a walk down the tiers found: the first fresh entry, and the first stale one above it.
pub(super) struct Walk<V> {
    pub fresh: Option<Found<V>>,
    pub stale: Option<Found<V>>,
}

impl<V> Default for Walk<V> {
    fn default() -> Self {
        Self { fresh: None, stale: None }
    }
}

impl<V> Walk<V> {
    /// Take in what a tier gave; true once the walk has its fresh entry.
    fn take(&mut self, found: Found<V>, usable: Usability) -> bool {
        match usable {
            Usability::Fresh => self.fresh = Some(found),
            Usability::Stale if self.stale.is_none() => self.stale = Some(found),
            Usability::Stale | Usability::Unusable => {}
        }
        self.fresh.is_some()
    }
}

/// What a batch look found ([`Hierarchy::look_many`]): per key, the answer of the first
/// tier's fast path (`Some(value)`, `value` `None` for a negative entry) or `None`; and for each
/// key without one, its index, its key and the walk of the tiers below.
pub(super) struct Looked<V> {
    pub ready: Vec<Option<Option<Arc<V>>>>,
    pub walked: Vec<(usize, Bytes, Walk<V>)>,
}

/// What the first tier answered without waiting ([`Hierarchy::first_ready`]).
pub(super) enum Ready<V> {
    /// A fresh hit: the value (`None` for a negative entry) and what early refresh reads of the
    /// entry.
    Hit { value: Option<Arc<V>>, life: Life },
    /// Walk on from this tier.
    From(usize),
}

/// Whether a walk counts its lookups in `tier_requests_total` (the re-check inside a flight and
/// the lock wait do not: they are the hierarchy's own second look, not a caller's request).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Counting {
    Counted,
    Quiet,
}

impl<V: CacheValue> Hierarchy<V> {
    /// The value of the first fresh entry, walking the tiers top to bottom (the first one
    /// through [`Hierarchy::first_ready`]); `Some(None)` is a fresh negative entry.
    pub async fn fresh_value(
        &self,
        key: &[u8],
        skip: TierSet,
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
    /// objects and can answer at once ([`Tier::get_ready`](crate::spi::Tier::get_ready)); otherwise
    /// the tier to walk on from. A counted hit is counted and sampled for the hot keys here, a
    /// miss of tier 0 is counted here; anything else is read again by the general walk, which
    /// first takes the key's write sequence.
    ///
    /// The tier answered "fresh" and the entry is untagged, so of the usability rule only the
    /// fleet state's cap (clear floor, suspect floor, catch-up, lease) and the key's namespace
    /// version are left to apply. A quiet
    /// look asks [`Tier::peek_ready`](crate::spi::Tier::peek_ready), which the tier's eviction
    /// policy does not count.
    ///
    /// Always inlined: as a call of its own (LLVM's choice) an L1 hit through `Cache::get` on
    /// one cache of 1,024 keys measured ~2 % slower (the `memory` bench, median over 16 code
    /// layouts; eight caches of 128 keys: no difference).
    #[inline(always)]
    pub fn first_ready(&self, key: &[u8], skip: TierSet, counting: Counting) -> Ready<V> {
        let Some(first) = self.tiers().first() else { return Ready::From(0) };
        if !first.holds_objects() || skip.contains(0) || !first.enabled() {
            return Ready::From(0);
        }
        let counted = counting == Counting::Counted;
        // One draw of the thread-local generator decides both samples of a counted hit: its
        // low bits the timing, its high bits the hot-key record.
        let draw = if counted { crate::time::rand_u64() } else { 1 };
        let start = draw.is_multiple_of(OBJECT_TIER_TIMING_SAMPLE).then(Instant::now);
        // A quiet look is the hierarchy's own second one: it must not count as an access for
        // the tier's eviction policy (the caller's read was counted).
        let result =
            if counted { first.tier().get_ready(key) } else { first.tier().peek_ready(key) };
        if let Some(start) = start {
            first.metrics().get_duration.record(start.elapsed());
        }
        match result {
            // A key of a namespace version moved past since the caller built it is of a
            // dropped namespace (the general walk's rule, `judge`): never served.
            ReadyLookup::Fresh(hit)
                if self.fleet().cap(hit.created_at(), Placement::Local) == Usability::Fresh
                    && !self.keys().is_passed(key) =>
            {
                let value = if hit.is_negative() {
                    None
                } else {
                    match hit.value().clone().downcast::<V>() {
                        Ok(v) => Some(v),
                        // Another type under this key (a tier shared by two hierarchies): the
                        // general walk counts it as a decode error.
                        Err(_) => return Ready::From(0),
                    }
                };
                if counted {
                    first.metrics().get[self.category(key)].add(LookupResult::Hit, 1);
                    self.sample_hot(key, draw >> 32);
                }
                Ready::Hit { value, life: Life::from(&*hit) }
            }
            ReadyLookup::Miss => {
                if counted {
                    first.metrics().get[self.category(key)].add(LookupResult::Miss, 1);
                }
                Ready::From(1)
            }
            ReadyLookup::Fresh(_) | ReadyLookup::Ask => Ready::From(0),
        }
    }

    /// Walk the tiers from `from` down: the first fresh entry, and the first stale one above it.
    pub async fn walk_from(
        &self,
        key: &[u8],
        skip: TierSet,
        counting: Counting,
        from: usize,
    ) -> Walk<V> {
        let now = now_ms();
        let seq = self.stripes().seq(key);
        let category = if counting == Counting::Counted { self.category(key) } else { 0 };
        let mut walk = Walk::default();
        for (i, level) in self.tiers().iter().skip(from) {
            let count = |r: LookupResult| {
                if counting == Counting::Counted {
                    level.metrics().get[category].add(r, 1);
                }
            };
            if skip.contains(i) || !level.enabled() {
                count(LookupResult::Skipped);
                continue;
            }
            let start = (counting == Counting::Counted && level.should_time()).then(Instant::now);
            let result = level.tier().get(key).await;
            if let Some(start) = start {
                level.metrics().get_duration.record(start.elapsed());
            }
            let (result, found) = match result {
                Ok(lookup) => self.judge(i, key, seq, lookup, now, counting).await,
                Err(e) => (level.read_failed(self.name(), &e, counting == Counting::Counted), None),
            };
            count(result);
            if let Some((found, usable)) = found {
                if walk.take(found, usable) {
                    return walk;
                }
            }
        }
        walk
    }

    /// What tier `i`'s answer for a key counts as, and the entry with its verdict when it is
    /// usable: the usability rule, then the value decoded.
    async fn judge(
        &self,
        i: usize,
        key: &[u8],
        seq: u64,
        lookup: Lookup,
        now: u64,
        counting: Counting,
    ) -> (LookupResult, Option<(Found<V>, Usability)>) {
        let Some(entry) = lookup.into_entry() else { return (LookupResult::Miss, None) };
        let level = self.tiers().get(i);
        let placement = Placement::of(level.is_shared());
        let rule = |tags| usability(&entry.meta, placement, self.fleet(), tags, now);
        // The tag stamps are looked up only for an entry the rest of the rule lets through.
        let mut usable = rule(TagVerdict::Untagged);
        if usable != Usability::Unusable && entry.meta.tags.is_some() {
            let guard = &self.guards().generations;
            usable = rule(tags::verdict(self.generations(), guard, &entry.meta, self.name()).await);
        }
        // A key built with a namespace version this instance has moved past since (the read
        // built it, then a move was applied while the tier answered) is of a dropped namespace,
        // whatever the lease and the unread flag say now: they are judged at the answer, the
        // key's version at the read's start. The checker (standalone seeds 52, 62): a Redis hit
        // of the old namespace 109–357 ms after a move, the read held by a connection fault
        // until the reader was back, had delivered the move and proved delivery again.
        if usable != Usability::Unusable && self.keys().is_passed(key) {
            usable = Usability::Unusable;
        }
        if usable != Usability::Unusable
            && self.fleet().namespace_uncertain(placement == Placement::Shared, now)
        {
            let guard = &self.guards().namespace;
            let ticket = self.fleet().namespace_ticket();
            let namespace =
                tags::namespace_verdict(self.generations(), guard, self.keys(), key, self.name());
            // A clear this instance may have missed too (the same cut backplane): the store's
            // clear floor, read beside the version.
            let floor = self.guards().floor.run(self.generations().floor(self.name()));
            let ((verdict, read), floor) = tokio::join!(namespace, floor);
            match floor {
                Ok(floor) => self.fleet().raise_floor(floor),
                Err(e) => {
                    tracing::debug!(cache = %self.name(), error = %e, "clear floor unavailable");
                    usable = usable.min(Usability::Stale);
                }
            }
            if let Some(v) = read {
                // This instance missed a move, or had not read the version yet: build keys of
                // the store's namespace from now on.
                if v > self.keys().version() {
                    self.keys().set_version(v);
                    self.stripes().bump_all();
                    // And tell the others (the listener publishes it within 50 ms, any notice
                    // of this instance after it): moving on silently split the fleet — this
                    // instance's writes went to keys the others never read.
                    self.untold_namespace().fetch_max(v, std::sync::atomic::Ordering::AcqRel);
                }
                self.fleet().namespace_read(ticket);
            }
            usable = usable.min(rule(verdict));
        }
        let result = match usable {
            Usability::Fresh => LookupResult::Hit,
            Usability::Stale => LookupResult::Stale,
            Usability::Unusable => return (LookupResult::Miss, None),
        };
        match self.sealer().decode::<V>(self.name(), key, &entry) {
            Ok(value) => (result, Some((Found { level: i, seq, entry, value }, usable))),
            Err(e) => (level.read_failed(self.name(), &e, counting == Counting::Counted), None),
        }
    }

    /// Look many keys up as [`first_ready`](Self::first_ready) and
    /// [`walk_from`](Self::walk_from) look one up: each key first through the first tier's
    /// fast path, then the keys left over through one `get_many` per tier below where their
    /// fast path stopped, each with its write sequence taken before that walk (as a single
    /// read takes it). A hot L1 answers a batch as cheaply as single reads: before, a batch of
    /// 100 L1 hits went through the general, awaiting walk (copying each key, building a walk
    /// per key) and took ~2× as long as 100 `get`s.
    pub async fn look_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Looked<V> {
        let mut ready = Vec::with_capacity(keys.len());
        let (mut rest, mut from) = (Vec::new(), Vec::new());
        for (i, key) in keys.iter().enumerate() {
            match self.first_ready(key.as_ref(), TierSet::EMPTY, Counting::Counted) {
                Ready::Hit { value, .. } => ready.push(Some(value)),
                Ready::From(f) => {
                    ready.push(None);
                    rest.push(i);
                    from.push(f);
                }
            }
        }
        if rest.is_empty() {
            return Looked { ready, walked: Vec::new() };
        }
        let rest_keys: Vec<Bytes> =
            rest.iter().map(|i| Bytes::copy_from_slice(keys[*i].as_ref())).collect();
        let seqs: Vec<u64> = rest_keys.iter().map(|k| self.stripes().seq(k)).collect();
        let walks = self.walk_many(&rest_keys, &seqs, &from).await;
        let walked = rest.into_iter().zip(rest_keys).zip(walks).map(|((i, k), w)| (i, k, w));
        Looked { ready, walked: walked.collect() }
    }

    /// Walk the tiers for many keys (one `get_many` per tier, for the keys still without a
    /// fresh entry whose walk starts at or above it: key `i` from tier `from[i]`).
    async fn walk_many(&self, keys: &[Bytes], seqs: &[u64], from: &[usize]) -> Vec<Walk<V>> {
        let mut walks: Vec<Walk<V>> = keys.iter().map(|_| Walk::default()).collect();
        for (j, level) in self.tiers().iter() {
            let open: Vec<usize> =
                (0..keys.len()).filter(|i| from[*i] <= j && walks[*i].fresh.is_none()).collect();
            if open.is_empty() {
                // Keys whose walk starts lower (after an L1 miss) may still be waiting.
                continue;
            }
            let count = |i: usize, r: LookupResult| {
                level.metrics().get[self.category(&keys[i])].add(r, 1);
            };
            let Some(lookups) = self.get_many_of(level, keys, &open).await else {
                continue;
            };
            let lookups = match lookups {
                Ok(lookups) => lookups,
                Err(r) => {
                    open.iter().for_each(|i| count(*i, r));
                    continue;
                }
            };
            let now = now_ms();
            for (i, lookup) in open.into_iter().zip(lookups) {
                let (result, found) =
                    self.judge(j, &keys[i], seqs[i], lookup, now, Counting::Counted).await;
                count(i, result);
                if let Some((found, usable)) = found {
                    walks[i].take(found, usable);
                }
            }
        }
        walks
    }

    /// One `get_many` of the keys at `open` in `level`: its lookups, in order; `Err` with what
    /// every key counts as when the tier failed; `None` when the tier is switched off (each key
    /// counted as skipped).
    async fn get_many_of(
        &self,
        level: &Level,
        keys: &[Bytes],
        open: &[usize],
    ) -> Option<Result<Vec<Lookup>, LookupResult>> {
        if !level.enabled() {
            for i in open {
                level.metrics().get[self.category(&keys[*i])].add(LookupResult::Skipped, 1);
            }
            return None;
        }
        let batch: Vec<Bytes> = open.iter().map(|i| keys[*i].clone()).collect();
        let start = Instant::now();
        let result = level.tier().get_many(&batch).await;
        level.metrics().get_duration.record(start.elapsed());
        Some(match result {
            Ok(lookups) if lookups.len() == batch.len() => Ok(lookups),
            Ok(_) => Err(LookupResult::Error),
            Err(e) => Err(level.read_failed(self.name(), &e, true)),
        })
    }
}
