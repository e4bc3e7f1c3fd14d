//! Writes and invalidations: `insert` (write-through), `invalidate` (lowest tier first), tags,
//! the namespace and `clear` — each observed by every tier and published on the backplane for
//! the other instances (an insert as a value-free notice). A part of the fleet state that is
//! down does not stop what can be done locally; the error says what was done and what was not.

use std::sync::Arc;

use bytes::Bytes;

use super::handle::Cache;
use super::hierarchy::Hierarchy;
use super::lifetime::new_meta;
use super::options::{check_tags, CacheValue, Lifetimes};
use super::tags::{self, namespace_tag, store_failed, tag_clock};
use super::tiers::TierSet;
use crate::backplane::Invalidation;
use crate::error::{CacheError, TierError, TierErrorKind};
use crate::time::now_ms;

/// An insert's lifetimes: the tiers' policies.
const NO_SET: Lifetimes = Lifetimes { fresh: None, stale: None };

impl<V: CacheValue> Cache<V> {
    /// Write `value` to every tier (write-through), each with its own lifetime, and tell every
    /// other instance (a value-free notice: they drop their local copies).
    ///
    /// Every enabled tier is tried; the first failure is returned (tiers whose breaker is open
    /// are skipped, not failures), else the backplane's.
    pub async fn insert(&self, key: impl AsRef<[u8]>, value: V) -> Result<(), CacheError> {
        self.insert_with_tags(key, value, &[] as &[&str]).await
    }

    /// [`insert`](Self::insert) with tags: [`invalidate_tag`](Self::invalidate_tag) of any of
    /// them drops this entry. Fails (writing nothing) when the tags cannot be stamped because
    /// the generation store is unavailable.
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
        check_tags(&tags, 0)?;
        let guard = &hierarchy.guards().generations;
        let stamps = tags::stamp(hierarchy.generations(), guard, &tags).await?;
        // After a clear or a gap in the same millisecond, the new value is still above it, and
        // after the last insert of the key.
        let created_at = hierarchy.stripes().created_at(&key, hierarchy.fleet().created_now());
        let mut meta = new_meta(created_at, false, stamps, std::time::Duration::ZERO);
        meta.insert = true;
        let entries = hierarchy.entries().of_value(
            &key,
            Some(&Arc::new(value)),
            &meta,
            TierSet::EMPTY,
            NO_SET,
        )?;
        let written = hierarchy.writer().write_through(&key, entries).await;
        let what = Invalidation::Written { key, created_at };
        hierarchy.observe(&what);
        published(written.err(), hierarchy.publish(what).await)
    }

    /// Remove `key` from every tier (lowest first) and tell every other instance.
    pub async fn invalidate(&self, key: impl AsRef<[u8]>) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let key = Bytes::copy_from_slice(key.as_ref());
        let removed = hierarchy.writer().remove_everywhere(&key, false).await;
        hierarchy.metrics().invalidation("key", "local");
        let what = Invalidation::Key(key);
        hierarchy.observe(&what);
        published(removed, hierarchy.publish(what).await)
    }

    /// Drop every entry carrying `tag`, in O(1): its generation moves on, and entries stamped
    /// with an older one are treated as misses from now on.
    ///
    /// When the generation store is unavailable the generation cannot move on: every local
    /// entry of this instance is then served only as stale until replaced, the other instances
    /// are told (so they forget what they cached of the tag), and the error says so — entries
    /// carrying the tag in shared tiers stay current for the fleet until a later
    /// `invalidate_tag` succeeds.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        // The tag clock first: a load that reads the tag's new generation reads the clock's
        // new one too (`land.rs`); a tag whose clock did not move is not bumped.
        let clock = tag_clock(hierarchy.name());
        let guard = &hierarchy.guards().generations;
        let bumped = match guard.run(hierarchy.generations().bump(&clock)).await {
            Ok(_) => guard.run(hierarchy.generations().bump(tag)).await,
            Err(e) => Err(e),
        };
        let what = Invalidation::Tag(Arc::from(tag));
        if let Err(e) = bumped {
            let now = now_ms();
            hierarchy.fleet().mark_local_suspect(now);
            let kept = hierarchy.kept().keep_suspect_before(now).is_ok();
            hierarchy.stripes().bump_all();
            hierarchy.observe(&what);
            let told = hierarchy.publish(what).await.is_ok();
            let message = format!(
                "invalidate_tag({tag:?}) incomplete: the tag's generation was not moved on ({e}); \
                 done locally: every local entry is served only as stale until replaced{}; \
                 other instances {}; entries tagged {tag:?} in shared tiers stay current until \
                 a later invalidate_tag succeeds",
                if kept { "" } else { " (in this process only: the local state refused it)" },
                if told {
                    "were told to forget the tag's cached generation"
                } else {
                    "were not told (backplane unavailable)"
                },
            );
            return Err(store_failed(TierError::new(e.kind(), message)));
        }
        hierarchy.metrics().invalidation("tag", "local");
        hierarchy.observe(&what);
        hierarchy.publish(what).await
    }

    /// Drop the whole namespace in O(1): the key version moves on ([`Cache::key`] builds keys
    /// with the new version; old keys age out of the tiers).
    pub async fn invalidate_namespace(&self) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let tag = namespace_tag(hierarchy.name());
        let bump = hierarchy.generations().bump(&tag);
        let version = hierarchy.guards().namespace.run(bump).await.map_err(store_failed)?;
        hierarchy.keys().set_version(version);
        hierarchy.stripes().bump_all();
        hierarchy.metrics().invalidation("namespace", "local");
        let what = Invalidation::Namespace(version);
        hierarchy.observe(&what);
        hierarchy.publish(what).await
    }

    /// Read the namespace version from the generation store (the hierarchy also does it at
    /// build, in the background; call this to wait for it, or when the store is shared and
    /// another instance has moved it on). A version the store does not hold — never moved on,
    /// or lost (an eviction, a flush, a restart without persistence) — is created there with a
    /// fresh start, never taken as 0: keys built before a loss are never built again. When the
    /// read moves this instance on, the other instances are told (a version started again here
    /// reaches the instances still on the lost one). Returns the version keys are built with
    /// (never lower than before: a version never goes back).
    pub async fn sync_namespace(&self) -> Result<u64, CacheError> {
        let hierarchy = self.hierarchy();
        let tags: [Arc<str>; 1] = [Arc::from(namespace_tag(hierarchy.name()))];
        let read = hierarchy.generations().stamp(&tags);
        let versions = hierarchy.guards().namespace.run(read).await.map_err(store_failed)?;
        let version = versions.first().copied().ok_or_else(|| {
            store_failed(TierError::new(
                TierErrorKind::Decode,
                "the generation store answered no namespace version",
            ))
        })?;
        hierarchy.adopt_namespace(version).await;
        Ok(hierarchy.keys().version())
    }

    /// Remove everything from every tier (lowest first) and tell every other instance: the
    /// clear floor moves to now (in the generation store, so that it holds across restarts and
    /// for every instance), and no tier serves an entry created at or before it again.
    pub async fn clear(&self) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let at = now_ms();
        let raise = hierarchy.generations().raise_floor(hierarchy.name(), at);
        let raised = hierarchy.guards().floor.run(raise).await;
        hierarchy.fleet().raise_floor(*raised.as_ref().unwrap_or(&at));
        let cleared = hierarchy.writer().clear_everywhere(false).await;
        hierarchy.metrics().invalidation("clear", "local");
        let what = Invalidation::Clear { at };
        hierarchy.observe(&what);
        let outcome = published(cleared, hierarchy.publish(what).await);
        match raised {
            Ok(_) => outcome,
            Err(e) => Err(store_failed(TierError::new(
                e.kind(),
                format!(
                    "clear incomplete: the clear floor was not raised in the generation store \
                     ({e}); every tier was cleared and this instance refuses older entries, but \
                     a late write of an older value may land in a shared tier"
                ),
            ))),
        }
    }
}

/// The outcome of a write or invalidation: the first tier failure, else the backplane's.
pub(super) fn published(
    tiers: Option<CacheError>,
    backplane: Result<(), CacheError>,
) -> Result<(), CacheError> {
    match tiers {
        Some(e) => Err(e),
        None => backplane,
    }
}

impl<V> Hierarchy<V> {
    /// Tell the other instances (when there is a backplane), under its timeout and breaker.
    pub(super) async fn publish(&self, what: Invalidation) -> Result<(), CacheError> {
        match self.backplane() {
            None => Ok(()),
            Some(b) => self
                .guards()
                .backplane
                .run(b.publish(self.name(), &what))
                .await
                .map(|_| ())
                .map_err(|e| CacheError::Tier { tier: "backplane".into(), source: e }),
        }
    }
}
