//! [`RedisInspector`]: a read-only view of what a Redis tier holds, for tools (the `tier redis`
//! command), beside a running service.

use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tier_core::TierError;

use crate::commands;
use crate::connection::{RedisConnection, Route};
use crate::error::reply_error;
use crate::keys::KeyPrefix;

/// A key found under the prefix, with what Redis says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredKey {
    /// The key without the tier's prefix.
    pub key: Bytes,
    /// Where it lives: a master's `host:port`, or the standalone server's (redacted) URL.
    pub node: String,
    /// Time left to live; `None` for a key without expiry (the tier never writes one).
    pub ttl: Option<Duration>,
    /// Bytes of the value.
    pub bytes: u64,
    /// `fresh_until` and `stale_until` (Unix ms) of the envelope's header; `None` when the
    /// value is not a tier envelope.
    pub times: Option<(u64, u64)>,
}

/// One entry's bytes, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredEntry {
    /// The Redis key (prefix + key).
    pub redis_key: Bytes,
    /// The value (an envelope, unless something else wrote there).
    pub value: Bytes,
    /// Time left to live; `None` for a key without expiry.
    pub ttl: Option<Duration>,
}

/// How one node answers: for tools that show an outage (which master is out).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeHealth {
    /// A master's `host:port`, or the standalone server's (redacted) URL.
    pub node: String,
    /// Hash slots it serves (0 for a standalone server).
    pub slots: u32,
    /// The round trip of a `PING`, or why there was none.
    pub ping: Result<Duration, TierError>,
}

/// A read-only view of the keys under a [`RedisTier`](crate::RedisTier)'s prefix: it lists them
/// with `SCAN` (never `KEYS`) on every master, a batch at a time, reads each one's TTL, size and
/// envelope header in one pipeline per batch, and reads single entries. It writes nothing, so it
/// can look at the Redis a live service uses.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tier_redis::{RedisConnection, RedisInspector};
/// let conn = RedisConnection::detect(["redis://127.0.0.1:6379/"]).connect().await?;
/// let inspector = RedisInspector::new(conn, "tier:");
/// let (keys, more) = inspector.keys(b"users:", 100).await?;
/// for k in &keys {
///     println!("{} on {}: {} bytes, ttl {:?}", String::from_utf8_lossy(&k.key), k.node, k.bytes, k.ttl);
/// }
/// if let Some(entry) = inspector.get(b"users:0:42").await? {
///     println!("{} bytes", entry.value.len());
/// }
/// # let _ = more; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisInspector {
    conn: RedisConnection,
    prefix: KeyPrefix,
}

impl RedisInspector {
    /// An inspector of the keys under `prefix` (a tier's prefix, e.g. `"tier:"`) on `conn`.
    pub fn new(conn: RedisConnection, prefix: impl AsRef<[u8]>) -> Self {
        Self { conn, prefix: KeyPrefix::new(prefix) }
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        self.prefix.as_bytes()
    }

    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// The Redis key of `key` (prefix + key).
    pub fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        self.prefix.key(key)
    }

    /// The nodes a listing scans: every master of a Cluster (`host:port`), or the standalone
    /// server (its redacted URL).
    pub async fn nodes(&self) -> Result<Vec<String>, TierError> {
        Ok(self.conn.routes().await?.iter().map(|r| self.name_of(r)).collect())
    }

    /// Every master of a Cluster (from `CLUSTER SLOTS`, asked of any node that answers) or the
    /// standalone server, sorted, with the slots it serves and a `PING` of it (sent to all at
    /// once, each within the connection's operation timeout). Fails only when the topology
    /// cannot be read.
    pub async fn node_health(&self) -> Result<Vec<NodeHealth>, TierError> {
        let (routes, slots): (Vec<Route>, Vec<u32>) = if self.conn.is_cluster() {
            let ranges = self.conn.slot_ranges().await?;
            let mut held: std::collections::BTreeMap<Route, u32> = Default::default();
            for (first, last, route) in ranges {
                *held.entry(route).or_default() += u32::from(last - first) + 1;
            }
            held.into_iter().unzip()
        } else {
            (vec![Route::Server], vec![0])
        };
        let pings = futures::future::join_all(routes.iter().map(|route| async move {
            let started = std::time::Instant::now();
            self.conn.query_on("ping", route, commands::ping()).await.map(|_| started.elapsed())
        }))
        .await;
        Ok(routes
            .iter()
            .zip(slots)
            .zip(pings)
            .map(|((route, slots), ping)| NodeHealth { node: self.name_of(route), slots, ping })
            .collect())
    }

    fn name_of(&self, route: &Route) -> String {
        route.address().unwrap_or_else(|| self.conn.urls().join(","))
    }

    /// The keys under the prefix that start with `key_prefix` (empty: all), at most `limit`,
    /// node by node; and whether more were left. A key that expires between the `SCAN` that
    /// found it and the reading of its TTL is left out.
    pub async fn keys(
        &self,
        key_prefix: &[u8],
        limit: usize,
    ) -> Result<(Vec<StoredKey>, bool), TierError> {
        let pattern = self.prefix.pattern(key_prefix);
        let head = tier_core::spi::envelope::HEADER_LEN;
        let mut out = Vec::new();
        for route in &self.conn.routes().await? {
            let node = self.name_of(route);
            let mut scan = self.conn.scan(route, &pattern);
            while let Some(keys) = scan.next().await? {
                let describe = commands::describe(&keys, head);
                let replies = self.conn.pipe_on("inspect", route, &describe).await?;
                for (key, reply) in keys.iter().zip(replies.chunks(3)) {
                    let Some(found) = self.describe(key, &node, reply)? else { continue };
                    if out.len() >= limit {
                        return Ok((out, true));
                    }
                    out.push(found);
                }
            }
        }
        Ok((out, false))
    }

    /// A key from the replies to `PTTL`, `STRLEN` and `GETRANGE` of it; `None` when gone.
    fn describe(
        &self,
        key: &[u8],
        node: &str,
        reply: &[Value],
    ) -> Result<Option<StoredKey>, TierError> {
        let [ttl, bytes, head] = reply else {
            return Err(reply_error("inspection", format!("{} replies for one key", reply.len())));
        };
        let ttl: i64 = redis::from_redis_value_ref(ttl).map_err(|e| reply_error("PTTL", e))?;
        let Some(ttl) = ttl_of(ttl) else { return Ok(None) };
        let bytes: u64 =
            redis::from_redis_value_ref(bytes).map_err(|e| reply_error("STRLEN", e))?;
        let head: Vec<u8> =
            redis::from_redis_value_ref(head).map_err(|e| reply_error("GETRANGE", e))?;
        Ok(Some(StoredKey {
            key: Bytes::copy_from_slice(self.prefix.strip(key)),
            node: node.to_string(),
            ttl,
            bytes,
            times: tier_core::spi::envelope::peek_times(&head).ok(),
        }))
    }

    /// The entry of `key` (without the prefix): its bytes and TTL; `None` when there is none.
    pub async fn get(&self, key: &[u8]) -> Result<Option<StoredEntry>, TierError> {
        let redis_key = self.redis_key(key);
        let mut pipe = redis::pipe();
        pipe.add_command(commands::get(&redis_key)).add_command(commands::pttl(&redis_key));
        let (value, ttl): (Option<Bytes>, i64) = self.conn.query_pipe("inspect get", &pipe).await?;
        Ok(value.and_then(|value| {
            Some(StoredEntry { redis_key: Bytes::from(redis_key), value, ttl: ttl_of(ttl)? })
        }))
    }
}

/// A `PTTL` reply: `None` when the key is gone (-2), `Some(None)` without expiry (-1).
fn ttl_of(pttl: i64) -> Option<Option<Duration>> {
    match pttl {
        -2 => None,
        ms if ms < 0 => Some(None),
        ms => Some(Some(Duration::from_millis(ms.unsigned_abs()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(ttl_of(-2), None);
        assert_eq!(ttl_of(-1), Some(None));
        assert_eq!(ttl_of(1500), Some(Some(Duration::from_millis(1500))));
    }
}
