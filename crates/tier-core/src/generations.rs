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
//! [`LocalGenerations`] keeps them in process — and, [persisted](LocalGenerations::persisted)
//! in a [`StateStore`] (the disk tier's state file), across restarts: every change is written
//! through before the call returns. The Redis tier provides a shared store so that one bump
//! reaches the whole fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::TierError;
use crate::state::{floor_name, generation_name, get_u64, StateStore};
use crate::time::{now_ms, rand_u64};

/// The prefix of the generation-store tags that are a cache's *tag clock* (moved on by every
/// `invalidate_tag` before the tag itself). A store that caches generations must never answer
/// one of these from its cache: a load that learns its tags late reads the clock after the
/// tags to tell whether an invalidation ran meanwhile.
pub const TAG_CLOCK_PREFIX: &str = "\u{0}tags:";

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

    /// [`stamp`](Self::stamp) read from the store itself, past any copy this process keeps.
    /// Asked after a write with a shared store, to learn whether a namespace move landed before
    /// it (a cached version is only as new as what this instance has been told). Default:
    /// [`stamp`](Self::stamp) (for a store that keeps no copies).
    async fn stamp_uncached(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError> {
        self.stamp(tags).await
    }

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
    /// says. A local store moves its own copy on and returns the generation it holds now; a
    /// shared store, which saw the bump itself, only drops what it cached of the tag and
    /// returns `None`. Default: nothing, `None`.
    fn remote_bump(&self, _tag: &str, _generation: Option<u64>) -> Option<u64> {
        None
    }

    /// Forget cached generations, if this store caches them (called after a backplane gap,
    /// when bumps may have been missed). Default: nothing to forget.
    fn forget_cached(&self) {}

    /// The hierarchy's fleet-state timeout around every call of this store (told once at
    /// build, by each hierarchy the store is given to), so that a store made of parts — a
    /// Redis Cluster's masters — can answer for a slow part before that timeout fires: a
    /// failure it attributes to the part is returned [`partial`](TierError::partial) and does
    /// not count against the hierarchy's breaker of the whole store. Default: nothing.
    fn mounted(&self, _fleet_timeout: std::time::Duration) {}
}

/// Generations held in this process, optionally persisted in a [`StateStore`].
#[derive(Default)]
pub struct LocalGenerations {
    map: Mutex<HashMap<Arc<str>, u64>>,
    floors: Mutex<HashMap<String, u64>>,
    state: Option<Arc<dyn StateStore>>,
}

impl std::fmt::Debug for LocalGenerations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGenerations").field("persisted", &self.state.is_some()).finish()
    }
}

impl LocalGenerations {
    /// An empty store, in memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store kept in `state`: generations and clear floors are read from it and written
    /// through to it (durably) before each call returns.
    pub fn persisted(state: Arc<dyn StateStore>) -> Self {
        Self { state: Some(state), ..Self::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        // A poisoned map of plain integers is still consistent: every write is a single insert.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn floors(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // As above: a single insert per write.
        self.floors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of `tag` (from memory, else from the state).
    fn known(
        &self,
        map: &mut HashMap<Arc<str>, u64>,
        tag: &Arc<str>,
    ) -> Result<Option<u64>, TierError> {
        if let Some(g) = map.get(tag) {
            return Ok(Some(*g));
        }
        let Some(state) = &self.state else { return Ok(None) };
        let g = get_u64(&**state, &generation_name(tag))?;
        if let Some(g) = g {
            map.insert(tag.clone(), g);
        }
        Ok(g)
    }

    /// Set `tag` to `g`: in the state first (durably), then in memory.
    fn set(
        &self,
        map: &mut HashMap<Arc<str>, u64>,
        tag: Arc<str>,
        g: u64,
    ) -> Result<u64, TierError> {
        if let Some(state) = &self.state {
            state.put(&generation_name(&tag), &g.to_le_bytes())?;
        }
        map.insert(tag, g);
        Ok(g)
    }

    /// The clear floor of `cache`, read without waiting.
    pub fn floor_now(&self, cache: &str) -> Result<u64, TierError> {
        let mut floors = self.floors();
        if let Some(f) = floors.get(cache) {
            return Ok(*f);
        }
        let Some(state) = &self.state else { return Ok(0) };
        let f = get_u64(&**state, &floor_name(cache))?.unwrap_or(0);
        floors.insert(cache.to_string(), f);
        Ok(f)
    }

    /// The current generation of `tag`, read without waiting.
    pub fn current_now(&self, tag: &str) -> Result<Option<u64>, TierError> {
        let mut map = self.lock();
        self.known(&mut map, &Arc::from(tag))
    }
}

#[async_trait]
impl GenerationStore for LocalGenerations {
    async fn current(&self, tags: &[Arc<str>]) -> Result<Vec<Option<u64>>, TierError> {
        let mut map = self.lock();
        tags.iter().map(|t| self.known(&mut map, t)).collect()
    }

    async fn stamp(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError> {
        let mut map = self.lock();
        let mut out = Vec::with_capacity(tags.len());
        for t in tags {
            out.push(match self.known(&mut map, t)? {
                Some(g) => g,
                None => self.set(&mut map, t.clone(), fresh_generation_start())?,
            });
        }
        Ok(out)
    }

    async fn bump(&self, tag: &str) -> Result<u64, TierError> {
        let mut map = self.lock();
        let tag: Arc<str> = Arc::from(tag);
        let g = self.known(&mut map, &tag)?.unwrap_or_else(fresh_generation_start);
        self.set(&mut map, tag, g.wrapping_add(1).max(1))
    }

    async fn floor(&self, cache: &str) -> Result<u64, TierError> {
        self.floor_now(cache)
    }

    async fn raise_floor(&self, cache: &str, at: u64) -> Result<u64, TierError> {
        let current = self.floor_now(cache)?;
        if at <= current {
            return Ok(current);
        }
        if let Some(state) = &self.state {
            state.put(&floor_name(cache), &at.to_le_bytes())?;
        }
        let mut floors = self.floors();
        let floor = floors.entry(cache.to_string()).or_insert(0);
        *floor = (*floor).max(at);
        Ok(*floor)
    }

    /// A bump heard at or below the generation held here is still a move past what is held
    /// (the sender moved from an older one, or two instances moved at once to the same one):
    /// it goes to a fresh start if that is higher than the next one. Being time-based, such
    /// a start ties with no other instance's, and one that instances re-announce after two
    /// moves at once (see the namespace in `Hierarchy::apply_remote`) is above what they hold.
    fn remote_bump(&self, tag: &str, generation: Option<u64>) -> Option<u64> {
        let mut map = self.lock();
        let tag: Arc<str> = Arc::from(tag);
        let known = self.known(&mut map, &tag).ok().flatten();
        let g = match (generation, known) {
            (Some(new), Some(old)) if new > old => new,
            (Some(_), Some(old)) => old.wrapping_add(1).max(fresh_generation_start()),
            (None, Some(old)) => old.wrapping_add(1).max(1),
            (Some(new), None) => new,
            (None, None) => fresh_generation_start(),
        };
        if let Err(e) = self.set(&mut map, tag.clone(), g) {
            // Kept in memory at least: this process does not serve the tag's old entries.
            tracing::warn!(error = %e, "a remote tag bump could not be persisted");
            map.insert(tag, g);
        }
        Some(g)
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

    /// A state store in memory, for the persistence tests.
    #[derive(Default)]
    struct MemState(Mutex<HashMap<Vec<u8>, bytes::Bytes>>);

    impl StateStore for MemState {
        fn get(&self, name: &[u8]) -> Result<Option<bytes::Bytes>, TierError> {
            Ok(self.0.lock().expect("test lock").get(name).cloned())
        }
        fn put(&self, name: &[u8], value: &[u8]) -> Result<(), TierError> {
            self.0
                .lock()
                .expect("test lock")
                .insert(name.to_vec(), bytes::Bytes::copy_from_slice(value));
            Ok(())
        }
        fn put_many(&self, items: &[(&[u8], &[u8])]) -> Result<(), TierError> {
            items.iter().try_for_each(|(n, v)| self.put(n, v))
        }
        fn was_lost(&self) -> bool {
            false
        }
        fn clear_lost(&self) -> Result<(), TierError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_persisted_store_reads_back_what_it_wrote() {
        let state: Arc<dyn StateStore> = Arc::new(MemState::default());
        let tags: Vec<Arc<str>> = vec![Arc::from("t")];
        let a = LocalGenerations::persisted(state.clone());
        let g = a.stamp(&tags).await.expect("stamp");
        let bumped = a.bump("t").await.expect("bump");
        a.raise_floor("c", 42).await.expect("floor");
        drop(a);
        let b = LocalGenerations::persisted(state);
        assert_eq!(b.current(&tags).await.expect("current"), [Some(bumped)]);
        assert_eq!(bumped, g[0] + 1);
        assert_eq!(b.floor("c").await.expect("floor"), 42);
    }
}
