//! Single-key reads: `get` (lookup only) and `get_or_load` (load when no tier has the key
//! fresh), as callers of the walk (`lookup.rs`), backfill, early refresh and the loader run.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tracing::Instrument;

use super::handle::Cache;
use super::lifetime::{refresh_due, Life};
use super::load::Loader;
use super::lookup::{Counting, Ready};
use super::options::{CacheValue, CallOptions};
use super::tiers::TierSet;
use super::trace::{Answered, ReadSpan};
use crate::error::{BoxError, CacheError};

impl<V: CacheValue> Cache<V> {
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
        let key = key.as_ref();
        let hierarchy = self.hierarchy();
        match ReadSpan::new(hierarchy.name(), key, hierarchy.opts().trace_keys) {
            None => self.read(key, opts, loader).await.0,
            Some(span) => Box::pin(self.traced_read(key, opts, loader, span)).await,
        }
    }

    /// A read inside its span, which is told how it was answered.
    async fn traced_read<F, Fut, E>(
        &self,
        key: &[u8],
        opts: &CallOptions,
        loader: F,
        span: ReadSpan,
    ) -> Result<Option<Arc<V>>, CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
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
    async fn read<F, Fut, E>(
        &self,
        key: &[u8],
        opts: &CallOptions,
        loader: F,
    ) -> (Result<Option<Arc<V>>, CacheError>, Answered)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let hierarchy = self.hierarchy();
        if opts.bypass || hierarchy.bypassed() {
            let r = Box::pin(hierarchy.load_bypassing(Loader::new(loader))).await;
            return (r, Answered::Bypassed);
        }
        let skip = hierarchy.tiers().skipped_by(opts);
        // An L1 hit is answered here, before any await and without boxing the loader (only an
        // early refresh needs it); the rest is a boxed future so that this one stays small.
        match hierarchy.first_ready(key, skip, Counting::Counted) {
            Ready::Hit { value, life } => {
                if refresh_due(hierarchy.opts().early_refresh, life) {
                    let key = Bytes::copy_from_slice(key);
                    hierarchy.start_refresh(key, Loader::new(loader), skip, opts.tags.clone());
                }
                (Ok(value), Answered::Tier(0))
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
        skip: TierSet,
        opts: &CallOptions,
        loader: Loader<V>,
    ) -> (Result<Option<Arc<V>>, CacheError>, Answered) {
        let hierarchy = self.hierarchy();
        let walk = hierarchy.walk_from(key, skip, Counting::Counted, from).await;
        hierarchy.record_hot(key);
        if let Some(found) = walk.fresh {
            hierarchy.backfill(key, &found, skip).await;
            if refresh_due(hierarchy.opts().early_refresh, Life::from(&found.entry.meta)) {
                let key = Bytes::copy_from_slice(key);
                hierarchy.start_refresh(key, loader, skip, opts.tags.clone());
            }
            return (Ok(found.value), Answered::Tier(found.level));
        }
        let key = Bytes::copy_from_slice(key);
        if let Some(stale) = &walk.stale {
            if hierarchy.opts().stale_while_revalidate {
                hierarchy.start_refresh(key, loader, skip, opts.tags.clone());
                hierarchy.metrics().stale_served.increment(1);
                return (
                    Ok(stale.value.clone()),
                    Answered::Stale { level: stale.level, loaded: false },
                );
            }
        }
        let waiter =
            hierarchy.join_or_load(key, loader, walk.stale.clone(), skip, opts.tags.clone());
        let result = hierarchy.wait(waiter, walk.stale.as_ref()).await;
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
