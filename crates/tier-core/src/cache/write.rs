//! Writes and invalidations: `insert` (write-through), `invalidate` (lowest tier first), tags,
//! the namespace and `clear` — each observed by every tier and published on the backplane for
//! the other instances (an insert as a value-free notice). A part of the fleet state that is
//! down does not stop what can be done locally; the error says what was done and what was not.
//! And write-behind: `write_behind` (an insert whose origin write is queued, `behind.rs`), its
//! queue's status and dead letters.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::behind::{Behind, WriteBehindStatus};
use super::handle::Cache;
use super::hierarchy::Hierarchy;
use super::lifetime::new_meta;
use super::options::{check_tags, CacheValue, Lifetimes};
use super::tags::{self, namespace_tag, store_failed, tag_clock};
use super::tiers::TierSet;
use crate::backplane::Invalidation;
use crate::entry::Entry;
use crate::envelope::TagStamp;
use crate::error::{CacheError, TierError, TierErrorKind};
use crate::queue::DeadLetter;
use crate::time::now_ms;

/// The stamps of an entry's tags (`None`: untagged).
pub(super) type Stamps = Option<Arc<[TagStamp]>>;

/// An insert's lifetimes: the tiers' policies.
const NO_SET: Lifetimes = Lifetimes { fresh: None, stale: None };

impl<V: CacheValue> Cache<V> {
    /// Write `value` to every tier (write-through), each with its own lifetime, and tell every
    /// other instance (a value-free notice: they drop their local copies).
    ///
    /// Every enabled tier is tried; the first failure is returned (tiers whose breaker is open
    /// are skipped, not failures), else the backplane's.
    ///
    /// With a shared generation store, while the namespace version is uncertain (not read
    /// yet, or the backplane's lease lapsed: a move may have been missed) it is read first, and
    /// a key built under a version moved past is built again under the current one; a version
    /// that cannot be read fails the insert, which then writes nothing. Once written, the
    /// version is read again (a move made just before, not told yet): if it moved, this
    /// instance follows and the key under the new version is invalidated (see
    /// `ARCHITECTURE.md`, "And check it after"); if it cannot be read, the insert fails though
    /// it was written.
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
        if self.hierarchy().bypassed() {
            return Ok(());
        }
        let key = self.write_key(Bytes::copy_from_slice(key.as_ref())).await?;
        let stamps = self.stamp(tags).await?;
        self.supersede_pending(std::slice::from_ref(&key)).await?;
        self.write_stamped(key, value, stamps).await
    }

    /// What an insert (one key or many) does to the write-behind queue: the caller wrote the
    /// origin, so a queued, older write of a key is not written (`Behind::supersede`: the rule).
    pub(super) async fn supersede_pending(&self, keys: &[Bytes]) -> Result<(), CacheError> {
        match self.hierarchy().behind() {
            Some(behind) => behind.supersede(keys).await,
            None => Ok(()),
        }
    }

    /// Where a write of `key` goes. While the namespace version is uncertain — not read from
    /// the shared store yet, or the lease lapsed, so a move may have been missed — it is read
    /// first: a write under a version the fleet has moved past is acknowledged under keys
    /// nobody reads any more, while the other instances keep serving what they loaded under the
    /// new one (the checker's Cluster violations: an insert acknowledged by an instance whose
    /// backplane was cut, the previous value served from Redis for seconds after). A key built
    /// under a version moved past is built again under the current one (the same id). A
    /// version that cannot be read then fails the write: nothing is written.
    pub(super) async fn write_key(&self, key: Bytes) -> Result<Bytes, CacheError> {
        self.confirm_namespace().await.map_err(nothing_written)?;
        Ok(self.rebase(key).await)
    }

    /// `key` under the current namespace version (see [`write_key`](Self::write_key)). A key
    /// that was built again is also invalidated as it was, everywhere: an instance not yet told
    /// of the move still serves its copy under the old version, and the notice of the new key
    /// means nothing to it (best effort: the old version is not served by anyone who knows).
    pub(super) async fn rebase(&self, key: Bytes) -> Bytes {
        let hierarchy = self.hierarchy();
        let current = hierarchy.keys().rebase(key.clone());
        if current != key {
            if let Err(e) = hierarchy.invalidate_key(key).await {
                tracing::debug!(cache = %hierarchy.name(), error = %e, "the key of the old namespace version was not invalidated everywhere");
            }
        }
        current
    }

    /// Read the namespace version from the shared store when it is uncertain (see
    /// [`write_key`](Self::write_key)); nothing to do with generations of this instance's own.
    pub(super) async fn confirm_namespace(&self) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        if hierarchy.shares_generations() && hierarchy.fleet().namespace_uncertain(true, now_ms()) {
            self.sync_namespace().await.map_err(|e| match e {
                CacheError::Tier { tier, source } => {
                    let why = format!(
                        "the namespace version could not be confirmed before the write (not \
                         read yet, or a move may have been missed while the backplane was \
                         silent): {source}"
                    );
                    CacheError::Tier { tier, source: TierError::new(source.kind(), why) }
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// The stamps of `tags` (fails when the generation store is unavailable).
    pub(super) async fn stamp<S: AsRef<str>>(&self, tags: &[S]) -> Result<Stamps, CacheError> {
        let hierarchy = self.hierarchy();
        let tags: Vec<Arc<str>> = tags.iter().map(|t| Arc::from(t.as_ref())).collect();
        check_tags(&tags, 0)?;
        tags::stamp(hierarchy.generations(), &hierarchy.guards().generations, &tags).await
    }

    /// The entries of an insert of `value` under `key` (created at `created_at`, tagged with
    /// `stamps`) for every enabled tier, each with the lifetime of its policy.
    pub(super) fn insert_entries(
        &self,
        key: &Bytes,
        value: V,
        created_at: u64,
        stamps: Stamps,
    ) -> Result<Vec<(usize, Entry)>, CacheError> {
        let mut meta = new_meta(created_at, false, stamps, std::time::Duration::ZERO);
        meta.insert = true;
        let entries = self.hierarchy().entries();
        entries.of_value(key, Some(&Arc::new(value)), &meta, TierSet::EMPTY, NO_SET)
    }

    /// Write `value` with `stamps` to every tier (an insert) and publish its notice.
    pub(super) async fn write_stamped(
        &self,
        key: Bytes,
        value: V,
        stamps: Stamps,
    ) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        if hierarchy.bypassed() {
            return Ok(());
        }
        // After a clear or a gap in the same millisecond, the new value is still above it, and
        // after the last insert of the key.
        let created_at = hierarchy.stripes().created_at(hierarchy.fleet().created_now());
        let entries = self.insert_entries(&key, value, created_at, stamps)?;
        let written = hierarchy.writer().write_through(&key, entries).await;
        let what = Invalidation::Written { key: key.clone(), created_at };
        hierarchy.observe(&what);
        let keys = [key];
        let (sent, settled) = tokio::join!(hierarchy.publish(what), self.settle_namespace(&keys));
        published(written.err(), settled.and(sent))
    }

    /// After a write (an insert, an invalidation, an expiry) has landed in the tiers: did a
    /// namespace move land before it? An instance whose lease holds learns of a move within δ,
    /// and what it wrote meanwhile went to keys of the version moved past, which nobody reads
    /// any more: its acknowledged insert (or invalidation) was lost, while what the others had
    /// written under the new version — older — stayed and was served (the checker's "older
    /// value after an acknowledged insert"). So once the write has landed, the store's version
    /// is read (past any copy cached in process): a move found so moves this instance on (and
    /// is told to the others), and each key is invalidated everywhere under the new version —
    /// a miss, loaded again, never the older value. The read comes after the write, so a move
    /// it does not see landed after the write and drops it as moves do. A version that cannot
    /// be read fails the call: the write landed, but may have been lost to a move.
    pub(super) async fn settle_namespace(&self, keys: &[Bytes]) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let built = keys.iter().filter_map(|k| hierarchy.keys().version_of(k)).min();
        let Some(built) = built.filter(|_| hierarchy.shares_generations()) else { return Ok(()) };
        let ticket = hierarchy.fleet().namespace_ticket();
        // Concurrent writers share a read (one that started after each had landed).
        let read = hierarchy.read_namespace(true);
        let version = match hierarchy.after_writes().version_after(read).await {
            Ok(v) => v,
            Err(e) => {
                let why = format!(
                    "written, but whether a namespace move landed before the write could not be \
                     confirmed (then it went to keys nobody reads any more): {e}"
                );
                return Err(store_failed(TierError::new(e.kind(), why)));
            }
        };
        if version <= built {
            return Ok(());
        }
        hierarchy.adopt_namespace(version, ticket).await;
        let mut outcome = Ok(());
        for key in
            keys.iter().filter(|k| hierarchy.keys().version_of(k).is_some_and(|v| v < version))
        {
            let current = hierarchy.keys().rebase(key.clone());
            if let Err(e) = hierarchy.invalidate_key(current).await {
                outcome = outcome.and(Err(e));
            }
        }
        outcome
    }

    /// Remove `key` from every tier (lowest first) and tell every other instance.
    ///
    /// A pending [`write_behind`](Self::write_behind) of the key is not cancelled: it is
    /// written to the origin, and the key is invalidated again once it is.
    ///
    /// While the namespace version cannot be confirmed (see [`insert`](Self::insert)), the key is still
    /// removed as given, everywhere, and the error says the version could not be confirmed.
    pub async fn invalidate(&self, key: impl AsRef<[u8]>) -> Result<(), CacheError> {
        let hierarchy = self.hierarchy();
        let key = Bytes::copy_from_slice(key.as_ref());
        let (key, unconfirmed) = match self.confirm_namespace().await {
            Ok(()) => (self.rebase(key).await, None),
            Err(e) => (key, Some(e)),
        };
        if let Some(behind) = hierarchy.behind() {
            behind.note_invalidated(&key);
        }
        let removed = hierarchy.invalidate_key(key.clone()).await;
        match unconfirmed {
            Some(e) => Err(e),
            None => removed.and(self.settle_namespace(&[key]).await),
        }
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
            let now = hierarchy.stripes().written_up_to(now_ms());
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
        let version = match hierarchy.guards().namespace.run(bump).await {
            Ok(v) => v,
            Err(e) => {
                // A bump that timed out may have landed: the version is uncertain until read
                // again (reads check the store's, and a move found so is told to the others).
                if hierarchy.shares_generations() {
                    hierarchy.fleet().set_namespace_unread(true);
                }
                return Err(store_failed(e));
            }
        };
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
        let ticket = hierarchy.fleet().namespace_ticket();
        let version = hierarchy.read_namespace(false).await.map_err(store_failed)?;
        hierarchy.adopt_namespace(version, ticket).await;
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

/// Write-behind: the public operations (the queue and its writer: `behind.rs`).
impl<V: CacheValue> Cache<V> {
    fn behind(&self) -> Result<&Arc<Behind<V>>, CacheError> {
        self.hierarchy().behind().ok_or_else(|| {
            CacheError::Config(
                "this cache does not write behind: configure CacheBuilder::write_behind".into(),
            )
        })
    }

    /// Write `value` to every tier at once, as [`insert`](Self::insert) does (and tell the
    /// other instances), and queue a write of it to the origin through the cache's
    /// [`OriginWriter`](crate::OriginWriter). Returns once the queued write is durable: in the
    /// disk tier's directory when the cache has one (a `kill -9` never loses it; see
    /// `DiskTierBuilder::queue_flush` for power loss), else in memory — **lossy**: a crash
    /// loses what is pending.
    ///
    /// A full queue waits or fails ([`WriteBehind::when_full`](crate::WriteBehind::when_full));
    /// a queue that cannot be written (a full disk) fails, and then nothing was written
    /// anywhere. When the queued write is
    /// durable but a tier failed, that tier's error is returned (the origin write stays queued).
    /// An [`insert`](Self::insert) (or [`insert_many`](Self::insert_many)) of the key
    /// supersedes a pending write of it (not yet in a batch in flight); an
    /// [`invalidate`](Self::invalidate) does not cancel it. Until the origin has the write, a
    /// load of the key (after an eviction or an invalidation) answers the queued value instead
    /// of calling the loader (read-your-writes; a dead letter is not answered). With a keyring
    /// the queued value is sealed ([`CacheBuilder::keyring`](crate::CacheBuilder::keyring)).
    pub async fn write_behind(&self, key: impl AsRef<[u8]>, value: V) -> Result<(), CacheError> {
        self.write_behind_with_tags(key, value, &[] as &[&str]).await
    }

    /// [`write_behind`](Self::write_behind) with tags (as
    /// [`insert_with_tags`](Self::insert_with_tags)). Tags that cannot be stamped fail the
    /// call before anything is queued.
    pub async fn write_behind_with_tags<S: AsRef<str>>(
        &self,
        key: impl AsRef<[u8]>,
        value: V,
        tags: &[S],
    ) -> Result<(), CacheError> {
        let behind = self.behind()?.clone();
        let key = self.write_key(Bytes::copy_from_slice(key.as_ref())).await?;
        let encoded =
            rmp_serde::to_vec_named(&value).map_err(|e| CacheError::Encode(e.to_string()))?;
        let stamps = self.stamp(tags).await?;
        // Queue order is call order for a key, and so is tier order.
        let _order = behind.key_lock(&key).lock().await;
        let room = behind.admit(&key).await?;
        behind.queue(room, key.clone(), Bytes::from(encoded)).await?;
        self.write_stamped(key, value, stamps).await
    }

    /// Wait until every pending write-behind write has been written to the origin or become
    /// a dead letter.
    pub async fn flush_write_behind(&self) -> Result<(), CacheError> {
        self.behind()?.drained().await;
        Ok(())
    }

    /// The write-behind queue's depth, dead letters and oldest pending write.
    pub fn write_behind_status(&self) -> Result<WriteBehindStatus, CacheError> {
        Ok(self.behind()?.status())
    }

    /// The dead letters kept, oldest first (values as MessagePack bytes).
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, CacheError> {
        Ok(self.behind()?.dead_letters())
    }

    /// Make every dead letter pending again (it keeps its sequence number: a dead letter of a
    /// key written again since was superseded and is gone). Returns how many.
    pub async fn replay_dead_letters(&self) -> Result<usize, CacheError> {
        self.behind()?.settle_dead(true).await
    }

    /// Drop every dead letter (never written). Returns how many.
    pub async fn discard_dead_letters(&self) -> Result<usize, CacheError> {
        self.behind()?.settle_dead(false).await
    }
}

impl<V: CacheValue> Hierarchy<V> {
    /// Invalidate again the keys whose pending write was invalidated, now that it is written.
    pub(super) async fn invalidate_again(&self, keys: Vec<Bytes>) {
        for key in keys {
            if let Err(e) = self.invalidate_key(key).await {
                tracing::warn!(cache = %self.name(), error = %e, "write-behind: invalidating a written key again failed");
            }
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
    /// The namespace version as the generation store has it (a missing one created with a
    /// fresh start, see [`GenerationStore::stamp`]), under the namespace guard; `uncached`:
    /// read past any copy the store keeps in process.
    ///
    /// [`GenerationStore::stamp`]: crate::spi::GenerationStore::stamp
    pub(super) async fn read_namespace(&self, uncached: bool) -> Result<u64, TierError> {
        let tags: [Arc<str>; 1] = [Arc::from(namespace_tag(self.name()))];
        let store = self.generations();
        let read = if uncached { store.stamp_uncached(&tags) } else { store.stamp(&tags) };
        let versions = self.guards().namespace.run(read).await?;
        versions.first().copied().ok_or_else(|| {
            TierError::new(
                TierErrorKind::Decode,
                "the generation store answered no namespace version",
            )
        })
    }

    /// Remove `key` from every tier (lowest first) and tell every other instance.
    pub(super) async fn invalidate_key(&self, key: Bytes) -> Result<(), CacheError> {
        let removed = self.writer().remove_everywhere(&key, false).await;
        self.metrics().invalidation("key", "local");
        let what = Invalidation::Key(key);
        self.observe(&what);
        published(removed, self.publish(what).await)
    }

    /// Tell the other instances (when there is a backplane), under its timeout and breaker —
    /// after a namespace move not told yet (see [`tell_namespace`](Self::tell_namespace)): a
    /// notice of a key built with the new version means nothing to an instance still on the
    /// old one. A namespace notice that fails is kept to be told again.
    pub(super) async fn publish(&self, what: Invalidation) -> Result<(), CacheError> {
        // Told first, whatever `what` is (a newer move's own notice supersedes it: then the
        // pending one is only cleared once that is told).
        if !matches!(what, Invalidation::Namespace(_)) {
            let _ = self.tell_namespace().await;
        }
        let outcome = self.publish_now(&what).await;
        match (&what, &outcome) {
            (Invalidation::Namespace(v), Err(e)) => {
                let before = self.untold_namespace().fetch_max(*v, Ordering::AcqRel);
                if before == 0 {
                    tracing::warn!(cache = %self.name(), version = v, error = %e, "a namespace move could not be told to the other instances: retried until told");
                }
            }
            (Invalidation::Namespace(v), Ok(())) => {
                // Told: a pending older (or this) version needs no notice of its own any more.
                let _ = self.untold_namespace().fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |pending| (pending != 0 && pending <= *v).then_some(0),
                );
            }
            _ => {}
        }
        outcome
    }

    /// Publish the namespace version not told yet, if any (the listener retries it every
    /// 50 ms; every other notice tries it first). `true` when nothing is left to tell.
    pub(super) async fn tell_namespace(&self) -> bool {
        let v = self.untold_namespace().load(Ordering::Acquire);
        if v == 0 {
            return true;
        }
        if self.publish_now(&Invalidation::Namespace(v)).await.is_err() {
            return false;
        }
        // Cleared unless a newer move failed meanwhile (that one stays to be told).
        let _ = self.untold_namespace().compare_exchange(v, 0, Ordering::AcqRel, Ordering::Acquire);
        tracing::info!(cache = %self.name(), version = v, "a namespace move told to the other instances after all");
        true
    }

    /// Publish `what` on the backplane (when there is one), under its timeout and breaker.
    async fn publish_now(&self, what: &Invalidation) -> Result<(), CacheError> {
        match self.backplane() {
            None => Ok(()),
            Some(b) => self
                .guards()
                .backplane
                .run(b.publish(self.name(), what))
                .await
                .map(|_| ())
                .map_err(|e| CacheError::Tier { tier: "backplane".into(), source: e }),
        }
    }
}

/// A refusal of a write that wrote nothing, saying so.
pub(super) fn nothing_written(e: CacheError) -> CacheError {
    match e {
        CacheError::Tier { tier, source } => {
            let why = format!("{}; nothing was written", source.message());
            CacheError::Tier { tier, source: TierError::new(source.kind(), why) }
        }
        other => other,
    }
}
