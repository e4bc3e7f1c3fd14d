//! A fleet-wide lock for loads: one instance of the whole fleet loads a cold key while the
//! others wait for the value to appear in the shared tier.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::TierError;

/// Proof of holding a lock, to release it (compare-and-delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(pub String);

/// A distributed lock keyed by cache key.
#[async_trait]
pub trait DistributedLock: Send + Sync + 'static {
    /// Try once to take the lock for `key`, held at most `ttl`. `Ok(None)`: someone else holds it.
    async fn try_acquire(&self, key: &[u8], ttl: Duration) -> Result<Option<LockToken>, TierError>;

    /// Release the lock if it is still ours (a lock that expired and was taken by another is left
    /// alone).
    async fn release(&self, key: &[u8], token: &LockToken) -> Result<(), TierError>;
}

/// How a hierarchy uses its distributed lock.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// How long the lock is held at most (the loader must finish within it). Default: 10 s.
    pub ttl: Duration,
    /// How long an instance that did not get the lock waits for the value before loading itself.
    /// Default: 5 s.
    pub wait: Duration,
    /// First poll interval while waiting; doubled up to `max_poll`. Default: 5 ms.
    pub first_poll: Duration,
    /// Longest poll interval. Default: 100 ms.
    pub max_poll: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            wait: Duration::from_secs(5),
            first_poll: Duration::from_millis(5),
            max_poll: Duration::from_millis(100),
        }
    }
}
