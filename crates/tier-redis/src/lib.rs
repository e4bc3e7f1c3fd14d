//! # tier-redis
//!
//! The shared tier of `tier`: Redis, standalone or Redis Cluster, and what the fleet shares
//! through it.
//!
//! - [`RedisTier`] — the L3 tier: envelopes under a key prefix, written by a compare-and-set
//!   script (never over a newer entry) with `PX` until the entry is gone, removals as
//!   short-lived tombstones, `MGET`/pipelines for batches (split by hash slot in a Cluster),
//!   background retry of failed writes.
//! - [`RedisGenerations`] — tag generations (`INCR` per tag): `invalidate_tag` is O(1) and reaches
//!   the whole fleet; a lost generation is unknown, never 0, and restarts from a fresh value.
//! - [`RedisBackplane`] — the fleet's invalidation log, a Redis Stream: delivered to every other
//!   instance with positions and proofs of delivery, replayable after a restart or a reconnect,
//!   a gap said only when what was missed cannot be read. With
//!   [`track`](RedisBackplaneBuilder::track) also client-side caching (RESP3 `CLIENT TRACKING`):
//!   a write to the tier's keys by any client drops them from the local tiers.
//! - [`RedisLock`] — the fleet-wide stampede lock (`SET NX PX` + compare-and-delete).
//!
//! - [`RedisInspector`] — a read-only view of the entries under a prefix, for tools.
//!
//! All of them share one [`RedisConnection`] (standalone `ConnectionManager` or cluster-async
//! client: multiplexed, reconnected automatically, every call bounded by connect + response
//! timeout; a server that cannot be reached at start-up is connected to in the background, so
//! a service starts while Redis is down — see [`lazy`](RedisConnectionBuilder::lazy)). The builders of the tier and the backplane take either a connection or a
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
//! `"tier-gen:" + tag`, locks `"tier-lock:" + key`, the backplane's stream
//! `"tier-log:invalidations"` (and its epoch key, `RedisBackplane::epoch_key_of`); the [`keys`] module has the whole layout.
//! Keep the prefixes apart (none a prefix of another, the stream outside the tier's prefix):
//! the tier's `clear` removes everything under its own prefix, with `SCAN`+`UNLINK`.
//!
//! ## What coherence needs from Redis
//! `maxmemory-policy` `noeviction` or `volatile-*` (generations, clear floors and the epoch have
//! no TTL; an `allkeys-*` policy is reported: a warning and
//! `tier_redis_unsafe_eviction_policy{policy}`), no persistence or AOF `appendfsync always`,
//! Redis 7 or Valkey. See the README.
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
//! When a master of a Cluster is lost with no replica to take over, the keys of its slots fail
//! while the other masters keep answering (with `cluster-require-full-coverage no`; with
//! Redis's default, `yes`, every node refuses every command once the master is marked failed,
//! and the whole tier is down). The tier therefore keeps **a circuit breaker per master**
//! ([`RedisTierBuilder::node_breaker`], on by default), fed by the slot → master map of
//! `CLUSTER SLOTS` (read at build, every [`REFRESH_INTERVAL`], and soon after a call fails):
//! - a key whose master's breaker is open answers
//!   [`CircuitOpen`](tier_core::TierErrorKind::CircuitOpen) at once — the hierarchy goes on to
//!   the next tier or the loader without waiting — and so does its write; a removal is not
//!   sent either, but it is not skipped silently: it fails (`Unavailable`) and waits in the
//!   retry queue until the master is back (the retry worker sends nothing to a master that is
//!   out). A background task probes the master (`PING`, on a connection of its own) once per
//!   cool-down and closes its breaker when it answers: no caller waits for a lost master, not
//!   even as a probe;
//! - a master's failures are returned [`partial`](tier_core::TierError::partial): the
//!   hierarchy's breaker of the whole tier does not count them, so the healthy masters' keys
//!   stay L3 hits with the default [`BreakerConfig`](tier_core::BreakerConfig) of the hierarchy
//!   (without per-master breakers that breaker opens within a few dozen gets, and then the
//!   healthy masters' keys go to the origin too);
//! - a call ends [`DEADLINE_MARGIN`] before the hierarchy's timeout (learned when the tier is
//!   mounted): a master that hangs is the master's timeout, not the whole tier's;
//! - batches: [`get_many`](tier_core::spi::Tier::get_many) answers the keys of a master that is open
//!   or fails as misses (counted in `tier_redis_node_skipped_total`), and fails only when no
//!   master answered; [`insert_many`](tier_core::spi::Tier::insert_many) writes to the masters that
//!   are up, skips (does not queue) the writes of an open master, and fails only when a write
//!   failed (queued for retry) or when every master was open.
//!
//! Measured by `tests/cluster_faults.rs` (three masters, one killed or paused with SIGSTOP,
//! the hierarchy's default breaker and a 150 ms timeout): the healthy masters' keys stayed L3
//! hits (0 of 3 000–7 000 gets went to the origin; with 16 callers and a paused master, 0 of
//! 10 000–22 000 in most runs, a handful in some, see below), a lost key cost 60–100 µs (p50)
//! once its master's breaker was open instead of the tier's timeout, the breaker of the whole
//! tier stayed closed, and every key was an L3 hit again 0.7–2.6 s after the master returned.
//! The `redis_fleet` bench (16 callers, a 50 ms timeout): 0 origin calls per second of the
//! healthy masters' keys during the outage, against ~120 000 without per-master breakers (the
//! breaker of the whole tier opens, and every key goes to the origin).
//! `tier_redis_node_breaker_state{node}` shows each master's breaker.
//!
//! The cluster client of redis-rs, when it has lost its connection to a node and a command is
//! routed to that node, reconnects to every initial node and holds *all* its traffic meanwhile
//! (up to connect + response timeout with a node that hangs). The tier sends nothing to a master
//! whose breaker is open and does its per-node work (probes, `SCAN`, `INFO`) on connections of
//! its own, so this happens once, when a master is lost (before its breaker opens); the healthy
//! masters' calls that time out in that moment count against their own breakers (rarely enough
//! to open one). Keep the connect timeout of a Cluster short.
//!
//! A whole Cluster down opens every master's breaker: every call then answers `CircuitOpen` at
//! once (the hierarchy's breaker of the whole tier, which counts only failures that no master's
//! breaker counted, stays closed).
//!
//! ## Not supported
//! Redis Sentinel and reads from replicas are out of scope: a Cluster's replicas serve only as
//! failover targets (the tier follows a promotion through its topology reads), and a
//! Sentinel-managed primary is reached through a URL (or a proxy) that follows it.
//!
//! ## Metrics
//! See [`metrics`] for the names and labels this crate emits.
//!
//! See the crate's README for a whole program (Cache with memory L1, Redis L3, generations,
//! backplane and lock) and how to run the tests against real servers.
//!
//! ## Features
//! - `test-util` — [`testing`]: servers and a Cluster of a test's own (kill, pause, restart),
//!   for tests and benches.
//! - `tls` — `rediss://` URLs through rustls (redis-rs's `tokio-rustls-comp`). The application
//!   installs a rustls `CryptoProvider` at start (e.g.
//!   `rustls::crypto::ring::default_provider().install_default()`); without one, `connect`
//!   fails with a [`SetupError`] that says so (also when rustls's own cargo features would pick
//!   one). Servers are verified against the system's trust store, or against the CA
//!   certificates of [`RedisConnectionBuilder::tls_ca_file`] (a private CA). Tested against a
//!   TLS-only Redis with a CA made in the run (`tests/tls.rs`).

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod acl;
mod backplane;
mod commands;
mod connection;
mod error;
mod generations;
mod inspect;
pub mod keys;
mod lock;
pub mod metrics;
mod nodes;
mod own;
mod redact;
mod retry;
mod stats;
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod tier;
mod wire;

pub use backplane::{RedisBackplane, RedisBackplaneBuilder, DEFAULT_MAX_LEN};
pub use connection::{
    ConnectionSource, RedisConnection, RedisConnectionBuilder, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT,
};
pub use error::{RedisCause, SetupError};
pub use generations::{RedisGenerations, CACHE_LEASE, DEFAULT_CACHE_MAX_AGE};
pub use inspect::{NodeHealth, RedisInspector, StoredEntry, StoredKey};
pub use keys::{DEFAULT_GENERATION_PREFIX, DEFAULT_LOCK_PREFIX, DEFAULT_PREFIX, DEFAULT_STREAM};
pub use lock::RedisLock;
pub use nodes::{default_node_breaker, DEADLINE_MARGIN, MIN_REFRESH_GAP, REFRESH_INTERVAL};
pub use redact::redact_url;
pub use tier::{RedisTier, RedisTierBuilder, DEFAULT_RETRY_CAPACITY};

/// The README's example, compiled as a doctest so that it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
