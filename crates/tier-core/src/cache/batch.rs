//! Batch reads: `get_many_or_load` walks the tiers with one `get_many` per tier, under the same
//! usability rule as a single-key read, and loads its misses through the same loader run: a key
//! already in flight is joined, the others are loaded by one loader call, each under the fleet
//! lock, with the same fail-safe.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::handle::Cache;
use super::load::BatchLoader;
use super::options::{CacheValue, CallSettings};
use super::tiers::TierSet;
use crate::error::{BoxError, CacheError};

impl<V: CacheValue> Cache<V> {
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
        let seqs: Vec<u64> = keys.iter().map(|k| hierarchy.stripes().seq(k)).collect();
        let walks = hierarchy.walk_many(&keys, &seqs).await;
        let mut answers: Vec<Option<Option<Arc<V>>>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (key, walk) in keys.iter().zip(walks) {
            match walk.fresh {
                Some(found) => {
                    hierarchy.backfill(key, &found, TierSet::EMPTY).await;
                    answers.push(Some(found.value));
                }
                None => {
                    missing.push((answers.len(), key.clone(), walk.stale));
                    answers.push(None);
                }
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
