//! # tier-redis
//!
//! The shared tier of `tier`: Redis, standalone or Redis Cluster, and what the fleet shares
//! through it.
//!
//! - [`RedisTier`] — the L3 tier: envelopes under a key prefix, `SET … PX` until the entry is
//!   gone, `MGET`/pipelines for batches (split by hash slot in a Cluster), background retry of
//!   failed writes.
//! - [`RedisGenerations`] — tag generations (`INCR` per tag): `invalidate_tag` is O(1) and reaches
//!   the whole fleet.
//! - [`RedisBackplane`] — invalidations published to every other instance over pub/sub, with a
//!   reconnect loop that tells the hierarchy when messages may have been missed.
//! - [`RedisLock`] — the fleet-wide stampede lock (`SET NX PX` + compare-and-delete).
//!
//! - [`RedisInspector`] — a read-only view of the entries under a prefix, for tools.
//!
//! All of them share one [`RedisConnection`] (standalone `ConnectionManager` or cluster-async
//! client: multiplexed, reconnected automatically, every call bounded by connect + response
//! timeout). The builders of the tier and the backplane take either a connection or a
//! [`RedisConnectionBuilder`] ([`ConnectionSource`]), so URLs and timeouts are set in one place:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tier_redis::SetupError> {
//! use std::time::Duration;
//! use tier_redis::{RedisConnection, RedisTier};
//! let conn = RedisConnection::standalone("redis://127.0.0.1:6379/")
//!     .response_timeout(Duration::from_millis(100));
//! let tier = RedisTier::builder(conn).prefix("app:users:").build().await?;
//! # Ok(()) }
//! ```
//!
//! ## Keys
//! Data keys are `tier prefix + key` (default prefix `"tier:"`), generations
//! `"tier-gen:" + tag`, locks `"tier-lock:" + key`; the [`keys`] module has the whole layout.
//! Keep the prefixes apart (none a prefix of another): the tier's `clear` removes everything
//! under its own prefix, with `SCAN`+`UNLINK`.
//!
//! ## Errors and secrets
//! Set-up (builders, connect) returns [`SetupError`]. Running operations return
//! [`tier_core::TierError`]: connection problems are `Unavailable`, timeouts `Timeout`, foreign
//! bytes under the prefix `Decode` — the hierarchy's breaker and metrics know what to do with each.
//! Both are one line whatever redis-rs said (its message, folded onto one line, is the cause: a
//! [`RedisCause`]). A URL is only ever printed through [`redact_url`] — errors, logs, `Debug` —
//! which removes its userinfo, whatever that contains.
//!
//! ## Redis Cluster: a lost master
//! The hierarchy's circuit breaker is one per tier. When a master of a Cluster is lost with no
//! replica to take over, the keys of its slots fail (a get, then the write of the loaded
//! value) while the other masters keep answering (with `cluster-require-full-coverage no`; with
//! Redis's default, `yes`, every node refuses every command once the master is marked failed,
//! and the whole tier is down). What the breaker then does is a choice, measured with the set-up
//! of `tests/cluster_faults.rs` (three masters, one lost, one caller getting 30 keys in turn):
//! - The default [`BreakerConfig`](tier_core::BreakerConfig) (open after 5 failures in a row)
//!   opens within a few dozen gets and stays open (one probe in three lands on the lost
//!   master): every get skips the tier, so the healthy masters' keys go to the origin too (with
//!   a 1 s cooldown, 99.97 % of them did over 8 s). Gets are fast; the origin takes all of the
//!   tier's traffic.
//! - A breaker on the failure ratio alone (`failure_ratio: 0.6, consecutive_failures:
//!   u32::MAX`) stays closed (the ratio settles near 0.5: two failures for each lost key, one
//!   success for each other): the healthy masters' keys stay L3 hits, and each get of a lost key
//!   waits for the tier to fail (~100 ms measured, never more than the tier's timeout) before
//!   the loader runs.
//!
//! A whole Cluster down fails every call, and either breaker opens.
//!
//! ## Metrics
//! See [`metrics`] for the names and labels this crate emits.
//!
//! See the crate's README for a whole program (Cache with memory L1, Redis L3, generations,
//! backplane and lock) and how to run the tests against real servers.
//!
//! ## Features
//! - `tls` — `rediss://` URLs through rustls (redis-rs's `tokio-rustls-comp`). The application
//!   installs a rustls `CryptoProvider` (e.g. ring or aws-lc-rs) at start.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backplane;
mod commands;
mod connection;
mod error;
mod generations;
mod inspect;
pub mod keys;
mod lock;
pub mod metrics;
mod redact;
mod retry;
mod stats;
mod tier;
mod wire;

pub use backplane::{RedisBackplane, RedisBackplaneBuilder};
pub use connection::{
    ConnectionSource, RedisConnection, RedisConnectionBuilder, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT,
};
pub use error::{RedisCause, SetupError};
pub use generations::{RedisGenerations, DEFAULT_CACHE_MAX_AGE};
pub use inspect::{RedisInspector, StoredEntry, StoredKey};
pub use keys::{DEFAULT_CHANNEL, DEFAULT_GENERATION_PREFIX, DEFAULT_LOCK_PREFIX, DEFAULT_PREFIX};
pub use lock::RedisLock;
pub use redact::redact_url;
pub use tier::{RedisTier, RedisTierBuilder, DEFAULT_RETRY_CAPACITY};

/// The README's example, compiled as a doctest so that it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
