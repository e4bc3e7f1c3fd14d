//! [`DiskTierBuilder`]: where and how big, when to fsync, what to do with what is found on open.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::DiskError;
use crate::format::SEGMENT_HEADER_LEN;
use crate::tier::DiskTier;

/// The smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 64 << 10;
/// The largest segment size accepted.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// When written records are forced to stable storage (`fdatasync`).
///
/// Whatever the policy, a record that was written survives a crash of the *process* (it is in
/// the kernel's page cache); the policy is about power loss and kernel crashes. Recovery copes
/// with any of them: records that did not reach the disk whole fail their CRC and are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FlushPolicy {
    /// Never fsync; the kernel writes back when it likes.
    None,
    /// A background thread syncs segments written since the last sync, every `Duration`.
    Periodic(Duration),
    /// Sync when the tier is dropped (and on [`DiskTier::flush`]). Default.
    #[default]
    OnClose,
}

/// What `build()` does with the records already in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Rebuild the index from every segment; a torn or corrupt record ends that segment's scan,
    /// is counted in the [`RecoveryReport`](crate::RecoveryReport) and is never served. The
    /// segment is then sealed there (the bad record's header zeroed, a truncated file given its
    /// size back), so the same damage is counted once, not at every open. Default.
    #[default]
    Recover,
    /// Like `Recover`, but the first torn or corrupt record fails `build()` with
    /// [`DiskError::Corrupt`] (nothing is deleted).
    Strict,
    /// Delete every segment and start empty (a cold start).
    Discard,
}

/// Builds a [`DiskTier`]. Every setter documents its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct DiskTierBuilder {
    pub(crate) dir: PathBuf,
    pub(crate) capacity_bytes: u64,
    pub(crate) segment_size: u64,
    pub(crate) flush: FlushPolicy,
    pub(crate) recovery: RecoveryMode,
    pub(crate) reinsert_hot: bool,
    pub(crate) verify_on_read: bool,
    pub(crate) name: String,
}

impl DiskTierBuilder {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            capacity_bytes: 1 << 30,
            segment_size: 64 << 20,
            flush: FlushPolicy::default(),
            recovery: RecoveryMode::default(),
            reinsert_hot: true,
            verify_on_read: true,
            name: "disk".to_string(),
        }
    }

    /// Most bytes of segment files the directory may hold; the oldest segment is reclaimed
    /// before a new one would pass it. Rounded down to whole segments; at least two segments.
    /// Default: 1 GiB.
    pub fn capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }

    /// Size of each segment file, between 64 KiB and 1 GiB. A record (32-byte header, key,
    /// value) must fit in one segment, so this also bounds the largest value. Default: 64 MiB.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// When to fsync. Default: [`FlushPolicy::OnClose`].
    pub fn flush(mut self, policy: FlushPolicy) -> Self {
        self.flush = policy;
        self
    }

    /// What to do with existing records on open. Default: [`RecoveryMode::Recover`].
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }

    /// When a segment is reclaimed, copy entries that were read since they were written (and
    /// are not expired) into the newest segment, so hot entries survive FIFO reclaim.
    /// Default: true.
    pub fn reinsert_hot(mut self, on: bool) -> Self {
        self.reinsert_hot = on;
        self
    }

    /// Check each record's CRC again on every read (on top of the check at recovery), so that
    /// damage done to a file while the tier runs is a miss, never a wrong value. Costs about
    /// 1 µs per 16 KiB. Default: true.
    pub fn verify_on_read(mut self, on: bool) -> Self {
        self.verify_on_read = on;
        self
    }

    /// The tier's name ([`Tier::name`](tier_core::spi::Tier::name), the default `tier` label).
    /// Default: `"disk"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Segments the capacity allows.
    pub(crate) fn max_segments(&self) -> usize {
        (self.capacity_bytes / self.segment_size.max(1)) as usize
    }

    /// Largest `key + value` bytes one record can carry.
    pub(crate) fn max_record_body(&self) -> u64 {
        self.segment_size - SEGMENT_HEADER_LEN as u64 - crate::format::RECORD_HEADER_LEN as u64
    }

    pub(crate) fn validate(&self) -> Result<(), DiskError> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(DiskError::Config(format!(
                "segment_size {} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                self.segment_size
            )));
        }
        if !self.segment_size.is_multiple_of(crate::format::RECORD_ALIGN as u64) {
            return Err(DiskError::Config("segment_size must be a multiple of 8".into()));
        }
        if self.max_segments() >= crate::store::MAX_ID_SPAN as usize / 2 {
            return Err(DiskError::Config(format!(
                "capacity_bytes {} holds {} segments of {}; at most {} allowed",
                self.capacity_bytes,
                self.max_segments(),
                self.segment_size,
                crate::store::MAX_ID_SPAN / 2 - 1
            )));
        }
        if self.max_segments() < 2 {
            return Err(DiskError::Config(format!(
                "capacity_bytes {} holds fewer than two segments of {}",
                self.capacity_bytes, self.segment_size
            )));
        }
        if let FlushPolicy::Periodic(d) = self.flush {
            if d.is_zero() {
                return Err(DiskError::Config("periodic flush interval is zero".into()));
            }
        }
        Ok(())
    }

    /// Create the directory if needed (0700), take its lock, recover its records (per the
    /// [`RecoveryMode`]) and start a fresh segment for writes.
    ///
    /// Blocking: recovery reads every segment (about 1 GiB/s with a warm page cache). From
    /// async code on a busy runtime, consider `tokio::task::spawn_blocking`.
    pub fn build(self) -> Result<DiskTier, DiskError> {
        self.validate()?;
        DiskTier::from_builder(self)
    }
}
