//! What a tier author needs: the [`Tier`] trait and what it reads and returns ([`Entry`],
//! [`Lookup`], [`ReadyLookup`], [`ObjectEntry`], [`Storage`], [`TierError`]), the [`envelope`]
//! codec of byte tiers, the fleet-state interfaces a shared store implements
//! ([`GenerationStore`], [`Backplane`], [`DistributedLock`]), the durable local state a tier
//! can offer the hierarchy ([`StateStore`]) and its write-behind queue ([`WriteQueue`]), the
//! layers a tier can be mounted in ([`TierLayer`], with the timeout and breaker wrappers), the
//! clock every envelope instant is read with ([`now_ms`]), and the limit of log events that
//! could flood ([`EventLimit`]).
//!
//! A service that builds a [`Cache`](crate::Cache) needs none of this: the crate root (or the
//! `tier` crate) has what it uses.

pub use crate::backplane::{Backplane, BackplaneEvent, Invalidation, LogPosition, Replay};
pub use crate::breaker::{BreakerLayer, BreakerTier, CircuitBreaker, Outcome, Permit};
pub use crate::entry::{Entry, Lookup, ObjectEntry, ReadyLookup, Storage, Value};
pub use crate::envelope::{Codec, Meta, TagStamp};
pub use crate::error::{TierError, TierErrorKind};
pub use crate::events::{EventLimit, EVENT_INTERVAL};
pub use crate::generations::{
    fresh_generation_start, GenerationStore, LocalGenerations, TAG_CLOCK_PREFIX,
};
pub use crate::layer::{Mount, TierLayer};
pub use crate::lock::{DistributedLock, LockToken};
pub use crate::queue::{DeadLetter, QueueBook, QueueOp, QueuedWrite, WriteQueue};
pub use crate::retime::{retimed_envelope, Retime};
pub use crate::state::{
    floor_name, generation_name, get_u64, position_name, suspect_name, StateStore, FLOOR_PREFIX,
    GENERATION_PREFIX, POSITION_PREFIX, SUSPECT_PREFIX,
};
pub use crate::tier::{retime_by_rewrite, Tier, TierContext, TierStats};
pub use crate::time::{after_ms, now_ms, now_ms_lag};
pub use crate::timeout::{TimeoutLayer, TimeoutTier};

/// The envelope: how an entry is stored in byte tiers (disk, Redis) — a fixed 40-byte header
/// (magic and format version, flags, the format byte naming the payload's serializer and
/// compression, tag count, `created_at`, `fresh_until`, `stale_until`, load cost, payload
/// length), the tag stamps, an optional extension block (the validator; the sealing of an
/// encrypted payload), then the payload: MessagePack by default, lz4-compressed when that saves
/// space.
///
/// [`decode_meta`](envelope::decode_meta) accepts a buffer only when every length in it agrees
/// with its size, so a truncated write, another service's JSON or an unknown version is a
/// [`Decode`](TierErrorKind::Decode) error, never a panic or a wrong value;
/// [`with_times`](envelope::with_times) rewrites the times without touching the payload.
pub mod envelope {
    pub use crate::envelope::*;
}
