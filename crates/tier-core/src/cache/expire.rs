//! Logical expiry: `expire` (one key) and `expire_all` (every key) — entries stop being fresh
//! and stay servable as stale (under fail-safe, a soft timeout, stale-while-revalidate), unlike
//! `invalidate` and `clear`, which remove them. Both go to every tier and, through the
//! backplane, to every instance.

use bytes::Bytes;

use super::handle::Cache;
use super::options::CacheValue;
use super::tags::{expiry_floor_name, store_failed};
use super::write::published;
use crate::backplane::Invalidation;
use crate::error::{CacheError, TierError};
use crate::retime::Retime;
use crate::time::now_ms;

impl<V: CacheValue> Cache<V> {
    /// Expire `key`: in every tier and every instance its entry stops being fresh now but stays
    /// servable as stale until its `stale_until` — the fallback fail-safe serves when the
    /// origin fails — where [`invalidate`](Self::invalidate) removes it. The next
    /// [`get_or_load`](Self::get_or_load) loads again (a [`LoadContext`](crate::LoadContext)
    /// sees the expired value and may answer "not modified").
    ///
    /// An entry written after the call is not touched; a load that started before it cannot
    /// land as fresh after it (the expired entry is marked created at the expiry, as a
    /// tombstone is). Returns the first tier failure, else the backplane's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tier_core::testing::MapTier;
    /// use tier_core::{Cache, FailSafe, TierPolicy};
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let cache: Cache<String> = Cache::builder("prices")
    ///         .tier(MapTier::new("l2"), TierPolicy::fresh(Duration::from_secs(60)).stale(Duration::from_secs(600)))
    ///         .fail_safe(FailSafe::up_to(Duration::from_secs(600)))
    ///         .build()?;
    ///     cache.insert("p", "10 EUR".to_string()).await?;
    ///     cache.expire("p").await?;
    ///     assert!(cache.get("p").await.is_none(), "no longer fresh");
    ///     // The origin is down: the expired value is the fallback.
    ///     let v = cache.get_or_load("p", || async { Err::<Option<String>, _>(std::io::Error::other("down")) }).await?;
    ///     assert_eq!(v.as_deref().map(String::as_str), Some("10 EUR"));
    ///     Ok(())
    /// }
    /// ```
    pub async fn expire(&self, key: impl AsRef<[u8]>) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let key = self.write_key(Bytes::copy_from_slice(key.as_ref())).await?;
        // Above every floor; an insert of the same millisecond before this call is expired (and
        // one after it wins the tie with the expiry's marker in Redis, as an insert does).
        let at = hierarchy.stripes().created_at(hierarchy.fleet().created_now());
        let how = Retime::Expire { at, cut: now_ms(), floor: hierarchy.fleet().floor() };
        let failed = hierarchy.writer().retime_everywhere(&key, false, how).await;
        hierarchy.metrics().invalidation("expire", "local");
        let what = Invalidation::Expire { key: Some(key.clone()), at };
        hierarchy.observe(&what);
        let outcome = published(failed, hierarchy.publish(what).await);
        // A move that landed before: the key under the new version is invalidated (stronger
        // than an expiry; a race of two rare calls).
        outcome.and(self.settle_namespace(&[key]).await)
    }

    /// Expire every entry, in every tier and every instance: what [`clear`](Self::clear) is to
    /// [`invalidate`](Self::invalidate), this is to [`expire`](Self::expire) (FusionCache's
    /// `Clear(allowFailSafe: true)`). In O(1): the expiry floor moves to now (in the generation
    /// store, so that it holds across restarts and for every instance), and no tier serves an
    /// entry created at or before it as fresh again; such entries stay servable as stale.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tier_core::testing::MapTier;
    /// use tier_core::{Cache, TierPolicy};
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let cache: Cache<u32> = Cache::builder("counts")
    ///         .tier(MapTier::new("l2"), TierPolicy::fresh(Duration::from_secs(60)).stale(Duration::from_secs(60)))
    ///         .build()?;
    ///     cache.insert("a", 1).await?;
    ///     cache.expire_all().await?;
    ///     let hit = cache.try_get("a").await.expect("still there, as stale");
    ///     assert!(!hit.fresh);
    ///     Ok(())
    /// }
    /// ```
    pub async fn expire_all(&self) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let at = now_ms();
        let name = expiry_floor_name(hierarchy.name());
        let raise = hierarchy.generations().raise_floor(&name, at);
        let raised = hierarchy.guards().floor.run(raise).await;
        hierarchy.fleet().raise_expiry_floor(*raised.as_ref().unwrap_or(&at));
        // Flights started before are not joined any more (their values are born stale).
        hierarchy.stripes().bump_all();
        hierarchy.metrics().invalidation("expire", "local");
        let what = Invalidation::Expire { key: None, at };
        hierarchy.observe(&what);
        let outcome = hierarchy.publish(what).await;
        match raised {
            Ok(_) => outcome,
            Err(e) => Err(store_failed(TierError::new(
                e.kind(),
                format!(
                    "expire_all incomplete: the expiry floor was not raised in the generation \
                     store ({e}); this instance serves older entries only as stale{}",
                    if outcome.is_ok() { " and the other instances were told" } else { "" }
                ),
            ))),
        }
    }
}
