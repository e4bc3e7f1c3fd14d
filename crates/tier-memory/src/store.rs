//! What moka holds for the tier: the cache's type, and what an entry weighs.

use std::sync::Arc;

use bytes::Bytes;
use foldhash::quality::SeedableRandomState;
use tier_core::spi::ObjectEntry;

/// Bytes added to each entry's weight for moka's and our bookkeeping.
pub const ENTRY_OVERHEAD: u32 = 96;

/// The moka cache under a [`MemoryTier`](crate::MemoryTier).
pub(crate) type Moka = moka::sync::Cache<Bytes, Arc<ObjectEntry>, SeedableRandomState>;

/// What an entry weighs: its key, its encoded size and [`ENTRY_OVERHEAD`].
pub(crate) fn weight(key: &Bytes, entry: &ObjectEntry) -> u32 {
    (key.len() as u32).saturating_add(entry.size).saturating_add(ENTRY_OVERHEAD)
}
