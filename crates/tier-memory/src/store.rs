//! What moka holds for the tier: the cache's type, its key, and what an entry weighs.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use foldhash::quality::SeedableRandomState;
use tier_core::spi::ObjectEntry;

/// Bytes added to each entry's weight for moka's and our bookkeeping.
pub const ENTRY_OVERHEAD: u32 = 96;

/// The moka cache under a [`MemoryTier`](crate::MemoryTier).
pub(crate) type Moka = moka::sync::Cache<Key, Arc<ObjectEntry>, SeedableRandomState>;

/// The longest key kept inline.
const INLINE: usize = 22;

/// A key as moka holds it (inside an `Arc` of moka's own): up to 22 bytes inline, longer ones
/// in a box of their own. A `Bytes` there took 32 bytes plus a buffer of its own — and a shared
/// one (the hierarchy clones the key it writes to every tier) 24 bytes more of bookkeeping: a
/// 16-byte key cost 88 bytes, and costs 40 (the `mem-per-entry` bench).
///
/// It hashes and compares as its bytes (`[u8]`), so that moka finds an entry by `&[u8]`.
#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<[u8]>),
}

impl Key {
    pub fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            // The length fits: it is at most INLINE.
            Self::Inline { len: key.len() as u8, bytes }
        } else {
            Self::Boxed(key.into())
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Boxed(b) => b,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes: `Borrow` requires it.
        self.as_slice().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

/// What an entry weighs: its key, its encoded size and [`ENTRY_OVERHEAD`].
pub(crate) fn weight(key: &Key, entry: &ObjectEntry) -> u32 {
    (key.as_slice().len() as u32).saturating_add(entry.size()).saturating_add(ENTRY_OVERHEAD)
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_key_hashes_and_compares_as_its_bytes_inline_or_boxed() {
        let hasher = std::hash::RandomState::new();
        for len in [0, 1, INLINE, INLINE + 1, 100] {
            let bytes: Vec<u8> = (0..len as u8).collect();
            let key = Key::new(&bytes);
            assert_eq!(matches!(key, Key::Inline { .. }), len <= INLINE);
            assert_eq!(key.as_slice(), &bytes[..]);
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(&bytes[..]));
            assert!(key == Key::new(&bytes) && key != Key::new(b"other"));
        }
    }
}
