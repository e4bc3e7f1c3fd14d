//! [`Cache`], the handle a service holds: its identity, keys and operator switches. The
//! operations are in `read.rs`, `write.rs`, `batch.rs` and `warm.rs`.

use std::sync::Arc;

use bytes::Bytes;

use super::builder::CacheBuilder;
use super::hierarchy::Hierarchy;
use super::options::CacheValue;
use super::tiers::TierInfo;
use crate::key::KeyBuilder;

/// A typed hierarchy of tiers in front of an origin.
///
/// Cheap to clone (an `Arc`): clones share tiers, flights and metrics. A service builds it with
/// the tiers of the `tier` crate (`MemoryTier`, `DiskTier`, `RedisTier`); here, a test tier:
///
/// ```
/// use std::time::Duration;
/// use tier_core::testing::MapTier;
/// use tier_core::{Cache, TierPolicy};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct User { name: String }
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let users: Cache<User> = Cache::builder("users")
///         .tier(MapTier::new("l1"), TierPolicy::fresh(Duration::from_secs(60)))
///         .build()?;
///     let key = users.key("42");
///     let user = users
///         .get_or_load(&key, || async { Ok::<_, std::io::Error>(Some(User { name: "Ada".into() })) })
///         .await?;
///     assert_eq!(user.map(|u| u.name.clone()), Some("Ada".to_string()));
///     // A second call is a hit: the loader is not called.
///     let again = users.get_or_load(&key, || async { Err::<Option<User>, _>(std::io::Error::other("not called")) }).await?;
///     assert!(again.is_some());
///     users.invalidate(&key).await?;
///     assert!(users.get(&key).await.is_none());
///     Ok(())
/// }
/// ```
pub struct Cache<V> {
    hierarchy: Arc<Hierarchy<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self { hierarchy: self.hierarchy.clone() }
    }
}

impl<V> Cache<V> {
    /// The handle of a hierarchy the builder assembled.
    pub(super) fn from_hierarchy(hierarchy: Arc<Hierarchy<V>>) -> Self {
        Self { hierarchy }
    }

    /// The hierarchy behind the handle.
    #[inline]
    pub(super) fn hierarchy(&self) -> &Arc<Hierarchy<V>> {
        &self.hierarchy
    }
}

impl<V: CacheValue> Cache<V> {
    /// Start building a hierarchy named `name` (the `cache` metric label and the key namespace).
    pub fn builder(name: impl Into<String>) -> CacheBuilder<V> {
        CacheBuilder::new(name.into())
    }

    /// The hierarchy's name.
    pub fn name(&self) -> &str {
        self.hierarchy.name()
    }

    /// The key of `id` in this cache's namespace (`name:version:id`).
    pub fn key(&self, id: impl AsRef<[u8]>) -> Bytes {
        self.hierarchy.keys().key(id)
    }

    /// The key builder (namespace and version).
    pub fn keys(&self) -> &KeyBuilder {
        self.hierarchy.keys()
    }

    /// Switch a tier on or off at run time (reads and writes skip a disabled tier; invalidations
    /// still try it). Returns false when no tier has that name.
    pub fn set_tier_enabled(&self, name: &str, enabled: bool) -> bool {
        match self.hierarchy.tiers().by_name(name) {
            Some(level) => {
                level.set_enabled(enabled);
                tracing::info!(cache = %self.name(), tier = name, enabled, "tier switched");
                true
            }
            None => false,
        }
    }

    /// Bypass caching entirely (every call goes to the origin) until switched back.
    pub fn set_bypass(&self, bypass: bool) {
        self.hierarchy.set_bypass(bypass);
        tracing::info!(cache = %self.name(), bypass, "cache bypass switched");
    }

    /// What an operator sees of each tier, top to bottom.
    pub fn tiers(&self) -> Vec<TierInfo> {
        self.hierarchy.tiers().iter().map(|(_, level)| level.info()).collect()
    }

    /// The `n` hottest keys seen (sampled), hottest first.
    pub fn hot_keys(&self, n: usize) -> Vec<(Bytes, u64)> {
        self.hierarchy.hot().top(n)
    }

    /// Has the start-up with the backplane finished: the invalidation log replayed from the
    /// last applied position (or, when that cannot be done, local entries demoted to stale),
    /// the position to resume from recorded, with a shared generation store (Redis) the clear
    /// floor and namespace version read from it once, and, with a backplane that confirms
    /// delivery (the lease), delivery proven once? Until then local entries are served only as
    /// stale, and what is written locally may still be demoted by a gap the backplane reports
    /// late (one whose lazy connection was not made at build): a service that waits for this
    /// before it takes traffic (its readiness) does not load twice what it loaded in that
    /// window. True
    /// at once without a backplane. It stays true through later outages: the lease and the
    /// gaps cover those.
    pub fn is_caught_up(&self) -> bool {
        self.hierarchy.fleet().is_caught_up()
    }

    /// Wait until [`is_caught_up`](Self::is_caught_up) (forever while the backplane cannot
    /// reach its server: bound it with a timeout).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tier_core::CacheError> {
    /// use std::time::Duration;
    /// use tier_core::{Cache, TierPolicy};
    /// use tier_memory::MemoryTier;
    ///
    /// let cache: Cache<String> = Cache::builder("users")
    ///     .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
    ///     .build()?;
    /// // A readiness probe: ready once caught up (at once here, without a backplane).
    /// let ready = tokio::time::timeout(Duration::from_secs(2), cache.caught_up()).await;
    /// assert!(ready.is_ok() && cache.is_caught_up());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn caught_up(&self) {
        self.hierarchy.fleet().caught_up().await
    }

    /// How many callers are waiting for the load of `key` in flight now (0 when none is).
    pub fn load_waiters(&self, key: impl AsRef<[u8]>) -> usize {
        self.hierarchy.flights().waiters(key.as_ref())
    }

    /// Update the `tier_entries`, `tier_bytes` and `tier_capacity_bytes` gauges now (the
    /// hierarchy also does it every second when built inside a tokio runtime).
    pub fn report_gauges(&self) {
        self.hierarchy.report_gauges();
    }
}
