//! Entry lifetimes and construction: how long an entry lives in each tier (its policy from
//! now, jittered; a copy never longer than its source had left), the entry each tier is
//! handed (an object or the envelope, encoded once), and when a fresh entry is renewed early.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::options::{CacheValue, EarlyRefresh, Lifetimes};
use super::rule::Found;
use super::sealer::Sealer;
use super::tiers::{Level, TierSet, Tiers};
use crate::entry::{Entry, ObjectEntry, Storage, Value};
use crate::envelope::{self, Meta, TagStamp};
use crate::error::CacheError;
use crate::policy::TierPolicy;
use crate::retime::Retime;
use crate::time::{after_ms, now_ms, rand_unit};

/// `d` scaled by a random factor in `[1 - jitter, 1 + jitter]`, saturating at `Duration::MAX`;
/// `jitter` is clamped to `[0, 1]` (NaN counts as 0: the builder refuses both anyway).
pub(super) fn jittered(d: Duration, jitter: f64) -> Duration {
    let j = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
    if j == 0.0 || d.is_zero() {
        return d;
    }
    let factor = (1.0 - j + 2.0 * j * rand_unit()).max(0.0);
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// `d` scaled by `ratio` (in `(0, 1]`), saturating.
fn scaled(d: Duration, ratio: f64) -> Duration {
    if ratio >= 1.0 {
        return d;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * ratio).unwrap_or(Duration::MAX)
}

/// Lifetime of a new entry under `policy` from `now`, jittered: (fresh_until, stale_until).
/// Lifetimes `set` by the call or the loader replace the policy's, scaled by `ratio` (this
/// tier's fresh policy over the longest one of the hierarchy: tiers keep their proportions);
/// the tier's `max_lifetime` caps fresh, then fresh + stale.
fn lifetime(
    policy: &TierPolicy,
    now: u64,
    negative: bool,
    set: Lifetimes,
    ratio: f64,
) -> (u64, u64) {
    let ttl = &policy.ttl;
    let (fresh, stale) = if negative {
        let fresh = set.fresh.map_or(policy.negative_ttl.min(ttl.fresh), |f| scaled(f, ratio));
        (fresh, Duration::ZERO)
    } else {
        (
            set.fresh.map_or(ttl.fresh, |f| scaled(f, ratio)),
            set.stale.map_or(ttl.stale, |s| scaled(s, ratio)),
        )
    };
    let (fresh, stale) = (jittered(fresh, ttl.jitter), jittered(stale, ttl.jitter));
    let (fresh, stale) = match policy.max_lifetime {
        Some(max) => (fresh.min(max), stale.min(max.saturating_sub(fresh.min(max)))),
        None => (fresh, stale),
    };
    let fresh_until = after_ms(now, fresh);
    (fresh_until, after_ms(fresh_until, stale))
}

/// The meta of a value created at `created_at` — for a load, the instant it started; for an
/// insert, the instant it was called (times are set per tier).
pub(super) fn new_meta(
    created_at: u64,
    negative: bool,
    tags: Option<Arc<[TagStamp]>>,
    load_cost: Duration,
) -> Meta {
    Meta {
        created_at,
        load_cost_us: u32::try_from(load_cost.as_micros()).unwrap_or(u32::MAX),
        negative,
        tags,
        ..Meta::default()
    }
}

/// Builds the entries the tiers are handed.
pub(super) struct Entries<'a> {
    pub tiers: &'a Tiers,
    pub sealer: &'a Sealer,
    /// The cache's name (bound into sealed envelopes with the key).
    pub cache: &'a str,
}

impl Entries<'_> {
    /// The entry for `level` holding `value` with `meta`'s flags and tags and the given times.
    /// `envelope` is an already encoded form to reuse (its times are rewritten).
    fn entry_for<V: CacheValue>(
        &self,
        key: &[u8],
        level: &Level,
        value: Option<&Arc<V>>,
        meta: &Meta,
        (fresh_until, stale_until): (u64, u64),
        envelope: Option<&Bytes>,
    ) -> Result<Entry, CacheError> {
        let meta = Meta { fresh_until, stale_until, ..meta.clone() };
        let bytes = match envelope {
            Some(b) => envelope::with_times(b, fresh_until, stale_until)
                .map_err(|e| CacheError::Encode(e.to_string()))?,
            None => self
                .sealer
                .encode(self.cache, key, &meta, value.map(|v| v.as_ref()))
                .map_err(CacheError::Encode)?,
        };
        let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let value = match level.storage() {
            Storage::Envelopes => Value::Envelope(bytes),
            Storage::Objects => match value {
                Some(v) => Value::Object(v.clone()),
                None => Value::Object(Arc::new(())),
            },
        };
        Ok(Entry { meta, value, size })
    }

    /// Entries of a freshly loaded or inserted value for every enabled, admitting tier not in
    /// `skip`. The value is encoded once; each tier gets its own (jittered) times from
    /// `meta.created_at`.
    pub fn of_value<V: CacheValue>(
        &self,
        key: &[u8],
        value: Option<&Arc<V>>,
        meta: &Meta,
        skip: TierSet,
        set: Lifetimes,
    ) -> Result<Vec<(usize, Entry)>, CacheError> {
        let encoded = self
            .sealer
            .encode(self.cache, key, meta, value.map(|v| v.as_ref()))
            .map_err(CacheError::Encode)?;
        let mut out = Vec::with_capacity(self.tiers.len());
        for (j, level) in self.tiers.iter() {
            if skip.contains(j) || !level.enabled() {
                continue;
            }
            let max = level.policy().max_value_size;
            if max.is_some_and(|m| encoded.len() as u64 > u64::from(m)) {
                continue;
            }
            let ratio = self.ratio(level);
            let times = lifetime(level.policy(), meta.created_at, meta.negative, set, ratio);
            out.push((j, self.entry_for(key, level, value, meta, times, Some(&encoded))?));
        }
        Ok(out)
    }

    /// The entry for tier `j` copied from `found` (a backfill): never longer-lived than the
    /// source.
    pub fn copy_of<V: CacheValue>(
        &self,
        key: &[u8],
        j: usize,
        found: &Found<V>,
    ) -> Result<Entry, CacheError> {
        let level = self.tiers.get(j);
        let src = &found.entry.meta;
        let (fresh_until, stale_until) =
            lifetime(level.policy(), now_ms(), src.negative, Lifetimes::default(), 1.0);
        let fresh_until = fresh_until.min(src.fresh_until);
        let stale_until = stale_until.min(src.stale_until).max(fresh_until);
        let envelope = found.entry.envelope();
        self.entry_for(key, level, found.value.as_ref(), src, (fresh_until, stale_until), envelope)
    }

    /// This tier's fresh policy over the longest of the hierarchy (in `(0, 1]`): how lifetimes
    /// set by a call or a loader are graduated.
    fn ratio(&self, level: &Level) -> f64 {
        let longest = self.tiers.iter().map(|(_, l)| l.policy().ttl.fresh).max();
        match longest {
            Some(longest) if !longest.is_zero() => {
                (level.policy().ttl.fresh.as_secs_f64() / longest.as_secs_f64()).clamp(0.0, 1.0)
            }
            _ => 1.0,
        }
    }

    /// The renewal of the entry `meta` describes (the origin said "not modified"), created
    /// anew at `renewed_at`, for every enabled tier not in `skip`, each with its own times.
    pub fn renewals(
        &self,
        meta: &Meta,
        renewed_at: u64,
        skip: TierSet,
        set: Lifetimes,
    ) -> Vec<(usize, Retime)> {
        self.tiers
            .iter()
            .filter(|(j, l)| !skip.contains(*j) && l.enabled())
            .map(|(j, level)| {
                let ratio = self.ratio(level);
                let (fresh_until, stale_until) =
                    lifetime(level.policy(), renewed_at, meta.negative, set, ratio);
                let how = Retime::Renew {
                    created_at: meta.created_at,
                    renewed_at,
                    fresh_until,
                    stale_until,
                };
                (j, how)
            })
            .collect()
    }

    /// Entries that keep serving `stale` for `throttle` without calling a failing origin: fresh
    /// again in the local object tiers (not in `skip`), never beyond its own `stale_until`.
    pub fn throttled<V: CacheValue>(
        &self,
        key: &[u8],
        stale: &Found<V>,
        throttle: Duration,
        skip: TierSet,
    ) -> Vec<(usize, Entry)> {
        let m = &stale.entry.meta;
        let times = (after_ms(now_ms(), throttle).min(m.stale_until), m.stale_until);
        self.tiers
            .iter()
            .filter(|(j, l)| {
                l.holds_objects() && !l.is_shared() && !skip.contains(*j) && l.enabled()
            })
            .filter_map(|(j, l)| {
                let entry = self.entry_for(key, l, stale.value.as_ref(), m, times, None).ok()?;
                Some((j, entry))
            })
            .collect()
    }
}

/// What early refresh reads of a fresh entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Life {
    pub created_at: u64,
    pub fresh_until: u64,
    pub load_cost_us: u32,
}

impl From<&Meta> for Life {
    fn from(m: &Meta) -> Self {
        Self { created_at: m.created_at, fresh_until: m.fresh_until, load_cost_us: m.load_cost_us }
    }
}

impl From<&ObjectEntry> for Life {
    fn from(e: &ObjectEntry) -> Self {
        Self {
            created_at: e.created_at(),
            fresh_until: e.fresh_until(),
            load_cost_us: e.load_cost_us(),
        }
    }
}

/// Should a fresh entry be refreshed now? Reads the clock only when early refresh is on.
pub(super) fn refresh_due(refresh: Option<EarlyRefresh>, life: Life) -> bool {
    match refresh {
        None => false,
        Some(EarlyRefresh::Ahead(ratio)) => {
            let span = life.fresh_until.saturating_sub(life.created_at) as f64;
            now_ms() as f64 >= life.created_at as f64 + ratio.clamp(0.0, 1.0) * span
        }
        Some(EarlyRefresh::XFetch { beta }) => {
            let cost_ms = f64::from(life.load_cost_us) / 1000.0;
            let early = -cost_ms * beta * rand_unit().ln();
            now_ms() as f64 + early >= life.fresh_until as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let d = Duration::from_secs(100);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let j = jittered(d, 0.1);
            assert!(j >= Duration::from_secs(90) && j <= Duration::from_secs(110), "{j:?}");
            seen.insert(j.as_millis());
        }
        assert!(seen.len() > 100, "jitter should spread values, got {}", seen.len());
        assert_eq!(jittered(d, 0.0), d);
    }

    #[test]
    fn jitter_saturates_and_ignores_nan() {
        // A factor above 1 saturates at MAX instead of panicking.
        for j in [0.1, 1.0, 5.0, f64::INFINITY] {
            let _ = jittered(Duration::MAX, j);
        }
        assert!(jittered(Duration::MAX, 0.1) >= Duration::from_secs(u64::MAX / 10 * 8));
        assert_eq!(jittered(Duration::from_secs(7), f64::NAN), Duration::from_secs(7));
    }
}
