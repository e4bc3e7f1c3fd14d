//! The in-memory index: key hash → record location, 12 bytes per slot.
//!
//! 256 shards chosen by the hash's top 8 bits; inside a shard the next 40 bits are the key, and
//! the value is 56 bits: the segment's id modulo 2^16 (live segment ids always span fewer than
//! 2^16 consecutive ids, see `Writer::enforce_capacity`), the record's offset in 8-byte units
//! (segments are at most 1 GiB, 27 bits), a two-bit *state* — the entry's frequency (0, 1 or
//! 2: hits since it was written, less the reclaims that copied it forward; see
//! `writer::reclaim`) or "suspect" (damage found at open may have lost a record that replaced
//! or removed this one: serve it only as stale; a suspect entry is never copied forward, so it
//! needs no frequency) — and, in 11 bits, the record's length (exact up to 8 KiB, rounded up to 64 bytes up
//! to 72 KiB, unknown beyond), so that a read asks the kernel for the record's bytes in one
//! call and no more. With hashbrown's one control byte per bucket and its 7/8 load factor that
//! is 13 bytes per bucket: 15 to 30 bytes per entry.
//!
//! The full key stays on disk and is compared on every read, so two keys with the same 48-bit
//! hash never return each other's value: the later write takes the slot and the other key reads
//! as a miss (a cache may forget; about one pair in 10M entries). Bucket placement uses a
//! per-process seed, so it cannot be predicted from the (unseeded, on-disk) key hash.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::format::{fmix64, RECORD_ALIGN};

const SHARD_BITS: u32 = 8;
const SHARDS: usize = 1 << SHARD_BITS;
/// The two low bits of a slot's `flags`: the frequency (0..=[`MAX_FREQ`]) or [`SUSPECT`].
const STATE: u8 = 0b11;
/// The state of a suspect entry.
const SUSPECT: u8 = 0b11;
/// The highest frequency an entry keeps (hits beyond it are not counted).
pub const MAX_FREQ: u8 = 2;
/// The record lengths [`Loc::len`] keeps exactly (in 8-byte units, below this many units).
const EXACT_UNITS: u32 = 1024;
/// Longer records: in steps of this many bytes above `EXACT_UNITS * 8`.
const COARSE_STEP: u32 = 64;
/// The longest record length the index keeps (2047 in 11 bits).
pub const MAX_KNOWN_LEN: u32 = EXACT_UNITS * 8 + (EXACT_UNITS - 1) * COARSE_STEP;

/// The 11-bit code of a record length: the code of a length at least as long (0: unknown).
fn len_code(len: u32) -> u16 {
    if len == 0 || len > MAX_KNOWN_LEN {
        0
    } else if len < EXACT_UNITS * 8 {
        len.div_ceil(RECORD_ALIGN as u32) as u16
    } else {
        (EXACT_UNITS + (len - EXACT_UNITS * 8).div_ceil(COARSE_STEP)) as u16
    }
}

/// The length a code stands for (0: unknown).
fn code_len(code: u16) -> u32 {
    let code = u32::from(code);
    if code < EXACT_UNITS {
        code * RECORD_ALIGN as u32
    } else {
        EXACT_UNITS * 8 + (code - EXACT_UNITS) * COARSE_STEP
    }
}

/// Where a record is: segment id (low 16 bits) and byte offset (a multiple of 8, below 1 GiB),
/// plus its frequency (hits since written, less the copies forward, at most [`MAX_FREQ`]: what
/// decides whether reclaim copies the entry forward), a "suspect" flag (served only as stale,
/// never copied forward; a suspect entry's frequency is not kept and reads as 0) and the
/// record's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u16,
    pub offset: u32,
    pub freq: u8,
    pub suspect: bool,
    /// At least the record's length, padding included (at most 63 bytes more, up to
    /// [`MAX_KNOWN_LEN`]); 0 when longer, or not known.
    pub len: u32,
}

impl Loc {
    /// A location of frequency 0, not suspect, and no length.
    pub fn new(seg: u32, offset: u32) -> Self {
        Self { seg: seg as u16, offset, freq: 0, suspect: false, len: 0 }
    }
    /// The location of a record of `len` bytes (padding included) at `offset` of `seg`.
    pub fn record(seg: u32, offset: u32, len: usize) -> Self {
        let len = code_len(len_code(u32::try_from(len).unwrap_or(u32::MAX)));
        Self { len, ..Self::new(seg, offset) }
    }
    /// True when both name the same record (frequency and suspect flag ignored).
    pub fn same_place(self, other: Loc) -> bool {
        self.seg == other.seg && self.offset == other.offset
    }
}

/// A slot's value, byte-aligned so that key and slot take 12 bytes: `flags` = state (bits 0..2:
/// frequency 0..=2, or 3 = suspect) | length code bits 5..11 (in bits 2..8), `seg` = segment id
/// mod 2^16 (little endian), `rest` = offset/8 (bits 0..27) | length code bits 0..5 (bits
/// 27..32). Only `flags`' state bits change under a read lock, each change one compare-exchange
/// of the whole byte (so a hit counted at the same time as the entry is made suspect cannot
/// turn it back into a frequency).
struct Slot {
    flags: AtomicU8,
    seg: [u8; 2],
    rest: [u8; 4],
}

impl Slot {
    fn new(loc: Loc) -> Self {
        let units = loc.offset / RECORD_ALIGN as u32;
        let code = len_code(loc.len);
        let state = if loc.suspect { SUSPECT } else { loc.freq.min(MAX_FREQ) };
        let flags = state | ((code >> 5) as u8) << 2;
        let rest = (units & 0x07FF_FFFF) | u32::from(code & 0x1F) << 27;
        Self { flags: AtomicU8::new(flags), seg: loc.seg.to_le_bytes(), rest: rest.to_le_bytes() }
    }
    fn loc(&self) -> Loc {
        let flags = self.flags.load(Ordering::Relaxed);
        let rest = u32::from_le_bytes(self.rest);
        let offset = (rest & 0x07FF_FFFF) * RECORD_ALIGN as u32;
        let code = u16::from(flags >> 2) << 5 | (rest >> 27) as u16;
        let state = flags & STATE;
        let suspect = state == SUSPECT;
        Loc {
            seg: u16::from_le_bytes(self.seg),
            offset,
            freq: if suspect { 0 } else { state },
            suspect,
            len: code_len(code),
        }
    }
    /// Count a hit: the frequency one more, up to [`MAX_FREQ`]; a suspect entry stays so.
    fn count_hit(&self) {
        let _ = self.flags.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
            let state = f & STATE;
            (state < MAX_FREQ).then_some(f + 1) // `SUSPECT` is above `MAX_FREQ`
        });
    }
    /// Make the entry suspect (its frequency is dropped); false when it already was.
    fn make_suspect(&self) -> bool {
        self.flags.fetch_or(SUSPECT, Ordering::Relaxed) & STATE != SUSPECT
    }
}

/// 40 bits of the key hash (the 8 above them chose the shard).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u8; 5]);

impl Key {
    fn of(hash: u64) -> Self {
        let b = (hash >> 16).to_le_bytes();
        Self([b[0], b[1], b[2], b[3], b[4]])
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, 0, 0, 0]));
    }
}

/// Hashes a key (already well mixed) once more with a per-process seed.
#[derive(Clone)]
pub struct SeededBuild(u64);

impl BuildHasher for SeededBuild {
    type Hasher = SeededHasher;
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher(self.0, 0)
    }
}

/// See [`SeededBuild`].
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

type Shard = HashMap<Key, Slot, SeededBuild>;

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

    /// The location of `hash` (as it was before this call); with `mark_hit`, counts a hit.
    pub fn get(&self, hash: u64, mark_hit: bool) -> Option<Loc> {
        let shard = self.read(hash);
        let slot = shard.get(&Key::of(hash))?;
        let loc = slot.loc();
        if mark_hit && !loc.suspect && loc.freq < MAX_FREQ {
            slot.count_hit();
        }
        Some(loc)
    }

    /// Point `hash` at `loc`; returns the previous location.
    pub fn insert(&self, hash: u64, loc: Loc) -> Option<Loc> {
        insert(&mut self.write(hash), hash, loc)
    }

    /// Remove `hash`; returns its location.
    pub fn remove(&self, hash: u64) -> Option<Loc> {
        self.write(hash).remove(&Key::of(hash)).map(|v| v.loc())
    }

    /// Remove `hash` only while it still points at `at` (frequency ignored).
    pub fn remove_if(&self, hash: u64, at: Loc) -> bool {
        remove_if(&mut self.write(hash), hash, at)
    }

    /// Move `hash` from `from` to `to` (its place and length; its frequency and suspect flag
    /// are ignored) only while it still points at `from` and is not suspect, its frequency
    /// one less (a copy forward spends one of the hits it was copied for). Returns whether
    /// it moved.
    pub fn move_if(&self, hash: u64, from: Loc, to: Loc) -> bool {
        let mut shard = self.write(hash);
        match shard.get_mut(&Key::of(hash)) {
            Some(v) => {
                let cur = v.loc();
                if !cur.same_place(from) || cur.suspect {
                    return false;
                }
                let freq = cur.freq.saturating_sub(1);
                *v = Slot::new(Loc { freq, suspect: false, ..to });
                true
            }
            None => false,
        }
    }

    /// Mark suspect every entry whose location `before` says so; returns how many it marked
    /// (not counting those already suspect).
    pub fn mark_suspect(&self, before: impl Fn(Loc) -> bool) -> u64 {
        let mut n = 0;
        for s in self.shards.iter() {
            let s = s.read().unwrap_or_else(|e| e.into_inner());
            for slot in s.values() {
                let loc = slot.loc();
                if !loc.suspect && before(loc) && slot.make_suspect() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Remove every entry whose location `drop` says so; `gone` is told each one.
    pub fn remove_where(&self, drop: impl Fn(Loc) -> bool, mut gone: impl FnMut(Loc)) {
        for s in self.shards.iter() {
            let mut s = s.write().unwrap_or_else(|e| e.into_inner());
            s.retain(|_, slot| {
                let loc = slot.loc();
                let keep = !drop(loc);
                if !keep {
                    gone(loc);
                }
                keep
            });
        }
    }

    /// Drop everything.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            clear(&mut s.write().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Every shard at once, for a bulk load by one thread (recovery, before anyone else can
    /// reach the index): no lock taken or released per entry. A lock per entry costs more than
    /// the entry's insert in a large index: its atomic instruction waits for the insert's
    /// cache misses, so the misses of consecutive inserts never overlap. Every other call on
    /// this index waits until the loader is dropped.
    pub fn loader(&self) -> Loader<'_> {
        let shards = self.shards.iter().map(|s| s.write().unwrap_or_else(|e| e.into_inner()));
        Loader { shards: shards.collect(), sorted: Vec::new() }
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    /// Heap bytes the index holds: slots (12 bytes) plus one control byte per bucket.
    pub fn heap_bytes(&self) -> usize {
        let per_bucket = std::mem::size_of::<(Key, Slot)>() + 1;
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).capacity() * 8 / 7 * per_bucket)
            .sum()
    }
}

/// Exclusive access to every shard of an [`Index`] ([`Index::loader`]): the same operations,
/// each on its shard, without a lock per call.
pub struct Loader<'a> {
    shards: Vec<RwLockWriteGuard<'a, Shard>>,
    /// [`Loader::insert_all`]'s entries sorted by shard.
    sorted: Vec<(u64, Loc)>,
}

/// Batches shorter than this are inserted as they come (sorting them gains nothing).
const SORT_FROM: usize = 4 * SHARDS;

impl Loader<'_> {
    /// Insert `batch` (emptied), as if one by one in its order; `replaced` is told each
    /// location an insert replaced. The entries are inserted shard by shard (a stable sort,
    /// so a key inserted twice ends at its later location): one shard's table at a time
    /// stays in the processor's caches and TLB, where entries in hash order would each miss.
    pub fn insert_all(&mut self, batch: &mut Vec<(u64, Loc)>, mut replaced: impl FnMut(Loc)) {
        if batch.len() < SORT_FROM {
            for (h, loc) in batch.drain(..) {
                if let Some(old) = self.insert(h, loc) {
                    replaced(old);
                }
            }
            return;
        }
        // Counting sort by shard: `starts[s]` is where shard `s`'s entries go.
        let mut starts = vec![0usize; SHARDS + 1];
        for (h, _) in batch.iter() {
            starts[shard_of(*h) + 1] += 1;
        }
        for s in 1..=SHARDS {
            starts[s] += starts[s - 1];
        }
        self.sorted.clear();
        self.sorted.resize(batch.len(), (0, Loc::new(0, 0)));
        for e in batch.drain(..) {
            let at = &mut starts[shard_of(e.0)];
            // `starts` counted every entry of `batch`, so `*at < sorted.len()`.
            self.sorted[*at] = e;
            *at += 1;
        }
        let sorted = std::mem::take(&mut self.sorted);
        for (h, loc) in &sorted {
            if let Some(old) = self.insert(*h, *loc) {
                replaced(old);
            }
        }
        self.sorted = sorted;
    }

    fn shard(&mut self, hash: u64) -> &mut Shard {
        // `shards` holds all `SHARDS` guards, in order (see `Index::loader`), and
        // `shard_of` is below `SHARDS`.
        &mut self.shards[shard_of(hash)]
    }

    /// The location of `hash`.
    pub fn get(&self, hash: u64) -> Option<Loc> {
        self.shards[shard_of(hash)].get(&Key::of(hash)).map(Slot::loc)
    }

    /// Point `hash` at `loc`; returns the previous location.
    pub fn insert(&mut self, hash: u64, loc: Loc) -> Option<Loc> {
        insert(self.shard(hash), hash, loc)
    }

    /// Remove `hash` only while it still points at `at` (frequency ignored).
    pub fn remove_if(&mut self, hash: u64, at: Loc) -> bool {
        remove_if(self.shard(hash), hash, at)
    }

    /// Make room for about `n` more entries, spread over the shards (keys are hashed evenly).
    pub fn reserve(&mut self, n: usize) {
        let per_shard = n / SHARDS + n / SHARDS / 16; // a little more: shards differ in size
        for s in &mut self.shards {
            s.reserve(per_shard);
        }
    }

    /// Drop everything.
    pub fn clear(&mut self) {
        for s in &mut self.shards {
            clear(s);
        }
    }
}

fn insert(shard: &mut Shard, hash: u64, loc: Loc) -> Option<Loc> {
    shard.insert(Key::of(hash), Slot::new(loc)).map(|v| v.loc())
}

fn remove_if(shard: &mut Shard, hash: u64, at: Loc) -> bool {
    let key = Key::of(hash);
    match shard.get(&key) {
        Some(v) if v.loc().same_place(at) => {
            shard.remove(&key);
            true
        }
        _ => false,
    }
}

fn clear(shard: &mut Shard) {
    *shard = HashMap::with_hasher(shard.hasher().clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_roundtrip_and_conditional_updates() {
        assert_eq!(std::mem::size_of::<(Key, Slot)>(), 12);
        for loc in [
            Loc { seg: u16::MAX, offset: (1 << 30) - 8, freq: 0, suspect: true, len: 8 },
            Loc { seg: u16::MAX, offset: (1 << 30) - 8, freq: 0, suspect: false, len: 0 },
            Loc { seg: 0, offset: 0, freq: 0, suspect: true, len: MAX_KNOWN_LEN },
            Loc { seg: 7, offset: 123_456 * 8, freq: 1, suspect: false, len: 8184 },
            Loc { seg: 7, offset: 8, freq: MAX_FREQ, suspect: false, len: 8192 },
        ] {
            assert_eq!(Slot::new(loc).loc(), loc);
        }
        // Lengths: exact to 8 KiB, then at most 63 bytes more, unknown past MAX_KNOWN_LEN.
        for len in (8..=MAX_KNOWN_LEN as usize).step_by(8) {
            let kept = Loc::record(1, 64, len).len as usize;
            assert!(kept >= len && kept < len + 64, "{len} kept as {kept}");
            assert!(len >= 8192 || kept == len, "{len} kept as {kept}");
            assert_eq!(Slot::new(Loc::record(1, 64, len)).loc().len as usize, kept);
        }
        assert_eq!(Loc::record(1, 64, MAX_KNOWN_LEN as usize + 8).len, 0, "not kept");
        let idx = Index::default();
        let a = Loc::new(1, 64);
        let b = Loc::new(2, 8);
        assert_eq!(idx.insert(42, a), None);
        assert_eq!(idx.get(42, true), Some(a));
        assert_eq!(idx.get(42, false).map(|l| l.freq), Some(1));
        for _ in 0..5 {
            idx.get(42, true);
        }
        assert_eq!(idx.get(42, false).map(|l| l.freq), Some(MAX_FREQ), "saturates");
        assert!(!idx.move_if(42, b, a));
        assert!(idx.move_if(42, a, b));
        assert_eq!(idx.get(42, false).map(|l| l.freq), Some(MAX_FREQ - 1), "a copy spends one");
        assert!(idx.get(42, false).is_some_and(|l| l.same_place(b)));
        assert!(!idx.remove_if(42, a));
        assert!(idx.remove_if(42, b));
        assert_eq!(idx.len(), 0);
        // A suspect entry: hits do not make it a frequency again, it is never moved.
        idx.insert(43, Loc { freq: 1, ..a });
        assert_eq!(idx.mark_suspect(|_| true), 1);
        for _ in 0..5 {
            idx.get(43, true);
        }
        assert!(idx.get(43, false).is_some_and(|l| l.suspect && l.freq == 0));
        assert!(!idx.move_if(43, a, b), "never copied forward");
        assert!(idx.remove_if(43, a));
        for h in 0..100u64 {
            idx.insert(h << 40, Loc::new(h as u32 % 4, 64));
        }
        assert_eq!(idx.mark_suspect(|l| l.seg < 2), 50);
        assert_eq!(idx.mark_suspect(|l| l.seg < 2), 0, "already suspect");
        assert!(idx.get(0, false).is_some_and(|l| l.suspect));
        assert!(idx.get(3 << 40, false).is_some_and(|l| !l.suspect));
        let mut gone = 0;
        idx.remove_where(|l| l.suspect, |_| gone += 1);
        assert_eq!((gone, idx.len()), (50, 50));
    }

    #[test]
    fn the_loader_does_what_the_index_does() {
        let (idx, loaded) = (Index::default(), Index::default());
        {
            let mut l = loaded.loader();
            l.reserve(10_000);
            for i in 0..5000u64 {
                let h = fmix64(i % 3000); // some keys twice
                let loc = Loc::record((i / 1000) as u32, (i % 1000) as u32 * 8, 72);
                assert_eq!(l.insert(h, loc), idx.insert(h, loc));
                if i % 7 == 0 {
                    let at = idx.get(h, false).expect("just inserted");
                    assert_eq!(l.remove_if(h, at), idx.remove_if(h, at));
                    assert!(!l.remove_if(h, at), "gone");
                }
                assert_eq!(l.get(h), idx.get(h, false));
            }
        }
        assert_eq!(loaded.len(), idx.len());
        for i in 0..3000u64 {
            assert_eq!(loaded.get(fmix64(i), false), idx.get(fmix64(i), false));
        }
        // In batches, sorted by shard or not: the same index, the same replaced locations.
        let (batched, one_by_one) = (Index::default(), Index::default());
        let mut l = batched.loader();
        for n in [3, SORT_FROM, 5 * SORT_FROM + 7] {
            let (mut one, mut all) = (Vec::new(), Vec::new());
            let mut batch: Vec<(u64, Loc)> = (0..n as u64)
                .map(|i| (fmix64(i % 1500), Loc::record(n as u32, i as u32 * 8, 64)))
                .collect();
            for (h, loc) in &batch {
                one.extend(one_by_one.insert(*h, *loc));
            }
            l.insert_all(&mut batch, |old| all.push(old));
            assert!(batch.is_empty());
            one.sort_by_key(|l| (l.seg, l.offset));
            all.sort_by_key(|l| (l.seg, l.offset));
            assert_eq!(one, all, "batch of {n}");
        }
        drop(l);
        for i in 0..3000u64 {
            let (a, b) = (batched.get(fmix64(i), false), one_by_one.get(fmix64(i), false));
            assert_eq!(a, b, "the later of a key's locations is kept");
        }
        loaded.loader().clear();
        assert_eq!(loaded.len(), 0);
        assert_eq!(loaded.get(fmix64(1), false), None, "the locks are free again");
    }
}
