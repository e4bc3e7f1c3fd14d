//! Writes and invalidation: insert (write-through), invalidate (lowest tier first), tags,
//! namespace, clear; the backplane listener and the gauge task.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use super::{Cache, CacheValue, Inner};
use crate::backplane::{BackplaneEvent, Invalidation, ReconnectPolicy};
use crate::envelope::Meta;
use crate::error::{CacheError, TierError, TierErrorKind};
use crate::time::now_ms;

/// The generation-store tag that holds a namespace's version.
fn namespace_tag(name: &str) -> String {
    format!("\u{0}ns:{name}")
}

/// Keep the first real failure; an open breaker or a disabled tier is not one.
fn first_failure(first: &mut Option<CacheError>, tier: &str, e: TierError) {
    if first.is_none() && !matches!(e.kind(), TierErrorKind::CircuitOpen | TierErrorKind::Disabled)
    {
        *first = Some(CacheError::Tier { tier: tier.to_string(), source: e });
    }
}

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
        let inner = &self.inner;
        if inner.bypass.load(Ordering::Relaxed) {
            return Ok(());
        }
        let key = Bytes::copy_from_slice(key.as_ref());
        let tags: Vec<Arc<str>> = tags.iter().map(|t| Arc::from(t.as_ref())).collect();
        let stamps = if tags.is_empty() {
            None
        } else {
            let g = inner
                .generations
                .current(&tags)
                .await
                .map_err(|e| CacheError::Tier { tier: "generations".into(), source: e })?;
            Some(
                tags.iter()
                    .zip(g)
                    .map(|(t, g)| crate::TagStamp { tag: t.clone(), generation: g })
                    .collect(),
            )
        };
        let meta = Meta { created_at: now_ms(), tags: stamps, ..Meta::default() };
        let value = Arc::new(value);
        let entries = inner.entries(Some(&value), &meta, 0)?;
        let stripe = inner.stripe(&key);
        let _exclusive = stripe.lock.write().await;
        stripe.seq.fetch_add(1, Ordering::AcqRel);
        let mut first = None;
        for (j, entry) in entries {
            if let Err(e) = inner.write_one(j, key.clone(), entry).await {
                first_failure(&mut first, &inner.layers[j].name, e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Remove `key` from every tier (lowest first) and tell every other instance.
    pub async fn invalidate(&self, key: impl AsRef<[u8]>) -> Result<(), CacheError> {
        let key = Bytes::copy_from_slice(key.as_ref());
        let mut first = self.inner.remove_everywhere(&key, false).await;
        self.inner.metrics.invalidation("key", "local");
        if let Err(e) = self.inner.publish(Invalidation::Key(key)).await {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Drop every entry carrying `tag`, in O(1): its generation moves on, and entries stamped
    /// with an older one are treated as misses from now on.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.inner
            .generations
            .bump(tag)
            .await
            .map_err(|e| CacheError::Tier { tier: "generations".into(), source: e })?;
        self.inner.metrics.invalidation("tag", "local");
        self.inner.publish(Invalidation::Tag(Arc::from(tag))).await
    }

    /// Drop the whole namespace in O(1): the key version moves on ([`Cache::key`] builds keys
    /// with the new version; old keys age out of the tiers).
    pub async fn invalidate_namespace(&self) -> Result<(), CacheError> {
        let v = self
            .inner
            .generations
            .bump(&namespace_tag(&self.inner.name))
            .await
            .map_err(|e| CacheError::Tier { tier: "generations".into(), source: e })?;
        self.inner.keys.set_version(v);
        self.inner.bump_all_seqs();
        self.inner.metrics.invalidation("namespace", "local");
        self.inner.publish(Invalidation::Namespace(v)).await
    }

    /// Read the namespace version from the generation store (useful at start-up when the store
    /// is shared and another instance has moved it on).
    pub async fn sync_namespace(&self) -> Result<u64, CacheError> {
        let tag: Arc<str> = Arc::from(namespace_tag(&self.inner.name));
        let v = self
            .inner
            .generations
            .current(&[tag])
            .await
            .map_err(|e| CacheError::Tier { tier: "generations".into(), source: e })?;
        let v = v.first().copied().unwrap_or(0);
        self.inner.keys.set_version(v);
        Ok(self.inner.keys.version())
    }

    /// Remove everything from every tier (lowest first) and tell every other instance.
    pub async fn clear(&self) -> Result<(), CacheError> {
        let mut first = self.inner.clear_layers(false).await;
        self.inner.metrics.invalidation("clear", "local");
        if let Err(e) = self.inner.publish(Invalidation::Clear).await {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    pub(super) fn start_background(&self, gauge_interval: Duration) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(cache = %self.inner.name, "built outside a tokio runtime: no background tasks");
            return;
        };
        let mut tasks = Vec::new();
        let weak = self.downgrade();
        tasks.push(handle.spawn(async move {
            let mut tick = tokio::time::interval(gauge_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.report_gauges();
            }
        }));
        if let Some(backplane) = &self.inner.backplane {
            let mut rx = backplane.subscribe();
            let weak = self.downgrade();
            tasks.push(handle.spawn(async move {
                loop {
                    let event = rx.recv().await;
                    let Some(inner) = weak.upgrade() else { return };
                    match event {
                        Ok(BackplaneEvent::Invalidate { cache, what }) if *cache == *inner.name => {
                            inner.apply_remote(what).await;
                        }
                        Ok(BackplaneEvent::Invalidate { .. }) => {}
                        Ok(BackplaneEvent::Reconnected) => {
                            inner.recover("backplane reconnected").await
                        }
                        Err(RecvError::Lagged(n)) => {
                            inner
                                .recover(&format!("{n} backplane messages dropped (slow consumer)"))
                                .await
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            }));
        }
        let mut slot = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        slot.extend(tasks);
    }
}

impl<V: CacheValue> Inner<V> {
    /// Remove a key from every tier, lowest first (only local tiers when `local_only`).
    /// Returns the first failure; every tier is tried.
    pub(crate) async fn remove_everywhere(
        &self,
        key: &Bytes,
        local_only: bool,
    ) -> Option<CacheError> {
        let stripe = self.stripe(key);
        let _exclusive = stripe.lock.write().await;
        stripe.seq.fetch_add(1, Ordering::AcqRel);
        let mut first = None;
        for layer in self.layers.iter().rev() {
            if local_only && layer.shared {
                continue;
            }
            if let Err(e) = layer.tier.remove(key).await {
                if layer.enabled() {
                    first_failure(&mut first, &layer.name, e);
                }
            }
        }
        first
    }

    pub(crate) async fn clear_layers(&self, local_only: bool) -> Option<CacheError> {
        let _exclusive = self.lock_all().await;
        let mut first = None;
        for layer in self.layers.iter().rev() {
            if local_only && layer.shared {
                continue;
            }
            if let Err(e) = layer.tier.clear().await {
                if layer.enabled() {
                    first_failure(&mut first, &layer.name, e);
                }
            }
        }
        first
    }

    async fn publish(&self, what: Invalidation) -> Result<(), CacheError> {
        match &self.backplane {
            None => Ok(()),
            Some(b) => b
                .publish(&self.name, &what)
                .await
                .map_err(|e| CacheError::Tier { tier: "backplane".into(), source: e }),
        }
    }

    /// Apply another instance's invalidation to this instance's local tiers.
    pub(crate) async fn apply_remote(&self, what: Invalidation) {
        let kind = what.kind();
        match what {
            Invalidation::Key(key) => {
                if let Some(e) = self.remove_everywhere(&key, true).await {
                    tracing::warn!(cache = %self.name, error = %e, "remote invalidation failed on a local tier");
                }
            }
            Invalidation::Tag(tag) => self.generations.remote_bump(&tag),
            Invalidation::Namespace(v) => {
                self.keys.set_version(v);
                self.bump_all_seqs();
            }
            Invalidation::Clear => {
                if let Some(e) = self.clear_layers(true).await {
                    tracing::warn!(cache = %self.name, error = %e, "remote clear failed on a local tier");
                }
            }
        }
        self.metrics.invalidation(kind, "backplane");
    }

    /// Messages may have been missed: the local tiers are suspect.
    async fn recover(&self, why: &str) {
        self.generations.forget_cached();
        match self.opts.reconnect {
            ReconnectPolicy::Clear => {
                tracing::warn!(cache = %self.name, reason = why, "backplane gap: clearing local tiers");
                if let Some(e) = self.clear_layers(true).await {
                    tracing::warn!(cache = %self.name, error = %e, "clearing local tiers failed");
                }
            }
            ReconnectPolicy::MarkStale => {
                tracing::warn!(cache = %self.name, reason = why, "backplane gap: local entries marked stale");
                self.bump_all_seqs();
                self.suspect_before.store(now_ms(), Ordering::Relaxed);
            }
        }
        self.metrics.invalidation("clear", "backplane");
    }
}
