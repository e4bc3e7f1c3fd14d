//! # tier-disk
//!
//! The disk tier (L2) of `tier`: [`DiskTier`], a crash-safe, bounded, log-structured store of
//! envelopes in a directory of fixed-size, memory-mapped segment files, with a small durable
//! key/value [`DiskState`] and the write-behind [`DiskQueue`] beside it; and [`DiskInspector`], a read-only view of such a
//! directory for tools.
//!
//! ## Layout
//!
//! A directory holds `LOCK` (the exclusive `flock`, naming the owner's pid), `STATE` (the
//! [`DiskState`] file), `QUEUE` (the [`DiskQueue`], once a cache writes behind) and segment files `{id:08x}.seg`, ids growing in write order. A segment
//! is a 32-byte header (naming its id, its size and the segment that was the newest when it was
//! created) then records `header (crc32, kind, key length, value length, key hash, stale_until)
//! | key | envelope`, 8-byte aligned; the CRC covers header, key and envelope. Kinds: value,
//! tombstone, clear marker, suspect marker. Records are appended with `pwrite`; the mapping is
//! only ever read. The index maps a key's hash to (segment, offset, length): 12 bytes per slot
//! (15 to 30 bytes per entry with the hash table's overhead), with the key kept on disk and
//! compared on every read.
//!
//! ## Modules
//!
//! `config` (what the builder builds) → `open` (the open sequence) uses `dir` (the directory
//! and its files), `survey` (which files are segments), `scan` (reading a segment file),
//! `replay` (the one rule for what records and damage mean, shared with `inspect`), `state`,
//! `queue` (the write-behind queue file, opened on the first `Tier::write_queue`),
//! and builds a `store` (index, `segment` registry, read path: `read` and its thread `pool`)
//! and a `writer` (append in batches, rotate, reclaim), which `writes` runs on a thread of its
//! own, fed by the `stage` (the queue, and the inserts not yet written, by key). `tier`
//! puts them behind the [`Tier`](tier_core::spi::Tier) trait.
//!
//! ## Invariants
//!
//! - **A record is visible only once whole.** Its bytes (CRC included) are written first, then
//!   the segment's readable length is published, then the index points at it. Readers only read
//!   below the readable length, so no reader sees a torn record. A write that fails part way is
//!   overwritten with zeros, so no half record is left after the written part.
//! - **Nothing is read outside what was validated; no SIGBUS.** Recovery, the inspector and
//!   lookups read segment files with `pread` (a hole reads as zeros, even on a full tmpfs).
//!   Only records so validated, and records this process wrote whole, are read through the
//!   mapping (by the writer: reclaim, removals): pages that exist. Mappings never extend past
//!   a file's length, and the tier never truncates a segment it maps. Appends are system
//!   calls, so a full disk is an error.
//! - **A full disk shows at rotation.** Segments are reserved whole with `fallocate` when
//!   created (sparse where the file system lacks it); a full disk fails the creation of the next
//!   segment — an `Io` error for that write, and every later write tries again — never a write
//!   in the middle of a segment, and never the open of a directory already in use (its lock and
//!   state files exist): it opens and serves what it holds.
//! - **Never served: a torn, corrupt, foreign-key or expired record.** Recovery stops a
//!   segment's scan at its first bad record (counted, never indexed); reads compare the full
//!   key and (by default) re-check the CRC; entries past `stale_until` are a miss and are
//!   dropped from the index, never re-inserted when their segment is reclaimed.
//! - **Damage never brings back what a later write replaced or removed.** A lost record could
//!   have replaced or removed any record written before it. So when a record may have been lost
//!   — a torn or corrupt record, data after a segment's written part, a truncated segment, a
//!   missing segment (ids are sequential and each header names its predecessor; the state file
//!   names the newest segment ever created) — every entry written before that point is
//!   *suspect*: served only as [`Lookup::Stale`](tier_core::spi::Lookup::Stale) (its `fresh_until`
//!   moved to the open), never as fresh, until written again; or dropped, with
//!   [`RecoveryMode::DropSuspect`]. A suspect marker record keeps that across opens (the damage
//!   is counted once). A write cut short by a crash is treated alike: it cannot be told for sure
//!   from a damaged record that was acknowledged (a crash rarely cuts a write: only between the
//!   pages of one).
//! - **Bounded size: the directory never holds more than `capacity + one segment`** of segment
//!   files. A new segment is created first, then the oldest ones are reclaimed (FIFO) until the
//!   count fits the capacity again. Reclaim copies hot entries forward, never suspect ones.
//!   *Which* ones (with [`DiskTierBuilder::reinsert_hot`], the default): each index entry
//!   keeps a frequency, 0 to 2, in the two bits that also say "suspect" (no memory added):
//!   a read adds one, a copy forward spends one. Reclaim copies an unexpired, unsuspect entry
//!   of frequency above 0 and evicts the rest; the keys it evicts alive become *ghosts* (16-bit
//!   fingerprints in a direct-mapped table, a power of two of slots ≥ the entries, 2-4 bytes
//!   per entry, allocated at the first reclaim), and an insert of a ghost starts at frequency 1
//!   — S3-FIFO's main queue and ghost queue on one log. Only what the index still points at,
//!   at that place, is copied: a removed or rewritten key never comes back through a copy.
//! - **A reclaimed segment stays readable for readers that already hold it**: each segment is
//!   an `Arc`; reclaim removes it from the index and the registry, then unlinks the file; the
//!   mapping lives until the last reader drops its `Arc`.
//! - **Last write wins, deletes stick.** Recovery replays segments in id order: a later record
//!   for a key replaces an earlier one, a tombstone (`remove`) or an expired record deletes it,
//!   a clear marker (`clear`) deletes everything before it. A reclaimed entry copied forward is
//!   appended after everything else, so it stays the last write for its key.
//! - **One owner, its files only.** `flock(LOCK_EX | LOCK_NB)` on `LOCK`; a second opener, in
//!   this process or another, gets [`DiskError::Locked`]. The directory must be owned by the
//!   process's user and writable by no one else ([`DiskError::Unsafe`] otherwise, with the fix).
//!   Every file is reached relative to the directory's descriptor, never through a symbolic link
//!   (`O_NOFOLLOW`), and opened only when it is a regular file (`O_NONBLOCK`, then `fstat`), so
//!   a planted link, FIFO or device is never followed, written through nor waited on. A file
//!   named like a segment that is not a valid one is skipped (not a regular file) or set aside
//!   (renamed `*.damaged`), never a reason to delete a valid segment or to refuse the open.
//!   Files are 0600, a created directory 0700.
//!
//! ## Blocking
//!
//! No tier call waits for the device on the caller's thread (an async runtime's worker):
//!
//! - **Reads** use `pread` into a buffer, never the mapping (a page fault on a cold page holds
//!   the thread for the whole device read). `preadv2(RWF_NOWAIT)` copies what the page cache
//!   holds and never waits, so a warm hit is answered inline; the bytes it could not get are
//!   read by one of the tier's read threads ([`DiskTierBuilder::read_threads`], behind a
//!   bounded queue, [`DiskTierBuilder::read_queue`]); when those are full the lookup fails at
//!   once with a partial `Timeout` (a miss of this tier for the hierarchy; its breaker does not
//!   count it). The index keeps each record's length, so a read asks for the record's bytes
//!   and no more, and segment files are advised `POSIX_FADV_RANDOM` (mappings
//!   `MADV_RANDOM`): a cold hit reads its pages from the device, not a read-ahead window. On a
//!   file system without `RWF_NOWAIT`, tmpfs reads inline and any other goes to the threads.
//! - **Writes** (insert, remove, clear) run in order on the tier's writer thread, which also
//!   rotates segments (`fallocate`), reclaims the oldest one and syncs per the
//!   [`FlushPolicy`]. It takes what is queued in batches and writes a batch with one `pwrite`
//!   per segment it lands in (group commit). An insert returns once written; with
//!   [`DiskTierBuilder::stage_inserts`] (opt-in) once *staged*: queued, and read from the queue
//!   by every lookup until it is written and in the index; a remove or clear returns once
//!   written. 16 MiB of
//!   staged inserts at most: beyond, writers wait (asynchronously).
//!
//! ## What a write's return means
//!
//! | returned | seen by reads of this tier | survives a kill of the process | survives a power loss |
//! |---|---|---|---|
//! | `insert` with `stage_inserts(true)` | at once | once the writer wrote it (in order, usually within a millisecond) or after [`DiskTier::flush`] | after the next sync (`flush`, the [`FlushPolicy`]) |
//! | `insert` (the default), `remove`, `clear` | at once | yes | with `Always`: yes; else after the next sync |
//!
//! A staged insert lost to a crash leaves the key's earlier record, if any, to the next open
//! — what a power loss does to any unsynced write. An insert is staged only when it fits, after
//! everything queued before it, in the active segment (reserved on the device when created);
//! one that needs the next segment waits for its write, so a full disk fails that insert (an
//! `Io` error), never one already acknowledged. A staged insert the writer still cannot write
//! (an I/O error) drops its key: a miss, never the value it replaced; while writes fail,
//! inserts wait for their result. Torn records are never replayed
//! whatever the policy: a record is published (readable length, then index) only once written
//! whole, and recovery checks every CRC.
//! - **Opening** (recovery) reads every segment: call [`DiskTierBuilder::build`] from a
//!   blocking context on a busy runtime. A helper thread reads and CRC-checks the segments
//!   (1 MiB `pread`s into reused buffers, the next segments read ahead) while the opening
//!   thread fills the index, which it holds whole: no lock per record, value records inserted
//!   in batches shard by shard. 10M records of 128-byte values (2.1 GiB), on the 2-core VM
//!   below, at load 2.5-3.6: 1.8 s from the page cache, 3.0 s with it dropped (the device reads
//!   ~770 MiB/s: 2.8 s), ~3.5-4.2 s under a 1.5 GiB memory limit (`scripts/bench-disk-cold`,
//!   where the page cache is reclaimed as it is read); 21.8 index bytes per entry.
//!   [`DiskTier::flush`], [`DiskTier::get_raw`] and dropping the tier (which finishes the
//!   writes sent, then syncs) are blocking calls too.
//!
//! The price (`scripts/bench-disk-cold`, a 2-core machine at load 20-28): a warm hit is a
//! system call and a copy into a buffer, ~2.1 µs median for 1 KiB against 0.6 µs for a raw
//! `pread` of its bytes, 0.2 µs for a copy out of a mapping and 0.09 µs for the record's CRC
//! (decoding and the lookup are the rest); a staged insert is a lock and a queue push, 0.7 µs
//! median (the writer's `pwrite`s are batched; at p99 it waits for the writer, whose pace is
//! the device's under a memory limit); a cold hit is its device read and two hand-overs, on no
//! runtime thread, and reads the record's pages only (1.2x them for 1 KiB, 1.0x for 16 KiB).
//!
//! ## Inspection
//!
//! [`DiskInspector::open`] gives tools a read-only view (stats, records, one key's raw envelope,
//! a check of everything: CRCs, missing segments, strays, the state file) of a directory,
//! without its lock, even while a live `DiskTier` holds it; its docs say what it guarantees. A
//! live tier gives the same figures cheaply through [`DiskTier::disk_stats`],
//! [`DiskTier::get_raw`] and [`DiskTier::recovery_report`].
//!
//! ## Metrics
//!
//! Through the `metrics` facade, labelled with the [`TierContext`](tier_core::spi::TierContext)
//! given to [`Tier::attach`](tier_core::spi::Tier::attach) (`cache=""`, `tier=<name>` before that):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `tier_evictions_total` | counter | cache, tier, cause = `capacity` / `expired` | entries dropped by segment reclaim (`capacity`), or found past `stale_until` on read or reclaim (`expired`) |
//! | `tier_decode_errors_total` | counter | cache, tier | damage the tier found itself: at recovery (added on attach) and CRC mismatches on read |
//! | `tier_disk_recovery_records_total` | counter | cache, tier | valid records scanned at open |
//! | `tier_disk_recovery_corrupt_total` | counter | cache, tier | damage found at open (torn or corrupt records, missing segments, strays set aside), each counted once |
//! | `tier_disk_recovery_suspect_total` | counter | cache, tier | entries found at open that damage could have superseded (served only as stale, or dropped) |
//! | `tier_disk_recovery_bytes_total` | counter | cache, tier | bytes scanned at open |
//! | `tier_disk_recovery_seconds` | gauge | cache, tier | how long the last open took |
//! | `tier_disk_reads_total` | counter | cache, tier, path = `page_cache` / `pool` / `rejected` | records read for lookups: inline from the page cache, on the read threads, or refused (threads and queue full: a timeout) |
//! | `tier_disk_reinserted_total` | counter | cache, tier | records reclaim copied forward (also [`DiskStats::reinserted_records`]) |
//! | `tier_disk_reinserted_bytes_total` | counter | cache, tier | their bytes: device writes besides the inserts' |
//!
//! The first two are tier-core's names ([`tier_core::metrics`]). Recovery runs before the tier
//! knows its labels, so the recovery figures are emitted once, on the first `attach`;
//! [`DiskTier::recovery_report`] has them in any case. The gauges `tier_entries`, `tier_bytes`
//! (segment file bytes) and `tier_capacity_bytes` come from
//! [`Tier::stats`](tier_core::spi::Tier::stats) through the hierarchy.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod config;
mod dir;
mod error;
mod flush;
mod format;
mod ghost;
mod index;
mod inspect;
mod metrics;
mod open;
mod pool;
mod queue;
mod read;
mod replay;
mod report;
mod scan;
mod segment;
mod stage;
mod state;
mod store;
mod survey;
mod tier;
mod writer;
mod writes;

pub use builder::DiskTierBuilder;
pub use config::{FlushPolicy, RecoveryMode, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
pub use dir::LOCK_FILE;
pub use error::DiskError;
pub use format::{RecordKind, MAX_KEY_LEN};
pub use inspect::DiskInspector;
pub use metrics::{
    READS, RECOVERY_BYTES, RECOVERY_CORRUPT, RECOVERY_RECORDS, RECOVERY_SECONDS, RECOVERY_SUSPECT,
    REINSERTED, REINSERTED_BYTES,
};
pub use queue::{DiskQueue, QueueReport, MAX_QUEUE_KEY_LEN, MAX_QUEUE_VALUE_LEN};
pub use report::{
    DiskStats, RawRecord, RecordInfo, RecoveryReport, SegmentDamage, StateReport, StrayFile,
    VerifyReport,
};
pub use state::{DiskState, MAX_STATE_BYTES, MAX_STATE_KEY_LEN, MAX_STATE_VALUE_LEN};
pub use tier::DiskTier;
