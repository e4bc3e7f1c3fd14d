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

/// How a hierarchy uses its distributed lock. The cache builder refuses a zero `ttl`,
/// `first_poll` or `max_poll`.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// How long the lock is held at most (the loader must finish within it). Range: more than
    /// zero. Default: 10 s.
    pub ttl: Duration,
    /// How long an instance that did not get the lock waits for the value before loading itself
    /// (zero: it tries the lock once; a wait too long to be an instant has no end). Default: 5 s.
    pub wait: Duration,
    /// First poll interval while waiting; doubled up to `max_poll`. Range: more than zero.
    /// Default: 5 ms.
    pub first_poll: Duration,
    /// Longest poll interval. Range: more than zero. Default: 100 ms.
    pub max_poll: Duration,
}

impl LockOptions {
    /// Why these options are refused, if they are.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, d) in
            [("ttl", self.ttl), ("first_poll", self.first_poll), ("max_poll", self.max_poll)]
        {
            if d.is_zero() {
                return Err(format!("lock option {name} is zero"));
            }
        }
        Ok(())
    }
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
