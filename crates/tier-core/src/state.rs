//! [`StateStore`]: the small durable state the hierarchy keeps locally — tag generations, the
//! namespace version, the clear floor and the applied invalidation-log position — so that an
//! invalidation survives a restart. The disk tier implements it over its state file
//! ([`Tier::state_store`](crate::spi::Tier::state_store)); the hierarchy holds it as the
//! authority for generations when there is no shared store.
//!
//! Names used by the hierarchy: [`GENERATION_PREFIX`] + tag, [`FLOOR_PREFIX`] + cache name,
//! [`POSITION_PREFIX`] + cache name, [`SUSPECT_PREFIX`] + cache name.

use crate::error::TierError;

/// Name prefix of a tag's generation (the value: the generation, u64 little endian).
pub const GENERATION_PREFIX: &[u8] = b"gen:";
/// Name prefix of a cache's clear floor (u64 little endian, Unix ms).
pub const FLOOR_PREFIX: &[u8] = b"floor:";
/// Name prefix of a cache's suspect floor: its local entries created at or before it are at
/// most stale (u64 little endian, Unix ms).
pub const SUSPECT_PREFIX: &[u8] = b"suspect:";
/// Name prefix of a cache's last applied log position (the value: the position's bytes).
pub const POSITION_PREFIX: &[u8] = b"pos:";

/// A small durable key/value state.
pub trait StateStore: Send + Sync + 'static {
    /// The value of `name`, if any.
    fn get(&self, name: &[u8]) -> Result<Option<bytes::Bytes>, TierError>;

    /// Set `name` to `value`; durable when it returns `Ok`.
    fn put(&self, name: &[u8], value: &[u8]) -> Result<(), TierError>;

    /// Set several names at once (applied whole, or not at all).
    fn put_many(&self, items: &[(&[u8], &[u8])]) -> Result<(), TierError>;

    /// The state was missing or corrupt at open while entries exist: everything local is
    /// suspect until [`clear_lost`](Self::clear_lost).
    fn was_lost(&self) -> bool;

    /// The owner has dealt with a loss (made everything older suspect): forget it.
    fn clear_lost(&self) -> Result<(), TierError>;
}

/// The name of `tag`'s generation in a [`StateStore`].
pub fn generation_name(tag: &str) -> Vec<u8> {
    [GENERATION_PREFIX, tag.as_bytes()].concat()
}

/// The name of `cache`'s applied log position in a [`StateStore`].
pub fn position_name(cache: &str) -> Vec<u8> {
    [POSITION_PREFIX, cache.as_bytes()].concat()
}

/// The name of `cache`'s clear floor in a [`StateStore`].
pub fn floor_name(cache: &str) -> Vec<u8> {
    [FLOOR_PREFIX, cache.as_bytes()].concat()
}

/// The name of `cache`'s suspect floor in a [`StateStore`].
pub fn suspect_name(cache: &str) -> Vec<u8> {
    [SUSPECT_PREFIX, cache.as_bytes()].concat()
}

/// A u64 value of a [`StateStore`] (little endian); `None` when absent or not 8 bytes.
pub fn get_u64(state: &dyn StateStore, name: &[u8]) -> Result<Option<u64>, TierError> {
    Ok(state.get(name)?.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map(u64::from_le_bytes))
}
