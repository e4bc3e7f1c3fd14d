//! Plain figures handed out by the tier and the inspector.

use std::time::Duration;

use bytes::Bytes;

use crate::format::RecordKind;

/// A torn or corrupt record (or an unreadable segment) found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    /// The segment id.
    pub segment: u32,
    /// Byte offset in the segment file where the valid part ends (0: the segment header).
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

/// What opening a directory found (also emitted as metrics, see the crate docs).
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments scanned (valid header).
    pub segments: u32,
    /// Valid records scanned (values, tombstones, clear markers).
    pub records: u64,
    /// Index entries after recovery.
    pub entries: u64,
    /// Tombstones applied.
    pub tombstones: u64,
    /// Value records dropped because they were already past `stale_until`.
    pub expired: u64,
    /// Torn or corrupt records and unreadable segments: each ended a segment's scan.
    pub corrupt: u64,
    /// Where each of those was.
    pub damage: Vec<SegmentDamage>,
    /// Segment files deleted on open (unreadable header, empty, before a `clear`, discard
    /// mode, over capacity).
    pub deleted_segments: u32,
    /// Bytes read and checked.
    pub bytes_scanned: u64,
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
}

/// One record, as listed by [`DiskInspector::records`](crate::DiskInspector::records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// The segment id.
    pub segment: u32,
    /// Byte offset in the segment file.
    pub offset: u64,
    /// Value, tombstone or clear marker.
    pub kind: RecordKind,
    /// The key (empty for a clear marker).
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
}

/// One key's record with its raw envelope bytes.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Where and what.
    pub info: RecordInfo,
    /// The envelope as stored (decode it with `tier_core::spi::envelope`).
    pub envelope: Bytes,
}

/// The result of checking every record's CRC.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: u32,
    /// Valid records.
    pub records: u64,
    /// Bytes checked.
    pub bytes: u64,
    /// Each segment whose scan ended on a torn or corrupt record, or that could not be read.
    pub damage: Vec<SegmentDamage>,
}

impl VerifyReport {
    /// No damage found.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}
