//! Batches: `get_many` and `get_many_or_load` walk the tiers with one `get_many` per tier, under
//! the same usability rule as a single-key read; `get_many_or_load` loads its misses through the
//! same loader run: a key already in flight is joined, the others are loaded by one loader call,
//! each under the fleet lock, with the same fail-safe. `insert_many` writes with one
//! `insert_many` per tier under the keys' stripes (so it wins races as `insert` does) and sends
//! one insert notice per key.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::handle::Cache;
use super::loader::BatchLoader;
use super::lookup::Looked;
use super::options::{CacheValue, CallSettings};
use super::tiers::TierSet;
use super::write::published;
use crate::backplane::Invalidation;
use crate::entry::Entry;
use crate::error::{BoxError, CacheError};

impl<V: CacheValue> Cache<V> {
    /// Look many keys up at once, without loading: one `get_many` per tier for the keys still
    /// without a fresh entry, each entry judged by the same rule as [`get`](Self::get); a fresh
    /// hit in a lower tier is backfilled. The answer is in the order of `keys`: `None` for a
    /// miss, a stale-only entry or a negative entry.
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
    /// let (ada, bob) = (cache.key("1"), cache.key("2"));
    /// cache.insert_many([(ada.clone(), "Ada".to_string())]).await?;
    /// let found = cache.get_many(&[ada, bob]).await;
    /// assert_eq!(found[0].as_deref().map(String::as_str), Some("Ada"));
    /// assert!(found[1].is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Option<Arc<V>>> {
        let hierarchy = self.hierarchy();
        if hierarchy.bypassed() {
            return keys.iter().map(|_| None).collect();
        }
        let Looked { ready, walked } = hierarchy.look_many(keys).await;
        let mut answers: Vec<Option<Arc<V>>> = ready.into_iter().map(Option::flatten).collect();
        for (i, key, walk) in walked {
            let Some(found) = walk.fresh else { continue };
            hierarchy.record_hot(&key);
            hierarchy.backfill(&key, &found, TierSet::EMPTY).await;
            answers[i] = found.value;
        }
        answers
    }

    /// Write many values at once, as [`insert`](Self::insert) writes one: to every tier, each
    /// with its own lifetime — one `insert_many` per tier (pipelined in Redis, compare-and-set
    /// per key) — and one value-free notice per key to the other instances. A key given twice
    /// keeps its last value. While it runs it holds the keys' stripes, so a load or backfill
    /// of one of them that read before it never lands after it. As `insert`, it supersedes
    /// the keys' pending [`write_behind`](Self::write_behind) writes (not in a batch in flight).
    ///
    /// Every enabled tier is tried; the first failure is returned (tiers whose breaker is open
    /// are skipped, not failures), else the backplane's.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tier_core::CacheError> {
    /// use std::time::Duration;
    /// use tier_core::{Cache, TierPolicy};
    /// use tier_memory::MemoryTier;
    ///
    /// let cache: Cache<u32> = Cache::builder("scores")
    ///     .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
    ///     .build()?;
    /// let keys: Vec<_> = (0..100).map(|i| cache.key(i.to_string())).collect();
    /// cache.insert_many(keys.iter().cloned().zip(0u32..)).await?;
    /// assert_eq!(cache.get(&keys[7]).await.as_deref(), Some(&7));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn insert_many<K, I>(&self, items: I) -> Result<(), CacheError>
    where
        K: AsRef<[u8]>,
        I: IntoIterator<Item = (K, V)>,
    {
        self.insert_many_with_tags(items, &[] as &[&str]).await
    }

    /// [`insert_many`](Self::insert_many) with `tags` on every entry:
    /// [`invalidate_tag`](Self::invalidate_tag) of any of them drops these entries. The tags
    /// are stamped once for the batch; when they cannot be (the generation store is
    /// unavailable) nothing is written.
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
    /// let team = [(cache.key("1"), "Ada".to_string()), (cache.key("2"), "Bob".to_string())];
    /// cache.insert_many_with_tags(team, &["team:7"]).await?;
    /// cache.invalidate_tag("team:7").await?;
    /// assert!(cache.get(cache.key("1")).await.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn insert_many_with_tags<K, I, S>(
        &self,
        items: I,
        tags: &[S],
    ) -> Result<(), CacheError>
    where
        K: AsRef<[u8]>,
        I: IntoIterator<Item = (K, V)>,
        S: AsRef<str>,
    {
        let hierarchy = self.hierarchy();
        if hierarchy.bypassed() {
            return Ok(());
        }
        // As `insert`: the namespace version confirmed while uncertain, keys of a version
        // moved past built again under the current one.
        self.confirm_namespace().await.map_err(super::write::nothing_written)?;
        let mut index: HashMap<Bytes, usize> = HashMap::new();
        let mut items_by_key: Vec<(Bytes, V)> = Vec::new();
        for (key, value) in items {
            let key = self.rebase(Bytes::copy_from_slice(key.as_ref())).await;
            match index.get(&key) {
                Some(&i) => items_by_key[i].1 = value,
                None => {
                    index.insert(key.clone(), items_by_key.len());
                    items_by_key.push((key, value));
                }
            }
        }
        if items_by_key.is_empty() {
            return Ok(());
        }
        let stamps = self.stamp(tags).await?;
        // As `insert`: the caller wrote the origin; the keys' pending write-behind writes are
        // superseded (one rule, `supersede_pending`).
        let all: Vec<Bytes> = items_by_key.iter().map(|(k, _)| k.clone()).collect();
        self.supersede_pending(&all).await?;
        let now = hierarchy.fleet().created_now();
        let mut by_tier: BTreeMap<usize, Vec<(Bytes, Entry)>> = BTreeMap::new();
        let mut notices = Vec::with_capacity(items_by_key.len());
        let mut keys = Vec::with_capacity(items_by_key.len());
        for (key, value) in items_by_key {
            // As for one insert: after a clear or a gap in the same millisecond.
            let created_at = hierarchy.stripes().created_at(now);
            let entries = self.insert_entries(&key, value, created_at, stamps.clone())?;
            for (j, entry) in entries {
                by_tier.entry(j).or_default().push((key.clone(), entry));
            }
            keys.push(key.clone());
            notices.push(Invalidation::Written { key, created_at });
        }
        let written =
            hierarchy.writer().write_through_many(&keys, by_tier.into_iter().collect()).await;
        notices.iter().for_each(|what| hierarchy.observe(what));
        let sent = futures::future::join_all(notices.into_iter().map(|w| hierarchy.publish(w)));
        // As `insert`: a namespace move that landed before the writes (one read for the batch).
        let (sent, settled) = tokio::join!(sent, self.settle_namespace(&keys));
        let backplane = sent.into_iter().find(Result::is_err).unwrap_or(Ok(()));
        published(written.err(), settled.and(backplane))
    }

    /// Get many keys at once. Keys fresh in a tier are answered from it (one `get_many` per
    /// tier); the others are passed to `loader` in one call, which returns the values it found;
    /// keys it does not return are cached as negative entries. The answer is in the order of
    /// `keys`.
    ///
    /// A key whose load is already in flight (a `get_or_load` or another batch) waits for that
    /// load instead of being passed to `loader`; with a fleet lock, each key passed to `loader`
    /// is locked while it runs (a key locked by another instance waits for its value first).
    /// When the loader fails, keys with a servable stale value get it (fail-safe, within its
    /// `max_stale_age`); if any key is left without an answer, the loader's error is returned.
    pub async fn get_many_or_load<K, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>, CacheError>
    where
        K: AsRef<[u8]>,
        F: FnOnce(Vec<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<HashMap<Bytes, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let hierarchy = self.hierarchy();
        let keys: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k.as_ref())).collect();
        let loader = BatchLoader::new(loader);
        if hierarchy.bypassed() {
            let mut found = hierarchy.load_many_bypassing(keys.clone(), loader).await?;
            return Ok(keys.iter().map(|k| found.remove(k).map(Arc::new)).collect());
        }
        let Looked { ready: mut answers, walked } = hierarchy.look_many(&keys).await;
        let mut missing = Vec::new();
        for (i, key, walk) in walked {
            match walk.fresh {
                Some(found) => {
                    hierarchy.backfill(&key, &found, TierSet::EMPTY).await;
                    answers[i] = Some(found.value);
                }
                None => missing.push((i, key, walk.stale)),
            }
        }
        if missing.is_empty() {
            return Ok(answers.into_iter().flatten().collect());
        }
        let waiters = hierarchy.join_or_load_many(
            missing.iter().map(|(_, key, stale)| (key.clone(), stale.clone())).collect(),
            loader,
        );
        let call = CallSettings::of_cache(hierarchy.opts());
        let waits = missing
            .iter()
            .zip(waiters)
            .map(|((_, _, stale), waiter)| hierarchy.wait(waiter, stale.as_ref(), &call));
        for ((i, _, _), answer) in missing.iter().zip(futures::future::join_all(waits).await) {
            answers[*i] = Some(answer?);
        }
        Ok(answers.into_iter().flatten().collect())
    }
}
