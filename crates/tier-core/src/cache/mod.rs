//! The hierarchy: [`Cache`], its builder, and how it reads, loads and writes its tiers.
//!
//! Invariants the code keeps (each has a test in `tests/`):
//! - **Backfill never extends life**: a copy made from a lower tier gets
//!   `min(this tier's policy from now, what the source had left)`, for `fresh_until` and
//!   `stale_until` alike (`lifetime.rs`).
//! - **One usability rule**: whether an entry is fresh, stale-servable or unusable is decided by
//!   one function for every read, single-key and batch alike (`rule.rs`).
//! - **Errors are never cached**: a loader error writes nothing (the fail-safe throttle only
//!   re-stamps a stale value that was already cached, within its `stale_until`) (`load.rs`).
//! - **Stale is served only before `stale_until`**, only when fail-safe (or stale-while-revalidate,
//!   or a soft timeout) allows it.
//! - **One load per key per process**: concurrent callers — single-key and batch — join one
//!   flight; the load runs in its own task, so a caller that is cancelled strands nobody
//!   (`flight.rs`).
//! - **Invalidation wins races** and goes lowest tier first: every write to a tier goes through
//!   `writes.rs`, whose stripes order background writes after invalidations; tags cost O(1)
//!   (generations checked on read, `tags.rs`).
//! - **Coherence** (ARCHITECTURE.md, "Coherence and the fleet state"): the rule caps entries by
//!   the fleet state — the clear floor everywhere; the suspect floor, the start-up catch-up and
//!   the backplane lease in local tiers; an unknown generation at most stale (`rule.rs`); inserts
//!   and loads publish value-free notices, and what the local tiers must not forget (log
//!   position, suspect floor, generations and floor without a shared store) is kept in the
//!   first local tier's state store (`fleet.rs`, `background.rs`); every part of the fleet
//!   state runs under a timeout and a breaker of its own, and a part that is down makes entries
//!   stale or loads uncached, never a failed read (`fleet.rs`).
//!
//! The modules, lowest first (each imports only modules above it in this list, but the builder
//! and the handle it builds):
//! `options` (configuration), `tiers` (the tier set), `rule` (usability), `tags`, `sealer` (envelopes
//! in clear or sealed), `lifetime`
//! (entries and their lifetimes), `writes` (tier writes, stripes), `fleet` (the fleet state's
//! guards and what is kept of it locally), `flight` (single-flight),
//! `hierarchy` (the shared state), `lookup` (walking the tiers), `backfill`, `load` (the loader
//! run), `handle` ([`Cache`]), `read`, `write`, `batch`, `warm` (the public operations),
//! `background` (gauges, backplane listener), `builder`.

mod backfill;
mod background;
mod batch;
mod builder;
mod context;
mod expire;
mod fleet;
mod flight;
mod handle;
mod hierarchy;
mod land;
mod lifetime;
mod load;
mod loader;
mod lookup;
mod options;
mod read;
mod rule;
mod sealer;
mod tags;
mod tiers;
mod trace;
mod warm;
mod write;
mod writes;

pub use builder::CacheBuilder;
pub use context::{LoadContext, Loaded, Previous};
pub use handle::Cache;
pub use options::{CacheValue, CallOptions, EarlyRefresh, FailSafe};
pub use read::CacheHit;
pub use tiers::TierInfo;
pub use trace::TraceKeys;
pub use warm::{WarmProgress, WarmReport};
