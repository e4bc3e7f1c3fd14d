//! # tier
//!
//! Multi-tier caching for Rust services: a typed [`Cache`] walks its tiers — **L1** in-process
//! memory ([`MemoryTier`]), **L2** memory-mapped disk ([`DiskTier`]), **L3** Redis, standalone
//! or Cluster (`RedisTier`, feature `redis`) — in front of a slow origin, with per-tier
//! timeouts and circuit breakers, single-flight loads, fail-safe stale answers and invalidation
//! of keys, tags and namespaces in every tier of every instance.
//!
//! This crate is the one dependency a service needs: it re-exports the user API of
//! `tier-core` and the tiers its features select. Tier authors find the `Tier` trait and what
//! goes with it in [`spi`].
//!
//! ```
//! use std::time::Duration;
//! use tier::prelude::*;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User { name: String }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let users: Cache<User> = Cache::builder("users")
//!         .tier(MemoryTier::builder().max_bytes(64 << 20).build(), TierPolicy::fresh(Duration::from_secs(60)))
//!         .fail_safe(FailSafe::up_to(Duration::from_secs(3600)))
//!         .build()?;
//!     let key = users.key("42");
//!     let user = users
//!         .get_or_load(&key, || async { Ok::<_, std::io::Error>(Some(User { name: "Ada".into() })) })
//!         .await?;
//!     assert_eq!(user.map(|u| u.name.clone()).as_deref(), Some("Ada"));
//!     Ok(())
//! }
//! ```
//!
//! ## Features
//! - `memory` (default) — [`MemoryTier`], the L1 on moka ([`memory`]).
//! - `disk` (default) — [`DiskTier`], the memory-mapped L2 ([`disk`]).
//! - `redis` — `RedisTier`, `RedisBackplane`, `RedisGenerations`, `RedisLock` (the `redis`
//!   module).
//! - `tls` — `rediss://` URLs through rustls (implies `redis`).
//! - `zstd` — zstd compression of the values byte tiers store ([`Compression::Zstd`]).
//! - `cbor` — the CBOR serializer for them ([`Serializer::Cbor`]).
//! - `prometheus` — a Prometheus exporter set up for tier's metrics: buckets, upkeep, a handle
//!   that renders `/metrics` for one's own router (the `prometheus` module).
//! - `opentelemetry` — tier's traces (reads, Redis calls after the database semantic
//!   conventions) and metrics through OpenTelemetry (the `otel` module).
//! - `encryption` — values sealed at rest in the disk and Redis tiers with a keyring of the
//!   application's (the `seal` module, `CacheBuilder::keyring`).
//! - `http` — a tower layer that caches HTTP responses through a `Cache` (the `http` module,
//!   the `tier-http` crate).
//! - `test-util` — tier-core's test helpers and conformance kit (the `testing` module).

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use tier_core::{
    metrics, spi, BackfillPolicy, BoxError, Breaker, BreakerConfig, BreakerState, Cache,
    CacheBuilder, CacheError, CacheHit, CacheValue, CallOptions, Compression, DeadLetter,
    EarlyRefresh, FailSafe, KeyBuilder, LoadContext, Loaded, LockOptions, OriginWrite,
    OriginWriter, Previous, ReconnectPolicy, Serializer, Storage, TierError, TierErrorKind,
    TierInfo, TierPolicy, TierStats, TraceKeys, TtlPolicy, WarmProgress, WarmReport, WhenFull,
    WriteBehind, WriteBehindStatus, MAX_ID_LEN,
};

#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub use tier_core::seal;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use tier_core::testing;

/// The in-process memory tier (the `tier-memory` crate).
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use tier_memory as memory;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use tier_memory::{MemoryTier, MemoryTierBuilder};

/// The memory-mapped disk tier (the `tier-disk` crate).
#[cfg(feature = "disk")]
#[cfg_attr(docsrs, doc(cfg(feature = "disk")))]
pub use tier_disk as disk;
#[cfg(feature = "disk")]
#[cfg_attr(docsrs, doc(cfg(feature = "disk")))]
pub use tier_disk::{DiskTier, DiskTierBuilder};

/// The Redis tier and the fleet's shared state (the `tier-redis` crate).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use tier_redis as redis;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use tier_redis::{RedisBackplane, RedisConnection, RedisGenerations, RedisLock, RedisTier};

#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod prometheus;

/// The tower layer caching HTTP responses (the `tier-http` crate).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use tier_http as http;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod otel;

/// The names most services use: `use tier::prelude::*;`.
pub mod prelude {
    pub use crate::{Cache, CacheError, CallOptions, FailSafe, LoadContext, Loaded, TierPolicy};

    #[cfg(feature = "disk")]
    pub use crate::DiskTier;
    #[cfg(feature = "memory")]
    pub use crate::MemoryTier;
    #[cfg(feature = "redis")]
    pub use crate::{RedisConnection, RedisTier};
}

/// The README's examples, compiled (and the first one run) as doctests so that they cannot rot;
/// the second needs every tier.
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "memory", feature = "disk", feature = "redis"))]
pub struct ReadmeDoctests;
