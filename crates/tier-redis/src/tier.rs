//! [`RedisTier`]: the shared L3 tier.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tier_core::spi::{Entry, Lookup, Tier, TierContext};
use tier_core::{Storage, TierError, TierErrorKind, TierStats};
use tokio::task::JoinHandle;

use crate::connection::{slot, RedisConnection};
use crate::error::SetupError;
use crate::metrics::Labels;
use crate::retry::{self, write_cmd, PendingOp, RetryQueue};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "tier:";
/// Default capacity of the write retry queue (keys).
pub const DEFAULT_RETRY_CAPACITY: usize = 10_000;
/// Keys per `SCAN` step of [`Tier::clear`].
const SCAN_COUNT: usize = 1000;

pub(crate) fn full_key(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    k
}

/// `prefix` as a `SCAN MATCH` pattern matching every key that starts with it.
pub(crate) fn prefix_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 2);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p.push(b'*');
    p
}

#[derive(Debug, Clone)]
enum Source {
    None,
    Url(String),
    Cluster(Vec<String>),
    Connection(RedisConnection),
}

/// Builds a [`RedisTier`]; see [`RedisTier::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisTierBuilder {
    source: Source,
    prefix: Bytes,
    name: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    retry_capacity: usize,
}

impl RedisTierBuilder {
    /// A standalone server: `redis://[user][:password@]host[:port][/db]` (`rediss://` with the
    /// `tls` feature).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.source = Source::Url(url.into());
        self
    }

    /// A Redis Cluster, reached through any of these node URLs.
    pub fn cluster<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.source = Source::Cluster(urls.into_iter().map(Into::into).collect());
        self
    }

    /// An existing connection (shared with generations, lock, backplane or other tiers). The
    /// builder's timeouts are then those the connection was made with.
    pub fn connection(mut self, connection: RedisConnection) -> Self {
        self.source = Source::Connection(connection);
        self
    }

    /// Prefix of every key this tier stores. Give each hierarchy its own (e.g. `"app:users:"`):
    /// [`Tier::clear`] removes every key under it. Default: `"tier:"`.
    pub fn prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.prefix = Bytes::copy_from_slice(prefix.as_ref());
        self
    }

    /// The tier's name (default `tier` metric label). Default: `"redis"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Connect timeout. Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Response timeout of one command. Default: 500 ms. (The hierarchy's per-tier timeout is
    /// usually much shorter; this one bounds direct use and background retries.)
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many failed writes (keys) wait for a background retry; 0 turns retries off.
    /// Default: 10 000.
    pub fn retry_capacity(mut self, keys: usize) -> Self {
        self.retry_capacity = keys;
        self
    }

    /// Connect (unless given a connection) and start the retry worker.
    pub async fn build(self) -> Result<RedisTier, SetupError> {
        let conn = match self.source {
            Source::None => {
                return Err(SetupError::Config(
                    "RedisTier needs .url(..), .cluster(..) or .connection(..)".into(),
                ))
            }
            Source::Connection(c) => c,
            Source::Url(url) => {
                RedisConnection::standalone(url)
                    .connect_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .connect()
                    .await?
            }
            Source::Cluster(urls) => {
                RedisConnection::cluster(urls)
                    .connect_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .connect()
                    .await?
            }
        };
        crate::metrics::describe();
        let labels =
            Arc::new(RwLock::new(Labels { cache: String::new(), tier: self.name.clone() }));
        let (retry, worker) = if self.retry_capacity > 0 {
            let queue = Arc::new(RetryQueue::new(self.retry_capacity, labels.clone()));
            let worker = tokio::spawn(retry::run(queue.clone(), conn.clone(), self.prefix.clone()));
            (Some(queue), Some(worker))
        } else {
            (None, None)
        };
        let stats = Arc::new(crate::stats::ServerStats::default());
        let poller =
            tokio::spawn(crate::stats::run(Arc::downgrade(&stats), conn.clone(), labels.clone()));
        Ok(RedisTier {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                name: self.name,
                labels,
                retry,
                worker: AbortOnDrop(worker),
                stats,
                poller: AbortOnDrop(Some(poller)),
            }),
        })
    }
}

struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// The Redis tier (L3): standalone Redis or Redis Cluster, shared by every instance of a service.
///
/// Invariants:
/// - Values are envelopes ([`Storage::Envelopes`]) stored as `SET prefix+key envelope PX ttl`
///   with `ttl = meta.stale_until - now`: Redis drops an entry when it is gone. An entry whose
///   `stale_until` has passed is not stored (the key is deleted instead, so an older value cannot
///   outlive the write that replaced it).
/// - A read classifies what it finds with [`Entry::lookup_at`]; bytes under the prefix that are not
///   an envelope are an error of kind [`Decode`](TierErrorKind::Decode), never a panic.
/// - `get_many` is one `MGET` (standalone) or one `MGET` per hash slot, sent concurrently
///   (Cluster); `insert_many` is one pipeline, or one per slot.
/// - [`Tier::clear`] removes the keys under the prefix with `SCAN` + `UNLINK` (never `KEYS`), on
///   every master of a Cluster.
/// - A write or remove that fails is returned as an error *and* queued for a background retry
///   (bounded, deduplicated per key; see the crate docs for the metrics).
/// - Every call is bounded by the connection's operation timeout (connect + response timeout).
///
/// ```no_run
/// use std::time::Duration;
/// use tier_core::spi::{Codec, Entry, Meta, Tier};
/// use tier_redis::RedisTier;
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let tier = RedisTier::builder()
///         .url("redis://:secret@127.0.0.1:6379/")
///         .prefix("myapp:users:")
///         .connect_timeout(Duration::from_millis(500))
///         .response_timeout(Duration::from_millis(100))
///         .build()
///         .await?;
///
///     let now = tier_core::spi::now_ms();
///     let meta = Meta { created_at: now, fresh_until: now + 60_000, stale_until: now + 600_000, ..Meta::default() };
///     let envelope = Codec::default().encode(&meta, Some(&"Ada".to_string()))?;
///     tier.insert("user:1".into(), Entry::from_envelope(envelope)?).await?;
///     assert!(tier.get(b"user:1").await?.is_hit());
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    conn: RedisConnection,
    prefix: Bytes,
    name: String,
    labels: Arc<RwLock<Labels>>,
    retry: Option<Arc<RetryQueue>>,
    // Dropped with the last clone of the tier: stops the retry worker.
    #[allow(dead_code)]
    worker: AbortOnDrop,
    /// Server figures for `stats()`, polled in the background (see `crate::stats`).
    stats: Arc<crate::stats::ServerStats>,
    #[allow(dead_code)]
    poller: AbortOnDrop,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("name", &self.inner.name)
            .field("prefix", &String::from_utf8_lossy(&self.inner.prefix))
            .field("connection", &self.inner.conn)
            .finish()
    }
}

impl RedisTier {
    /// A builder; set a URL, cluster URLs or a connection, then `build().await`.
    pub fn builder() -> RedisTierBuilder {
        RedisTierBuilder {
            source: Source::None,
            prefix: Bytes::from_static(DEFAULT_PREFIX.as_bytes()),
            name: "redis".into(),
            connect_timeout: crate::connection::DEFAULT_CONNECT_TIMEOUT,
            response_timeout: crate::connection::DEFAULT_RESPONSE_TIMEOUT,
            retry_capacity: DEFAULT_RETRY_CAPACITY,
        }
    }

    /// The connection, to share with [`RedisGenerations`](crate::RedisGenerations),
    /// [`RedisLock`](crate::RedisLock) and [`RedisBackplane`](crate::RedisBackplane).
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.conn
    }

    /// The key prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.inner.prefix
    }

    /// The Redis key under which `key` is stored (prefix + key).
    pub fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        full_key(&self.inner.prefix, key)
    }

    /// Keys whose failed write waits for a background retry.
    pub fn pending_retries(&self) -> usize {
        self.inner.retry.as_ref().map_or(0, |q| q.len())
    }

    fn op_for(entry: &Entry) -> Result<PendingOp, TierError> {
        let envelope = entry.envelope().ok_or_else(|| {
            TierError::new(TierErrorKind::Rejected, "the Redis tier stores envelopes, not objects")
        })?;
        Ok(PendingOp::Set { envelope: envelope.clone(), stale_until: entry.meta.stale_until })
    }

    fn written(&self, key: &[u8]) {
        if let Some(q) = &self.inner.retry {
            q.cancel(key);
        }
    }

    fn failed(&self, key: Bytes, op: PendingOp) {
        if let Some(q) = &self.inner.retry {
            q.push(key, op);
        }
    }

    fn classify(value: Option<Bytes>, now: u64) -> Result<Lookup, TierError> {
        match value {
            None => Ok(Lookup::Miss),
            Some(bytes) => Ok(Entry::from_envelope(bytes)?.lookup_at(now)),
        }
    }

    /// Run `pipe` (standalone: all at once; Cluster: grouped by slot, concurrently) for the
    /// `(key, op)` pairs; on failure every op of the failed group is queued for retry.
    async fn write_ops(&self, ops: Vec<(Bytes, PendingOp)>) -> Result<(), TierError> {
        let now = tier_core::spi::now_ms();
        let groups: Vec<Vec<(Bytes, PendingOp)>> = if self.inner.conn.is_cluster() {
            let mut by_slot: HashMap<u16, Vec<(Bytes, PendingOp)>> = HashMap::new();
            for (k, op) in ops {
                by_slot.entry(slot(&self.redis_key(&k))).or_default().push((k, op));
            }
            by_slot.into_values().collect()
        } else {
            vec![ops]
        };
        let results = futures::future::join_all(groups.into_iter().map(|group| async move {
            let mut pipe = redis::pipe();
            for (k, op) in &group {
                pipe.add_command(write_cmd(&self.redis_key(k), op, now)).ignore();
            }
            let r = self.inner.conn.query_pipe::<()>("insert_many", &pipe).await;
            (group, r)
        }))
        .await;
        let mut first_err = None;
        for (group, r) in results {
            match r {
                Ok(()) => group.iter().for_each(|(k, _)| self.written(k)),
                Err(e) => {
                    for (k, op) in group {
                        self.failed(k, op);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn clear_node(&self, node: Option<(&str, u16)>) -> Result<(), TierError> {
        let pattern = prefix_pattern(&self.inner.prefix);
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT);
            let reply = match node {
                Some((host, port)) => {
                    self.inner.conn.query_node("clear scan", host, port, scan).await?
                }
                None => self.inner.conn.query("clear scan", &scan).await?,
            };
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)
                .map_err(|e| TierError::new(TierErrorKind::Other, format!("SCAN reply: {e}")))?;
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(keys);
                // In a Cluster the client splits a multi-slot UNLINK by slot.
                self.inner.conn.query::<()>("clear unlink", &unlink).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl Tier for RedisTier {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn storage(&self) -> Storage {
        Storage::Envelopes
    }

    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.redis_key(key));
        let value: Option<Bytes> = self.inner.conn.query("get", &cmd).await?;
        Self::classify(value, tier_core::spi::now_ms())
    }

    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        let full: Vec<Vec<u8>> = keys.iter().map(|k| self.redis_key(k)).collect();
        let values: Vec<Option<Bytes>> = self.inner.conn.mget("get_many", &full).await?;
        let now = tier_core::spi::now_ms();
        values.into_iter().map(|v| Self::classify(v, now)).collect()
    }

    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        let op = Self::op_for(&entry)?;
        let cmd = write_cmd(&self.redis_key(&key), &op, tier_core::spi::now_ms());
        match self.inner.conn.query::<()>("insert", &cmd).await {
            Ok(()) => {
                self.written(&key);
                Ok(())
            }
            Err(e) => {
                self.failed(key, op);
                Err(e)
            }
        }
    }

    async fn insert_many(&self, entries: Vec<(Bytes, Entry)>) -> Result<(), TierError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ops = entries
            .iter()
            .map(|(k, e)| Ok((k.clone(), Self::op_for(e)?)))
            .collect::<Result<Vec<_>, TierError>>()?;
        self.write_ops(ops).await
    }

    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.redis_key(key));
        match self.inner.conn.query::<()>("remove", &cmd).await {
            Ok(()) => {
                self.written(key);
                Ok(())
            }
            Err(e) => {
                self.failed(Bytes::copy_from_slice(key), PendingOp::Remove);
                Err(e)
            }
        }
    }

    async fn clear(&self) -> Result<(), TierError> {
        if let Some(q) = &self.inner.retry {
            q.cancel_all();
        }
        if self.inner.conn.is_cluster() {
            let masters = self.inner.conn.masters().await?;
            if masters.is_empty() {
                return Err(TierError::new(TierErrorKind::Unavailable, "no cluster masters known"));
            }
            let results = futures::future::join_all(
                masters.iter().map(|(h, p)| self.clear_node(Some((h.as_str(), *p)))),
            )
            .await;
            results.into_iter().collect()
        } else {
            self.clear_node(None).await
        }
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// The Redis server's figures (keys, `used_memory`, `maxmemory`), summed over the masters
    /// and polled every few seconds: not only this tier's keys (see `crate::stats`).
    fn stats(&self) -> TierStats {
        self.inner.stats.get()
    }

    fn attach(&self, ctx: &TierContext) {
        crate::metrics::describe();
        let mut labels = self.inner.labels.write().unwrap_or_else(|p| p.into_inner());
        *labels = Labels { cache: ctx.cache.clone(), tier: ctx.tier.clone() };
        // The eviction series exist from the start (at 0), before the first server poll.
        for cause in ["capacity", "expired"] {
            metrics::counter!(tier_core::metrics::TIER_EVICTIONS, "cache" => ctx.cache.clone(), "tier" => ctx.tier.clone(), "cause" => cause).increment(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(prefix_pattern(b"app:users:"), b"app:users:*".to_vec());
        assert_eq!(prefix_pattern(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\*".to_vec());
    }
}
