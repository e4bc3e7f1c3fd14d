//! [`Ghosts`]: the keys reclaim evicted lately (alive, not copied forward), as 16-bit
//! fingerprints of their hashes in a direct-mapped table — a key inserted again soon after it
//! was evicted starts with a frequency of one (it survives the reclaim of its segment without
//! a hit), as S3-FIFO's ghost queue sends a returning key to its main queue.
//!
//! Bounded: the table has a power of two of slots, at least the index's entries when it last
//! grew (it grows, emptied, when the index outgrows it), so at most 4 bytes per entry and
//! about 2 to 4; a new ghost overwrites whatever shared its slot (an approximate FIFO of the
//! last evicted keys). Only the writer thread touches it. A false match (another key with the
//! same slot and fingerprint, about one in 65 535 for a full table) only gives that key one
//! reclaim more; the table decides nothing but a frequency.

/// Fewest slots the table takes.
const MIN_SLOTS: usize = 1024;

/// See the module docs.
#[derive(Default)]
pub(crate) struct Ghosts {
    /// Fingerprints (never 0), 0 for an empty slot; empty or a power of two long.
    slots: Vec<u16>,
}

impl Ghosts {
    /// Make room for ghosts of about `entries` keys (grows only, and emptied when it does).
    pub fn fit(&mut self, entries: usize) {
        let want = entries.max(MIN_SLOTS).next_power_of_two();
        if want > self.slots.len() {
            self.slots = vec![0; want];
        }
    }

    fn place(&self, hash: u64) -> Option<(usize, u16)> {
        let mask = self.slots.len().checked_sub(1)?;
        // The slot from the low bits, the fingerprint from the top 16 (key hashes are well
        // mixed); never 0, which marks an empty slot.
        Some((hash as usize & mask, ((hash >> 48) as u16).max(1)))
    }

    /// Remember `hash` as evicted.
    pub fn add(&mut self, hash: u64) {
        if let Some((at, fp)) = self.place(hash) {
            self.slots[at] = fp;
        }
    }

    /// Whether `hash` was evicted lately; forgets it.
    pub fn take(&mut self, hash: u64) -> bool {
        let Some((at, fp)) = self.place(hash) else { return false };
        let found = self.slots[at] == fp;
        if found {
            self.slots[at] = 0;
        }
        found
    }

    /// Heap bytes held (2 per slot).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<u16>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fmix64;

    #[test]
    fn remembers_what_was_added_once() {
        let mut g = Ghosts::default();
        assert!(!g.take(fmix64(1)), "an empty table holds nothing");
        g.fit(10);
        assert_eq!(g.heap_bytes(), 2 * MIN_SLOTS);
        for i in 0..100 {
            g.add(fmix64(i));
        }
        // Two keys of the same slot: the later one stays (a few of 100 in 1024 slots).
        let found = (0..100).filter(|i| g.take(fmix64(*i))).count();
        assert!((90..=100).contains(&found), "{found} of 100 found");
        assert!((0..100).all(|i| !g.take(fmix64(i))), "and forgotten");
        let false_hits = (1000..101_000).filter(|i| g.take(fmix64(*i))).count();
        assert_eq!(false_hits, 0, "an emptied table matches nothing");
        g.add(fmix64(7));
        g.fit(3000);
        assert_eq!(g.heap_bytes(), 2 * 4096);
        assert!(!g.take(fmix64(7)), "emptied when it grew");
    }
}
