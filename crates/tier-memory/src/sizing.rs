//! Sizing moka's frequency sketch to the entries the tier holds, through a reservation.
//!
//! moka's TinyLFU admits a new entry only when its sketch estimates it read more often than the
//! entry it would evict. The sketch is created once, when the weighted size first reaches half
//! of `max_capacity`: with room for `max_capacity` keys — or, with a weigher (ours: bytes), for
//! `entry_count × weighted_size / max_capacity` keys, about half the entries held then, a
//! quarter of what a full tier holds (moka 0.12, `enable_frequency_sketch`). Its counts are
//! halved every ten times that many reads, so a quarter-size sketch ages four times as fast
//! and collides more: with equal-size entries, byte-weighted moka missed 0.02–0.04 more than
//! moka counting entries (the `hit-ratio` bench).
//!
//! So moka's capacity is twice `max_bytes`, and the tier keeps the other half reserved:
//! - until the entries hold 90–95 % of `max_bytes`, nothing is reserved; the tier counts the
//!   weights it inserts (an upper bound of what it holds) and checks moka's exact figure each
//!   time that count crosses 95 % — moka's weighted size then stays below half its capacity,
//!   so moka has no sketch yet and evicts nothing;
//! - then it inserts the reservation: placeholder entries weighing `max_bytes` (one, up to
//!   2 GiB) under a key no caller can name, and runs moka's maintenance: the weighted size is
//!   past half, and moka creates the sketch for `entry_count × ~0.97` keys — the entries held,
//!   about 93 % of a full tier's, observed rather than configured (it follows the real average
//!   entry size). From then on moka bounds the entries to `max_bytes`.
//! - The reservation is re-inserted before every insert: moka evicts from the least recently
//!   used end, and an insert moves the reservation to the other end, so it is never the victim
//!   of the admission that follows (a read moves an entry too, but admissions happen only on
//!   inserts). Should it go anyway, the next insert brings it back and moka evicts entries to
//!   make room. The cost: one moka insert more per insert; a hit costs the same.
//! - A tier that never fills creates no sketch (as moka below half its capacity): a hit of a
//!   lightly filled tier touches no large table (the L1-hit bench does not move).
//!
//! A tier of less than [`MIN_RESERVED`] bytes, or of more than 32 GiB (16 placeholders), is
//! left to moka's own sizing.
//!
//! Measured (`scripts/hit-ratio`, `--only zipf-1.0`: Zipf 1.0, 100k objects, 1M requests,
//! equal sizes; miss ratios at 1 / 5 / 10 / 20 % of the objects): the L1 0.413 / 0.272 /
//! 0.218 / 0.169, raw moka counting entries 0.412 / 0.271 / 0.217 / 0.167, raw moka weighted
//! by bytes 0.451 / 0.305 / 0.241 / 0.179, libCacheSim's W-TinyLFU 0.387 / 0.264 / 0.214 /
//! 0.166. Before (the moka sizing, and the hierarchy's second look at a miss counted too), on
//! the 20k-object trace of `--ci`: Zipf 1.0 at 1 % 0.529 and at 10 % 0.297, raw moka 0.471
//! and 0.255.
//!
//! ## Why the L1 (and moka) stay behind libCacheSim's W-TinyLFU at low skew
//!
//! At Zipf 0.6, 1 % (`scripts/hit-ratio`, equal sizes), the L1 misses 0.904, raw moka counting
//! entries 0.903, libCacheSim's W-TinyLFU 0.856. Two causes, measured apart:
//! - The baseline's own sizing (0.018 of the 0.048). libCacheSim's W-TinyLFU sizes its counting
//!   Bloom filter for the main cache's size and decays it every 32 times that many requests;
//!   with byte-weighted objects the size is bytes (~220 per entry here), so the filter is some
//!   200 times wider than the entries and its decay (every ~7M requests at 1 %) never comes in a
//!   1M-request trace: it admits by exact, never-aged counts, ideal for a static Zipf. Counted
//!   in objects (`ignore_obj_size`, the table's `W-TLFU-n` column) it misses 0.874.
//! - moka's policy (the other 0.029): moka 0.12's TinyLFU has no admission window (a new key
//!   that loses the frequency comparison is dropped at once; W-TinyLFU keeps it in a 1 % LRU
//!   window where it can gather reads first), one LRU queue where W-TinyLFU's main cache is a
//!   segmented LRU (1:4), an aging period of 10 × the sketch's capacity (libCacheSim: 32 ×),
//!   4-bit counters, and strict `>` admission. At Zipf 0.6 the object of rank 1,000 expects
//!   0.6 reads in one 10,000-request period: the counts that decide admission are mostly noise.
//!
//! Nothing configurable on our side closes the second part: moka derives the sketch's width
//! and its aging period from one number (`sketch_capacity`, period = 10 × it), and with a
//! weigher that number is `entry_count × weighted_size / max_capacity`, at most the entries
//! held — which the reservation already gives. A change only moka can make: a builder setting
//! for the sketch (its capacity in entries and the aging period's multiple, independent of
//! `max_capacity` and the weigher), and an admission window (moka's `TODO` on its policies,
//! moka-rs/moka#389).
//!
//! The opposite pull (shifting working set, varied sizes): the same table has the L1 0.032 /
//! 0.039 / 0.053 behind byte-weighted moka at 5 / 10 / 20 %, whose quarter-size sketch ages four
//! times as fast, while it is 0.013–0.046 ahead of it on every Zipf row with varied sizes. The
//! knob on our side is when the reservation is armed (at a fraction f of `max_bytes`, the
//! sketch is sized for about f (1 + f) / 2 of a full tier's entries); no setting of it was
//! measured to win both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tier_core::spi::{Meta, ObjectEntry};

use crate::store::{weight, Key, Moka, ENTRY_OVERHEAD};

/// The least `max_bytes` that gets a reservation (below, a placeholder's own overhead would be
/// a large part of it).
pub const MIN_RESERVED: u64 = 4 << 10;

/// What one placeholder weighs at most (moka weighs an entry in a `u32`).
const PIECE: u64 = 1 << 31;

/// The most placeholders: a tier of more than 32 GiB is left to moka's own sizing (each
/// placeholder is re-inserted before every insert).
const MAX_PIECES: u64 = 16;

/// The `stale_until` of a placeholder: its expiry says "never" (a real entry's physical TTL
/// ends before).
pub(crate) const NEVER: u64 = u64::MAX;

/// The reserved half of moka's capacity.
pub(crate) struct Reservation {
    max_bytes: u64,
    /// The placeholders: weights adding up to `max_bytes`.
    pieces: Vec<(Key, Arc<ObjectEntry>)>,
    /// In moka (or about to be).
    armed: AtomicBool,
    /// Held while one thread checks and arms.
    arming: Mutex<()>,
    /// The weights inserted and not yet checked against moka's figure.
    inserted: AtomicU64,
}

impl Reservation {
    /// The reservation of a tier of `max_bytes`; `None` below [`MIN_RESERVED`] and above
    /// `MAX_PIECES` placeholders.
    pub fn new(max_bytes: u64) -> Option<Self> {
        if !(MIN_RESERVED..=PIECE * MAX_PIECES).contains(&max_bytes) {
            return None;
        }
        let prefix = placeholder_prefix();
        let overhead = u64::from(ENTRY_OVERHEAD) + prefix.len() as u64 + 4;
        let mut pieces = Vec::new();
        let mut left = max_bytes;
        while left > 0 {
            let weight = left.min(PIECE);
            let mut key = prefix.clone();
            key.extend_from_slice(&(pieces.len() as u32).to_le_bytes());
            // max_bytes >= MIN_RESERVED, so only a last piece can be lighter than its own
            // overhead; it then weighs that overhead (a few bytes more are reserved).
            let size = weight.saturating_sub(overhead) as u32;
            pieces.push((Key::new(&key), Arc::new(placeholder(size))));
            left -= weight;
        }
        Some(Self {
            max_bytes,
            pieces,
            armed: AtomicBool::new(false),
            arming: Mutex::new(()),
            inserted: AtomicU64::new(0),
        })
    }

    /// moka's capacity with this reservation.
    pub fn capacity(&self) -> u64 {
        self.max_bytes.saturating_add(self.weight())
    }

    fn weight(&self) -> u64 {
        self.pieces.iter().map(|(k, e)| u64::from(weight(k, e))).sum()
    }

    /// Whether `key` is a placeholder's.
    pub fn is_placeholder(&self, key: &[u8]) -> bool {
        self.pieces.iter().any(|(k, _)| k.as_slice() == key)
    }

    /// What moka holds that is the reservation's: entries and bytes.
    pub fn held(&self) -> (u64, u64) {
        if self.armed.load(Ordering::Acquire) {
            (self.pieces.len() as u64, self.weight())
        } else {
            (0, 0)
        }
    }

    /// Called before each insert of `weight`: re-inserts the reservation once armed; until
    /// then counts, and arms when the entries hold 90 % of `max_bytes`.
    #[inline]
    pub fn before_insert(&self, cache: &Moka, weight: u64) {
        if self.armed.load(Ordering::Acquire) {
            self.insert_into(cache);
            return;
        }
        let inserted = self.inserted.fetch_add(weight, Ordering::Relaxed) + weight;
        if inserted >= self.max_bytes / 20 * 19 {
            self.check(cache);
        }
    }

    /// Re-arm after `cache` was cleared (the clear removed the placeholders).
    pub fn after_clear(&self, cache: &Moka) {
        if self.armed.load(Ordering::Acquire) {
            self.insert_into(cache);
        }
    }

    fn insert_into(&self, cache: &Moka) {
        for (key, entry) in &self.pieces {
            cache.insert(key.clone(), entry.clone());
        }
    }

    /// moka's exact figure: arm when the entries hold 90 % of `max_bytes`, else take what was
    /// counted down to it.
    #[cold]
    fn check(&self, cache: &Moka) {
        let Ok(_one) = self.arming.try_lock() else { return };
        if self.armed.load(Ordering::Acquire) {
            return;
        }
        let counted = self.inserted.load(Ordering::Relaxed);
        cache.run_pending_tasks();
        let held = cache.weighted_size();
        if held < self.max_bytes / 10 * 9 {
            self.inserted.fetch_sub(counted.saturating_sub(held), Ordering::Relaxed);
            return;
        }
        self.armed.store(true, Ordering::Release);
        self.insert_into(cache);
        // moka creates its sketch in this run (its weighted size is past half its capacity).
        cache.run_pending_tasks();
    }
}

/// A key prefix no key of the hierarchy starts with by accident, with random bytes of the
/// tier's own, so that no caller can name a placeholder; short enough to be kept inline (a
/// placeholder's key is copied on every insert).
fn placeholder_prefix() -> Vec<u8> {
    use std::hash::BuildHasher;
    let random = std::hash::RandomState::new().hash_one(0x0072_6573_6572_7665_u64);
    let mut key = b"\0tier\0".to_vec();
    key.extend_from_slice(&random.to_le_bytes());
    key
}

/// A placeholder of `size` bytes that never expires.
fn placeholder(size: u32) -> ObjectEntry {
    let meta = Meta { fresh_until: 0, stale_until: NEVER, ..Meta::default() };
    ObjectEntry::new(meta, Arc::new(()), size)
}
