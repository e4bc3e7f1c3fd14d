//! [`DiskInspector`]: a read-only view of a directory, for the CLI, that works while a live
//! service holds it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tier_core::spi::now_ms;

use crate::builder::MAX_SEGMENT_SIZE;
use crate::error::DiskError;
use crate::format::{
    check_record, envelope_created_at, parse_segment_header, record_key, record_value, scan,
    RecordHeader, RecordKind,
};
use crate::report::{DiskStats, RawRecord, RecordInfo, SegmentDamage, VerifyReport};
use crate::segment::{list_segments, read_owner, LOCK_FILE};

struct Seg {
    id: u32,
    file: File,
    len: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    seg: u32,
    offset: u64,
    header: RecordHeader,
    created_at: Option<u64>,
}

/// A read-only view of a disk-tier directory.
///
/// What it guarantees:
/// - It never writes, creates, deletes or locks anything: it does **not** take the writer's
///   lock, so it can look at a directory a live [`DiskTier`](crate::DiskTier) holds (and a
///   `DiskTier` can open the directory while an inspector looks at it).
/// - It reads with `pread`, never through a mapping: a file truncated under it is a short read
///   (reported as damage), never a SIGBUS.
/// - Its view is a snapshot of which segments existed at [`open`](Self::open): it keeps each of
///   them open, so a segment the live tier reclaims meanwhile stays readable. A live tier only
///   appends past a segment's valid part and never rewrites bytes below it, so a record found
///   valid stays valid. Which record is live for a key is decided at `open`.
/// - The one thing a live writer can make it see is the newest segment ending in a record being
///   written at that instant: that shows as damage at the tail of the newest segment (the live
///   tier itself never serves it). A newest segment whose header is not written yet is skipped.
///   Records written after `open` may or may not be listed.
pub struct DiskInspector {
    dir: PathBuf,
    segs: Vec<Seg>,
    index: HashMap<Box<[u8]>, Slot>,
    stats: DiskStats,
    damage: Vec<SegmentDamage>,
}

impl std::fmt::Debug for DiskInspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskInspector").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn read_segment(seg: &Seg) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; seg.len as usize];
    let mut at = 0usize;
    while at < buf.len() {
        match seg.file.read_at(&mut buf[at..], at as u64) {
            Ok(0) => break, // the file shrank under us
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(at);
    Ok(buf)
}

impl DiskInspector {
    /// Open `dir` read-only and scan it (every CRC is checked; the cost is one read of every
    /// segment).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DiskError> {
        let dir = dir.as_ref().to_path_buf();
        let mut segs = Vec::new();
        let listed = list_segments(&dir)?;
        let newest = listed.last().map(|(id, _)| *id);
        for (id, path) in listed {
            if Some(id) == newest && crate::recovery::unborn(&path) {
                continue; // being created by the live writer right now (or a crash did that)
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // reclaimed
                Err(e) => return Err(DiskError::io("open segment", path, e)),
            };
            let len = file
                .metadata()
                .map_err(|e| DiskError::io("stat segment", &path, e))?
                .len()
                .min(MAX_SEGMENT_SIZE);
            segs.push(Seg { id, file, len });
        }
        let mut me = Self {
            dir,
            segs,
            index: HashMap::new(),
            stats: DiskStats::default(),
            damage: Vec::new(),
        };
        me.build_index()?;
        Ok(me)
    }

    fn build_index(&mut self) -> Result<(), DiskError> {
        let mut written = 0u64;
        for seg in &self.segs {
            let whole = read_segment(seg).map_err(|e| self.io_err(seg.id, e))?;
            let bytes = match check_header(seg.id, &whole) {
                Ok(b) => b,
                Err(reason) => {
                    self.damage.push(SegmentDamage { segment: seg.id, offset: 0, reason });
                    continue;
                }
            };
            let mut walk = scan(bytes, true);
            for rec in walk.by_ref() {
                let h = rec.header;
                match h.kind {
                    RecordKind::Clear => self.index.clear(),
                    RecordKind::Tombstone => {
                        self.index.remove(record_key(bytes, rec.offset, &h));
                    }
                    RecordKind::Value => {
                        let key = record_key(bytes, rec.offset, &h).into();
                        let created_at = envelope_created_at(record_value(bytes, rec.offset, &h));
                        let slot =
                            Slot { seg: seg.id, offset: rec.offset as u64, header: h, created_at };
                        self.index.insert(key, slot);
                    }
                }
            }
            written += walk.end() as u64;
            let damage = walk.damage.take();
            self.damage.extend(segment_damage(seg.id, &whole, damage));
        }
        let now = now_ms();
        let mut s = DiskStats {
            segments: self.segs.len() as u32,
            file_bytes: self.segs.iter().map(|s| s.len).sum(),
            written_bytes: written,
            entries: self.index.len() as u64,
            oldest_segment: self.segs.first().map(|s| s.id),
            newest_segment: self.segs.last().map(|s| s.id),
            ..DiskStats::default()
        };
        for slot in self.index.values() {
            s.live_bytes += slot.header.record_len() as u64;
            if slot.header.stale_until <= now {
                s.expired_entries += 1;
            }
            if let Some(c) = slot.created_at {
                s.oldest_created_at = Some(s.oldest_created_at.map_or(c, |x| x.min(c)));
                s.newest_created_at = Some(s.newest_created_at.map_or(c, |x| x.max(c)));
            }
        }
        s.dead_bytes = s.written_bytes.saturating_sub(s.live_bytes);
        self.stats = s;
        Ok(())
    }

    fn io_err(&self, seg: u32, e: std::io::Error) -> DiskError {
        DiskError::io("read segment", self.dir.join(crate::segment::segment_file_name(seg)), e)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid named in the directory's lock file: the process that opened it for writing last
    /// (it may have exited since).
    pub fn owner_pid(&self) -> Option<u32> {
        read_owner(&self.dir.join(LOCK_FILE))
    }

    /// Figures as of `open` (`capacity_bytes` is 0: the inspector does not know it).
    pub fn stats(&self) -> &DiskStats {
        &self.stats
    }

    /// Torn or corrupt records and unreadable segments found at `open`.
    pub fn damage(&self) -> &[SegmentDamage] {
        &self.damage
    }

    /// Every valid record in write order (each segment up to its first bad record), with
    /// `live` set on the ones the index would serve.
    pub fn records(&self) -> impl Iterator<Item = Result<RecordInfo, DiskError>> + '_ {
        self.segs.iter().flat_map(move |seg| {
            let listed: Vec<Result<RecordInfo, DiskError>> = match read_segment(seg) {
                Err(e) => vec![Err(self.io_err(seg.id, e))],
                Ok(whole) => match check_header(seg.id, &whole) {
                    Err(_) => Vec::new(),
                    Ok(bytes) => scan(bytes, true)
                        .map(|rec| Ok(self.info(seg.id, bytes, rec.offset, &rec.header)))
                        .collect(),
                },
            };
            listed
        })
    }

    fn info(&self, seg: u32, bytes: &[u8], offset: usize, h: &RecordHeader) -> RecordInfo {
        let key = record_key(bytes, offset, h);
        let live = h.kind == RecordKind::Value
            && self.index.get(key).is_some_and(|s| s.seg == seg && s.offset == offset as u64);
        RecordInfo {
            segment: seg,
            offset: offset as u64,
            kind: h.kind,
            key: Bytes::copy_from_slice(key),
            value_len: h.value_len,
            record_len: h.record_len() as u32,
            stale_until: h.stale_until,
            envelope_flags: h.envelope_flags,
            live,
        }
    }

    /// The live record of `key` with its raw envelope (expired or not); its CRC is checked.
    pub fn get(&self, key: &[u8]) -> Result<Option<RawRecord>, DiskError> {
        let Some(slot) = self.index.get(key) else { return Ok(None) };
        let Some(seg) = self.segs.iter().find(|s| s.id == slot.seg) else { return Ok(None) };
        let mut buf = vec![0u8; slot.header.record_len()];
        seg.file.read_exact_at(&mut buf, slot.offset).map_err(|e| self.io_err(seg.id, e))?;
        match check_record(&buf, 0, true) {
            Ok(Some(h)) if h == slot.header => {
                let envelope = Bytes::copy_from_slice(record_value(&buf, 0, &h));
                let mut info = self.info(seg.id, &buf, 0, &h);
                info.offset = slot.offset;
                info.live = true;
                Ok(Some(RawRecord { info, envelope }))
            }
            _ => Err(DiskError::Corrupt {
                segment: seg.id,
                offset: slot.offset,
                reason: "record changed since the inspector opened the directory".into(),
            }),
        }
    }

    /// Read every segment again and check every record's CRC.
    pub fn verify(&self) -> Result<VerifyReport, DiskError> {
        let mut report = VerifyReport::default();
        for seg in &self.segs {
            let whole = read_segment(seg).map_err(|e| self.io_err(seg.id, e))?;
            report.segments += 1;
            let bytes = match check_header(seg.id, &whole) {
                Ok(b) => b,
                Err(reason) => {
                    report.damage.push(SegmentDamage { segment: seg.id, offset: 0, reason });
                    continue;
                }
            };
            let mut walk = scan(bytes, true);
            report.records += walk.by_ref().count() as u64;
            report.bytes += walk.end() as u64;
            let damage = walk.damage.take();
            report.damage.extend(segment_damage(seg.id, &whole, damage));
        }
        Ok(report)
    }
}

/// Check the segment header; returns the part of `bytes` the segment's size covers.
fn check_header(id: u32, bytes: &[u8]) -> Result<&[u8], String> {
    match parse_segment_header(bytes)? {
        (named, size) if named == id => Ok(&bytes[..bytes.len().min(size as usize)]),
        (named, _) => Err(format!("header names segment {named}")),
    }
}

/// Scan damage, or else a truncation of the file below the size its header names.
fn segment_damage(
    id: u32,
    whole: &[u8],
    damage: Option<crate::format::Damage>,
) -> Option<SegmentDamage> {
    let size = parse_segment_header(whole).map(|(_, s)| s as usize).unwrap_or(0);
    match damage {
        Some(d) => Some(SegmentDamage { segment: id, offset: d.offset as u64, reason: d.reason }),
        None if whole.len() < size => Some(SegmentDamage {
            segment: id,
            offset: whole.len() as u64,
            reason: format!("segment truncated to {} of {size} bytes", whole.len()),
        }),
        None => None,
    }
}
