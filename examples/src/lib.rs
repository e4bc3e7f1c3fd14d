//! What the example programs (`src/bin/`) share: the Redis side of a fleet (the L3 tier, the
//! backplane and the shared tag generations under one key prefix), and a line on stdout that a
//! program's driver waits for.
//!
//! Each program is run by `tests/examples.rs` against the test Redis of `scripts/test`; the
//! README lists the command that runs each by hand.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tier::redis::{RedisBackplane, RedisConnection, RedisGenerations, RedisTier};
use tier::{CacheBuilder, CacheValue, ReconnectPolicy, TierPolicy};

/// The Redis URL the programs use when `--redis` and `REDIS_URL` are not given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// The Redis parts of one instance of a fleet: L3, the backplane that tells the other
/// instances of every invalidation and insert, and the tag generations they share.
pub struct Fleet {
    /// The shared tier (L3).
    pub tier: RedisTier,
    /// The invalidation log (a Redis Stream).
    pub backplane: RedisBackplane,
    /// Tag generations and namespace versions, in Redis.
    pub generations: RedisGenerations,
    connection: RedisConnection,
}

impl Fleet {
    /// Connect to `url` with every key under `prefix` (entries `{prefix}entries:`, generations
    /// `{prefix}gen:`, the log `{prefix}log`: none a prefix of another). The connection is
    /// lazy: a service starts while Redis is down and uses it once it is up.
    ///
    /// # Errors
    /// A URL that does not parse, or a server that refuses the set-up.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, tier::redis::SetupError> {
        let conn = RedisConnection::standalone(url)
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_millis(200))
            .lazy(true)
            .connect()
            .await?;
        let tier =
            RedisTier::builder(conn.clone()).prefix(format!("{prefix}entries:")).build().await?;
        let backplane =
            RedisBackplane::builder(conn.clone()).stream(format!("{prefix}log")).build().await?;
        let generations = RedisGenerations::new(conn.clone())
            .prefix(format!("{prefix}gen:"))
            .cached_with(&backplane);
        Ok(Self { tier, backplane, generations, connection: conn })
    }

    /// Wait until the (lazy) connection is made, at most `within`; whether it is.
    pub async fn connected(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.connection.connected()).await.is_ok()
    }

    /// Mount these parts on `builder`: L3 with `policy`, the shared generations and the
    /// backplane (catching up on what was missed after a reconnect or a restart).
    pub fn mount<V: CacheValue>(
        self,
        builder: CacheBuilder<V>,
        policy: TierPolicy,
    ) -> CacheBuilder<V> {
        builder
            .tier(self.tier, policy)
            .generations(Arc::new(self.generations))
            .backplane(Arc::new(self.backplane), ReconnectPolicy::CatchUp)
    }
}

/// Get `cache` ready to take traffic, within `within`: read its namespace version from Redis
/// (the keys carry it), trying again until it answers — a single read is bounded by the
/// fleet-state timeout (100 ms), which a loaded machine can exceed; keys built before it is
/// read carry version 0, and entries under them are not found once it is — then wait until it
/// has caught up with the invalidation log ([`Cache::caught_up`](tier::Cache::caught_up)): a
/// value loaded before may be demoted by the gap a backplane reports when its lazy connection
/// was made after the build, and loaded a second time.
///
/// # Errors
/// The namespace version not read within `within` (the last failure), or the log not caught
/// up with by then.
pub async fn ready<V: CacheValue>(cache: &tier::Cache<V>, within: Duration) -> Result<u64, String> {
    let deadline = tokio::time::Instant::now() + within;
    let version = loop {
        match cache.sync_namespace().await {
            Ok(version) => break version,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("the namespace version was not read: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    tokio::time::timeout_at(deadline, cache.caught_up())
        .await
        .map_err(|_| format!("not caught up with the invalidation log within {within:?}"))?;
    Ok(version)
}

/// Print `line` on stdout at once (a driver reading the program's output waits for it).
pub fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the driver gone) is no reason to fail the program.
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}
