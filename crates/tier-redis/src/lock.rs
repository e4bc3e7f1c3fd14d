//! [`RedisLock`]: the fleet-wide stampede lock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tier_core::spi::{DistributedLock, LockToken};
use tier_core::TierError;

use crate::commands;
use crate::connection::RedisConnection;
use crate::keys::{KeyPrefix, DEFAULT_LOCK_PREFIX};

/// A distributed lock per cache key: `SET prefix+key token NX PX ttl`, released by a
/// compare-and-delete Lua script.
///
/// Invariants: a token is 128 random bits, so a lock is only ever released by its holder; a lock
/// whose holder died disappears after its TTL; a release after the TTL expired (and another
/// instance took the lock) leaves the other instance's lock alone. In a Cluster the lock key lives
/// on the master of its slot (no Redlock: a failover can lose a lock, which costs at most one
/// extra load).
///
/// ```no_run
/// # async fn demo(conn: tier_redis::RedisConnection) -> Result<(), tier_core::TierError> {
/// use std::time::Duration;
/// use tier_core::spi::DistributedLock;
/// let lock = tier_redis::RedisLock::new(conn);
/// if let Some(token) = lock.try_acquire(b"user:1", Duration::from_secs(10)).await? {
///     // ... load ...
///     lock.release(b"user:1", &token).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLock {
    conn: RedisConnection,
    prefix: KeyPrefix,
    release: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock").field("prefix", &self.prefix).finish()
    }
}

impl RedisLock {
    /// Locks on `conn`, under the prefix `"tier-lock:"`.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            prefix: KeyPrefix::from_static(DEFAULT_LOCK_PREFIX),
            release: Arc::new(redis::Script::new(commands::LOCK_RELEASE)),
        }
    }

    /// Prefix of lock keys; keep it apart from the tier's prefix (the tier's `clear` would
    /// otherwise remove held locks). Default: `"tier-lock:"`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.prefix = KeyPrefix::new(prefix);
        self
    }

    /// The Redis key of the lock for `key`.
    pub fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        self.prefix.key(key)
    }
}

fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[async_trait]
impl DistributedLock for RedisLock {
    async fn try_acquire(&self, key: &[u8], ttl: Duration) -> Result<Option<LockToken>, TierError> {
        let token = new_token();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let cmd = commands::lock_acquire(&self.redis_key(key), &token, ttl_ms);
        let reply: Option<String> = self.conn.query("lock acquire", &cmd).await?;
        Ok(reply.map(|_| LockToken(token)))
    }

    async fn release(&self, key: &[u8], token: &LockToken) -> Result<(), TierError> {
        let mut conn = self.conn.conn()?;
        let mut invocation = self.release.key(self.redis_key(key));
        invocation.arg(&token.0);
        let _deleted: i64 =
            self.conn.bounded("lock release", invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }
}
