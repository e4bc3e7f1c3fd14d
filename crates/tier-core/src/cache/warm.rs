//! Warm-up: load a list of keys with bounded concurrency, as `get_or_load` calls.

use std::future::Future;

use bytes::Bytes;
use futures::StreamExt;

use super::handle::Cache;
use super::options::CacheValue;
use crate::error::BoxError;

/// Progress of [`Cache::warm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys done so far.
    pub done: usize,
    /// Keys in all.
    pub total: usize,
}

/// Outcome of [`Cache::warm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Keys that now have a value (loaded or already cached).
    pub loaded: usize,
    /// Keys the origin says do not exist.
    pub none: usize,
    /// Keys whose load failed.
    pub failed: usize,
}

impl<V: CacheValue> Cache<V> {
    /// Load `keys` with at most `concurrency` loads at once (start-up warming; 0 counts as 1).
    /// Keys already fresh in a tier are not loaded again. `progress` is called after each key.
    pub async fn warm<I, K, F, Fut, E>(
        &self,
        keys: I,
        concurrency: usize,
        load: F,
        progress: impl Fn(WarmProgress),
    ) -> WarmReport
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
        F: Fn(Bytes) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let keys: Vec<Bytes> =
            keys.into_iter().map(|k| Bytes::copy_from_slice(k.as_ref())).collect();
        let total = keys.len();
        let mut report = WarmReport::default();
        let mut results = futures::stream::iter(keys)
            .map(|key| {
                let load = load.clone();
                let k = key.clone();
                async move { self.get_or_load(&key, move || load(k)).await }
            })
            .buffer_unordered(concurrency.max(1));
        let mut done = 0;
        while let Some(r) = results.next().await {
            match r {
                Ok(Some(_)) => report.loaded += 1,
                Ok(None) => report.none += 1,
                Err(_) => report.failed += 1,
            }
            done += 1;
            progress(WarmProgress { done, total });
        }
        report
    }
}
