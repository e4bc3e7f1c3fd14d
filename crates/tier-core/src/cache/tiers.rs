//! The tier set: each tier as the hierarchy mounted it ([`Level`]: wrapped in its policy's
//! layers, named, with its metric handles), the set of them ([`Tiers`]), a set of tiers by
//! index ([`TierSet`]), and how the hierarchy reads a tier's error ([`ErrorClass`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::options::CallOptions;
use crate::entry::Storage;
use crate::error::{TierError, TierErrorKind};
use crate::metrics::{LookupResult, TierMetrics, OBJECT_TIER_TIMING_SAMPLE};
use crate::policy::TierPolicy;
use crate::sketch::FrequencySketch;
use crate::tier::{BreakerState, Tier, TierStats};

/// The most tiers a hierarchy may have (a [`TierSet`] is 64 bits).
pub(super) const MAX_TIERS: usize = 64;

/// A set of tiers by index (tier `i` is bit `i`), e.g. the tiers a call skips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TierSet(u64);

impl TierSet {
    /// No tier.
    pub const EMPTY: Self = Self(0);

    /// Is tier `i` in the set?
    #[inline]
    pub fn contains(self, i: usize) -> bool {
        i < MAX_TIERS && self.0 & (1 << i) != 0
    }

    /// The set with tier `i` added (an index past [`MAX_TIERS`] adds nothing).
    #[must_use]
    pub fn with(self, i: usize) -> Self {
        if i < MAX_TIERS {
            Self(self.0 | 1 << i)
        } else {
            self
        }
    }

    /// The tiers in either set.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The indexes in the set, lowest first.
    #[cfg(test)]
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_TIERS).filter(move |i| self.contains(*i))
    }
}

impl FromIterator<usize> for TierSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, Self::with)
    }
}

/// What an operator sees of one tier.
#[derive(Debug, Clone)]
#[non_exhaustive]
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

/// One tier as mounted in a hierarchy.
pub(super) struct Level {
    tier: Arc<dyn Tier>,
    name: String,
    policy: TierPolicy,
    storage: Storage,
    shared: bool,
    enabled: AtomicBool,
    metrics: TierMetrics,
    frequency: Option<FrequencySketch>,
}

impl Level {
    /// A mounted tier: `tier` is already wrapped in its layers.
    pub fn new(
        tier: Arc<dyn Tier>,
        name: String,
        policy: TierPolicy,
        metrics: TierMetrics,
        frequency: Option<FrequencySketch>,
    ) -> Self {
        let (storage, shared) = (tier.storage(), tier.is_shared());
        let enabled = AtomicBool::new(true);
        Self { tier, name, policy, storage, shared, enabled, metrics, frequency }
    }

    /// The tier, wrapped in its layers.
    #[inline]
    pub fn tier(&self) -> &dyn Tier {
        &*self.tier
    }

    /// Its name in the hierarchy (the `tier` label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its policy.
    pub fn policy(&self) -> &TierPolicy {
        &self.policy
    }

    /// Which form of value it stores.
    #[inline]
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Does it hold decoded objects (an in-process tier)?
    #[inline]
    pub fn holds_objects(&self) -> bool {
        self.storage == Storage::Objects
    }

    /// Is it shared by every instance of the fleet?
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The operator switch.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Switch it on or off.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Its metric handles.
    #[inline]
    pub fn metrics(&self) -> &TierMetrics {
        &self.metrics
    }

    /// Its hit counter for [`BackfillPolicy::OnHits`](crate::BackfillPolicy::OnHits).
    pub fn frequency(&self) -> Option<&FrequencySketch> {
        self.frequency.as_ref()
    }

    /// Whether to time this call (object tiers are sampled, see [`crate::metrics`]; the sample
    /// is drawn from a thread-local generator, so an L1 hit touches no shared counter for it).
    pub fn should_time(&self) -> bool {
        match self.storage {
            Storage::Envelopes => true,
            Storage::Objects => crate::time::rand_u64().is_multiple_of(OBJECT_TIER_TIMING_SAMPLE),
        }
    }

    /// What an operator sees of it.
    pub fn info(&self) -> TierInfo {
        TierInfo {
            name: self.name.clone(),
            storage: self.storage,
            shared: self.shared,
            enabled: self.enabled(),
            breaker: self.tier.breaker_state(),
            stats: self.tier.stats(),
        }
    }

    /// Count a failed read and say what it counts as (see [`ErrorClass`]). An uncounted read
    /// (`counted` false: the hierarchy's own second look, inside a flight or waiting for the
    /// fleet lock) counts no decode error — the caller's walk before it met the same bytes and
    /// counted them, and one damaged entry is one error.
    pub fn read_failed(&self, cache: &str, e: &TierError, counted: bool) -> LookupResult {
        let class = ErrorClass::of(e);
        match class {
            ErrorClass::Decode if !counted => {}
            ErrorClass::Decode => {
                self.metrics.decode_errors.increment(1);
                if let Some(suppressed) = self.metrics.decode_events.admit() {
                    tracing::warn!(target: "tier", cache, tier = %self.name, error = %e, suppressed, "entry did not decode: a miss (bytes of another writer or format, or damage)");
                }
            }
            ErrorClass::Failure => {
                tracing::debug!(cache, tier = %self.name, error = %e, "tier error");
            }
            ErrorClass::Skipped | ErrorClass::Timeout => {}
        }
        class.as_lookup()
    }

    /// Count the result of a write.
    pub fn count_write(&self, cache: &str, result: &Result<(), TierError>) {
        self.count_writes(cache, result, 1);
    }

    /// Count the result of a write of `n` entries (a batch: one result for all).
    pub fn count_writes(&self, cache: &str, result: &Result<(), TierError>, n: u64) {
        let m = &self.metrics;
        match result.as_ref().map_err(ErrorClass::of) {
            Ok(()) => m.write_ok.increment(n),
            Err(ErrorClass::Skipped) => m.write_skipped.increment(n),
            Err(ErrorClass::Timeout) => m.write_timeout.increment(n),
            Err(ErrorClass::Decode | ErrorClass::Failure) => {
                m.write_error.increment(n);
                if let Err(e) = result {
                    tracing::debug!(cache, tier = %self.name, error = %e, "write failed");
                }
            }
        }
    }

    /// Update its gauges.
    pub fn report_gauges(&self) {
        let s = self.tier.stats();
        self.metrics.entries.set(s.entries as f64);
        self.metrics.bytes.set(s.bytes as f64);
        self.metrics.capacity.set(s.capacity_bytes as f64);
    }
}

/// How the hierarchy reads a tier's error: the one mapping from a [`TierErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorClass {
    /// The tier was not called (open breaker, disabled): not a failure of the operation.
    Skipped,
    /// The tier did not answer in time.
    Timeout,
    /// The stored bytes are not an entry: a miss for a read.
    Decode,
    /// Anything else: the tier failed.
    Failure,
}

impl ErrorClass {
    /// The class of `e`.
    pub fn of(e: &TierError) -> Self {
        match e.kind() {
            TierErrorKind::CircuitOpen | TierErrorKind::Disabled => Self::Skipped,
            TierErrorKind::Timeout => Self::Timeout,
            TierErrorKind::Decode => Self::Decode,
            _ => Self::Failure,
        }
    }

    /// What a read that failed so counts as in `tier_requests_total`.
    pub fn as_lookup(self) -> LookupResult {
        match self {
            Self::Skipped => LookupResult::Skipped,
            Self::Timeout => LookupResult::Timeout,
            Self::Decode => LookupResult::Miss,
            Self::Failure => LookupResult::Error,
        }
    }
}

/// The tiers of a hierarchy, top (L1) to bottom; at most [`MAX_TIERS`].
pub(super) struct Tiers(Vec<Level>);

impl Tiers {
    /// The tiers, top first (the builder checks the count).
    pub fn new(levels: Vec<Level>) -> Self {
        Self(levels)
    }

    /// The first tier (L1).
    #[inline]
    pub fn first(&self) -> Option<&Level> {
        self.0.first()
    }

    /// Tier `i`; the caller holds an index of this set.
    pub fn get(&self, i: usize) -> &Level {
        &self.0[i]
    }

    /// The tiers with their indexes, top first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (usize, &Level)> + ExactSizeIterator {
        self.0.iter().enumerate()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The tier named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Level> {
        self.0.iter().find(|l| l.name == name)
    }

    /// Their names, top first.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|l| l.name.clone()).collect()
    }

    /// The tiers a call skips.
    pub fn skipped_by(&self, opts: &CallOptions) -> TierSet {
        opts.skip_tiers
            .iter()
            .filter_map(|name| self.0.iter().position(|l| &l.name == name))
            .collect()
    }

    /// The tiers a flight's second look skips. A flight leaves the map only after writing every
    /// tier, and it writes the in-process ones first: a caller that missed just before a
    /// previous flight wrote finds the value in an in-process tier when the hierarchy has one
    /// (so remote tiers are skipped: a slow one is not waited on twice), else in any.
    pub fn recheck_skips(&self) -> TierSet {
        if !self.0.iter().any(Level::holds_objects) {
            return TierSet::EMPTY;
        }
        self.iter().filter(|(_, l)| !l.holds_objects()).map(|(i, _)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_set_holds_what_was_added_and_nothing_past_its_bound() {
        let set: TierSet = [0, 3, 63, 64, 200].into_iter().collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 3, 63]);
        assert!(set.contains(3) && !set.contains(1) && !set.contains(64));
        assert_eq!(TierSet::EMPTY.with(1).union(TierSet::EMPTY.with(2)).iter().count(), 2);
    }
}
