//! Single-key reads: `get` (lookup only) and `get_or_load` (load when no tier has the key
//! fresh), as callers of the walk (`lookup.rs`), backfill, early refresh and the loader run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::Instrument;

use super::context::{LoadContext, Loaded};
use super::handle::Cache;
use super::lifetime::{refresh_due, Life};
use super::load::Renewal;
use super::loader::Loader;
use super::lookup::{Counting, Ready};
use super::options::{CacheValue, CallOptions, CallSettings};
use super::rule::{stale_servable, Found};
use super::tiers::TierSet;
use super::trace::{Answered, ReadSpan};
use crate::error::{BoxError, CacheError};
use crate::time::now_ms;

/// How long ago `created_at` (Unix ms) was.
fn age_of(created_at: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(created_at))
}

/// What [`Cache::try_get`] found: for an `Age` or `Cache-Status` header, or a decision of the
/// caller's own.
#[derive(Debug)]
#[non_exhaustive]
pub struct CacheHit<V> {
    /// The value; `None` for a negative entry (the origin had said there is none).
    pub value: Option<Arc<V>>,
    /// Fresh (served as is), or stale (past its freshness, or expired: servable as a fallback).
    pub fresh: bool,
    /// How long ago the value was loaded or inserted (its `created_at`; renewed by a "not
    /// modified" answer; set to the expiry by [`Cache::expire`]).
    pub age: Duration,
    /// The name of the tier that answered.
    pub tier: String,
}

impl<V: CacheValue> Cache<V> {
    /// What the tiers hold for `key`, without loading: the first fresh entry (a hit in a lower
    /// tier is backfilled, as by [`get`](Self::get)), else the first stale one that could be
    /// served (within fail-safe's `max_stale_age` when the cache has fail-safe), with whether
    /// it is fresh, its age and the tier that answered. `None`: nothing usable.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tier_core::testing::MapTier;
    /// use tier_core::{Cache, TierPolicy};
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let cache: Cache<u32> = Cache::builder("c")
    ///         .tier(MapTier::new("l2"), TierPolicy::fresh(Duration::from_secs(60)))
    ///         .build()?;
    ///     assert!(cache.try_get("k").await.is_none());
    ///     cache.insert("k", 7).await?;
    ///     let hit = cache.try_get("k").await.expect("found");
    ///     assert_eq!((hit.value.as_deref(), hit.fresh, hit.tier.as_str()), (Some(&7), true, "l2"));
    ///     assert!(hit.age < Duration::from_secs(60));
    ///     Ok(())
    /// }
    /// ```
    pub async fn try_get(&self, key: impl AsRef<[u8]>) -> Option<CacheHit<V>> {
        let key = key.as_ref();
        let hierarchy = self.hierarchy();
        if hierarchy.bypassed() {
            return None;
        }
        match hierarchy.first_ready(key, TierSet::EMPTY, Counting::Counted) {
            Ready::Hit { value, life } => Some(CacheHit {
                value,
                fresh: true,
                age: age_of(life.created_at),
                tier: hierarchy.tiers().get(0).name().to_string(),
            }),
            Ready::From(from) => Box::pin(self.try_get_below(key, from)).await,
        }
    }

    async fn try_get_below(&self, key: &[u8], from: usize) -> Option<CacheHit<V>> {
        let hierarchy = self.hierarchy();
        let walk = hierarchy.walk_from(key, TierSet::EMPTY, Counting::Counted, from).await;
        hierarchy.record_hot(key);
        let hit = |found: &Found<V>, fresh| CacheHit {
            value: found.value.clone(),
            fresh,
            age: age_of(found.entry.meta.created_at),
            tier: hierarchy.tiers().get(found.level).name().to_string(),
        };
        if let Some(found) = &walk.fresh {
            hierarchy.backfill(key, found, TierSet::EMPTY).await;
            return Some(hit(found, true));
        }
        let fail_safe = hierarchy.opts().fail_safe;
        walk.stale
            .as_ref()
            .filter(|s| stale_servable(&s.entry.meta, now_ms(), fail_safe))
            .map(|s| hit(s, false))
    }

    /// Look `key` up in the tiers, without loading. A fresh hit in a lower tier is backfilled.
    /// Returns `None` on a miss, a stale-only entry or a negative entry.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Option<Arc<V>> {
        let key = key.as_ref();
        let hierarchy = self.hierarchy();
        if hierarchy.bypassed() {
            return None;
        }
        // An L1 hit is answered here, before any await; the rest of the walk is a boxed future
        // so that this one stays small (it is moved on every call).
        match hierarchy.first_ready(key, TierSet::EMPTY, Counting::Counted) {
            Ready::Hit { value, .. } => value,
            Ready::From(from) => Box::pin(self.get_below(key, from)).await,
        }
    }

    async fn get_below(&self, key: &[u8], from: usize) -> Option<Arc<V>> {
        let hierarchy = self.hierarchy();
        let walk = hierarchy.walk_from(key, TierSet::EMPTY, Counting::Counted, from).await;
        let found = walk.fresh?;
        hierarchy.record_hot(key);
        hierarchy.backfill(key, &found, TierSet::EMPTY).await;
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
        self.read_traced(key.as_ref(), opts, move || Loader::new(loader)).await
    }

    /// [`get_or_load`](Self::get_or_load) with a loader that is given a [`LoadContext`]: the
    /// value it replaces (stale, or fresh in an early refresh) with its age, tier and
    /// validator; and answers a [`Loaded`]: a value or none with the entry's lifetimes, tags
    /// and validator, *not modified* (the previous value kept, its life renewed in every tier
    /// without moving its bytes), or *don't cache*. Single-flight, early refresh, soft and hard
    /// timeouts, fail-safe and the fleet lock work as for `get_or_load`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tier_core::testing::MapTier;
    /// use tier_core::{Cache, LoadContext, Loaded, TierPolicy};
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let pages: Cache<String> = Cache::builder("pages")
    ///         .tier(MapTier::new("l2"), TierPolicy::fresh(Duration::from_secs(60)).stale(Duration::from_secs(3600)))
    ///         .build()?;
    ///     // The origin answers with a body, a version (an ETag) and the team the page belongs to.
    ///     let page = pages
    ///         .get_or_load_ctx("home", |_ctx: LoadContext<String>| async {
    ///             Ok::<_, std::io::Error>(
    ///                 Loaded::value("<h1>hi</h1>".to_string())
    ///                     .fresh_for(Duration::from_secs(5))
    ///                     .tags(["team:7"])
    ///                     .validator(&b"v1"[..]),
    ///             )
    ///         })
    ///         .await?;
    ///     assert_eq!(page.as_deref().map(String::as_str), Some("<h1>hi</h1>"));
    ///     pages.expire("home").await?;
    ///     // Revalidation: the origin is asked whether the version the cache holds is current.
    ///     let again = pages
    ///         .get_or_load_ctx("home", |ctx: LoadContext<String>| async move {
    ///             let unchanged = ctx.validator().is_some_and(|v| &v[..] == b"v1");
    ///             Ok::<_, std::io::Error>(if unchanged {
    ///                 ctx.not_modified() // kept, its life renewed in every tier
    ///             } else {
    ///                 Loaded::value("<h1>hi</h1>".to_string()).validator(&b"v1"[..])
    ///             })
    ///         })
    ///         .await?;
    ///     assert_eq!(again.as_deref().map(String::as_str), Some("<h1>hi</h1>"));
    ///     Ok(())
    /// }
    /// ```
    pub async fn get_or_load_ctx<F, Fut, E>(
        &self,
        key: impl AsRef<[u8]>,
        loader: F,
    ) -> Result<Option<Arc<V>>, CacheError>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.get_or_load_ctx_with(key, &CallOptions::default(), loader).await
    }

    /// [`get_or_load_ctx`](Self::get_or_load_ctx) with per-call options.
    pub async fn get_or_load_ctx_with<F, Fut, E>(
        &self,
        key: impl AsRef<[u8]>,
        opts: &CallOptions,
        loader: F,
    ) -> Result<Option<Arc<V>>, CacheError>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.read_traced(key.as_ref(), opts, move || Loader::with_context(loader)).await
    }

    /// A read, inside its span when tracing wants one. The loader is made (boxed) only when
    /// it is needed: an L1 hit does not pay for it.
    async fn read_traced(
        &self,
        key: &[u8],
        opts: &CallOptions,
        loader: impl FnOnce() -> Loader<V>,
    ) -> Result<Option<Arc<V>>, CacheError> {
        let hierarchy = self.hierarchy();
        match ReadSpan::new(hierarchy.name(), key, hierarchy.opts().trace_keys) {
            None => self.read(key, opts, loader).await.0,
            Some(span) => Box::pin(self.traced_read(key, opts, loader, span)).await,
        }
    }

    /// A read inside its span, which is told how it was answered.
    async fn traced_read(
        &self,
        key: &[u8],
        opts: &CallOptions,
        loader: impl FnOnce() -> Loader<V>,
        span: ReadSpan,
    ) -> Result<Option<Arc<V>>, CacheError> {
        let (result, how) = self.read(key, opts, loader).instrument(span.span.clone()).await;
        let tier = |level| Some(self.hierarchy().tiers().get(level).name());
        match (&result, how) {
            (Err(_), _) => span.answered("error", None, true),
            (Ok(_), Answered::Tier(level)) => span.answered("hit", tier(level), false),
            (Ok(_), Answered::Stale { level, loaded }) => {
                span.answered("stale", tier(level), loaded)
            }
            (Ok(_), Answered::Loaded | Answered::Bypassed) => {
                span.answered("loaded", Some("origin"), true)
            }
        }
        result
    }

    /// The read, and where its answer came from.
    async fn read(
        &self,
        key: &[u8],
        opts: &CallOptions,
        loader: impl FnOnce() -> Loader<V>,
    ) -> (Result<Option<Arc<V>>, CacheError>, Answered) {
        let hierarchy = self.hierarchy();
        let settings = || opts.settings(hierarchy.opts());
        if opts.bypass || hierarchy.bypassed() {
            let r = match settings() {
                Ok(call) => Box::pin(hierarchy.load_bypassing(loader(), &call)).await,
                Err(e) => Err(e),
            };
            return (r, Answered::Bypassed);
        }
        let skip = hierarchy.tiers().skipped_by(opts);
        if opts.reload {
            return match settings() {
                Ok(call) => Box::pin(self.reload(key, skip, call, loader())).await,
                Err(e) => (Err(e), Answered::Bypassed),
            };
        }
        // An L1 hit is answered here, before any await and without boxing the loader (only an
        // early refresh needs it); the rest is a boxed future so that this one stays small.
        match hierarchy.first_ready(key, skip, Counting::Counted) {
            Ready::Hit { value, life } => {
                if refresh_due(hierarchy.opts().early_refresh, life) {
                    if let Ok(call) = settings() {
                        let key = Bytes::copy_from_slice(key);
                        hierarchy.start_refresh(key, loader(), skip, call, None, Renewal::Refresh);
                    }
                }
                (Ok(value), Answered::Tier(0))
            }
            Ready::From(from) => match settings() {
                Ok(call) => Box::pin(self.load_below(key, from, skip, call, loader())).await,
                Err(e) => (Err(e), Answered::Bypassed),
            },
        }
    }

    /// A call with [`CallOptions::reload`]: load whatever the tiers hold (joining a load of the
    /// key in flight); no stale value to fall back on.
    async fn reload(
        &self,
        key: &[u8],
        skip: TierSet,
        call: CallSettings,
        loader: Loader<V>,
    ) -> (Result<Option<Arc<V>>, CacheError>, Answered) {
        let hierarchy = self.hierarchy();
        let key = Bytes::copy_from_slice(key);
        let waiter = hierarchy.join_or_load(key, loader, None, skip, call.clone(), Renewal::Reload);
        (hierarchy.wait(waiter, None, &call).await, Answered::Loaded)
    }

    /// `get_or_load_with` past the first tier's fast path: walk on from tier `from`.
    async fn load_below(
        &self,
        key: &[u8],
        from: usize,
        skip: TierSet,
        call: CallSettings,
        loader: Loader<V>,
    ) -> (Result<Option<Arc<V>>, CacheError>, Answered) {
        let hierarchy = self.hierarchy();
        let walk = hierarchy.walk_from(key, skip, Counting::Counted, from).await;
        hierarchy.record_hot(key);
        if let Some(found) = walk.fresh {
            hierarchy.backfill(key, &found, skip).await;
            if refresh_due(hierarchy.opts().early_refresh, Life::from(&found.entry.meta)) {
                let key = Bytes::copy_from_slice(key);
                let previous = Some(found.clone());
                hierarchy.start_refresh(key, loader, skip, call, previous, Renewal::Refresh);
            }
            return (Ok(found.value), Answered::Tier(found.level));
        }
        let key = Bytes::copy_from_slice(key);
        if let Some(stale) = &walk.stale {
            if hierarchy.opts().stale_while_revalidate {
                let previous = Some(stale.clone());
                hierarchy.start_refresh(key, loader, skip, call, previous, Renewal::Miss);
                hierarchy.metrics().stale_served.increment(1);
                return (
                    Ok(stale.value.clone()),
                    Answered::Stale { level: stale.level, loaded: false },
                );
            }
        }
        let stale = walk.stale.clone();
        let waiter = hierarchy.join_or_load(key, loader, stale, skip, call.clone(), Renewal::Miss);
        let result = hierarchy.wait(waiter, walk.stale.as_ref(), &call).await;
        // The stale fallback was served (fail-safe, soft timeout) when the answer is its value.
        let how = match (&result, &walk.stale) {
            (Ok(Some(v)), Some(s)) if s.value.as_ref().is_some_and(|sv| Arc::ptr_eq(sv, v)) => {
                Answered::Stale { level: s.level, loaded: true }
            }
            _ => Answered::Loaded,
        };
        (result, how)
    }
}
