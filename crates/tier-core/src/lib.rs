//! # tier-core
//!
//! The hierarchy of `tier`: [`Cache`] and its builder, per-tier policies and their layers
//! (timeout, circuit breaker), single-flight, fail-safe, tags and namespaces, the fleet-state
//! interfaces (generations, backplane, lock), metric names. No Redis, no mmap, no moka in here:
//! tiers plug in through the `Tier` trait.
//!
//! The crate serves two audiences:
//! - **a service** builds a [`Cache`]: everything it needs is at this crate's root (most
//!   services depend on the `tier` crate instead, which re-exports it with the tiers);
//! - **a tier author** implements `Tier` (or a backplane, a generation store, a lock, a layer):
//!   [`spi`] has the trait and what goes with it, `testing` (feature `test-util`) the
//!   conformance kit that checks a tier against the contract.
//!
//! ## What FusionCache users know, here
//!
//! | FusionCache | tier |
//! |---|---|
//! | adaptive caching (`ctx.Options.Duration = …` in the factory) | [`Cache::get_or_load_ctx`]: the loader answers [`Loaded::value(v).fresh_for(d).stale_for(s)`](Loaded::fresh_for), graduated per tier and clamped to [`TierPolicy::max_lifetime`]; also its [`tags`](Loaded::tags) (known only after loading) and [`dont_cache`](Loaded::dont_cache) |
//! | conditional refresh (`ctx.HasETag`, `ctx.NotModified()`) | [`LoadContext::previous`] (value, age, tier, [`validator`](LoadContext::validator)) and [`LoadContext::not_modified`]: the value is kept and its times are rewritten in every tier — no value bytes are sent again ([`Loaded::validator`] stores the ETag / Last-Modified / version) |
//! | `Expire(key)` vs `Remove(key)` | [`Cache::expire`] (stale, still a fail-safe fallback) vs [`Cache::invalidate`] (gone); both reach every instance through the backplane |
//! | `Clear(allowFailSafe: true)` vs `Clear(false)` | [`Cache::expire_all`] (every entry stale, in O(1): an expiry floor) vs [`Cache::clear`] (every entry gone: the clear floor) |
//! | per-call entry options (`Duration`, `IsFailSafeEnabled`, `FactoryHardTimeout`) | [`CallOptions::fresh`], [`stale`](CallOptions::stale), [`fail_safe`](CallOptions::fail_safe) / [`no_fail_safe`](CallOptions::no_fail_safe), [`load_timeout`](CallOptions::load_timeout) |
//! | `TryGet` (`MaybeValue`) | [`Cache::try_get`]: value, fresh or stale, age, the tier that answered — no load |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backplane;
mod breaker;
mod cache;
mod entry;
mod envelope;
mod error;
mod events;
#[cfg(any(test, feature = "test-util"))]
mod fault;
mod generations;
mod key;
mod layer;
mod lock;
pub mod metrics;
mod policy;
mod queue;
mod retime;
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub mod seal;
mod sketch;
pub mod spi;
mod state;
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod tier;
mod time;
mod timeout;

pub use backplane::ReconnectPolicy;
pub use breaker::{Breaker, BreakerConfig};
pub use cache::{
    Cache, CacheBuilder, CacheHit, CacheValue, CallOptions, EarlyRefresh, FailSafe, LoadContext,
    Loaded, OriginWrite, OriginWriter, Previous, TierInfo, TraceKeys, WarmProgress, WarmReport,
    WhenFull, WriteBehind, WriteBehindStatus,
};
pub use entry::Storage;
pub use envelope::{Compression, Serializer};
pub use error::{BoxError, CacheError, TierError, TierErrorKind};
pub use key::{KeyBuilder, MAX_ID_LEN};
pub use lock::LockOptions;
pub use policy::{BackfillPolicy, TierPolicy, TtlPolicy};
pub use queue::DeadLetter;
pub use tier::{BreakerState, TierStats};
