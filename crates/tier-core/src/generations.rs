//! Tag generations: O(1) invalidation of every entry carrying a tag.
//!
//! An entry is stamped with the generation of each of its tags when it is written (for a load,
//! *before* the loader runs, so a value computed from data that was invalidated during the load is
//! born invalid). `invalidate_tag` bumps the generation; a read compares stamps with the current
//! generations and treats a mismatch as a miss. No scan, whatever the number of tagged entries.
//!
//! [`LocalGenerations`] keeps them in process; the Redis tier provides a shared store so that one
//! bump reaches the whole fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::TierError;

/// Where tag generations live.
#[async_trait]
pub trait GenerationStore: Send + Sync + 'static {
    /// The current generation of each tag, in order (0 for a tag never bumped).
    async fn current(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError>;

    /// Bump a tag's generation; returns the new generation.
    async fn bump(&self, tag: &str) -> Result<u64, TierError>;

    /// Another instance bumped `tag` (heard on the backplane). A local store bumps its own copy;
    /// a shared store, which saw the bump itself, only drops what it cached of the tag.
    /// Default: nothing.
    fn remote_bump(&self, _tag: &str) {}

    /// Forget cached generations, if this store caches them (called after a backplane
    /// reconnect, when bumps may have been missed). Default: nothing to forget.
    fn forget_cached(&self) {}
}

/// Generations held in this process.
#[derive(Debug, Default)]
pub struct LocalGenerations {
    map: Mutex<HashMap<Arc<str>, u64>>,
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
    async fn current(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError> {
        let map = self.lock();
        Ok(tags.iter().map(|t| map.get(t).copied().unwrap_or(0)).collect())
    }

    async fn bump(&self, tag: &str) -> Result<u64, TierError> {
        let mut map = self.lock();
        let g = map.entry(Arc::from(tag)).or_insert(0);
        *g += 1;
        Ok(*g)
    }

    fn remote_bump(&self, tag: &str) {
        let mut map = self.lock();
        *map.entry(Arc::from(tag)).or_insert(0) += 1;
    }
}
