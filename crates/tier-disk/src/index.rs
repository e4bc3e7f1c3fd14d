//! The in-memory index: key hash → record location, 16 bytes per slot.
//!
//! The full key stays on disk and is compared on every read, so two keys with the same 64-bit
//! hash never return each other's value: the later write takes the slot and the other key reads
//! as a miss (a cache may forget). Sharded by the hash's top bits to spread lock traffic.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::format::{fmix64, RECORD_ALIGN};

const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;
const HIT_BIT: u64 = 1;

/// Where a record is: segment id and byte offset (a multiple of 8), plus a "hit since written"
/// bit used to give hot entries a second chance when their segment is reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u32,
    pub offset: u32,
    pub hit: bool,
}

impl Loc {
    /// A location without the hit bit.
    pub fn new(seg: u32, offset: u32) -> Self {
        Self { seg, offset, hit: false }
    }
    fn pack(self) -> u64 {
        (u64::from(self.seg) << 32)
            | (u64::from(self.offset / RECORD_ALIGN as u32) << 1)
            | u64::from(self.hit)
    }
    fn unpack(v: u64) -> Self {
        Self {
            seg: (v >> 32) as u32,
            offset: (((v >> 1) & 0x7FFF_FFFF) as u32) * RECORD_ALIGN as u32,
            hit: v & HIT_BIT != 0,
        }
    }
    fn same_place(self, other: Loc) -> bool {
        self.seg == other.seg && self.offset == other.offset
    }
}

/// Hashes an already well-mixed 64-bit key hash once more with a per-process seed, so that
/// bucket placement cannot be predicted from the (unseeded, on-disk) key hash.
#[derive(Clone)]
pub struct SeededBuild(u64);

impl BuildHasher for SeededBuild {
    type Hasher = SeededHasher;
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher(self.0, 0)
    }
}

pub struct SeededHasher(u64, u64);

impl Hasher for SeededHasher {
    fn finish(&self) -> u64 {
        fmix64(self.1 ^ self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.1 = self.1.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.1 = n;
    }
}

type Shard = HashMap<u64, AtomicU64, SeededBuild>;

/// The index. Every method takes one shard lock for a short, non-blocking critical section.
pub struct Index {
    shards: Box<[RwLock<Shard>]>,
}

impl Default for Index {
    fn default() -> Self {
        let seed = RandomState::new().hash_one(0x7469_6572_u64);
        let shards =
            (0..SHARDS).map(|_| RwLock::new(HashMap::with_hasher(SeededBuild(seed)))).collect();
        Self { shards }
    }
}

fn shard_of(hash: u64) -> usize {
    (hash >> (64 - SHARD_BITS)) as usize
}

impl Index {
    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Shard> {
        // A poisoned lock only means a panic elsewhere while it was held; the map itself is
        // still consistent (every update is a single insert/remove), so keep using it.
        self.shards[shard_of(hash)].read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard_of(hash)].write().unwrap_or_else(|e| e.into_inner())
    }

    /// The location of `hash`; with `mark_hit`, sets its hit bit.
    pub fn get(&self, hash: u64, mark_hit: bool) -> Option<Loc> {
        let shard = self.read(hash);
        let slot = shard.get(&hash)?;
        let v = slot.load(Ordering::Relaxed);
        if mark_hit && v & HIT_BIT == 0 {
            slot.fetch_or(HIT_BIT, Ordering::Relaxed);
        }
        Some(Loc::unpack(v))
    }

    /// Point `hash` at `loc`; returns the previous location.
    pub fn insert(&self, hash: u64, loc: Loc) -> Option<Loc> {
        self.write(hash)
            .insert(hash, AtomicU64::new(loc.pack()))
            .map(|v| Loc::unpack(v.into_inner()))
    }

    /// Remove `hash`; returns its location.
    pub fn remove(&self, hash: u64) -> Option<Loc> {
        self.write(hash).remove(&hash).map(|v| Loc::unpack(v.into_inner()))
    }

    /// Remove `hash` only while it still points at `at` (hit bit ignored).
    pub fn remove_if(&self, hash: u64, at: Loc) -> bool {
        let mut shard = self.write(hash);
        match shard.get(&hash) {
            Some(v) if Loc::unpack(v.load(Ordering::Relaxed)).same_place(at) => {
                shard.remove(&hash);
                true
            }
            _ => false,
        }
    }

    /// Move `hash` from `from` to `to` only while it still points at `from`.
    pub fn replace_if(&self, hash: u64, from: Loc, to: Loc) -> bool {
        let shard = self.write(hash);
        match shard.get(&hash) {
            Some(v) if Loc::unpack(v.load(Ordering::Relaxed)).same_place(from) => {
                v.store(to.pack(), Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Drop everything.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.write().unwrap_or_else(|e| e.into_inner());
            *s = HashMap::with_hasher(s.hasher().clone());
        }
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    /// Heap bytes the index holds: slots (16 bytes) plus one control byte per bucket.
    pub fn heap_bytes(&self) -> usize {
        let per_bucket = std::mem::size_of::<(u64, AtomicU64)>() + 1;
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).capacity() * 8 / 7 * per_bucket)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_roundtrip_and_conditional_updates() {
        let loc = Loc { seg: u32::MAX, offset: 1 << 30, hit: true };
        assert_eq!(Loc::unpack(loc.pack()), loc);
        let idx = Index::default();
        let a = Loc::new(1, 64);
        let b = Loc::new(2, 8);
        assert_eq!(idx.insert(42, a), None);
        assert_eq!(idx.get(42, true), Some(a));
        assert!(idx.get(42, false).is_some_and(|l| l.hit));
        assert!(!idx.replace_if(42, b, a));
        assert!(idx.replace_if(42, a, b));
        assert!(!idx.remove_if(42, a));
        assert!(idx.remove_if(42, b));
        assert_eq!(idx.len(), 0);
    }
}
