//! Batches: `get_many_or_load` walks the tiers with one `get_many` per tier and calls the loader
//! once for every key still missing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::read::{decode, Found};
use super::{Cache, CacheValue, Inner};
use crate::entry::Lookup;
use crate::envelope::Meta;
use crate::error::{BoxError, CacheError};
use crate::metrics::LookupResult;
use crate::time::now_ms;

impl<V: CacheValue> Cache<V> {
    /// Get many keys at once. Keys fresh in a tier are answered from it (one `get_many` per
    /// tier); the others are passed to `loader` in one call, which returns the values it found;
    /// keys it does not return are cached as negative entries. The answer is in the order of
    /// `keys`.
    ///
    /// When the loader fails, keys with a servable stale value get it (fail-safe); if any key
    /// is left without an answer, the loader's error is returned.
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
        let inner = &self.inner;
        let keys: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k.as_ref())).collect();
        let mut answers: Vec<Option<Option<Arc<V>>>> = vec![None; keys.len()];
        let mut stale: Vec<Option<Found<V>>> = vec![None; keys.len()];
        let seqs: Vec<u64> = keys.iter().map(|k| inner.seq(k)).collect();
        if !inner.bypass.load(Ordering::Relaxed) {
            inner.walk_many(&keys, &seqs, &mut answers, &mut stale).await;
        }
        let missing: Vec<usize> = (0..keys.len()).filter(|i| answers[*i].is_none()).collect();
        if missing.is_empty() {
            return Ok(answers.into_iter().map(Option::flatten).collect());
        }
        let wanted: Vec<Bytes> = missing.iter().map(|i| keys[*i].clone()).collect();
        let started = Instant::now();
        let outcome = match inner.opts.hard_timeout {
            Some(hard) => match tokio::time::timeout(hard, loader(wanted)).await {
                Ok(r) => r.map_err(|e| CacheError::Load(Arc::from(e.into()))),
                Err(_) => Err(CacheError::LoadTimeout(hard)),
            },
            None => loader(wanted).await.map_err(|e| CacheError::Load(Arc::from(e.into()))),
        };
        let cost = started.elapsed();
        inner.metrics.load_duration.record(cost);
        match outcome {
            Ok(mut found) => {
                inner.metrics.loads_ok.increment(1);
                let bypass = inner.bypass.load(Ordering::Relaxed);
                for i in missing {
                    let value = found.remove(&keys[i]).map(Arc::new);
                    if !bypass {
                        let meta = Meta {
                            created_at: now_ms(),
                            load_cost_us: u32::try_from(cost.as_micros()).unwrap_or(u32::MAX),
                            negative: value.is_none(),
                            ..Meta::default()
                        };
                        let entries = inner.entries(value.as_ref(), &meta, 0)?;
                        inner.write_if_unchanged(&keys[i], seqs[i], entries).await;
                    }
                    answers[i] = Some(value);
                }
                Ok(answers.into_iter().map(Option::flatten).collect())
            }
            Err(e) => {
                match &e {
                    CacheError::LoadTimeout(_) => inner.metrics.loads_timeout.increment(1),
                    _ => inner.metrics.loads_error.increment(1),
                }
                let now = now_ms();
                let fail_safe = inner.opts.fail_safe.is_some();
                let mut out = Vec::with_capacity(keys.len());
                for (answer, stale) in answers.into_iter().zip(stale) {
                    match (answer, stale) {
                        (Some(v), _) => out.push(v),
                        (None, Some(s)) if fail_safe && s.entry.meta.is_alive(now) => {
                            inner.metrics.stale_served.increment(1);
                            out.push(s.value);
                        }
                        _ => return Err(e),
                    }
                }
                Ok(out)
            }
        }
    }
}

impl<V: CacheValue> Inner<V> {
    /// Walk the tiers for many keys; fill `answers` with fresh hits (backfilled) and `stale` with
    /// the first stale entry of the keys still open.
    async fn walk_many(
        self: &Arc<Self>,
        keys: &[Bytes],
        seqs: &[u64],
        answers: &mut [Option<Option<Arc<V>>>],
        stale: &mut [Option<Found<V>>],
    ) {
        for (j, layer) in self.layers.iter().enumerate() {
            let open: Vec<usize> = (0..keys.len()).filter(|i| answers[*i].is_none()).collect();
            if open.is_empty() {
                return;
            }
            let counters = |i: usize| &layer.metrics.get[self.category(&keys[i])];
            if !layer.enabled() {
                for i in &open {
                    counters(*i).add(LookupResult::Skipped, 1);
                }
                continue;
            }
            let batch: Vec<Bytes> = open.iter().map(|i| keys[*i].clone()).collect();
            let start = Instant::now();
            let result = layer.tier.get_many(&batch).await;
            layer.metrics.get_duration.record(start.elapsed());
            let lookups = match result {
                Ok(l) if l.len() == batch.len() => l,
                Ok(_) | Err(_) => {
                    let r = match &result {
                        Err(e) => self.tier_error(j, e),
                        Ok(_) => LookupResult::Error,
                    };
                    for i in &open {
                        counters(*i).add(r, 1);
                    }
                    continue;
                }
            };
            let now = now_ms();
            for (i, lookup) in open.into_iter().zip(lookups) {
                let (entry, fresh) = match lookup {
                    Lookup::Miss => {
                        counters(i).add(LookupResult::Miss, 1);
                        continue;
                    }
                    Lookup::Hit(e) => (e, true),
                    Lookup::Stale(e) => (e, false),
                };
                if !entry.meta.is_alive(now)
                    || entry.meta.tags.is_some() && !self.tags_current(&entry.meta).await
                {
                    counters(i).add(LookupResult::Miss, 1);
                    continue;
                }
                match decode::<V>(&entry) {
                    Ok(value) => {
                        let found = Found { layer: j, seq: seqs[i], entry, value };
                        if fresh {
                            counters(i).add(LookupResult::Hit, 1);
                            self.backfill(&keys[i], &found, 0).await;
                            answers[i] = Some(found.value);
                        } else {
                            counters(i).add(LookupResult::Stale, 1);
                            if stale[i].is_none() {
                                stale[i] = Some(found);
                            }
                        }
                    }
                    Err(e) => counters(i).add(self.tier_error(j, &e), 1),
                }
            }
        }
    }
}
