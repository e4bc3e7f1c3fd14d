//! Plain figures handed out by the tier and the inspector.

use std::time::Duration;

use bytes::Bytes;

use crate::format::RecordKind;

/// Damage found in a directory: a torn or corrupt record, data after the written part, a
/// missing segment, a file of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    /// The segment id (for missing segments: the first one missing).
    pub segment: u32,
    /// Byte offset in the segment file where the valid part ends (0: the whole segment).
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
    /// Records may have been lost here, so every entry written before this point is suspect
    /// (served only as stale). False for damage that lost nothing written (a segment file
    /// grown or shrunk past its written part).
    pub suspect: bool,
}

/// A file named like a segment that is not one of the directory's segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrayFile {
    /// Its name in the directory (as found).
    pub name: String,
    /// What it is and what was done with it: skipped (not a regular file), set aside (renamed
    /// to `<name>.damaged`), or deleted (a segment whose creation a crash cut short).
    pub reason: String,
}

/// What was found of the state file ([`DiskState`](crate::DiskState)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateReport {
    /// The file existed.
    pub present: bool,
    /// Keys it holds (after replay).
    pub entries: u64,
    /// Bytes its live keys and values take.
    pub live_bytes: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// The state was lost or damaged (see [`DiskState::was_lost`](crate::DiskState::was_lost)).
    pub lost: bool,
    /// Why replay stopped early, or that the file was missing.
    pub problem: Option<String>,
    /// The problem is a write cut short by a crash (nothing acknowledged was lost).
    pub interrupted_write: bool,
    /// The newest segment id the tier recorded creating (missing newer segments are damage).
    pub newest_segment: Option<u32>,
}

/// What opening a directory found (also emitted as metrics, see the crate docs).
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments scanned (valid header).
    pub segments: u32,
    /// Valid records scanned (values, tombstones, clear and suspect markers).
    pub records: u64,
    /// Index entries after recovery.
    pub entries: u64,
    /// Tombstones applied.
    pub tombstones: u64,
    /// Value records dropped because they were already past `stale_until`.
    pub expired: u64,
    /// Damage found by this open (not seen by an earlier one): each item of `damage`, plus each
    /// stray file set aside.
    pub corrupt: u64,
    /// Where each new piece of damage was.
    pub damage: Vec<SegmentDamage>,
    /// Damage an earlier open already found and recorded (its suspect entries are still
    /// suspect).
    pub known_damage: u64,
    /// Entries that damage could have superseded: served only as stale, or dropped with
    /// [`RecoveryMode::DropSuspect`](crate::RecoveryMode::DropSuspect).
    pub suspect: u64,
    /// Files named like segments that are not segments of this directory.
    pub strays: Vec<StrayFile>,
    /// Segment files deleted on open (discard mode, over capacity, before a `clear`, a creation
    /// cut short).
    pub deleted_segments: u32,
    /// Bytes read and checked.
    pub bytes_scanned: u64,
    /// The state file.
    pub state: StateReport,
    /// How long opening took.
    pub duration: Duration,
}

/// Figures about a directory's contents: from a live [`DiskTier`](crate::DiskTier) (counters,
/// cheap) or a [`DiskInspector`](crate::DiskInspector) (a full scan).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Segment files.
    pub segments: u32,
    /// Size of the segment files (what the directory holds).
    pub file_bytes: u64,
    /// Bytes written in them (headers and records, live or not).
    pub written_bytes: u64,
    /// Bytes of records the index points at.
    pub live_bytes: u64,
    /// Written bytes no index entry points at (overwritten, removed, expired, tombstones).
    pub dead_bytes: u64,
    /// Index entries (keys with a record).
    pub entries: u64,
    /// Of those, entries already past `stale_until` (inspector only; a live tier drops them
    /// lazily and reports 0).
    pub expired_entries: u64,
    /// Of those, entries that damage could have superseded, served only as stale (inspector
    /// only; a live tier reports 0, see [`RecoveryReport::suspect`]).
    pub suspect_entries: u64,
    /// Capacity the tier was built with (0 from the inspector, which does not know it).
    pub capacity_bytes: u64,
    /// The oldest and newest segment ids.
    pub oldest_segment: Option<u32>,
    /// See `oldest_segment`.
    pub newest_segment: Option<u32>,
    /// The smallest `created_at` (Unix ms) of the value records: live ones for the inspector,
    /// every record still on disk for a live tier.
    pub oldest_created_at: Option<u64>,
    /// The largest `created_at` (Unix ms), same scope as `oldest_created_at`.
    pub newest_created_at: Option<u64>,
    /// Records the reclaim of old segments copied forward (re-inserted, see
    /// [`DiskTierBuilder::reinsert_hot`](crate::DiskTierBuilder::reinsert_hot)) since the tier
    /// was opened (0 from the inspector).
    pub reinserted_records: u64,
    /// Their bytes (record headers and padding included): device writes besides the inserts'.
    pub reinserted_bytes: u64,
}

/// One record, as listed by [`DiskInspector::records`](crate::DiskInspector::records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// The segment id.
    pub segment: u32,
    /// Byte offset in the segment file.
    pub offset: u64,
    /// Value, tombstone, clear or suspect marker.
    pub kind: RecordKind,
    /// The key (empty for a clear or suspect marker).
    pub key: Bytes,
    /// Length of the envelope (0 for tombstones).
    pub value_len: u32,
    /// Bytes the record takes on disk (header, key, value, padding).
    pub record_len: u32,
    /// `stale_until` of the envelope (Unix ms; 0 for tombstones).
    pub stale_until: u64,
    /// The envelope's flags (bit 0 compressed, bit 1 negative).
    pub envelope_flags: u8,
    /// True when this is the record the index would serve for its key (the last write).
    pub live: bool,
    /// True when damage could have superseded this record: it is served only as stale.
    pub suspect: bool,
}

/// One key's record with its raw envelope bytes.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Where and what.
    pub info: RecordInfo,
    /// The envelope as stored (decode it with `tier_core::spi::envelope`).
    pub envelope: Bytes,
}

/// The result of checking a whole directory: every record's CRC, missing segments, strays and
/// the state file.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: u32,
    /// Valid records.
    pub records: u64,
    /// Bytes checked.
    pub bytes: u64,
    /// Each piece of damage (a torn or corrupt record, data after the written part, a missing
    /// segment, a file of the wrong length), whether or not the live tier already recorded it.
    pub damage: Vec<SegmentDamage>,
    /// Entries served only as stale because damage could have superseded them.
    pub suspect_entries: u64,
    /// Files named like segments that are not segments of this directory.
    pub strays: Vec<StrayFile>,
    /// The state file (`None` when there is none).
    pub state: Option<StateReport>,
}

impl VerifyReport {
    /// Nothing wrong: no damage, no suspect entry, no stray, and a state file that is intact.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
            && self.suspect_entries == 0
            && self.strays.is_empty()
            && self
                .state
                .as_ref()
                .is_none_or(|s| !s.lost && (s.problem.is_none() || s.interrupted_write))
    }
}
