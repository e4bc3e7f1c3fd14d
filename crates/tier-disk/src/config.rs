//! [`Config`]: what a tier is built with, once checked, and the policies it names. The builder
//! fills it in; the running tier only reads it.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::DiskError;
use crate::format::{RECORD_ALIGN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// The smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 64 << 10;
/// The largest segment size accepted.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Live segment ids span fewer than this many ids: the index keeps 16 bits of a segment id.
pub(crate) const MAX_ID_SPAN: u32 = u16::MAX as u32;

/// When written records (and the state file's writes) are forced to stable storage
/// (`fdatasync`).
///
/// Whatever the policy, a write once written survives a crash of the *process* (it is in the
/// kernel's page cache): a remove or clear that returned, an insert once the writer thread
/// wrote it (an insert returns when staged, see
/// [`DiskTierBuilder::stage_inserts`](crate::DiskTierBuilder::stage_inserts); `flush` waits
/// for it). The policy is about power loss and kernel crashes. Recovery copes with any of
/// them: records that did not reach the disk whole fail their CRC and are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FlushPolicy {
    /// Never fsync; the kernel writes back when it likes.
    None,
    /// A background thread syncs what was written since the last sync, every `Duration`.
    Periodic(Duration),
    /// Sync when the tier is dropped (and on [`DiskTier::flush`](crate::DiskTier::flush)).
    /// Default.
    #[default]
    OnClose,
    /// Sync every write before it returns (an insert, a remove, a
    /// [`DiskState::put`](crate::DiskState::put)): what returned survives a power loss. Inserts
    /// are not staged; writes queued together share one `fdatasync` (group commit).
    Always,
}

/// What `build()` does with the records already in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Rebuild the index from every segment; a torn or corrupt record ends that segment's scan,
    /// is counted in the [`RecoveryReport`](crate::RecoveryReport) and is never served. Damage
    /// that may have lost records (a bad record, data after the written part, a missing
    /// segment) makes every entry those records could have replaced or removed *suspect*: it is
    /// served only as stale ([`Lookup::Stale`](tier_core::spi::Lookup::Stale)), never as fresh, until
    /// it is written again. Default.
    #[default]
    Recover,
    /// Like `Recover`, but suspect entries are dropped instead of served as stale.
    DropSuspect,
    /// Like `Recover`, but damage not seen by an earlier open fails `build()` with
    /// [`DiskError::Corrupt`], before anything in the directory is changed.
    Strict,
    /// Delete every segment and start empty (a cold start). The state file is kept.
    Discard,
}

/// A tier's settings, checked by [`Config::validate`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub dir: PathBuf,
    pub capacity_bytes: u64,
    pub segment_size: u64,
    pub flush: FlushPolicy,
    pub queue_flush: FlushPolicy,
    pub recovery: RecoveryMode,
    pub reinsert_hot: bool,
    pub verify_on_read: bool,
    pub name: String,
    pub read_threads: usize,
    pub read_queue: usize,
    pub stage_inserts: bool,
}

impl Config {
    /// The defaults, in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            capacity_bytes: 1 << 30,
            segment_size: 64 << 20,
            flush: FlushPolicy::default(),
            queue_flush: FlushPolicy::Always,
            recovery: RecoveryMode::default(),
            reinsert_hot: true,
            verify_on_read: true,
            name: "disk".to_string(),
            read_threads: 16,
            read_queue: 256,
            stage_inserts: false,
        }
    }

    /// Segments the capacity allows.
    pub fn max_segments(&self) -> usize {
        usize::try_from(self.capacity_bytes / self.segment_size.max(1)).unwrap_or(usize::MAX)
    }

    /// The capacity, rounded down to whole segments.
    pub fn capacity(&self) -> u64 {
        self.max_segments() as u64 * self.segment_size
    }

    /// Largest `key + value` bytes one record can carry.
    pub fn max_record_body(&self) -> u64 {
        self.segment_size - SEGMENT_HEADER_LEN as u64 - RECORD_HEADER_LEN as u64
    }

    pub fn validate(&self) -> Result<(), DiskError> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(DiskError::Config(format!(
                "segment_size {} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                self.segment_size
            )));
        }
        if !self.segment_size.is_multiple_of(RECORD_ALIGN as u64) {
            return Err(DiskError::Config("segment_size must be a multiple of 8".into()));
        }
        if self.max_segments() >= MAX_ID_SPAN as usize / 2 {
            return Err(DiskError::Config(format!(
                "capacity_bytes {} holds {} segments of {}; at most {} allowed",
                self.capacity_bytes,
                self.max_segments(),
                self.segment_size,
                MAX_ID_SPAN / 2 - 1
            )));
        }
        if self.max_segments() < 2 {
            return Err(DiskError::Config(format!(
                "capacity_bytes {} holds fewer than two segments of {}",
                self.capacity_bytes, self.segment_size
            )));
        }
        if self.read_threads == 0 {
            return Err(DiskError::Config(
                "read_threads is zero: no read could wait for the device".into(),
            ));
        }
        if let FlushPolicy::Periodic(d) = self.flush {
            if d.is_zero() {
                return Err(DiskError::Config("periodic flush interval is zero".into()));
            }
        }
        Ok(())
    }
}
