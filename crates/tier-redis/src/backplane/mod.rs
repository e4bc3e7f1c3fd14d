//! [`RedisBackplane`]: invalidations between instances through a Redis Stream, the
//! replayable invalidation log of the fleet.
//!
//! The stream format is `wire`'s; positions, the epoch and trimming are `log`'s; the reader
//! task is `reader`'s; what the handle and the reader share (delivery to subscribers and
//! hooks, metrics) is `shared`'s.

mod log;
mod reader;
mod shared;
mod tracking;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use tier_core::spi::{Backplane, BackplaneEvent, Invalidation, LogPosition, Replay};
use tier_core::{TierError, TierErrorKind};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::commands;
use crate::connection::{ConnectionSource, RedisConnection};
use crate::error::SetupError;
use crate::keys::DEFAULT_STREAM;
use crate::metrics::{BACKPLANE_CONNECTED, BACKPLANE_MESSAGES};
use crate::wire::{WireMessage, WireWhat, VERSION};
use log::{LogKeys, Position, StreamId};
pub(crate) use shared::EventHook;
use shared::Shared;

/// Default number of messages the stream keeps (about: `MAXLEN ~`).
pub const DEFAULT_MAX_LEN: usize = 100_000;

/// Builds a [`RedisBackplane`]; see [`RedisBackplane::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBackplaneBuilder {
    connection: ConnectionSource,
    stream: String,
    node_id: Option<String>,
    capacity: usize,
    max_len: usize,
    tracked: Vec<tracking::Tracked>,
}

impl RedisBackplaneBuilder {
    /// Client-side caching for the hierarchy named `cache` whose shared tier is `tier`: a
    /// RESP3 connection of its own to the tier's server with `CLIENT TRACKING ON BCAST PREFIX
    /// <the tier's prefix>`, so that a change of one of its keys in Redis — by any client, also
    /// another application — drops the key from this instance's local tiers (L1, disk), as an
    /// insert notice of another instance would (`tier_redis_tracking_*` metrics).
    ///
    /// - An own write (an insert or load's write-through through `tier`) keeps its fresh local
    ///   copy: the key is read back (16 header bytes) and only older copies are dropped while
    ///   Redis holds this instance's write; when unsure the copy is dropped.
    /// - The lease: local entries are fresh only while *both* the stream and the tracking
    ///   connection proved delivery within δ (a `PING` every 20 ms on it). A lost tracking
    ///   connection makes them stale within δ; it is made again (backoff 20 ms → 2 s, ±50 %
    ///   jitter), then a gap (tracking cannot replay what changed meanwhile).
    /// - A server that refuses `HELLO 3` or `CLIENT TRACKING` (older than Redis 6, a
    ///   RESP-compatible server without it, an ACL user without `client|tracking`): one
    ///   warning, and the backplane alone (no retry).
    /// - Redis Cluster: a node tells only of its own keys, so there is one tracking connection
    ///   per master, following the topology (read every second, and soon after a connection is
    ///   lost: a master added, lost or failed over gets its connection, with a gap). The lease
    ///   needs every master's proof: a loss of any one is a loss as above.
    ///
    /// It sees only what changes while it is connected: entries a disk tier kept across a
    /// restart are checked by the stream's replay (the fleet's writes), not against other
    /// applications' writes made while the instance was down.
    ///
    /// ```no_run
    /// use tier_redis::{RedisBackplane, RedisConnection, RedisTier};
    /// # async fn demo() -> Result<(), tier_redis::SetupError> {
    /// let conn = RedisConnection::standalone("redis://127.0.0.1:6379/").connect().await?;
    /// let tier = RedisTier::builder(conn.clone()).prefix("app:users:").build().await?;
    /// let backplane = RedisBackplane::builder(conn).track("users", &tier).build().await?;
    /// # let _ = backplane; Ok(()) }
    /// ```
    pub fn track(mut self, cache: impl Into<String>, tier: &crate::tier::RedisTier) -> Self {
        self.tracked.push(tracking::Tracked { cache: cache.into(), tier: tier.clone() });
        self
    }

    /// The key of the Redis Stream (its epoch key is [`RedisBackplane::epoch_key`], in the same
    /// hash slot); every instance of a
    /// service uses the same. Keep it outside the tier's prefix (the tier's `clear` would
    /// remove it, and every instance would see a gap). In a Cluster the stream is one key,
    /// on one master. Default: `"tier-log:invalidations"`.
    pub fn stream(mut self, key: impl Into<String>) -> Self {
        self.stream = key.into();
        self
    }

    /// The same as [`stream`](Self::stream) (the name of the pub/sub channel this backplane
    /// used before it was a stream).
    pub fn channel(self, key: impl Into<String>) -> Self {
        self.stream(key)
    }

    /// About how many messages the stream keeps (`XADD … MAXLEN ~`): an instance that was away
    /// for longer than it takes the fleet to publish this many cannot catch up (a gap: its
    /// local entries become stale). Default: 100 000.
    pub fn max_len(mut self, messages: usize) -> Self {
        self.max_len = messages;
        self
    }

    /// This instance's id, carried by its messages (so that it ignores its own). Default: 64
    /// random bits in hex.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Events buffered per subscriber before a slow one lags (and misses events). Default:
    /// 4096.
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events;
        self
    }

    /// Connect (unless given a connection), read the stream's head (where this instance starts
    /// reading) and start the reader. With a [`lazy`](crate::RedisConnectionBuilder::lazy)
    /// connection that is not made yet (or cannot read the head now), the head is read once it
    /// can be (with a [`Gap`](BackplaneEvent::Gap): what was published meanwhile is unknown);
    /// otherwise a head that cannot be read fails the build.
    pub async fn build(self) -> Result<RedisBackplane, SetupError> {
        if self.stream.is_empty() {
            return Err(SetupError::Config("the backplane stream name is empty".into()));
        }
        if self.capacity == 0 || self.max_len == 0 {
            return Err(SetupError::Config("capacity and max_len must be positive".into()));
        }
        let conn = self.connection.connect().await?;
        let keys = LogKeys::new(&self.stream);
        // A lazy connection never fails the build: without the head, the reader starts from
        // the head once it can read it (with a gap).
        let start = match (conn.is_connected(), conn.is_lazy()) {
            (false, _) => None,
            (true, lazy) => match log::head(&conn, &keys).await {
                Ok(head) => Some(head),
                Err(_) if lazy => None,
                Err(source) => return Err(SetupError::Stream { stream: self.stream, source }),
            },
        };
        crate::metrics::describe();
        let (tx, _) = broadcast::channel(self.capacity);
        let shared = Arc::new(Shared {
            keys,
            node_id: self.node_id.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
            tx,
            hooks: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            epoch: Mutex::new(start.as_ref().map(|p| p.epoch.clone()).unwrap_or_default()),
            proofs: Default::default(),
        });
        let mut trackers = Vec::new();
        for tracked in self.tracked {
            tracked.tier.own_writes().enable();
            if let Some(task) = tracking::start(&shared, tracked).await {
                trackers.push(AbortOnDrop(task));
            }
        }
        metrics::gauge!(BACKPLANE_CONNECTED, "channel" => shared.keys.stream.clone())
            .set(if start.is_some() { 1.0 } else { 0.0 });
        let task = tokio::spawn(reader::run(shared.clone(), conn.clone(), start));
        Ok(RedisBackplane {
            shared,
            conn,
            max_len: self.max_len,
            _task: Arc::new(AbortOnDrop(task)),
            _trackers: Arc::new(trackers),
        })
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Invalidations between the instances of a service, through a Redis Stream: the fleet's
/// replayable invalidation log.
///
/// Invariants:
/// - A message is one stream entry (`XADD stream MAXLEN ~ max_len * m <MessagePack>`: format
///   version, sender node id, sender sequence number, cache name, the [`Invalidation`]).
///   [`publish`](Backplane::publish) answers `Ok` with the entry's position only after the
///   server appended it. An instance never sees its own messages (live or replayed).
/// - A reader on a connection of its own follows the stream (a non-blocking `XREAD`, every
///   10 ms while the stream is quiet) from the head
///   read at build, emitting [`BackplaneEvent::Invalidate`] with each entry's position, and
///   [`BackplaneEvent::Confirmed`] after every read that returned all there was: the proof of
///   delivery the hierarchy's lease runs on (about every 10 ms while the stream is quiet; not
///   `XREAD BLOCK`, whose empty answer an idle Redis gives only at its next timer tick).
/// - A lost connection is resumed from the last delivered entry: nothing is missed, and
///   `tier_backplane_reconnects_total` counts it. Only when what followed cannot be read — the
///   stream trimmed past it, or the log lost (its epoch key missing or changed: `FLUSHALL`, a
///   restart without persistence) — is [`BackplaneEvent::Gap`] emitted
///   (`tier_backplane_errors_total{kind="gap"}`, one warning).
/// - [`replay`](Backplane::replay) reads what followed a position (`XRANGE`, in pages of
///   1000), or answers [`Replay::Gap`] for the same reasons. A position is the entry id and the
///   epoch (`"ms-seq@epoch"`), so a position recorded before the log was lost is never taken
///   for one of the new log.
/// - With [`track`](RedisBackplaneBuilder::track), a second source (client-side caching): a
///   change of a tracked key by anyone is an `Invalidate` of `Written` without a position, and
///   `Confirmed` is sent only for an instant both the stream and every tracking connection
///   have proven.
/// - Redis Cluster: the stream is one key, so it lives on one master (all messages go through
///   it); that master's failover can lose the last messages acknowledged before it (like any
///   write to a Redis replica set), which no instance can tell.
#[derive(Clone)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
    conn: RedisConnection,
    max_len: usize,
    _task: Arc<AbortOnDrop>,
    /// Client-side caching's trackers (see [`RedisBackplaneBuilder::track`]).
    _trackers: Arc<Vec<AbortOnDrop>>,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("stream", &self.shared.keys.stream)
            .field("node_id", &self.shared.node_id)
            .finish()
    }
}

impl RedisBackplane {
    /// A builder publishing through `connection` — a [`RedisConnection`] or a
    /// [`RedisConnectionBuilder`](crate::RedisConnectionBuilder) that `build()` connects — and
    /// reading on a connection of its own made the same way.
    pub fn builder(connection: impl Into<ConnectionSource>) -> RedisBackplaneBuilder {
        RedisBackplaneBuilder {
            connection: connection.into(),
            stream: DEFAULT_STREAM.into(),
            node_id: None,
            capacity: 4096,
            max_len: DEFAULT_MAX_LEN,
            tracked: Vec::new(),
        }
    }

    /// This instance's node id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The key of the log's epoch (a random id written once; a missing or changed one means
    /// the log was lost), in the stream's hash slot: `stream + ":epoch"` when the stream's name
    /// has a hash tag (`{…}`), else `stream + "{" + stream + "}:epoch"`.
    pub fn epoch_key(&self) -> &[u8] {
        &self.shared.keys.epoch
    }

    /// The epoch key of a backplane on `stream` (see [`epoch_key`](Self::epoch_key)).
    ///
    /// ```
    /// let key = tier_redis::RedisBackplane::epoch_key_of("tier-log:invalidations");
    /// assert_eq!(key, b"tier-log:invalidations{tier-log:invalidations}:epoch");
    /// ```
    pub fn epoch_key_of(stream: &str) -> Vec<u8> {
        LogKeys::new(stream).epoch
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.shared.keys.stream
    }

    /// The stream's key (the name of the former pub/sub channel): [`stream`](Self::stream).
    pub fn channel(&self) -> &str {
        self.stream()
    }

    /// How many times the reader resumed after a lost connection.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Acquire)
    }

    /// How many gaps (messages that could not be read) the reader met.
    pub fn gaps(&self) -> u64 {
        self.shared.gaps.load(Ordering::Acquire)
    }

    pub(crate) fn add_hook(&self, hook: Weak<dyn EventHook>) {
        self.shared.hooks.lock().unwrap_or_else(|p| p.into_inner()).push(hook);
    }

    /// The position of entry `id` of `epoch`.
    fn position(&self, id: StreamId, epoch: String) -> LogPosition {
        Position { id, epoch }.to_log()
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(
        &self,
        cache: &str,
        what: &Invalidation,
    ) -> Result<Option<LogPosition>, TierError> {
        let what = WireWhat::from_invalidation(what).ok_or_else(|| {
            TierError::new(
                TierErrorKind::Rejected,
                "an invalidation kind this backplane cannot send",
            )
        })?;
        let seq = self.shared.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let msg = WireMessage {
            v: VERSION,
            node: self.shared.node_id.clone(),
            seq,
            cache: cache.into(),
            what,
        };
        let payload = rmp_serde::to_vec_named(&msg).map_err(|e| {
            TierError::new(TierErrorKind::Rejected, format!("backplane message: {e}"))
        })?;
        let cmd = commands::xadd(&self.shared.keys.stream, self.max_len, &payload);
        let id: Result<String, TierError> = self.conn.query("backplane publish", &cmd).await;
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                self.shared.error("publish");
                return Err(e);
            }
        };
        metrics::counter!(BACKPLANE_MESSAGES, "channel" => self.shared.keys.stream.clone(), "direction" => "sent")
            .increment(1);
        let id = StreamId::parse(&id)
            .ok_or_else(|| crate::error::reply_error("XADD", format!("not a stream id: {id}")))?;
        // The epoch this entry belongs to, as the reader last saw it (read when not known): if
        // the log was lost meanwhile, the position is of the old epoch, and a replay from it
        // answers a gap — never a replay that misses something.
        let mut epoch = self.shared.epoch();
        if epoch.is_empty() {
            epoch = log::epoch(&self.conn, &self.shared.keys).await?.0;
        }
        Ok(Some(self.position(id, epoch)))
    }

    fn subscribe(&self) -> broadcast::Receiver<BackplaneEvent> {
        self.shared.tx.subscribe()
    }

    async fn replay(&self, after: &LogPosition) -> Result<Replay, TierError> {
        let Some(after) = Position::from_log(after) else {
            return Err(log::foreign_position(after));
        };
        let Some(entries) = log::replay(&self.conn, &self.shared.keys, &after).await? else {
            return Ok(Replay::Gap);
        };
        let events = entries
            .into_iter()
            .filter_map(|(id, message)| {
                let (cache, what) = self.shared.decode(id, message.as_deref())?;
                Some((cache, what, self.position(id, after.epoch.clone())))
            })
            .collect();
        Ok(Replay::Events(events))
    }

    async fn head(&self) -> Result<Option<LogPosition>, TierError> {
        Ok(Some(log::head(&self.conn, &self.shared.keys).await?.to_log()))
    }

    fn confirms_delivery(&self) -> bool {
        true
    }
}
