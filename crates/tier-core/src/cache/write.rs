//! Writes and invalidations: `insert` (write-through), `invalidate` (lowest tier first), tags,
//! the namespace and `clear`, each published on the backplane for the other instances.

use std::sync::Arc;

use bytes::Bytes;

use super::handle::Cache;
use super::hierarchy::Hierarchy;
use super::lifetime::new_meta;
use super::options::CacheValue;
use super::tags::{self, namespace_tag, store_failed};
use super::tiers::TierSet;
use crate::backplane::Invalidation;
use crate::error::CacheError;

impl<V: CacheValue> Cache<V> {
    /// Write `value` to every tier (write-through), each with its own lifetime.
    ///
    /// Every enabled tier is tried; the first failure is returned (tiers whose breaker is open
    /// are skipped, not failures).
    pub async fn insert(&self, key: impl AsRef<[u8]>, value: V) -> Result<(), CacheError> {
        self.insert_with_tags(key, value, &[] as &[&str]).await
    }

    /// [`insert`](Self::insert) with tags: [`invalidate_tag`](Self::invalidate_tag) of any of
    /// them drops this entry.
    pub async fn insert_with_tags<S: AsRef<str>>(
        &self,
        key: impl AsRef<[u8]>,
        value: V,
        tags: &[S],
    ) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        if hierarchy.bypassed() {
            return Ok(());
        }
        let key = Bytes::copy_from_slice(key.as_ref());
        let tags: Vec<Arc<str>> = tags.iter().map(|t| Arc::from(t.as_ref())).collect();
        let stamps = tags::stamp(hierarchy.generations(), &tags).await?;
        let meta = new_meta(false, stamps, std::time::Duration::ZERO);
        let entries =
            hierarchy.entries().of_value(Some(&Arc::new(value)), &meta, TierSet::EMPTY)?;
        hierarchy.writer().write_through(&key, entries).await
    }

    /// Remove `key` from every tier (lowest first) and tell every other instance.
    pub async fn invalidate(&self, key: impl AsRef<[u8]>) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let key = Bytes::copy_from_slice(key.as_ref());
        let removed = hierarchy.writer().remove_everywhere(&key, false).await;
        hierarchy.metrics().invalidation("key", "local");
        published(removed, hierarchy.publish(Invalidation::Key(key)).await)
    }

    /// Drop every entry carrying `tag`, in O(1): its generation moves on, and entries stamped
    /// with an older one are treated as misses from now on.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        hierarchy.generations().bump(tag).await.map_err(store_failed)?;
        hierarchy.metrics().invalidation("tag", "local");
        hierarchy.publish(Invalidation::Tag(Arc::from(tag))).await
    }

    /// Drop the whole namespace in O(1): the key version moves on ([`Cache::key`] builds keys
    /// with the new version; old keys age out of the tiers).
    pub async fn invalidate_namespace(&self) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let tag = namespace_tag(hierarchy.name());
        let version = hierarchy.generations().bump(&tag).await.map_err(store_failed)?;
        hierarchy.keys().set_version(version);
        hierarchy.stripes().bump_all();
        hierarchy.metrics().invalidation("namespace", "local");
        hierarchy.publish(Invalidation::Namespace(version)).await
    }

    /// Read the namespace version from the generation store (useful at start-up when the store
    /// is shared and another instance has moved it on).
    pub async fn sync_namespace(&self) -> Result<u64, CacheError> {
        let hierarchy = self.hierarchy();
        let tag: Arc<str> = Arc::from(namespace_tag(hierarchy.name()));
        let versions = hierarchy.generations().current(&[tag]).await.map_err(store_failed)?;
        hierarchy.keys().set_version(versions.first().copied().flatten().unwrap_or(0));
        Ok(hierarchy.keys().version())
    }

    /// Remove everything from every tier (lowest first) and tell every other instance.
    pub async fn clear(&self) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let cleared = hierarchy.writer().clear_everywhere(false).await;
        hierarchy.metrics().invalidation("clear", "local");
        let at = crate::time::now_ms();
        published(cleared, hierarchy.publish(Invalidation::Clear { at }).await)
    }
}

/// The outcome of an invalidation: the first tier failure, else the backplane's.
fn published(
    tiers: Option<CacheError>,
    backplane: Result<(), CacheError>,
) -> Result<(), CacheError> {
    match tiers {
        Some(e) => Err(e),
        None => backplane,
    }
}

impl<V> Hierarchy<V> {
    /// Tell the other instances (when there is a backplane).
    async fn publish(&self, what: Invalidation) -> Result<(), CacheError> {
        match self.backplane() {
            None => Ok(()),
            Some(b) => b
                .publish(self.name(), &what)
                .await
                .map(|_| ())
                .map_err(|e| CacheError::Tier { tier: "backplane".into(), source: e }),
        }
    }
}
