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

    /// What to do with existing records on open. Default: [`RecoveryMode::Recover`].
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.cfg.recovery = mode;
        self
    }

    /// When a segment is reclaimed, copy entries that were read since they were written (and
    /// are not expired nor suspect) into the newest segment, so hot entries survive FIFO
    /// reclaim. Default: true.
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
    /// Blocking: recovery reads every segment (about 1 GiB/s with a warm page cache). From
    /// async code on a busy runtime, consider `tokio::task::spawn_blocking`.
    pub fn build(self) -> Result<DiskTier, DiskError> {
        self.cfg.validate()?;
        DiskTier::with_config(self.cfg)
    }
}
