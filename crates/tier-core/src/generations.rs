//! Tag generations: O(1) invalidation of every entry carrying a tag.
//!
//! An entry is stamped with the generation of each of its tags when it is written (for a load,
//! *before* the loader runs, so a value computed from data that was invalidated during the load is
//! born invalid). `invalidate_tag` bumps the generation; a read compares stamps with the current
//! generations and treats a mismatch as a miss. No scan, whatever the number of tagged entries.
//!
//! **Generations never go back.** A generation is created the first time a tag is stamped, with
//! a start value no earlier life of the tag can have held ([`fresh_generation_start`]); a bump of
//! a missing generation starts from a fresh value too. A generation the store does not have
//! (lost, evicted, never stamped) reads as *unknown* (`None`): entries stamped with it are at
//! most stale, never fresh — so a lost counter never matches old stamps again.
//!
//! [`LocalGenerations`] keeps them in process; the Redis tier provides a shared store so that one
//! bump reaches the whole fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::TierError;
use crate::time::{now_ms, rand_u64};

/// A generation start value that no earlier life of the same tag can have held:
/// `now_ms · 2^20 + random 20 bits`, never 0.
pub fn fresh_generation_start() -> u64 {
    let start = (now_ms() << 20) | (rand_u64() & 0xF_FFFF);
    start.max(1)
}

/// Where tag generations (and the clear floor) live.
#[async_trait]
pub trait GenerationStore: Send + Sync + 'static {
    /// The current generation of each tag, in order; `None` = unknown (never stamped, or lost).
    /// A stamp that does not equal a known current generation is not fresh; an unknown one is
    /// at most stale.
    async fn current(&self, tags: &[Arc<str>]) -> Result<Vec<Option<u64>>, TierError>;

    /// The generations to stamp a new entry with, in order: the current ones, creating missing
    /// ones with [`fresh_generation_start`]. Never 0.
    async fn stamp(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError>;

    /// Bump a tag's generation (a missing one gets a fresh start, then +1); returns the new
    /// generation.
    async fn bump(&self, tag: &str) -> Result<u64, TierError>;

    /// The clear floor of hierarchy `cache`: its entries created at or before it (Unix ms) are
    /// gone. 0 = none. Default: 0.
    async fn floor(&self, _cache: &str) -> Result<u64, TierError> {
        Ok(0)
    }

    /// Raise the clear floor of hierarchy `cache` to at least `at` (the max of both; it never
    /// goes down). Returns the floor now in force.
    async fn raise_floor(&self, cache: &str, at: u64) -> Result<u64, TierError>;

    /// Another instance bumped `tag` (heard on the backplane), to `generation` when the message
    /// says. A local store moves its own copy on; a shared store, which saw the bump itself,
    /// only drops what it cached of the tag. Default: nothing.
    fn remote_bump(&self, _tag: &str, _generation: Option<u64>) {}

    /// Forget cached generations, if this store caches them (called after a backplane gap,
    /// when bumps may have been missed). Default: nothing to forget.
    fn forget_cached(&self) {}
}

/// Generations held in this process.
#[derive(Debug, Default)]
pub struct LocalGenerations {
    map: Mutex<HashMap<Arc<str>, u64>>,
    floors: Mutex<HashMap<String, u64>>,
}

impl LocalGenerations {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        // A poisoned map of plain integers is still consistent: every write is a single insert.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl GenerationStore for LocalGenerations {
    async fn current(&self, tags: &[Arc<str>]) -> Result<Vec<Option<u64>>, TierError> {
        let map = self.lock();
        Ok(tags.iter().map(|t| map.get(t).copied()).collect())
    }

    async fn stamp(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError> {
        let mut map = self.lock();
        Ok(tags
            .iter()
            .map(|t| *map.entry(t.clone()).or_insert_with(fresh_generation_start))
            .collect())
    }

    async fn bump(&self, tag: &str) -> Result<u64, TierError> {
        let mut map = self.lock();
        let g = map.entry(Arc::from(tag)).or_insert_with(fresh_generation_start);
        *g = g.wrapping_add(1).max(1);
        Ok(*g)
    }

    async fn floor(&self, cache: &str) -> Result<u64, TierError> {
        let floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        Ok(floors.get(cache).copied().unwrap_or(0))
    }

    async fn raise_floor(&self, cache: &str, at: u64) -> Result<u64, TierError> {
        // A poisoned map of plain integers is still consistent: every write is a single insert.
        let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        let floor = floors.entry(cache.to_string()).or_insert(0);
        *floor = (*floor).max(at);
        Ok(*floor)
    }

    fn remote_bump(&self, tag: &str, generation: Option<u64>) {
        let mut map = self.lock();
        let g = map.entry(Arc::from(tag)).or_insert_with(fresh_generation_start);
        *g = match generation {
            Some(new) if new > *g => new,
            _ => g.wrapping_add(1).max(1),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_generation_starts_fresh_and_never_matches_an_earlier_life() {
        let tags: Vec<Arc<str>> = vec![Arc::from("t")];
        let a = LocalGenerations::new();
        assert_eq!(
            a.current(&tags).await.expect("local store"),
            [None],
            "unknown before the first stamp"
        );
        let first = a.stamp(&tags).await.expect("local store")[0];
        assert_ne!(first, 0);
        assert_eq!(a.current(&tags).await.expect("local store"), [Some(first)]);
        assert_eq!(
            a.stamp(&tags).await.expect("local store"),
            [first],
            "stamping again reads the current one"
        );
        assert_eq!(a.bump("t").await.expect("local store"), first + 1);
        // A store that lost the tag (a new life) starts elsewhere, not at 0 or 1.
        let b = LocalGenerations::new();
        let bumped = b.bump("t").await.expect("local store");
        assert!(bumped > 1 << 20, "{bumped}");
    }

    #[tokio::test]
    async fn the_floor_only_goes_up() {
        let s = LocalGenerations::new();
        assert_eq!(s.floor("a").await.expect("local store"), 0);
        assert_eq!(s.raise_floor("a", 10).await.expect("local store"), 10);
        assert_eq!(s.raise_floor("a", 5).await.expect("local store"), 10);
        assert_eq!(s.floor("a").await.expect("local store"), 10);
        assert_eq!(s.floor("b").await.expect("local store"), 0, "a floor is one cache's");
    }
}
