//! # tier-core
//!
//! The hierarchy of `tier`: the [`Tier`] trait, the entry [`envelope`], per-tier policies, the
//! circuit breaker and timeout wrappers, tag generations, the backplane and lock interfaces.
//! No Redis, no mmap, no moka in here: tiers plug in through the trait.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backplane;
mod breaker;
mod cache;
mod entry;
pub mod envelope;
mod error;
mod generations;
mod key;
mod layer;
mod lock;
pub mod metrics;
mod policy;
mod sketch;
pub mod spi;
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod tier;
mod time;
mod timeout;

pub use backplane::{Backplane, BackplaneEvent, Invalidation, ReconnectPolicy};
pub use breaker::{
    Breaker, BreakerConfig, BreakerLayer, BreakerState, BreakerTier, CircuitBreaker, Outcome,
    Permit,
};
pub use cache::{
    Cache, CacheBuilder, CacheValue, CallOptions, EarlyRefresh, FailSafe, TierInfo, WarmProgress,
    WarmReport,
};
pub use entry::{Entry, Lookup, ObjectEntry, ReadyLookup, Storage, Value};
pub use envelope::{Codec, Meta, TagStamp};
pub use error::{BoxError, CacheError, TierError, TierErrorKind};
pub use generations::{GenerationStore, LocalGenerations};
pub use key::{KeyBuilder, MAX_ID_LEN};
pub use layer::{Mount, TierLayer};
pub use lock::{DistributedLock, LockOptions, LockToken};
pub use policy::{BackfillPolicy, TierPolicy, TtlPolicy};
pub use sketch::{FrequencySketch, HotKeys};
pub use tier::{Tier, TierContext, TierStats};
pub use time::{after_ms, now_ms};
pub use timeout::{TimeoutLayer, TimeoutTier};
