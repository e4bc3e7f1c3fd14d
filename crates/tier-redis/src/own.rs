//! What a [`RedisTier`](crate::RedisTier) wrote itself, lately: so that client-side caching's
//! invalidation of a key this instance just wrote does not drop the fresh copy the write put in
//! the instance's own local tiers (see `backplane::tracking`).
//!
//! Invariants:
//! - Off (nothing recorded, one atomic load per write) until a tracker turns it on.
//! - A write is recorded *before* it is sent (key → the `created_at` it stores: a value's, a
//!   removal's or an expiry's instant, a renewal's new one): Redis may tell the tracking
//!   connection of the change before the writer has its reply.
//! - Bounded: records older than [`KEEP`] are dropped when the map grows past [`PRUNE_AT`];
//!   past [`MAX`] (a burst), everything is dropped. A missing record only costs a needless drop
//!   of a local copy (the safe side), never a missed invalidation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// How long a record is kept (Unix ms): a push comes within milliseconds of the write.
pub(crate) const KEEP: u64 = 2_000;
/// Records kept before old ones are pruned.
const PRUNE_AT: usize = 4_096;
/// Records kept at most (after pruning, the map is emptied past this).
const MAX: usize = 65_536;

/// Recent own writes: key (the tier's key, without its prefix) → (`created_at` written, when).
#[derive(Default)]
pub(crate) struct OwnWrites {
    on: AtomicBool,
    recent: Mutex<HashMap<Bytes, (u64, u64)>>,
}

impl OwnWrites {
    /// Start recording (a tracker needs the records).
    pub(crate) fn enable(&self) {
        self.on.store(true, Ordering::Release);
    }

    /// Record a write of `key` storing `created_at`, about to be sent at `now` (Unix ms).
    pub(crate) fn note(&self, key: &[u8], created_at: u64, now: u64) {
        if !self.on.load(Ordering::Acquire) {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= PRUNE_AT {
            recent.retain(|_, (_, at)| at.saturating_add(KEEP) > now);
            if recent.len() >= MAX {
                recent.clear();
            }
        }
        recent.insert(Bytes::copy_from_slice(key), (created_at, now));
    }

    /// The `created_at` this instance last wrote to `key`, if it did within [`KEEP`] of `now`.
    pub(crate) fn written(&self, key: &[u8], now: u64) -> Option<u64> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.get(key).filter(|(_, at)| at.saturating_add(KEEP) > now).map(|(c, _)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_on_and_forgets_old_writes() {
        let own = OwnWrites::default();
        own.note(b"k", 5, 1_000);
        assert_eq!(own.written(b"k", 1_000), None, "off: nothing recorded");
        own.enable();
        own.note(b"k", 5, 1_000);
        own.note(b"k", 7, 1_001);
        assert_eq!(own.written(b"k", 1_002), Some(7), "the last write counts");
        assert_eq!(own.written(b"other", 1_002), None);
        assert_eq!(own.written(b"k", 1_001 + KEEP), None, "too old");
    }

    #[test]
    fn stays_bounded() {
        let own = OwnWrites::default();
        own.enable();
        for i in 0..(MAX as u64 + 10) {
            own.note(&i.to_le_bytes(), i, 1_000);
        }
        assert!(own.recent.lock().unwrap_or_else(|p| p.into_inner()).len() <= MAX);
    }
}
