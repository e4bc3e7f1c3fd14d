//! Tier writes: the one place where entries reach tiers and leave them, and the stripes that
//! let invalidation win races.
//!
//! Keys are spread over [`STRIPES`] stripes, each a write sequence and a lock. `insert`,
//! `invalidate` and `clear` hold the stripe exclusively and bump its sequence
//! ([`Writer::write_through`], [`Writer::remove_everywhere`], [`Writer::clear_everywhere`]);
//! background writers (a load's write-through, a backfill) hold it shared and write only if the
//! sequence is still the one they saw before they read or loaded
//! ([`Writer::write_if_unchanged`]). So once `invalidate(k)` returns, no tier holds a value of
//! `k` written before it, and no tier is left with a value older than the last `insert(k)`.
//! Removal goes lowest tier first, so an upper tier cannot be backfilled from a lower one in
//! between.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{RwLock, RwLockWriteGuard};

use super::tiers::{ErrorClass, Tiers};
use crate::entry::Entry;
use crate::error::{CacheError, TierError, TierErrorKind};
use crate::retime::Retime;
use crate::tier::Tier;

/// How many stripes the key space is spread over.
pub(super) const STRIPES: usize = 256;

/// A share of the key space: a write sequence and a lock.
#[derive(Default)]
struct Stripe {
    seq: AtomicU64,
    lock: RwLock<()>,
}

/// The stripes of a hierarchy, and the latest `created_at` any insert was given (it may be
/// a millisecond ahead of the clock, above a floor: a floor set "now" must cover it).
pub(super) struct Stripes(Box<[Stripe]>, AtomicU64);

impl Default for Stripes {
    fn default() -> Self {
        Self((0..STRIPES).map(|_| Stripe::default()).collect(), AtomicU64::new(0))
    }
}

impl Stripes {
    /// FNV-1a over the key, then murmur3's 32-bit finalizer. FNV-1a alone is not enough: the
    /// low byte of its state depends only on the low bytes of the key's bytes and of the state
    /// before them, so `% 256` made keys that share a prefix collide ~10× more often than chance
    /// (an insert made inside a loader then moved the loader's own stripe on, and the load did
    /// not write). The finalizer mixes every bit of the state into the low ones.
    fn index(key: &[u8]) -> usize {
        let mut h: u32 = 0x811c_9dc5;
        for b in key {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        h as usize % STRIPES
    }

    fn of(&self, key: &[u8]) -> &Stripe {
        &self.0[Self::index(key)]
    }

    /// The write sequence of `key`'s stripe.
    pub fn seq(&self, key: &[u8]) -> u64 {
        self.of(key).seq.load(Ordering::Acquire)
    }

    /// The `created_at` of an insert at `now` (recorded for [`written_up_to`](Self::written_up_to)).
    ///
    /// Never moved ahead of the clock: it was once moved past the last insert of its stripe
    /// (two inserts of a key in one millisecond told apart), up to a tick ahead, and then another
    /// instance's invalidation or insert in that tick, carrying the clock's instant, was older
    /// than the stored entry and refused by Redis' compare-and-set — the old value stayed. Ties
    /// are settled by the rules instead: an insert and a tombstone win a tie in Redis, a load
    /// loses it, and a notice drops other instances' copies of its own instant.
    pub fn created_at(&self, now: u64) -> u64 {
        self.1.fetch_max(now, Ordering::AcqRel);
        now
    }

    /// A floor for "everything written up to now": now, or the latest `created_at` an insert
    /// was given when that is ahead of the clock (one written just above a floor of this
    /// millisecond: `FleetState::created_now`).
    pub fn written_up_to(&self, now: u64) -> u64 {
        now.max(self.1.load(Ordering::Acquire))
    }

    /// Mark a change of every key without waiting for writers (namespace moves, suspect marks:
    /// writers that race simply write entries that are no longer reachable or fresh).
    pub fn bump_all(&self) {
        for s in self.0.iter() {
            s.seq.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Hold `key`'s stripe exclusively and bump it.
    async fn exclusive(&self, key: &[u8]) -> RwLockWriteGuard<'_, ()> {
        let stripe = self.of(key);
        let guard = stripe.lock.write().await;
        stripe.seq.fetch_add(1, Ordering::AcqRel);
        guard
    }

    /// Hold the stripes of `keys` exclusively and bump each once (a batch insert). They are
    /// taken in stripe order, as [`exclusive_all`](Self::exclusive_all) takes them, and every
    /// other holder holds one stripe at a time: no two holders wait for each other.
    async fn exclusive_many(&self, keys: &[Bytes]) -> Vec<RwLockWriteGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.iter().map(|k| Self::index(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            let stripe = &self.0[i];
            guards.push(stripe.lock.write().await);
            stripe.seq.fetch_add(1, Ordering::AcqRel);
        }
        guards
    }

    /// Hold every stripe exclusively and bump them all (a clear).
    async fn exclusive_all(&self) -> Vec<RwLockWriteGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(STRIPES);
        for s in self.0.iter() {
            guards.push(s.lock.write().await);
            s.seq.fetch_add(1, Ordering::AcqRel);
        }
        guards
    }
}

/// Keep the first real failure; a skipped tier (open breaker, disabled) is not one.
fn first_failure(first: &mut Option<CacheError>, tier: &str, e: TierError) {
    if first.is_none() && ErrorClass::of(&e) != ErrorClass::Skipped {
        *first = Some(CacheError::Tier { tier: tier.to_string(), source: e });
    }
}

/// Writes to the tiers of one hierarchy.
pub(super) struct Writer<'a> {
    pub cache: &'a str,
    pub tiers: &'a Tiers,
    pub stripes: &'a Stripes,
}

impl Writer<'_> {
    /// Write one entry to tier `j`, counting the result.
    async fn write_one(&self, j: usize, key: Bytes, entry: Entry) -> Result<(), TierError> {
        let level = self.tiers.get(j);
        let start = std::time::Instant::now();
        let result = level.tier().insert(key, entry).await;
        level.metrics().write_duration.record(start.elapsed());
        level.count_write(self.cache, &result);
        result
    }

    /// Write `entries` in the background of a read or load that saw sequence `seq`: only if no
    /// insert or invalidation of the key came in between. Returns the tiers written.
    pub async fn write_if_unchanged(
        &self,
        key: &Bytes,
        seq: u64,
        entries: Vec<(usize, Entry)>,
    ) -> Vec<usize> {
        if entries.is_empty() {
            return Vec::new();
        }
        let stripe = self.stripes.of(key);
        let _shared = stripe.lock.read().await;
        if stripe.seq.load(Ordering::Acquire) != seq {
            return Vec::new();
        }
        let mut written = Vec::with_capacity(entries.len());
        for (j, entry) in entries {
            if self.write_one(j, key.clone(), entry).await.is_ok() {
                written.push(j);
            }
        }
        written
    }

    /// Write `entries` now (an insert): hold the key's stripe exclusively, bump it, try every
    /// tier; returns the first failure.
    ///
    /// A shared tier that skips the write (its breaker is open) is not left as it is: it would
    /// keep an older value of the key, and the other instances, told of this insert, drop their
    /// copies and read that older value from it next. The key is removed from it instead (a
    /// removal goes through an open breaker, see [`crate::breaker::BreakerTier`]), and a removal
    /// that fails is this insert's failure.
    pub async fn write_through(
        &self,
        key: &Bytes,
        entries: Vec<(usize, Entry)>,
    ) -> Result<(), CacheError> {
        let _exclusive = self.stripes.exclusive(key).await;
        let mut first = None;
        for (j, entry) in entries {
            let Err(e) = self.write_one(j, key.clone(), entry).await else { continue };
            let level = self.tiers.get(j);
            if level.is_shared() && level.enabled() && e.kind() == TierErrorKind::CircuitOpen {
                if let Err(e) = level.tier().remove(key).await {
                    let why = format!("the write was skipped (breaker open) and the removal of the older value failed: {e}");
                    let e = TierError::new(e.kind(), why);
                    first.get_or_insert(CacheError::Tier {
                        tier: level.name().to_string(),
                        source: e,
                    });
                }
                continue;
            }
            first_failure(&mut first, level.name(), e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Write many keys' entries now (a batch insert): hold their stripes exclusively, then one
    /// `insert_many` per tier (`by_tier`: tier index → its entries), top tier first, as
    /// [`write_through`](Self::write_through) writes one key; returns the first failure.
    pub async fn write_through_many(
        &self,
        keys: &[Bytes],
        by_tier: Vec<(usize, Vec<(Bytes, Entry)>)>,
    ) -> Result<(), CacheError> {
        let _exclusive = self.stripes.exclusive_many(keys).await;
        let mut first = None;
        for (j, entries) in by_tier {
            let level = self.tiers.get(j);
            let n = entries.len() as u64;
            let start = std::time::Instant::now();
            let result = level.tier().insert_many(entries).await;
            level.metrics().write_duration.record(start.elapsed());
            level.count_writes(self.cache, &result, n);
            if let Err(e) = result {
                first_failure(&mut first, level.name(), e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Remove a key from every tier, lowest first (only local tiers when `local_only`).
    /// Returns the first failure; every tier is tried.
    pub async fn remove_everywhere(&self, key: &Bytes, local_only: bool) -> Option<CacheError> {
        let _exclusive = self.stripes.exclusive(key).await;
        self.lowest_first(local_only, |tier| tier.remove(key)).await
    }

    /// Another instance wrote `key` with an entry created at `created_at`: remove it from the
    /// local tiers (lowest first) unless the local copy was created after that (a newer write).
    /// A copy created in the same millisecond is removed too: the clock is coarse (a tick of up
    /// to 4 ms), so an older value written within the tick of the notice's write ties with it —
    /// and a copy of that very write, removed, is only read again from the shared tier.
    /// Returns the first failure; every local tier is tried.
    pub async fn remove_older_local(&self, key: &Bytes, created_at: u64) -> Option<CacheError> {
        let _exclusive = self.stripes.exclusive(key).await;
        let mut first = None;
        for (_, level) in self.tiers.iter().rev().filter(|(_, l)| !l.is_shared()) {
            let newer = match level.tier().get(key).await {
                Ok(lookup) => lookup.entry().is_some_and(|e| e.meta.created_at > created_at),
                Err(_) => false,
            };
            if newer {
                continue;
            }
            if let Err(e) = level.tier().remove(key).await {
                if level.enabled() {
                    first_failure(&mut first, level.name(), e);
                }
            }
        }
        first
    }

    /// Retime `key` in every tier as `how` says (only local tiers when `local_only`), lowest
    /// first, holding its stripe exclusively and bumping it — an expiry wins races as a removal
    /// does. Returns the first failure; every tier is tried.
    pub async fn retime_everywhere(
        &self,
        key: &Bytes,
        local_only: bool,
        how: Retime,
    ) -> Option<CacheError> {
        let _exclusive = self.stripes.exclusive(key).await;
        self.lowest_first(local_only, |tier| Box::pin(tier.retime(key, how).map(|r| r.map(drop))))
            .await
    }

    /// Retime `key` in the tiers of `retimes` in the background of a load that saw sequence
    /// `seq` (a renewal): only if no insert or invalidation of the key came in between. Returns
    /// the tiers whose entry was retimed.
    pub async fn retime_if_unchanged(
        &self,
        key: &Bytes,
        seq: u64,
        retimes: Vec<(usize, Retime)>,
    ) -> Vec<usize> {
        let stripe = self.stripes.of(key);
        let _shared = stripe.lock.read().await;
        if stripe.seq.load(Ordering::Acquire) != seq {
            return Vec::new();
        }
        let mut retimed = Vec::with_capacity(retimes.len());
        for (j, how) in retimes {
            let level = self.tiers.get(j);
            let result = level.tier().retime(key, how).await;
            level.count_write(self.cache, &result.as_ref().map(drop).map_err(Clone::clone));
            if result.is_ok_and(|done| done) {
                retimed.push(j);
            }
        }
        retimed
    }

    /// Remove everything from every tier, lowest first (only local tiers when `local_only`).
    /// Returns the first failure; every tier is tried.
    pub async fn clear_everywhere(&self, local_only: bool) -> Option<CacheError> {
        let _exclusive = self.stripes.exclusive_all().await;
        self.lowest_first(local_only, |tier| tier.clear()).await
    }

    /// Run `op` on every tier (only local tiers when `local_only`), lowest first; the first
    /// failure of an enabled tier.
    async fn lowest_first<'t>(
        &'t self,
        local_only: bool,
        op: impl Fn(&'t dyn Tier) -> BoxFuture<'t, Result<(), TierError>>,
    ) -> Option<CacheError> {
        let mut first = None;
        for (_, level) in self.tiers.iter().rev() {
            if local_only && level.is_shared() {
                continue;
            }
            if let Err(e) = op(level.tier()).await {
                if level.enabled() {
                    first_failure(&mut first, level.name(), e);
                }
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::{Stripes, STRIPES};

    /// Keys that share a long prefix (a URL's key and its variants' keys, as the HTTP layer
    /// makes them) fall on one stripe about as often as chance says, whatever the suffix. With
    /// FNV-1a's low byte alone, whether a URL and URL+suffix collide depended on the suffix
    /// only (the low byte's walk is a permutation per suffix; its fixed points collide): over
    /// these 64 suffixes the worst collided 202 times in 4,000 (~13× chance).
    #[test]
    fn keys_sharing_a_prefix_spread_over_the_stripes_as_chance_does() {
        let urls: Vec<String> =
            (0..4_000).map(|j| format!("GET example.test /items/{j}?page=1")).collect();
        let chance = urls.len() / STRIPES; // 15 (σ ≈ 4)
        for e in 0..64_u64 {
            let suffix = format!("\n\0vary {}\naccept-language: de", 1_764_979_200_000 + e * 7919);
            let same = urls
                .iter()
                .filter(|url| {
                    let variant = format!("{url}{suffix}");
                    Stripes::index(url.as_bytes()) == Stripes::index(variant.as_bytes())
                })
                .count();
            assert!(
                same * 2 < chance * 5,
                "suffix {e}: {same} of {} pairs share a stripe (chance {chance})",
                urls.len()
            );
        }
    }
}
