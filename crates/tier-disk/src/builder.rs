//! [`DiskTierBuilder`]: where and how big, when to fsync, what to do with what is found on open.

use std::path::PathBuf;

use crate::config::{Config, FlushPolicy, RecoveryMode};
use crate::error::DiskError;
use crate::tier::DiskTier;

/// Builds a [`DiskTier`]. Every setter documents its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct DiskTierBuilder {
    cfg: Config,
}

impl DiskTierBuilder {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self { cfg: Config::new(dir.into()) }
    }

    /// Most bytes of segment files the directory may hold; the oldest segment is reclaimed
    /// before a new one would pass it. Rounded down to whole segments; at least two segments.
    /// Default: 1 GiB.
    pub fn capacity_bytes(mut self, bytes: u64) -> Self {
        self.cfg.capacity_bytes = bytes;
        self
    }

    /// Size of each segment file, between 64 KiB and 1 GiB. A record (32-byte header, key,
    /// value) must fit in one segment, so this also bounds the largest value. Segments are
    /// reserved whole when created (`fallocate`, where the file system has it), so a full disk
    /// shows at rotation, not in the middle of a segment. Default: 64 MiB.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.cfg.segment_size = bytes;
        self
    }

    /// When to fsync. Default: [`FlushPolicy::OnClose`].
    pub fn flush(mut self, policy: FlushPolicy) -> Self {
        self.cfg.flush = policy;
        self
    }

    /// When the write-behind queue (`QUEUE`, opened when a cache that writes behind mounts the
    /// tier) is fsynced: [`FlushPolicy::Always`] makes every acknowledged write-behind entry
    /// survive a power loss (one `fdatasync` per append); any other policy only a crash of the
    /// process (`Periodic` syncs it with the segments, `OnClose` when the tier is dropped).
    /// Default: [`FlushPolicy::Always`] (an origin write is the application's data, not a
    /// cached copy).
    pub fn queue_flush(mut self, policy: FlushPolicy) -> Self {
        self.cfg.queue_flush = policy;
        self
    }

    /// What to do with existing records on open. Default: [`RecoveryMode::Recover`].
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.cfg.recovery = mode;
        self
    }

    /// When a segment is reclaimed, copy entries that were read since they were written (and
    /// are not expired nor suspect) into the newest segment, so hot entries survive FIFO
    /// reclaim: an entry read twice or more survives two reclaims without another read, one
    /// read once survives one, and a key evicted lately and inserted again survives one
    /// unread (see the crate docs, "Bounded size"). Default: true.
    pub fn reinsert_hot(mut self, on: bool) -> Self {
        self.cfg.reinsert_hot = on;
        self
    }

    /// Check each record's CRC again on every read (on top of the check at recovery), so that
    /// damage done to a file while the tier runs is a miss, never a wrong value. Costs about
    /// 1 µs per 16 KiB. Default: true.
    pub fn verify_on_read(mut self, on: bool) -> Self {
        self.cfg.verify_on_read = on;
        self
    }

    /// Threads that wait for the device on behalf of reads whose bytes are not in the page
    /// cache (a read the page cache can answer is answered inline, on the caller's thread).
    /// More threads keep more device reads in flight. Default: 16.
    pub fn read_threads(mut self, threads: usize) -> Self {
        self.cfg.read_threads = threads;
        self
    }

    /// Reads that may wait for a free read thread; one more is refused at once with a
    /// [`Timeout`](tier_core::TierErrorKind::Timeout) error (partial: the hierarchy reads it
    /// as a miss of this tier and its breaker does not count it), counted in
    /// `tier_disk_reads_total{path="rejected"}`. Default: 256.
    pub fn read_queue(mut self, reads: usize) -> Self {
        self.cfg.read_queue = reads;
        self
    }

    /// Return from an insert once it is *staged* — visible to every read of this tier at once,
    /// queued for the writer thread, which writes what is queued in batches (group commit) —
    /// rather than once it is written. A staged insert is in the file, and survives a kill of
    /// the process, once the writer has written it (in order, usually within a millisecond;
    /// [`DiskTier::flush`](crate::DiskTier::flush) waits for it); a crash before that loses it,
    /// and a reopen finds the key's earlier record, if any, as after a power loss with
    /// [`FlushPolicy::OnClose`]. Removes and clears always return once written; with
    /// [`FlushPolicy::Always`] inserts do too (once synced), and so does an insert that needs a
    /// new segment (the step a full disk fails: it answers errors, not acknowledgements) or is
    /// sent while the last write failed. Staged inserts wait (asynchronously) while 16 MiB of
    /// them are not written yet. Default: false — a kill between the acknowledgement and the
    /// write would leave the key's earlier record to be served after the restart, older than
    /// an insert the fleet was told of (the coherence promise); turn it on where a lost insert
    /// is only a lost cache write (no fleet, or values never updated in place). Group commit
    /// applies either way: concurrent inserts are written in one batch.
    pub fn stage_inserts(mut self, on: bool) -> Self {
        self.cfg.stage_inserts = on;
        self
    }

    /// The tier's name ([`Tier::name`](tier_core::spi::Tier::name), the default `tier` label).
    /// Default: `"disk"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.cfg.name = name.into();
        self
    }

    /// Create the directory if needed (0700), check that no one else can write it, take its
    /// lock, recover its records (per the [`RecoveryMode`]) and its state file, and get a
    /// segment ready for writes.
    ///
    /// Blocking: recovery reads every segment (about 1 GiB/s of large records with a warm page
    /// cache; the kernel reads the next segments ahead of the scan). With small records the
    /// work per record dominates, mostly the index insert: 1M records of 128-byte values took
    /// 3.5 s to reopen with the page cache dropped and 1.1 s with it warm, 5M took 25 s and
    /// 14 s, on a 2-core machine at load ~24. The tier serves nothing until it returns. From
    /// async code on a busy runtime, consider `tokio::task::spawn_blocking`.
    pub fn build(self) -> Result<DiskTier, DiskError> {
        self.cfg.validate()?;
        DiskTier::with_config(self.cfg)
    }
}
