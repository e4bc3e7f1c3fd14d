//! The [`Tier`] trait: the one thing the hierarchy knows about a cache level.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backplane::Invalidation;
use crate::entry::{Entry, Lookup, ReadyLookup, Storage};
use crate::error::TierError;
use crate::queue::WriteQueue;
use crate::retime::Retime;
use crate::state::StateStore;

/// Figures a tier reports about itself (for the `tier_entries`, `tier_bytes` and
/// `tier_capacity_bytes` gauges and the CLI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Entries held (may be approximate).
    pub entries: u64,
    /// Bytes used.
    pub bytes: u64,
    /// Bytes it may use; 0 when unbounded or unknown.
    pub capacity_bytes: u64,
}

/// The breaker's state; the value of the `tier_breaker_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// A few probes go through.
    HalfOpen = 1,
    /// No call goes through.
    Open = 2,
}

impl BreakerState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Closed,
            1 => Self::HalfOpen,
            _ => Self::Open,
        }
    }

    /// `closed`, `half_open`, `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// Where a tier is mounted: the labels its own metrics carry, and the hierarchy's bound on each
/// of its calls.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TierContext {
    /// The hierarchy's name (`cache` label).
    pub cache: String,
    /// The tier's name in the hierarchy (`tier` label).
    pub tier: String,
    /// The per-call timeout the hierarchy puts around the tier ([`TierPolicy::timeout`](crate::TierPolicy::timeout)),
    /// counted against the tier's breaker when it fires. A tier made of parts that keep breakers
    /// of their own (the masters of a Redis Cluster) answers for a slow part before it, with a
    /// [`partial`](crate::TierError::partial) error, so that one slow part does not open the
    /// breaker of the whole tier.
    pub timeout: Option<std::time::Duration>,
}

impl TierContext {
    /// Tier `tier` of hierarchy `cache`.
    pub fn new(cache: impl Into<String>, tier: impl Into<String>) -> Self {
        Self { cache: cache.into(), tier: tier.into(), timeout: None }
    }
}

/// One level of the hierarchy: memory, disk, Redis, or a wrapper around one of them.
///
/// Object-safe: the hierarchy holds `Arc<dyn Tier>`. Keys are bytes. A tier stores either decoded
/// objects or envelopes ([`Tier::storage`]); the hierarchy hands it the right form.
///
/// Contract:
/// - `get` never returns an entry past its `stale_until`: classify with [`Entry::lookup_at`].
/// - Bytes that are not a valid envelope are `Err` of kind
///   [`Decode`](crate::TierErrorKind::Decode), never a panic; the hierarchy counts them and
///   treats them as a miss.
/// - An entry is stored no longer than its `meta.stale_until` (the tier's physical TTL).
/// - Errors say what failed: [`TierError::is_tier_failure`] drives the circuit breaker.
#[async_trait]
pub trait Tier: Send + Sync + 'static {
    /// A short name, used as the `tier` metric label by default (`memory`, `disk`, `redis`).
    fn name(&self) -> &str;

    /// Which value form this tier stores.
    fn storage(&self) -> Storage;

    /// Look one key up.
    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError>;

    /// Answer a lookup without waiting, when this tier can (an in-process tier holding
    /// objects): a fresh untagged entry as the [`ObjectEntry`](crate::spi::ObjectEntry) it holds,
    /// a miss, or [`ReadyLookup::Ask`] for anything else ("ask [`get`](Tier::get)"). The
    /// hierarchy tries this first for its first tier, so an L1 hit costs no future, no
    /// allocation and no [`Entry`]. Must agree with `get`: `Fresh` only for what `get` would
    /// return as a fresh [`Lookup::Hit`], `Miss` only for what it would return as
    /// [`Lookup::Miss`]. Default: [`ReadyLookup::Ask`].
    fn get_ready(&self, _key: &[u8]) -> ReadyLookup {
        ReadyLookup::Ask
    }

    /// [`get_ready`](Tier::get_ready) without counting as an access for the tier's eviction
    /// policy: the hierarchy's own second look at a key (inside a flight before it loads, and
    /// while it waits for a fleet lock), whose caller's read was counted already. A policy that
    /// weighs accesses (the memory tier's TinyLFU) would otherwise see every miss twice and
    /// admit keys read once as if they were read twice. Must agree with `get_ready` (`Fresh`
    /// and `Miss` only where it answers them). Default: `get_ready` (a tier without such a
    /// policy).
    fn peek_ready(&self, key: &[u8]) -> ReadyLookup {
        self.get_ready(key)
    }

    /// Look several keys up; the answer has one [`Lookup`] per key, in order.
    /// Default: one `get` after the other.
    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Store one entry, replacing what was there.
    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError>;

    /// Store several entries. Default: one `insert` after the other.
    async fn insert_many(&self, entries: Vec<(Bytes, Entry)>) -> Result<(), TierError> {
        for (key, entry) in entries {
            self.insert(key, entry).await?;
        }
        Ok(())
    }

    /// Remove one key (no error when absent).
    async fn remove(&self, key: &[u8]) -> Result<(), TierError>;

    /// Remove everything this tier holds for this hierarchy.
    async fn clear(&self) -> Result<(), TierError>;

    /// Rewrite the times of the entry held for `key` as `how` says — only when it is the entry
    /// `how` is meant for (see [`Retime`]): no value is read out or written back by the
    /// hierarchy, so a renewal or an expiry moves no value bytes between it and the tier.
    /// Returns whether an entry was rewritten.
    ///
    /// Default: [`retime_by_rewrite`](crate::spi::retime_by_rewrite) — `get`, rewrite the
    /// header (or the object's meta), `insert` — which is right for a tier only this hierarchy
    /// writes. A shared tier does it in one atomic step (the Redis tier: a script), and stores
    /// a tombstone for an [`Expire`](Retime::Expire) of a key it holds nothing usable for.
    async fn retime(&self, key: &[u8], how: Retime) -> Result<bool, TierError> {
        retime_by_rewrite(self, key, how).await
    }

    /// Entries, bytes and capacity, cheaply (called for gauges).
    fn stats(&self) -> TierStats {
        TierStats::default()
    }

    /// True for a tier every instance shares (Redis): backplane invalidations from other instances
    /// are not applied to it (the sender already did), and reconnects do not clear it.
    fn is_shared(&self) -> bool {
        false
    }

    /// Called once when the tier is mounted in a hierarchy, so that its own metrics
    /// (evictions, decode errors found while scanning, ...) carry the right labels.
    fn attach(&self, _ctx: &TierContext) {}

    /// True for a tier that, once [`attach`](Self::attach)ed with a
    /// [`timeout`](TierContext::timeout), answers every call within it by itself, a late
    /// answer being a [`Timeout`](crate::TierErrorKind::Timeout) error (the Redis tier: each
    /// call has a deadline a little below the timeout). The hierarchy then leaves out its own
    /// timer around the tier (a [`TimeoutLayer`](crate::spi::TimeoutLayer) directly around it),
    /// one timer less per call. Wrappers do not forward it (a wrapper may add waits of its
    /// own). Default: false.
    fn bounds_calls(&self) -> bool {
        false
    }

    /// The state of the circuit breaker in front of this tier, when it has one (a
    /// [`BreakerTier`](crate::spi::BreakerTier) says; wrappers pass it through). Default: `None`.
    fn breaker_state(&self) -> Option<BreakerState> {
        None
    }

    /// The tier's durable local state, if it keeps one (the disk tier does): where the
    /// hierarchy persists what it must not forget across restarts (see [`StateStore`]).
    /// Default: `None`.
    fn state_store(&self) -> Option<Arc<dyn StateStore>> {
        None
    }

    /// The tier's durable write-behind queue, if it keeps one (the disk tier does, in its
    /// directory): where [`Cache::write_behind`](crate::Cache::write_behind) makes an origin
    /// write durable before it returns. Opened on the first call; an error says why it could
    /// not be (the cache's build fails with it). Default: `Ok(None)`.
    fn write_queue(&self) -> Result<Option<Arc<dyn WriteQueue>>, TierError> {
        Ok(None)
    }

    /// An invalidation or insert notice (local or remote) was applied: a tier with pending
    /// background writes (the Redis retry queue) drops the ones it makes obsolete.
    /// Default: nothing.
    fn observe(&self, _what: &Invalidation) {}
}

/// What [`Tier::retime`](crate::spi::Tier::retime) does by default: read the entry, rewrite it,
/// store it again. Not atomic: right for a tier only the hierarchy writes, whose stripes order
/// the writes of a key (an in-process or local tier); a shared tier implements `retime` as one
/// atomic step (the Redis tier: a script).
pub async fn retime_by_rewrite<T: Tier + ?Sized>(
    tier: &T,
    key: &[u8],
    how: Retime,
) -> Result<bool, TierError> {
    let entry = match tier.get(key).await? {
        Lookup::Hit(e) | Lookup::Stale(e) => e,
        Lookup::Miss => return Ok(false),
    };
    match how.apply_to(&entry)? {
        Some(retimed) => {
            tier.insert(Bytes::copy_from_slice(key), retimed).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The methods a wrapper around a tier in `self.inner` passes through unchanged: `name`,
/// `storage`, `stats`, `is_shared`, `attach`, `state_store`, `write_queue`, `observe`,
/// `breaker_state`
/// (inside an `impl Tier`); a
/// wrapper that is a breaker answers `breaker_state` itself with
/// `forward_tier_info!(except breaker_state)`.
macro_rules! forward_tier_info {
    () => {
        $crate::tier::forward_tier_info!(except breaker_state);
        fn breaker_state(&self) -> Option<$crate::tier::BreakerState> {
            self.inner.breaker_state()
        }
    };
    (except breaker_state) => {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn storage(&self) -> $crate::entry::Storage {
            self.inner.storage()
        }
        fn stats(&self) -> $crate::tier::TierStats {
            self.inner.stats()
        }
        fn is_shared(&self) -> bool {
            self.inner.is_shared()
        }
        fn attach(&self, ctx: &$crate::tier::TierContext) {
            self.inner.attach(ctx);
        }
        fn state_store(&self) -> Option<std::sync::Arc<dyn $crate::state::StateStore>> {
            self.inner.state_store()
        }
        fn write_queue(
            &self,
        ) -> Result<Option<std::sync::Arc<dyn $crate::queue::WriteQueue>>, $crate::error::TierError>
        {
            self.inner.write_queue()
        }
        fn observe(&self, what: &$crate::backplane::Invalidation) {
            self.inner.observe(what);
        }
    };
}
pub(crate) use forward_tier_info;

/// The future of a forwarded call: the inner tier's own, boxed once by it.
type Forwarded<'a, T> = Pin<Box<dyn Future<Output = Result<T, TierError>> + Send + 'a>>;

/// A shared tier is a tier. Its calls hand back the inner tier's future as it is: written as
/// `async fn`s, each layer boxed the inner box again (an allocation and a copy of the future
/// per call and layer, and a hierarchy's tier sits behind two: ~10 % of an L3 hit's own CPU).
#[async_trait]
impl<T: Tier + ?Sized> Tier for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn storage(&self) -> Storage {
        (**self).storage()
    }
    fn get<'a, 'b, 'f>(&'a self, key: &'b [u8]) -> Forwarded<'f, Lookup>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).get(key)
    }
    fn get_ready(&self, key: &[u8]) -> ReadyLookup {
        (**self).get_ready(key)
    }
    fn peek_ready(&self, key: &[u8]) -> ReadyLookup {
        (**self).peek_ready(key)
    }
    fn get_many<'a, 'b, 'f>(&'a self, keys: &'b [Bytes]) -> Forwarded<'f, Vec<Lookup>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).get_many(keys)
    }
    fn insert<'a, 'f>(&'a self, key: Bytes, entry: Entry) -> Forwarded<'f, ()>
    where
        'a: 'f,
        Self: 'f,
    {
        (**self).insert(key, entry)
    }
    fn insert_many<'a, 'f>(&'a self, entries: Vec<(Bytes, Entry)>) -> Forwarded<'f, ()>
    where
        'a: 'f,
        Self: 'f,
    {
        (**self).insert_many(entries)
    }
    fn remove<'a, 'b, 'f>(&'a self, key: &'b [u8]) -> Forwarded<'f, ()>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).remove(key)
    }
    fn clear<'a, 'f>(&'a self) -> Forwarded<'f, ()>
    where
        'a: 'f,
        Self: 'f,
    {
        (**self).clear()
    }
    fn retime<'a, 'b, 'f>(&'a self, key: &'b [u8], how: Retime) -> Forwarded<'f, bool>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).retime(key, how)
    }
    fn stats(&self) -> TierStats {
        (**self).stats()
    }
    fn is_shared(&self) -> bool {
        (**self).is_shared()
    }
    fn attach(&self, ctx: &TierContext) {
        (**self).attach(ctx);
    }
    fn bounds_calls(&self) -> bool {
        (**self).bounds_calls()
    }
    fn breaker_state(&self) -> Option<BreakerState> {
        (**self).breaker_state()
    }
    fn state_store(&self) -> Option<Arc<dyn StateStore>> {
        (**self).state_store()
    }
    fn write_queue(&self) -> Result<Option<Arc<dyn WriteQueue>>, TierError> {
        (**self).write_queue()
    }
    fn observe(&self, what: &Invalidation) {
        (**self).observe(what);
    }
}
