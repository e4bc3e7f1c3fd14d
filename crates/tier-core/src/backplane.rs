//! The backplane: how an invalidation on one instance reaches every other instance.
//!
//! The hierarchy publishes every invalidation and every insert notice; it consumes
//! [`BackplaneEvent`]s and applies them to its *local* tiers (those whose
//! [`Tier::is_shared`](crate::spi::Tier) is false). A backplane with a log (a Redis Stream)
//! gives every message a [`LogPosition`]: the hierarchy records the last one it applied and,
//! after a restart or a reconnect, [`replay`s](Backplane::replay) what followed it. When the
//! log cannot say what was missed it answers (or sends) a [`Gap`](BackplaneEvent::Gap), and the
//! hierarchy treats its local entries as [`ReconnectPolicy`] says.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::error::TierError;

/// Where an instance is in the invalidation log. Opaque to the hierarchy, ordered by the log;
/// persisted as bytes in the disk state (Redis: the stream id `"ms-seq"` as text).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogPosition(pub Bytes);

/// What to invalidate, or what was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Invalidation {
    /// One key was removed (the full key bytes).
    Key(Bytes),
    /// One key was written (an insert, or a load's write-through): value-free; a receiver drops
    /// its local copy unless that copy was created after `created_at` (a tie is dropped: the
    /// clock is coarse, an older value may carry the same millisecond).
    Written {
        /// The full key bytes.
        key: Bytes,
        /// The written entry's `created_at` (Unix ms).
        created_at: u64,
    },
    /// Every entry carrying this tag.
    Tag(Arc<str>),
    /// The whole namespace (its version was bumped to the given value).
    Namespace(u64),
    /// Everything in the hierarchy: entries created at or before `at` (Unix ms, the clear
    /// floor) are gone.
    Clear {
        /// The clear floor.
        at: u64,
    },
    /// A logical expiry at `at` (Unix ms): of one key (its entries created at or before `at`
    /// stop being fresh and stay servable as stale), or of every entry of the hierarchy when
    /// `key` is `None` (the expiry floor: entries created at or before `at` are at most stale).
    Expire {
        /// The full key bytes; `None`: every key.
        key: Option<Bytes>,
        /// The expiry instant.
        at: u64,
    },
}

impl Invalidation {
    /// The `kind` label of `cache_invalidations_total`: `key`, `written`, `tag`, `namespace`,
    /// `clear`, `expire`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Key(_) => "key",
            Self::Written { .. } => "written",
            Self::Tag(_) => "tag",
            Self::Namespace(_) => "namespace",
            Self::Clear { .. } => "clear",
            Self::Expire { .. } => "expire",
        }
    }
}

/// What a backplane delivers to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneEvent {
    /// An invalidation by another instance, with its log position (`None` for a log-less
    /// backplane).
    Invalidate {
        /// The hierarchy's name.
        cache: String,
        /// What.
        what: Invalidation,
        /// Where it is in the log.
        position: Option<LogPosition>,
    },
    /// Proof of delivery: everything published before `sent_at_ms` (Unix ms, the instant the
    /// proving read was *sent*) has been delivered. Drives the lease (see
    /// [`Backplane::confirms_delivery`]).
    Confirmed {
        /// When the proving read was sent (Unix ms).
        sent_at_ms: u64,
    },
    /// Messages may have been missed and cannot be replayed (trimmed, stream or epoch lost,
    /// subscription lost on a log-less backplane).
    Gap,
    /// A message this instance published itself, read back from the log at `position`:
    /// nothing to apply, but the last applied position moves past it. Without it, a restart
    /// (a new node id) replays the instance's own last notices as another's, and an insert
    /// notice drops the instance's own copy from its disk tier. Optional for a backplane.
    Passed {
        /// Where the message is in the log.
        position: LogPosition,
    },
}

/// What [`Backplane::replay`] found after a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Everything after the position, in order (each with its cache name and position), up to
    /// the head.
    Events(Vec<(String, Invalidation, LogPosition)>),
    /// The position is older than what the log keeps (or unknown to it): cannot replay.
    Gap,
}

/// What the hierarchy does with its local tiers when invalidations may have been missed
/// (a [`Gap`](BackplaneEvent::Gap), or a start-up without a recorded log position while local
/// tiers hold entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReconnectPolicy {
    /// Replay the log from the last applied position; only when that cannot be done, treat
    /// local entries as [`MarkStale`](Self::MarkStale) does. Default.
    #[default]
    CatchUp,
    /// On any gap or reconnect, keep local entries but treat every entry written before it as
    /// stale: served only as a fallback, and a fresh value is looked up below or loaded.
    MarkStale,
    /// On a gap, clear the local tiers (like Redisson's `CLEAR`): an explicit choice, it throws
    /// a warm disk tier away.
    Clear,
}

/// A channel shared by every instance of a service.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Publish an invalidation of hierarchy `cache` to every other instance. `Ok` only when the
    /// message is in the log or channel (acknowledged by the server); its log position when the
    /// backplane keeps a log.
    async fn publish(
        &self,
        cache: &str,
        what: &Invalidation,
    ) -> Result<Option<LogPosition>, TierError>;

    /// Receive what other instances publish (never this instance's own messages), proofs of
    /// delivery and gaps.
    fn subscribe(&self) -> broadcast::Receiver<BackplaneEvent>;

    /// Replay what follows `after`, other instances' messages only (the backplane filters its
    /// own). Default: [`Replay::Gap`] (a log-less backplane cannot replay).
    async fn replay(&self, _after: &LogPosition) -> Result<Replay, TierError> {
        Ok(Replay::Gap)
    }

    /// The log's current last position (`None`: an empty log, or a log-less backplane). Used at
    /// start-up when no position is recorded and nothing local exists: start from the head.
    /// Default: `None`.
    async fn head(&self) -> Result<Option<LogPosition>, TierError> {
        Ok(None)
    }

    /// Whether this backplane sends [`BackplaneEvent::Confirmed`]; then the hierarchy serves
    /// local entries as fresh only while the last proof is recent (the lease). Default: false.
    fn confirms_delivery(&self) -> bool {
        false
    }
}
