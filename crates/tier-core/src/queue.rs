//! The write-behind queue: what a queued origin write is, the one rule that says which queued
//! writes are still owed to the origin ([`QueueBook`]), and [`WriteQueue`], the durable log a
//! tier can keep them in (the disk tier does: [`Tier::write_queue`](crate::spi::Tier::write_queue)).
//!
//! The log is a sequence of [`QueueOp`]s. Replaying it through a [`QueueBook`] — at open, from
//! the file, and in the hierarchy as it runs — gives the same answer:
//! - a [`Write`](QueueOp::Write) of a key supersedes every older write of that key, pending or
//!   dead (coalescing: only the newest value of a key is owed to the origin);
//! - [`Done`](QueueOp::Done) ends a write (written to the origin, or superseded by an `insert`);
//! - [`Dead`](QueueOp::Dead) keeps a write as a dead letter (not retried, kept, listed);
//!   [`Revive`](QueueOp::Revive) makes dead letters pending again.
//!
//! Sequence numbers grow with every write, across restarts (the log keeps the next one), so the
//! newer of two writes of a key always has the larger number: the origin can refuse an older one.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::error::TierError;

/// One origin write owed by the queue: a key, its value as the cache encodes it (MessagePack),
/// and its sequence number.
///
/// A cache with a keyring (feature `encryption`) queues its writes **sealed**: `value` is then
/// the MessagePack bytes encrypted, tag last, and `sealing` the sealing item that opens them
/// (the key id, `u32` little endian, then the nonce); see `tier_core::seal::seal_queued`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWrite {
    /// Grows with every write, across restarts; per key, a newer write has a larger one.
    pub seq: u64,
    /// The cache key.
    pub key: Bytes,
    /// The value, MessagePack-encoded (sealed when `sealing` is set).
    pub value: Bytes,
    /// When it was queued (Unix ms).
    pub queued_at_ms: u64,
    /// `Some`: `value` is sealed, and these are the bytes of its sealing item (key id, nonce).
    pub sealing: Option<Bytes>,
}

impl QueuedWrite {
    /// The id of the key a sealed write was sealed with (`None`: in clear, or a sealing item
    /// too short to name one).
    pub fn key_id(&self) -> Option<u32> {
        let s = self.sealing.as_ref()?;
        let id = s.get(..4)?;
        Some(u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
    }
}

/// A queued write that failed too often: kept, not retried, until revived or superseded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The write.
    pub write: QueuedWrite,
    /// How many times the origin writer failed it.
    pub attempts: u32,
    /// The last failure, as the writer said it.
    pub reason: String,
}

/// One entry of the queue's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    /// A write was queued (and supersedes the older writes of its key).
    Write(QueuedWrite),
    /// These writes are done: written to the origin, or superseded.
    Done(Vec<u64>),
    /// This write became a dead letter.
    Dead {
        /// The write's sequence number.
        seq: u64,
        /// Failed attempts.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// These dead letters are pending again.
    Revive(Vec<u64>),
}

#[derive(Debug, Clone)]
struct Item {
    write: QueuedWrite,
    /// `Some((attempts, reason))` for a dead letter.
    dead: Option<(u32, String)>,
}

/// What a queue's log says is still owed to the origin: the one rule (see the module docs),
/// applied alike to a log read back from disk and to the hierarchy's queue as it runs.
#[derive(Debug, Clone, Default)]
pub struct QueueBook {
    items: BTreeMap<u64, Item>,
    by_key: HashMap<Bytes, u64>,
    next_seq: u64,
    pending: usize,
}

impl QueueBook {
    /// An empty book whose next sequence number is at least `next_seq`.
    pub fn starting_at(next_seq: u64) -> Self {
        Self { next_seq, ..Self::default() }
    }

    /// Apply one entry of the log. Returns the sequence numbers it superseded (a write's older
    /// writes of the same key).
    pub fn apply(&mut self, op: QueueOp) -> Vec<u64> {
        match op {
            QueueOp::Write(w) => {
                self.next_seq = self.next_seq.max(w.seq.saturating_add(1));
                let mut superseded = Vec::new();
                if let Some(old) = self.by_key.get(&w.key).copied() {
                    if old < w.seq {
                        self.remove(old);
                        superseded.push(old);
                    } else {
                        // An older write than what the key holds: already superseded.
                        return vec![w.seq];
                    }
                }
                self.by_key.insert(w.key.clone(), w.seq);
                self.pending += 1;
                self.items.insert(w.seq, Item { write: w, dead: None });
                superseded
            }
            QueueOp::Done(seqs) => {
                for seq in seqs {
                    self.remove(seq);
                }
                Vec::new()
            }
            QueueOp::Dead { seq, attempts, reason } => {
                if let Some(item) = self.items.get_mut(&seq) {
                    if item.dead.is_none() {
                        self.pending -= 1;
                    }
                    item.dead = Some((attempts, reason));
                }
                Vec::new()
            }
            QueueOp::Revive(seqs) => {
                for seq in seqs {
                    if let Some(item) = self.items.get_mut(&seq) {
                        if item.dead.take().is_some() {
                            self.pending += 1;
                        }
                    }
                }
                Vec::new()
            }
        }
    }

    fn remove(&mut self, seq: u64) {
        if let Some(item) = self.items.remove(&seq) {
            if item.dead.is_none() {
                self.pending -= 1;
            }
            if self.by_key.get(&item.write.key) == Some(&seq) {
                self.by_key.remove(&item.write.key);
            }
        }
    }

    /// The next sequence number to give a write.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Make the next sequence number at least `next` (a rewritten log records it).
    pub fn raise_next_seq(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next);
    }

    /// Take the next sequence number.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Writes still owed (not dead letters).
    pub fn pending_len(&self) -> usize {
        self.pending
    }

    /// Dead letters kept.
    pub fn dead_len(&self) -> usize {
        self.items.len() - self.pending
    }

    /// Everything the book holds, pending and dead.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when the book holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The pending writes, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &QueuedWrite> + '_ {
        self.items.values().filter(|i| i.dead.is_none()).map(|i| &i.write)
    }

    /// The dead letters, oldest first.
    pub fn dead(&self) -> impl Iterator<Item = DeadLetter> + '_ {
        self.items.values().filter_map(|i| {
            i.dead.as_ref().map(|(attempts, reason)| DeadLetter {
                write: i.write.clone(),
                attempts: *attempts,
                reason: reason.clone(),
            })
        })
    }

    /// The newest write of `key` the book holds, and whether it is a dead letter.
    pub fn of_key(&self, key: &[u8]) -> Option<(&QueuedWrite, bool)> {
        let seq = self.by_key.get(key)?;
        self.items.get(seq).map(|i| (&i.write, i.dead.is_some()))
    }

    /// Is `seq` still held (pending or dead)?
    pub fn holds(&self, seq: u64) -> bool {
        self.items.contains_key(&seq)
    }
}

/// A durable log of [`QueueOp`]s, kept by a tier (the disk tier keeps it in its directory).
///
/// Every method is a blocking call (the hierarchy calls it off the runtime's workers); each
/// returns once what it wrote is durable as the implementation documents (the disk tier: in
/// the kernel when it returns, so a `kill -9` never loses it; synced per its queue flush
/// policy). A failed call changed nothing that a later open would read back.
pub trait WriteQueue: Send + Sync + 'static {
    /// What the log held at open, replayed: the writes still owed and the dead letters.
    fn book(&self) -> QueueBook;

    /// Append entries, in order; durable when it returns `Ok`.
    fn append(&self, ops: &[QueueOp]) -> Result<(), TierError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(seq: u64, key: &'static str, value: &'static str) -> QueueOp {
        QueueOp::Write(QueuedWrite {
            seq,
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
            queued_at_ms: seq,
            sealing: None,
        })
    }

    #[test]
    fn a_newer_write_supersedes_older_ones_and_done_ends_only_its_own() {
        let mut book = QueueBook::default();
        assert!(book.apply(w(1, "a", "1")).is_empty());
        assert_eq!(book.apply(w(2, "a", "2")), vec![1]);
        book.apply(w(3, "b", "1"));
        // The older write, done after the newer was queued (it was in flight): nothing changes.
        book.apply(QueueOp::Done(vec![1]));
        let pending: Vec<u64> = book.pending().map(|w| w.seq).collect();
        assert_eq!(pending, vec![2, 3]);
        book.apply(QueueOp::Dead { seq: 3, attempts: 4, reason: "down".into() });
        assert_eq!((book.pending_len(), book.dead_len()), (1, 1));
        // A new write of a dead letter's key supersedes it.
        book.apply(w(4, "b", "2"));
        assert_eq!((book.pending_len(), book.dead_len()), (2, 0));
        book.apply(QueueOp::Dead { seq: 4, attempts: 4, reason: "down".into() });
        book.apply(QueueOp::Revive(vec![4]));
        assert_eq!((book.pending_len(), book.dead_len(), book.next_seq()), (2, 0, 5));
        // An older write replayed after a newer one is superseded at once.
        assert_eq!(book.apply(w(0, "a", "0")), vec![0]);
        assert_eq!(book.of_key(b"a").map(|(w, _)| w.seq), Some(2));
    }
}
