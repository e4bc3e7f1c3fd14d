//! # tier-memory
//!
//! [`MemoryTier`]: the in-process L1 of a `tier` hierarchy, on moka.
//!
//! It uses `moka::sync::Cache`, whose operations never wait (they are safe to call from async
//! code): a hit is answered through [`Tier::get_ready`] with no future, no allocation and no
//! await. `moka::future::Cache` would make every L1 hit build and poll a future of several
//! hundred bytes; the benches measure the difference (`cargo bench -p tier-benches --bench memory`).
//!
//! - Holds decoded values ([`Value::Object`](tier_core::spi::Value::Object), an `Arc<V>` behind
//!   `Any`): a hit hands back the stored `Arc` — no decode, no copy of the value. Each key holds
//!   an `Arc<`[`ObjectEntry`]`>` (moka clones what it holds on every hit: a pointer, not the
//!   entry), and a fresh untagged hit hands that `Arc` to the hierarchy as it is
//!   ([`Tier::get_ready`]). The `ObjectEntry` is compact (48 bytes: value, creation time and
//!   flags, expiry times as 32-bit offsets, load cost and size inline; tags, validator,
//!   sealing and times that do not fit as offsets — past 49 days — in a box only when
//!   present). Holding the entry itself in moka, which saves two reference-count updates and one pointer chase a
//!   hit, measured 5–8 % *slower* with a 72-byte entry (the `memory` bench, eight code layouts):
//!   moka copies the larger value through several returns.
//! - Bounded by bytes: each entry weighs its key, its encoded size as the hierarchy measured it,
//!   and a fixed overhead ([`ENTRY_OVERHEAD`]).
//! - moka's frequency sketch (TinyLFU admission) sized to the entries held: weighted by bytes,
//!   moka sizes it for a quarter of a full tier's entries, which cost 0.02–0.04 of miss ratio
//!   against moka counting entries; the tier reserves half of moka's capacity once it is 90 %
//!   full, which makes moka size the sketch for the entries held then (no configuration: it
//!   follows the real entry sizes), and re-inserts the reservation before every insert (one
//!   moka insert more per insert, none per hit). Details and figures: the `sizing` module's
//!   source; `scripts/hit-ratio` measures it beside raw moka and libCacheSim.
//! - Per-entry expiry from the entry's own `stale_until` (moka's `Expiry`): an entry never
//!   outlives its physical TTL, and a lookup still classifies it at read time so an entry past
//!   `stale_until` is a miss even before moka evicts it.
//! - Keys are kept inline up to 22 bytes (in moka's own `Arc` of the key), not as `Bytes`:
//!   a 16-byte key costs 40 heap bytes instead of 88.
//! - Memory per entry (`cargo run --release -p tier-benches --bin mem-per-entry`: 1M entries of
//!   a 16-byte key and a `u64`): 368.9 bytes asked per entry (409.2 held, with malloc's
//!   rounding), raw moka configured alike (weigher, expiry, listener, foldhash; a `Bytes` key,
//!   an `Arc<u64>` value) 328.9 asked (377.2 held): +40 asked, +32 held. Where they go: the
//!   `Arc<ObjectEntry>`'s 64 (malloc gives 72) less the 24 the inline key saves against moka's
//!   `Bytes`. (A 64-byte `ObjectEntry` took 384.9; before it was compact, 456.9: its `Meta`
//!   inline took 152 in the `Arc`.) Below that the entry must shrink to 40 bytes (the next
//!   malloc size) or leave its `Arc` (held in moka inline: slower hits, above).
//! - Keys are hashed with foldhash (its quality variant), seeded per tier from the OS's
//!   randomness (through std's `RandomState`), not with moka's default SipHash-1-3, which took
//!   ~7 % of an L1 hit on short keys (the `memory` bench: ~15 ns less a hit). The trade:
//!   foldhash defeats blind collision flooding (an attacker does not know the seed) but, unlike
//!   SipHash, does not claim to withstand an attacker who can time lookups and adapt keys.
//! - Evictions are counted by cause in `tier_evictions_total{cache, tier, cause}`
//!   (`capacity`, `expired`); explicit removals and replacements are not evictions.

use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use foldhash::quality::SeedableRandomState;
use foldhash::SharedSeed;
use moka::notification::RemovalCause;
use moka::Expiry;
use tier_core::metrics::LazyCounter;
use tier_core::spi::{Entry, Lookup, ObjectEntry, ReadyLookup, Tier, TierContext};
use tier_core::{Storage, TierError, TierStats};

mod sizing;
mod store;

pub use store::ENTRY_OVERHEAD;
use store::{weight, Key, Moka};

struct StaleUntil;

impl Expiry<Key, Arc<ObjectEntry>> for StaleUntil {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Arc<ObjectEntry>,
        _at: Instant,
    ) -> Option<Duration> {
        until(entry)
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        entry: &Arc<ObjectEntry>,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        until(entry)
    }
}

/// How long moka keeps `entry`: until its `stale_until`; a placeholder of the reservation, for
/// ever.
fn until(entry: &ObjectEntry) -> Option<Duration> {
    (entry.stale_until() != sizing::NEVER).then(|| {
        Duration::from_millis(entry.stale_until().saturating_sub(tier_core::spi::now_ms()))
    })
}

/// The key hasher of a new tier: foldhash, with its shared and per-tier seeds drawn from std's
/// `RandomState` (keyed from the OS's randomness) rather than from address-space layout.
fn key_hasher() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let random = || std::hash::RandomState::new().hash_one(0x7469_6572_u64);
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random()));
    SeedableRandomState::with_seed(random(), shared)
}

#[derive(Default)]
struct Evictions {
    capacity: OnceLock<LazyCounter>,
    expired: OnceLock<LazyCounter>,
}

/// Builder of a [`MemoryTier`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryTierBuilder {
    max_bytes: u64,
    name: String,
}

impl MemoryTierBuilder {
    /// Capacity in bytes (keys + encoded values + [`ENTRY_OVERHEAD`] each). Default: 64 MiB.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The tier's name. Default: `memory`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Build the tier.
    pub fn build(self) -> MemoryTier {
        let evictions = Arc::new(Evictions::default());
        let listener = evictions.clone();
        let reservation = sizing::Reservation::new(self.max_bytes).map(Arc::new);
        let placeholders = reservation.clone();
        let capacity = reservation.as_ref().map_or(self.max_bytes, |r| r.capacity());
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|key: &Key, entry: &Arc<ObjectEntry>| weight(key, entry))
            .expire_after(StaleUntil)
            .eviction_listener(move |key, _entry, cause| {
                if placeholders.as_ref().is_some_and(|r| r.is_placeholder(key.as_slice())) {
                    return;
                }
                let counter = match cause {
                    RemovalCause::Size => listener.capacity.get(),
                    RemovalCause::Expired => listener.expired.get(),
                    RemovalCause::Explicit | RemovalCause::Replaced => None,
                };
                if let Some(c) = counter {
                    c.increment(1);
                }
            })
            .build_with_hasher(key_hasher());
        MemoryTier { cache, max_bytes: self.max_bytes, name: self.name, evictions, reservation }
    }
}

/// The in-process memory tier.
///
/// ```
/// use std::time::Duration;
/// use tier::{Cache, MemoryTier, TierPolicy};
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let cache: Cache<String> = Cache::builder("greetings")
///         .tier(MemoryTier::builder().max_bytes(1 << 20).build(), TierPolicy::fresh(Duration::from_secs(60)))
///         .build()?;
///     cache.insert("hello", "world".to_string()).await?;
///     assert_eq!(cache.get("hello").await.as_deref().map(String::as_str), Some("world"));
///     Ok(())
/// }
/// ```
pub struct MemoryTier {
    cache: Moka,
    max_bytes: u64,
    name: String,
    evictions: Arc<Evictions>,
    /// The reserved half of moka's capacity that sizes its frequency sketch (`sizing.rs`).
    reservation: Option<Arc<sizing::Reservation>>,
}

impl MemoryTier {
    /// A builder with the defaults (64 MiB, name `memory`).
    pub fn builder() -> MemoryTierBuilder {
        MemoryTierBuilder { max_bytes: 64 << 20, name: "memory".into() }
    }

    /// Run moka's pending maintenance (evictions, expirations) now; useful in tests.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    fn lookup(&self, key: &[u8]) -> Lookup {
        match self.cache.get(key) {
            Some(entry) => entry.to_entry().lookup_at(tier_core::spi::now_ms()),
            None => Lookup::Miss,
        }
    }
}

#[async_trait]
impl Tier for MemoryTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn storage(&self) -> Storage {
        Storage::Objects
    }

    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        Ok(self.lookup(key))
    }

    fn get_ready(&self, key: &[u8]) -> ReadyLookup {
        match self.cache.get(key) {
            Some(entry) => entry.ready_at(tier_core::spi::now_ms()),
            None => ReadyLookup::Miss,
        }
    }

    /// moka's `contains_key` records no access (a `get` records a hit or a miss in the
    /// frequency sketch); moka has no read of a value that records none, so a key that is there
    /// is read with `get`: the hierarchy's second look finds one only when another load landed
    /// it in between.
    fn peek_ready(&self, key: &[u8]) -> ReadyLookup {
        if self.cache.contains_key(key) {
            self.get_ready(key)
        } else {
            ReadyLookup::Miss
        }
    }

    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        if u64::from(entry.size) + key.len() as u64 > self.max_bytes {
            return Err(TierError::too_large(format!(
                "entry of {} bytes is over the memory tier's capacity of {} bytes",
                entry.size, self.max_bytes
            )));
        }
        let expired = entry.meta.stale_until <= tier_core::spi::now_ms();
        let Some(entry) = ObjectEntry::from_entry(entry) else {
            return Err(TierError::new(
                tier_core::TierErrorKind::Rejected,
                "the memory tier stores decoded objects, not envelopes",
            ));
        };
        if expired {
            self.cache.invalidate(&key[..]);
            return Ok(());
        }
        let key = Key::new(&key);
        let weight = weight(&key, &entry);
        if let Some(r) = &self.reservation {
            r.before_insert(&self.cache, u64::from(weight));
        }
        self.cache.insert(key, Arc::new(entry));
        Ok(())
    }

    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        self.cache.invalidate(key);
        Ok(())
    }

    async fn clear(&self) -> Result<(), TierError> {
        self.cache.invalidate_all();
        if let Some(r) = &self.reservation {
            r.after_clear(&self.cache);
        }
        Ok(())
    }

    fn stats(&self) -> TierStats {
        let (entries, bytes) = self.reservation.as_ref().map_or((0, 0), |r| r.held());
        TierStats {
            entries: self.cache.entry_count().saturating_sub(entries),
            bytes: self.cache.weighted_size().saturating_sub(bytes),
            capacity_bytes: self.max_bytes,
        }
    }

    fn attach(&self, ctx: &TierContext) {
        // Lazy: bound to the metrics recorder whenever the service installs it.
        let counter = |cause: &'static str| {
            let labels =
                [("cache", ctx.cache.clone()), ("tier", ctx.tier.clone()), ("cause", cause.into())];
            LazyCounter::new(tier_core::metrics::TIER_EVICTIONS, &labels)
        };
        let _ = self.evictions.capacity.set(counter("capacity"));
        let _ = self.evictions.expired.set(counter("expired"));
    }
}
