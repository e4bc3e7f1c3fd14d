//! Per-tier timeout as a wrapper that implements [`Tier`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::entry::{Entry, Lookup, ReadyLookup};
use crate::error::{TierError, TierErrorKind};
use crate::layer::{Mount, TierLayer};
use crate::tier::Tier;

/// A tier whose every call is bounded by a timeout; a late answer is
/// [`TierErrorKind::Timeout`] (a tier failure, counted by the breaker).
pub struct TimeoutTier {
    inner: Arc<dyn Tier>,
    timeout: Duration,
}

impl TimeoutTier {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Tier>, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    async fn bounded<T>(
        &self,
        op: &str,
        call: impl Future<Output = Result<T, TierError>>,
    ) -> Result<T, TierError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(TierError::new(
                TierErrorKind::Timeout,
                format!("{op} on tier {} took longer than {:?}", self.inner.name(), self.timeout),
            )),
        }
    }
}

/// The timeout layer: wraps a tier in a [`TimeoutTier`], unless the tier bounds its calls
/// within the timeout itself ([`Mount::bounded`], see [`Tier::bounds_calls`]). The cache
/// builder refuses a zero timeout (no call could ever answer); `Duration::MAX` is no timeout.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer(pub Duration);

impl TierLayer for TimeoutLayer {
    fn name(&self) -> &'static str {
        "timeout"
    }

    fn check(&self) -> Result<(), String> {
        if self.0.is_zero() {
            return Err("the timeout is zero: no call could ever answer".into());
        }
        Ok(())
    }

    fn call_timeout(&self) -> Option<Duration> {
        Some(self.0)
    }

    fn wrap(&self, tier: Arc<dyn Tier>, mount: &Mount<'_>) -> Arc<dyn Tier> {
        // The tier was told this timeout at attach and answers within it (a timer of ours
        // around its own would only cost, ~10 % of a Redis hit's instructions).
        if mount.bounded && mount.context.timeout == Some(self.0) {
            return tier;
        }
        Arc::new(TimeoutTier::new(tier, self.0))
    }
}

#[async_trait]
impl Tier for TimeoutTier {
    crate::tier::forward_tier_info!();
    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        self.bounded("get", self.inner.get(key)).await
    }
    fn get_ready(&self, key: &[u8]) -> ReadyLookup {
        // An answer that is ready cannot be late.
        self.inner.get_ready(key)
    }
    fn peek_ready(&self, key: &[u8]) -> ReadyLookup {
        self.inner.peek_ready(key)
    }
    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        self.bounded("get_many", self.inner.get_many(keys)).await
    }
    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        self.bounded("insert", self.inner.insert(key, entry)).await
    }
    async fn insert_many(&self, entries: Vec<(Bytes, Entry)>) -> Result<(), TierError> {
        self.bounded("insert_many", self.inner.insert_many(entries)).await
    }
    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        self.bounded("remove", self.inner.remove(key)).await
    }
    async fn clear(&self) -> Result<(), TierError> {
        self.bounded("clear", self.inner.clear()).await
    }
    async fn retime(&self, key: &[u8], how: crate::retime::Retime) -> Result<bool, TierError> {
        self.bounded("retime", self.inner.retime(key, how)).await
    }
}
