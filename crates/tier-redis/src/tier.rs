//! [`RedisTier`]: the shared L3 tier.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tier_core::spi::{Entry, Lookup, Retime, Tier, TierContext};
use tier_core::{BreakerConfig, BreakerState, Storage, TierError, TierErrorKind, TierStats};
use tokio::task::JoinHandle;

use crate::commands::{self, Write};
use crate::connection::{by_slot, short_reply, slot, ConnectionSource, RedisConnection};
use crate::error::SetupError;
use crate::keys::{KeyPrefix, DEFAULT_PREFIX};
use crate::metrics::Labels;
use crate::nodes::{self, Deadline, Nodes, RefreshError};
use crate::own::OwnWrites;
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
    node_breaker: Option<BreakerConfig>,
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

    /// The circuit breaker of each Redis Cluster master (see the crate docs, "Redis Cluster: a
    /// lost master"): a master whose breaker is open answers its keys with
    /// [`CircuitOpen`](TierErrorKind::CircuitOpen) at once, and its failures do not count
    /// against the hierarchy's breaker of the whole tier. Not used with a standalone server.
    /// [`build`](RedisTierBuilder::build) refuses a cool-down under 10 ms (it is the background
    /// probe's period) and a `failure_ratio` outside (0, 1]. Default:
    /// [`default_node_breaker`](crate::default_node_breaker) (tier-core's default breaker with
    /// a 250 ms cool-down and one probe).
    pub fn node_breaker(mut self, config: BreakerConfig) -> Self {
        self.node_breaker = Some(config);
        self
    }

    /// No breaker per Cluster master: a lost master's keys fail (each within the tier's
    /// timeout) and count against the hierarchy's breaker of the whole tier, as a standalone
    /// server's would. Default: a breaker per master ([`node_breaker`](Self::node_breaker)).
    pub fn no_node_breakers(mut self) -> Self {
        self.node_breaker = None;
        self
    }

    /// Connect (unless given a connection), read the Cluster's topology, start the retry
    /// worker. Fails on a node breaker setting that cannot run (see
    /// [`node_breaker`](Self::node_breaker)) and when the connection cannot be made; a
    /// topology that cannot be read yet is read again in the background.
    pub async fn build(self) -> Result<RedisTier, SetupError> {
        if let Some(cfg) = &self.node_breaker {
            nodes::check_config(cfg).map_err(SetupError::Config)?;
        }
        let conn = self.connection.connect().await?;
        crate::metrics::describe();
        let labels =
            Arc::new(RwLock::new(Labels { cache: String::new(), tier: self.name.clone() }));
        let (nodes, nodes_task) = match self.node_breaker {
            Some(cfg) if conn.is_cluster() => start_nodes(cfg, &conn, &labels).await,
            _ => (None, None),
        };
        let (retry, worker) = if self.retry_capacity > 0 {
            let queue = Arc::new(RetryQueue::new(self.retry_capacity, labels.clone()));
            let worker =
                retry::run(queue.clone(), conn.clone(), self.prefix.clone(), nodes.clone());
            (Some(queue), Some(tokio::spawn(worker)))
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
                nodes,
                nodes_task: AbortOnDrop(nodes_task),
                deadline: Deadline::default(),
                own: Arc::default(),
            }),
        })
    }
}

/// The per-master breakers of a Cluster tier and their background task (topology reads,
/// probes); none when the server does not tell its topology (said once in the log).
async fn start_nodes(
    cfg: BreakerConfig,
    conn: &RedisConnection,
    labels: &Arc<RwLock<Labels>>,
) -> (Option<Arc<Nodes>>, Option<JoinHandle<()>>) {
    let nodes = Arc::new(Nodes::new(cfg, labels.clone()));
    let first_read = match nodes.refresh_from(conn).await {
        Ok(()) => nodes::REFRESH_INTERVAL,
        Err(RefreshError::Unsupported(e)) => {
            tracing::warn!(error = %e, "the Redis server does not tell its Cluster topology: one circuit breaker for the whole tier, none per master");
            return (None, None);
        }
        Err(RefreshError::Failed(e)) => {
            tracing::debug!(error = %e, "Redis Cluster topology not read yet; reading it in the background");
            nodes::MIN_REFRESH_GAP
        }
    };
    let task = tokio::spawn(nodes::run(nodes.clone(), conn.clone(), first_read));
    (Some(nodes), Some(task))
}

/// What a call does, for its bound and for a master whose breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Removal,
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
/// - Values are envelopes ([`Storage::Envelopes`]) stored under `prefix+key` with
///   `PX (meta.stale_until - now)`: Redis drops an entry when it is gone.
/// - Every write is a compare-and-set script on its key: a value is stored only if its
///   `created_at` is later than the stored entry's (an insert — `meta.insert` — also wins a
///   tie), so a late write (a slow load, a retry) never replaces a newer entry. An entry whose
///   `stale_until` has passed is not stored (an older entry is removed instead, so it cannot
///   outlive the write that replaced it).
/// - [`Tier::remove`] stores a tombstone created at the removal instant (it wins a tie), for
///   60 s: a write that started before the removal and lands after it is refused. A read of a
///   tombstone is a miss.
/// - A read classifies what it finds with [`Entry::lookup_at`]; bytes under the prefix that are not
///   an envelope are an error of kind [`Decode`](TierErrorKind::Decode), never a panic.
/// - `get_many` is one `MGET` (standalone) or one `MGET` per hash slot, sent concurrently
///   (Cluster); `insert_many` is one pipeline, or one per slot.
/// - [`Tier::clear`] removes the keys under the prefix with `SCAN` + `UNLINK` (never `KEYS`), on
///   every master of a Cluster; [`clear_prefix`](Self::clear_prefix) does the same for the keys
///   that start with a given key prefix.
/// - Every write (`insert`, `insert_many`, `remove`, the background retry) is that script, built
///   in one place (`EVALSHA`, `EVAL` when the server answers `NOSCRIPT`); one that fails is returned as an error *and* queued for a background retry
///   (bounded, deduplicated per key; see the crate docs for the metrics).
/// - Every call is bounded by the connection's operation timeout (connect + response timeout)
///   and, when the hierarchy mounts the tier with a timeout, ends
///   [`DEADLINE_MARGIN`](crate::DEADLINE_MARGIN) before it (so that a failed write is still
///   queued for retry, and a slow Cluster master is that master's failure).
/// - In a Cluster, each master has a circuit breaker of its own
///   ([`node_breaker`](RedisTierBuilder::node_breaker)): the keys of a master that is out
///   answer [`CircuitOpen`](TierErrorKind::CircuitOpen) at once and the other masters' keys
///   are not affected; see the crate docs, "Redis Cluster: a lost master", for what batches
///   answer.
///
/// ```no_run
/// use std::time::Duration;
/// use tier_core::spi::{Codec, Entry, Meta, Tier};
/// use tier_redis::{RedisConnection, RedisTier};
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let connection = RedisConnection::standalone("redis://:secret@127.0.0.1:6379/")
///         .connect_timeout(Duration::from_millis(500))
///         .response_timeout(Duration::from_millis(100));
///     let tier = RedisTier::builder(connection).prefix("myapp:users:").build().await?;
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
    /// The breaker of each Cluster master; `None` for a standalone server or when turned off.
    nodes: Option<Arc<Nodes>>,
    #[allow(dead_code)]
    nodes_task: AbortOnDrop,
    /// Each call ends a little before the hierarchy's timeout (set when mounted).
    deadline: Deadline,
    /// This tier's recent writes, recorded once client-side caching tracks its keys.
    own: Arc<OwnWrites>,
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
            node_breaker: Some(nodes::default_node_breaker()),
        }
    }

    /// Each Cluster master (`host:port`) with the state of its breaker, sorted by address;
    /// empty for a standalone server or without per-master breakers
    /// ([`no_node_breakers`](RedisTierBuilder::no_node_breakers)).
    pub fn node_breakers(&self) -> Vec<(String, BreakerState)> {
        self.inner.nodes.as_ref().map_or_else(Vec::new, |n| n.states())
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

    /// The record of this tier's recent writes (client-side caching tells them apart from
    /// other clients' writes with it).
    pub(crate) fn own_writes(&self) -> &Arc<OwnWrites> {
        &self.inner.own
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
        Ok(Write::Set {
            envelope: envelope.clone(),
            created_at: entry.meta.created_at,
            stale_until: entry.meta.stale_until,
            wins_tie: entry.meta.insert || entry.meta.tombstone,
        })
    }

    /// What a stored value is at `now`: nothing, or a tombstone (a removal: `lookup_at`
    /// answers it as a miss), is a miss.
    fn classify(value: Option<Bytes>, now: u64) -> Result<Lookup, TierError> {
        match value {
            None => Ok(Lookup::Miss),
            Some(bytes) => Ok(Entry::from_envelope(bytes)?.lookup_at(now)),
        }
    }

    /// The bound of one call (of a read or a write): a little below the hierarchy's timeout
    /// when mounted with one, so that the tier's answer comes first (a Cluster master's failure
    /// is the master's, a failed write is queued for retry), and never more than the
    /// connection's own. The tier says it bounds its calls ([`Tier::bounds_calls`]), so the
    /// hierarchy puts no timer of its own around this one: one timer per call.
    fn bound(&self) -> Duration {
        let op = self.inner.conn.op_timeout();
        self.inner.deadline.get().map_or(op, |d| d.min(op))
    }

    /// Run `call` (given its bound) for keys living on the master of `redis_key`'s slot, under
    /// that master's breaker (Cluster, see `crate::nodes`): refused at once while it is not
    /// closed (`CircuitOpen`; a removal with an error that is not, see `Nodes::admit`), its
    /// outcome recorded there, a failure returned partial. `batch`: the number of keys, when
    /// they are part of a batch (a failure of theirs is counted). Without per-master breakers,
    /// `call` runs as is.
    async fn on_master<T, F, Fut>(
        &self,
        redis_key: &[u8],
        op: Op,
        batch: Option<usize>,
        call: F,
    ) -> Result<T, TierError>
    where
        F: FnOnce(Option<Duration>) -> Fut,
        Fut: Future<Output = Result<T, TierError>>,
    {
        let bound = Some(self.bound());
        let Some((nodes, master)) =
            self.inner.nodes.as_ref().and_then(|n| Some((n, n.master_of(slot(redis_key))?)))
        else {
            return call(bound).await.map_err(|e| self.acl_needs(e));
        };
        nodes.admit(&master, batch.unwrap_or(1), op == Op::Removal)?;
        let result = nodes.record(&master, call(bound).await.map_err(|e| self.acl_needs(e)));
        if let (Err(e), Some(keys)) = (&result, batch) {
            if e.is_partial() {
                nodes.skipped(&master, "failed", keys);
            }
        }
        result
    }

    /// An error refused by the user's ACL, with the key pattern and the commands the tier needs.
    fn acl_needs(&self, e: TierError) -> TierError {
        crate::error::with_acl_needs(e, || {
            let prefix = String::from_utf8_lossy(self.prefix()).into_owned();
            let rules = crate::acl::rules(&[&prefix], &[]);
            let allowed: Vec<&str> =
                rules.iter().map(String::as_str).filter(|r| r.starts_with(['~', '+'])).collect();
            format!("{} (tier_redis::acl::rules)", allowed.join(" "))
        })
    }

    /// `MGET` of `keys` on a Cluster with per-master breakers: one per hash slot, sent
    /// concurrently, each under its master's breaker. The keys of a master that is open or
    /// fails are misses (counted in `tier_redis_node_skipped_total`); the call fails only when
    /// no master answered (with a master's failure, else `CircuitOpen`).
    async fn mget_by_master(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, TierError> {
        let groups = by_slot((0..keys.len()).collect(), |&i: &usize| slot(&keys[i]));
        let replies = futures::future::join_all(groups.into_iter().map(|idx| async move {
            let cmd = commands::mget(idx.iter().map(|&i| &keys[i][..]));
            let n = idx.len();
            let got = self
                .on_master(&keys[idx[0]], Op::Read, Some(n), |bound| async move {
                    let got: Vec<Option<Bytes>> =
                        self.inner.conn.query_within(bound, "get_many", &cmd).await?;
                    if got.len() != n {
                        return Err(short_reply(got.len(), n));
                    }
                    Ok(got)
                })
                .await;
            (idx, got)
        }))
        .await;
        let mut values = vec![None; keys.len()];
        let (mut answered, mut failure, mut open) = (false, None, None);
        for (idx, got) in replies {
            match got {
                Ok(got) => {
                    answered = true;
                    for (i, v) in idx.into_iter().zip(got) {
                        values[i] = v;
                    }
                }
                Err(e) if e.kind() == TierErrorKind::CircuitOpen => open = open.or(Some(e)),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure.or(open) {
            Some(e) if !answered => Err(e),
            _ => Ok(values),
        }
    }

    /// The write path: perform `writes` (one command each, [`commands::write`]) — one command
    /// alone, several in one pipeline (standalone) or one pipeline per hash slot, sent
    /// concurrently (Cluster), each under its master's breaker. A key written cancels its
    /// pending retry; every write of a group that failed is queued for retry, and the first
    /// failure is returned; the values for a master whose breaker is open are not written (nor
    /// queued), and are an error (`CircuitOpen`) only when nothing was written at all. A
    /// removal ([`Op::Removal`]) for such a master is not sent either, but queued and returned as a failure
    /// (it must not be skipped silently; sending it would only wait for the lost master).
    async fn write(&self, writes: Vec<(Bytes, Write)>, op: Op) -> Result<(), TierError> {
        let now = tier_core::spi::now_ms();
        for (key, write) in &writes {
            self.inner.own.note(key, write.created_at(), now);
        }
        let batch = (writes.len() > 1).then_some(());
        let groups = if self.inner.conn.is_cluster() && writes.len() > 1 {
            by_slot(writes, |(k, _)| slot(&self.redis_key(k)))
        } else {
            vec![writes]
        };
        let results = futures::future::join_all(groups.into_iter().map(|group| async move {
            let Some((first, _)) = group.first() else { return (group, Ok(())) };
            let keys = batch.map(|()| group.len());
            let writes = &group;
            let result = self
                .on_master(&self.redis_key(first), op, keys, |bound| async move {
                    match &writes[..] {
                        [(key, write)] => {
                            let key = self.redis_key(key);
                            let build = |form| commands::write(&key, write, now, form);
                            self.inner.conn.script_within::<(), _>(bound, "write", build).await
                        }
                        group => {
                            let build = |form| {
                                let keyed = group.iter().map(|(k, w)| (self.redis_key(k), w));
                                commands::write_pipe(keyed, now, form)
                            };
                            self.inner.conn.script_within::<(), _>(bound, "write", build).await
                        }
                    }
                })
                .await;
            (group, result)
        }))
        .await;
        let (mut written, mut failure, mut open) = (false, None, None);
        for (group, result) in results {
            match result {
                Ok(()) => {
                    written = true;
                    if let Some(queue) = &self.inner.retry {
                        group.iter().for_each(|(k, _)| queue.cancel(k));
                    }
                }
                Err(e) if e.kind() == TierErrorKind::CircuitOpen => open = open.or(Some(e)),
                Err(e) => {
                    if let Some(queue) = &self.inner.retry {
                        group.into_iter().for_each(|(k, w)| queue.push(k, w));
                    }
                    failure = failure.or(Some(e));
                }
            }
        }
        match (failure, open) {
            (Some(e), _) => Err(e),
            (None, Some(e)) if !written => Err(e),
            _ => Ok(()),
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
        let redis_key = self.redis_key(key);
        let cmd = commands::get(&redis_key);
        let value: Option<Bytes> = self
            .on_master(&redis_key, Op::Read, None, |bound| {
                self.inner.conn.query_within(bound, "get", &cmd)
            })
            .await?;
        Self::classify(value, tier_core::spi::now_ms())
    }

    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        let full: Vec<Vec<u8>> = keys.iter().map(|k| self.redis_key(k)).collect();
        let values: Vec<Option<Bytes>> = if self.inner.nodes.is_some() && !full.is_empty() {
            self.mget_by_master(&full).await?
        } else {
            self.inner.conn.mget_within(Some(self.bound()), "get_many", &full).await?
        };
        let now = tier_core::spi::now_ms();
        values.into_iter().map(|v| Self::classify(v, now)).collect()
    }

    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        self.write(vec![(key, Self::set_for(&entry)?)], Op::Write).await
    }

    async fn insert_many(&self, entries: Vec<(Bytes, Entry)>) -> Result<(), TierError> {
        if entries.is_empty() {
            return Ok(());
        }
        let writes = entries
            .iter()
            .map(|(k, e)| Ok((k.clone(), Self::set_for(e)?)))
            .collect::<Result<Vec<_>, TierError>>()?;
        self.write(writes, Op::Write).await
    }

    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        let removal = Write::Remove { at: tier_core::spi::now_ms() };
        self.write(vec![(Bytes::copy_from_slice(key), removal)], Op::Removal).await
    }

    async fn clear(&self) -> Result<(), TierError> {
        // Bounded as the hierarchy's timeout bounded it before the tier bounded its own calls.
        let bound = self.bound();
        match tokio::time::timeout(bound, self.clear_prefix(b"")).await {
            Ok(r) => r.map(drop),
            Err(_) => Err(crate::error::timeout_error("clear", bound)),
        }
    }

    /// One script on the key (the retime script): the header's times rewritten in
    /// place, compare-and-set like every write; an expiry of a key holding nothing usable
    /// stores a tombstone. A failure is returned, not queued for retry.
    async fn retime(&self, key: &[u8], how: Retime) -> Result<bool, TierError> {
        let redis_key = self.redis_key(key);
        let now = tier_core::spi::now_ms();
        if commands::retime(&redis_key, &how, now, commands::ScriptForm::Sha).is_none() {
            return Ok(false);
        }
        // What the key's header will carry if the retime applies.
        match how {
            Retime::Expire { at, .. } => self.inner.own.note(key, at, now),
            Retime::Renew { renewed_at, .. } => self.inner.own.note(key, renewed_at, now),
            _ => {}
        }
        let target = &redis_key;
        let done: i64 = self
            .on_master(&redis_key, Op::Write, None, |bound| async move {
                let build = |form| {
                    // Checked above: this retime has a command.
                    commands::retime(target, &how, now, form).unwrap_or_default()
                };
                self.inner.conn.script_within(bound, "retime", build).await
            })
            .await?;
        Ok(done == 1)
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// Drops the pending retries the invalidation makes obsolete (see the retry queue).
    fn observe(&self, what: &tier_core::spi::Invalidation) {
        if let Some(q) = &self.inner.retry {
            q.observe(what);
        }
    }

    /// The Redis server's figures (keys, `used_memory`, `maxmemory`), summed over the masters
    /// and polled every few seconds: not only this tier's keys (see `crate::stats`).
    fn stats(&self) -> TierStats {
        self.inner.stats.get()
    }

    fn bounds_calls(&self) -> bool {
        true
    }

    fn attach(&self, ctx: &TierContext) {
        crate::metrics::describe();
        *self.inner.labels.write().unwrap_or_else(|p| p.into_inner()) =
            Labels { cache: ctx.cache.clone(), tier: ctx.tier.clone() };
        self.inner.deadline.set(ctx.timeout);
        if let Some(nodes) = &self.inner.nodes {
            nodes.label_gauges();
        }
        // The eviction series exist from the start (at 0), before the first server poll.
        for cause in ["capacity", "expired"] {
            metrics::counter!(tier_core::metrics::TIER_EVICTIONS, "cache" => ctx.cache.clone(), "tier" => ctx.tier.clone(), "cause" => cause).increment(0);
        }
    }
}
