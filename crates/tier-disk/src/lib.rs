//! # tier-disk
//!
//! The disk tier (L2) of `tier`: [`DiskTier`], a crash-safe, bounded, log-structured store of
//! envelopes in a directory of fixed-size, memory-mapped segment files; and [`DiskInspector`],
//! a read-only view of such a directory for tools.
//!
//! ## Layout
//!
//! A directory holds `LOCK` (the exclusive `flock`, naming the owner's pid) and segment files
//! `{id:08x}.seg`, ids growing in write order. A segment is a 32-byte header then records
//! `header (crc32, kind, key length, value length, key hash, stale_until) | key | envelope`,
//! 8-byte aligned; the CRC covers header, key and envelope. Records are appended with `pwrite`;
//! the mapping is only ever read. The index maps a key's hash to (segment, offset): 12 bytes per
//! slot (15 to 30 bytes per entry with the hash table's overhead), with the key kept on disk and
//! compared on every read.
//!
//! ## Invariants
//!
//! - **A record is visible only once whole.** Its bytes (CRC included) are written first, then
//!   the segment's readable length is published, then the index points at it. Readers only read
//!   below the readable length, so no reader sees a torn record.
//! - **Nothing is read outside what was validated.** Recovery checks every record's CRC before
//!   publishing a segment's readable length; mappings never extend past a file's length, and no
//!   file is ever truncated (segments are created whole and unlinked whole), so a read through a
//!   mapping cannot SIGBUS. Appends are system calls, so a full disk is an error, not a SIGBUS.
//! - **Never served: a torn, corrupt, foreign-key or expired record.** Recovery stops a
//!   segment's scan at its first bad record (counted, never indexed); reads compare the full
//!   key and (by default) re-check the CRC; entries past `stale_until` are a miss and are
//!   dropped from the index, never re-inserted when their segment is reclaimed.
//! - **Bounded size: the directory never holds more than `capacity + one segment`** of segment
//!   files. A new segment is created first, then the oldest ones are reclaimed (FIFO) until the
//!   count fits the capacity again.
//! - **A reclaimed segment stays readable for readers that already hold it**: each segment is
//!   an `Arc`; reclaim removes it from the index and the registry, then unlinks the file; the
//!   mapping lives until the last reader drops its `Arc`.
//! - **Last write wins, deletes stick.** Recovery replays segments in id order: a later record
//!   for a key replaces an earlier one, a tombstone (`remove`) or an expired record deletes it,
//!   a clear marker (`clear`) deletes everything before it. A reclaimed entry copied forward is
//!   appended after everything else, so it stays the last write for its key.
//! - **One owner.** `flock(LOCK_EX | LOCK_NB)` on `LOCK`; a second opener, in this process or
//!   another, gets [`DiskError::Locked`] naming the lock file. Files are 0600, a created
//!   directory 0700.
//!
//! ## Blocking
//!
//! Tier calls do their file I/O inline: a hit is a read from a mapping of a page-cache-warm
//! file (well under a microsecond for 1 KiB), an insert one `pwrite` into the page cache. Moving
//! each call to `spawn_blocking` was measured to cost ~15–30 µs, many times the work it moves,
//! so it is not done. Opening (recovery) and segment rotation do more; open from a blocking
//! context on a busy runtime.
//!
//! ## Inspection
//!
//! [`DiskInspector::open`] gives tools a read-only view (stats, records, one key's raw envelope,
//! a CRC check of everything) of a directory, without its lock, even while a live `DiskTier`
//! holds it; its docs say what it guarantees. A live tier gives the same figures cheaply through
//! [`DiskTier::disk_stats`], [`DiskTier::get_raw`] and [`DiskTier::recovery_report`].
//!
//! ## Metrics
//!
//! Through the `metrics` facade, labelled with the [`TierContext`](tier_core::spi::TierContext)
//! given to [`Tier::attach`](tier_core::spi::Tier::attach) (`cache=""`, `tier=<name>` before that):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `tier_evictions_total` | counter | cache, tier, cause = `capacity` / `expired` | entries dropped by segment reclaim (`capacity`), or found past `stale_until` on read or reclaim (`expired`) |
//! | `tier_decode_errors_total` | counter | cache, tier | torn/corrupt records the tier found itself: at recovery (added on attach) and CRC mismatches on read |
//! | `tier_disk_recovery_records_total` | counter | cache, tier | valid records scanned at open |
//! | `tier_disk_recovery_corrupt_total` | counter | cache, tier | torn/corrupt records and unreadable segments found at open |
//! | `tier_disk_recovery_bytes_total` | counter | cache, tier | bytes scanned at open |
//! | `tier_disk_recovery_seconds` | gauge | cache, tier | how long the last open took |
//!
//! Recovery runs before the tier knows its labels, so the recovery figures are emitted once, on
//! the first `attach`; [`DiskTier::recovery_report`] has them in any case. The gauges
//! `tier_entries`, `tier_bytes` (segment file bytes) and `tier_capacity_bytes` come from
//! [`Tier::stats`](tier_core::spi::Tier::stats) through the hierarchy.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod error;
mod format;
mod index;
mod inspect;
mod metrics;
mod recovery;
mod report;
mod segment;
mod store;
mod tier;

pub use builder::{DiskTierBuilder, FlushPolicy, RecoveryMode, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
pub use error::DiskError;
pub use format::{RecordKind, MAX_KEY_LEN};
pub use inspect::DiskInspector;
pub use metrics::{
    DECODE_ERRORS, EVICTIONS, RECOVERY_BYTES, RECOVERY_CORRUPT, RECOVERY_RECORDS, RECOVERY_SECONDS,
};
pub use report::{DiskStats, RawRecord, RecordInfo, RecoveryReport, SegmentDamage, VerifyReport};
pub use segment::LOCK_FILE;
pub use tier::DiskTier;
