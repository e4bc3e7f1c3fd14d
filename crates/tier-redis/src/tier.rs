//! [`RedisTier`]: the shared L3 tier.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use tier_core::{Entry, Lookup, Storage, Tier, TierContext, TierError, TierErrorKind, TierStats};
use tokio::task::JoinHandle;

use crate::commands::{self, Write};
use crate::connection::{by_slot, slot, ConnectionSource, RedisConnection};
use crate::error::SetupError;
use crate::keys::{KeyPrefix, DEFAULT_PREFIX};
use crate::metrics::Labels;
use crate::retry::{self, RetryQueue};

/// Default capacity of the write retry queue (keys).
pub const DEFAULT_RETRY_CAPACITY: usize = 10_000;

/// Builds a [`RedisTier`]; see [`RedisTier::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisTierBuilder {
    connection: ConnectionSource,
    prefix: KeyPrefix,
    name: String,
    retry_capacity: usize,
}

impl RedisTierBuilder {
    /// Prefix of every key this tier stores. Give each hierarchy its own (e.g. `"app:users:"`):
    /// [`Tier::clear`] removes every key under it. Default: `"tier:"`.
    pub fn prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.prefix = KeyPrefix::new(prefix);
        self
    }

    /// The tier's name (default `tier` metric label). Default: `"redis"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
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
        let conn = self.connection.connect().await?;
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
///   every master of a Cluster; [`clear_prefix`](Self::clear_prefix) does the same for the keys
///   that start with a given key prefix.
/// - Every write (`insert`, `insert_many`, `remove`, the background retry) is one command built
///   in one place; one that fails is returned as an error *and* queued for a background retry
///   (bounded, deduplicated per key; see the crate docs for the metrics).
/// - Every call is bounded by the connection's operation timeout (connect + response timeout).
///
/// ```no_run
/// use std::time::Duration;
/// use tier_core::{Codec, Entry, Meta, Tier};
/// use tier_redis::{RedisConnection, RedisTier};
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let connection = RedisConnection::standalone("redis://:secret@127.0.0.1:6379/")
///         .connect_timeout(Duration::from_millis(500))
///         .response_timeout(Duration::from_millis(100));
///     let tier = RedisTier::builder(connection).prefix("myapp:users:").build().await?;
///
///     let now = tier_core::now_ms();
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
    prefix: KeyPrefix,
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
            .field("prefix", &self.inner.prefix)
            .field("connection", &self.inner.conn)
            .finish()
    }
}

impl RedisTier {
    /// A builder on `connection`: a [`RedisConnection`] (shared with generations, lock,
    /// backplane or other tiers), or a [`RedisConnectionBuilder`](crate::RedisConnectionBuilder)
    /// that [`build`](RedisTierBuilder::build) connects, with its URLs and timeouts.
    pub fn builder(connection: impl Into<ConnectionSource>) -> RedisTierBuilder {
        RedisTierBuilder {
            connection: connection.into(),
            prefix: KeyPrefix::from_static(DEFAULT_PREFIX),
            name: "redis".into(),
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
        self.inner.prefix.as_bytes()
    }

    /// The Redis key under which `key` is stored (prefix + key).
    pub fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        self.inner.prefix.key(key)
    }

    /// Keys whose failed write waits for a background retry.
    pub fn pending_retries(&self) -> usize {
        self.inner.retry.as_ref().map_or(0, |q| q.len())
    }

    /// Remove every entry of this tier whose key starts with `key_prefix` (`SCAN` + `UNLINK`
    /// on every master; never `KEYS`), e.g. one cache's keys (`"users:"`) among those of
    /// several under the tier's prefix, and drop their pending retries. Returns how many keys
    /// were removed. An empty `key_prefix` is [`Tier::clear`].
    pub async fn clear_prefix(&self, key_prefix: &[u8]) -> Result<u64, TierError> {
        if let Some(q) = &self.inner.retry {
            q.cancel_under(key_prefix);
        }
        self.inner.conn.unlink_matching(&self.inner.prefix.pattern(key_prefix)).await
    }

    fn set_for(entry: &Entry) -> Result<Write, TierError> {
        let envelope = entry.envelope().ok_or_else(|| {
            TierError::new(TierErrorKind::Rejected, "the Redis tier stores envelopes, not objects")
        })?;
        Ok(Write::Set { envelope: envelope.clone(), stale_until: entry.meta.stale_until })
    }

    fn classify(value: Option<Bytes>, now: u64) -> Result<Lookup, TierError> {
        match value {
            None => Ok(Lookup::Miss),
            Some(bytes) => Ok(Entry::from_envelope(bytes)?.lookup_at(now)),
        }
    }

    /// The write path: perform `writes` (one command each, [`commands::write`]) — one command
    /// alone, several in one pipeline (standalone) or one pipeline per hash slot, sent
    /// concurrently (Cluster). A key written cancels its pending retry; every write of a group
    /// that failed is queued for retry, and the first error is returned.
    async fn write(&self, writes: Vec<(Bytes, Write)>) -> Result<(), TierError> {
        let now = tier_core::now_ms();
        let groups = if self.inner.conn.is_cluster() && writes.len() > 1 {
            by_slot(writes, |(k, _)| slot(&self.redis_key(k)))
        } else {
            vec![writes]
        };
        let results = futures::future::join_all(groups.into_iter().map(|group| async move {
            let result = match &group[..] {
                [(key, write)] => {
                    let cmd = commands::write(&self.redis_key(key), write, now);
                    self.inner.conn.query::<()>("write", &cmd).await
                }
                group => {
                    let mut pipe = redis::pipe();
                    for (key, write) in group {
                        pipe.add_command(commands::write(&self.redis_key(key), write, now))
                            .ignore();
                    }
                    self.inner.conn.query_pipe::<()>("write", &pipe).await
                }
            };
            (group, result)
        }))
        .await;
        let mut first_err = None;
        for (group, result) in results {
            let Some(queue) = &self.inner.retry else {
                first_err = first_err.or(result.err());
                continue;
            };
            match result {
                Ok(()) => group.iter().for_each(|(k, _)| queue.cancel(k)),
                Err(e) => {
                    group.into_iter().for_each(|(k, w)| queue.push(k, w));
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
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
        let value: Option<Bytes> =
            self.inner.conn.query("get", &commands::get(&self.redis_key(key))).await?;
        Self::classify(value, tier_core::now_ms())
    }

    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        let full: Vec<Vec<u8>> = keys.iter().map(|k| self.redis_key(k)).collect();
        let values: Vec<Option<Bytes>> = self.inner.conn.mget("get_many", &full).await?;
        let now = tier_core::now_ms();
        values.into_iter().map(|v| Self::classify(v, now)).collect()
    }

    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        self.write(vec![(key, Self::set_for(&entry)?)]).await
    }

    async fn insert_many(&self, entries: Vec<(Bytes, Entry)>) -> Result<(), TierError> {
        if entries.is_empty() {
            return Ok(());
        }
        let writes = entries
            .iter()
            .map(|(k, e)| Ok((k.clone(), Self::set_for(e)?)))
            .collect::<Result<Vec<_>, TierError>>()?;
        self.write(writes).await
    }

    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        self.write(vec![(Bytes::copy_from_slice(key), Write::Remove)]).await
    }

    async fn clear(&self) -> Result<(), TierError> {
        self.clear_prefix(b"").await.map(drop)
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
