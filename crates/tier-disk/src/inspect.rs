//! [`DiskInspector`]: a read-only view of a directory, for the CLI, that works while a live
//! service holds it. It finds segments, replays them and judges damage with the very rules the
//! live tier's recovery uses (`survey`, `replay`).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use tier_core::spi::now_ms;

use crate::dir::{parse_segment_name, segment_file_name, Dir, LOCK_FILE, SET_ASIDE_SUFFIX};
use crate::error::DiskError;
use crate::format::{
    check_record, envelope_created_at, record_key, record_value, Pos, RecordHeader, RecordKind,
    Scanned,
};
use crate::replay::{findings, replay, suspect_before, Target};
use crate::report::{
    DiskStats, RawRecord, RecordInfo, SegmentDamage, StateReport, StrayFile, VerifyReport,
};
use crate::scan::{scan_file, Chunk};
use crate::state;
use crate::survey::{survey, Action, Candidate};

#[derive(Clone, Copy)]
struct Slot {
    seg: u32,
    offset: u64,
    header: RecordHeader,
    created_at: Option<u64>,
    suspect: bool,
}

/// A read-only view of a disk-tier directory.
///
/// What it guarantees:
/// - It never writes, creates, deletes or locks anything: it does **not** take the writer's
///   lock, so it can look at a directory a live [`DiskTier`](crate::DiskTier) holds (and a
///   `DiskTier` can open the directory while an inspector looks at it).
/// - It reads with `pread`, never through a mapping: a file truncated under it is a short read
///   (reported as damage), never a SIGBUS. It opens only regular files, never through a link,
///   so a FIFO or a link planted in the directory never hangs it nor leads it outside.
/// - It judges damage as the live tier's recovery does: missing segments, records lost after a
///   bad record, and which entries that makes suspect (served only as stale).
/// - Its view is a snapshot of which segments existed at [`open`](Self::open): it keeps each of
///   them open, so a segment the live tier reclaims meanwhile stays readable. A live tier only
///   appends past a segment's valid part and never rewrites bytes below it, so a record found
///   valid stays valid. Which record is live for a key is decided at `open`.
/// - The one thing a live writer can make it see is the newest segment ending in a record being
///   written at that instant: that shows as damage at the tail of the newest segment, with the
///   entries before it suspect (the live tier itself never serves that record, and sees no
///   damage). A newest segment whose header is not written yet is skipped. Records written
///   after `open` may or may not be listed.
pub struct DiskInspector {
    dir: Dir,
    segs: Vec<Candidate>,
    index: HashMap<Box<[u8]>, Slot>,
    stats: DiskStats,
    damage: Vec<SegmentDamage>,
    strays: Vec<StrayFile>,
    state: Option<StateReport>,
    high_water: Option<u32>,
}

impl std::fmt::Debug for DiskInspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskInspector").field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

/// The inspector's index: key → its live record.
#[derive(Default)]
struct Map(HashMap<Box<[u8]>, Slot>);

impl Target for Map {
    fn value(&mut self, seg: u32, chunk: &Chunk, rec: &Scanned) {
        let (h, at) = (rec.header, chunk.at(rec));
        let created_at = envelope_created_at(record_value(at, 0, &h));
        let slot = Slot { seg, offset: rec.offset as u64, header: h, created_at, suspect: false };
        self.0.insert(record_key(at, 0, &h).into(), slot);
    }
    fn remove(&mut self, key: &[u8], _hash: u64) {
        self.0.remove(key);
    }
    fn clear(&mut self, _seg: u32) {
        self.0.clear();
    }
}

impl DiskInspector {
    /// Open `dir` read-only and scan it (every CRC is checked; the cost is one read of every
    /// segment).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DiskError> {
        let dir = Dir::open(dir.as_ref())?;
        // The state first: what it says was created existed before the listing that follows.
        let state = state::inspect(&dir);
        let high_water = state.as_ref().and_then(|s| s.newest_segment);
        let found = survey(&dir, high_water)?;
        let mut map = Map::default();
        let replayed = replay(&found.segments, now_ms(), &mut map);
        let all = findings(&found.segments, &replayed.ends, high_water);
        let threshold = suspect_before(&all).max(replayed.marker);
        let mut index = map.0;
        if let Some(t) = threshold {
            for slot in index.values_mut() {
                slot.suspect = Pos::at(slot.seg, slot.offset) < t;
            }
        }
        let mut strays: Vec<StrayFile> = found
            .strays
            .iter()
            .filter(|s| s.action != Action::Unborn)
            .map(|s| StrayFile { name: s.name.clone(), reason: s.reason.clone() })
            .collect();
        strays.extend(set_aside_earlier(&dir)?);
        strays.extend(not_regular(&dir, LOCK_FILE, "the tier refuses to open the directory")?);
        let state = match state {
            None if !found.segments.is_empty() => Some(StateReport {
                lost: true,
                problem: Some("missing, while segments exist".into()),
                ..StateReport::default()
            }),
            other => other,
        };
        let mut me = Self {
            dir,
            segs: found.segments,
            index,
            stats: DiskStats::default(),
            damage: all.into_iter().map(|f| f.damage).collect(),
            strays,
            state,
            high_water,
        };
        me.stats = me.figures(replayed.ends.iter().map(|e| e.end).sum());
        Ok(me)
    }

    fn figures(&self, written: u64) -> DiskStats {
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
            s.expired_entries += u64::from(slot.header.stale_until <= now);
            s.suspect_entries += u64::from(slot.suspect);
            if let Some(c) = slot.created_at {
                s.oldest_created_at = Some(s.oldest_created_at.map_or(c, |x| x.min(c)));
                s.newest_created_at = Some(s.newest_created_at.map_or(c, |x| x.max(c)));
            }
        }
        s.dead_bytes = s.written_bytes.saturating_sub(s.live_bytes);
        s
    }

    fn io_err(&self, seg: u32, e: std::io::Error) -> DiskError {
        DiskError::io("read segment", self.dir.join(&segment_file_name(seg)), e)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid named in the directory's lock file: the process that opened it for writing last
    /// (it may have exited since). `None` when the lock file is missing or not a regular file.
    pub fn owner_pid(&self) -> Option<u32> {
        self.dir.lock_owner()
    }

    /// Figures as of `open` (`capacity_bytes` is 0: the inspector does not know it).
    pub fn stats(&self) -> &DiskStats {
        &self.stats
    }

    /// Damage found at `open`: torn or corrupt records, data after a segment's written part,
    /// missing segments, segment files of the wrong length.
    pub fn damage(&self) -> &[SegmentDamage] {
        &self.damage
    }

    /// Files named like segments that are not segments of this directory (and files an earlier
    /// open set aside).
    pub fn strays(&self) -> &[StrayFile] {
        &self.strays
    }

    /// The write-behind queue file, read now (`None` when there is none): the writes still
    /// owed to the origin, the dead letters, and any damage. Read-only, like the rest.
    pub fn queue(&self) -> Option<crate::queue::QueueReport> {
        crate::queue::inspect(&self.dir)
    }

    /// The state file, as of `open` (`None` when there is none).
    pub fn state(&self) -> Option<&StateReport> {
        self.state.as_ref()
    }

    /// Every valid record in write order (each segment up to its first bad record), with
    /// `live` set on the ones the index would serve and `suspect` on those served only as
    /// stale.
    pub fn records(&self) -> impl Iterator<Item = Result<RecordInfo, DiskError>> + '_ {
        self.segs.iter().flat_map(move |seg| {
            let mut listed = Vec::new();
            scan_file(&seg.file, seg.limit(), true, &mut |chunk: Chunk| {
                for rec in &chunk.records {
                    listed.push(Ok(self.info(
                        seg.id,
                        chunk.at(rec),
                        rec.offset as u64,
                        &rec.header,
                    )));
                }
            });
            listed
        })
    }

    /// The figures of the record whose bytes start `bytes`, at `offset` of segment `seg`.
    fn info(&self, seg: u32, bytes: &[u8], offset: u64, h: &RecordHeader) -> RecordInfo {
        let key = record_key(bytes, 0, h);
        let slot = self.index.get(key).filter(|s| s.seg == seg && s.offset == offset);
        RecordInfo {
            segment: seg,
            offset,
            kind: h.kind,
            key: Bytes::copy_from_slice(key),
            value_len: h.value_len,
            record_len: h.record_len() as u32,
            stale_until: h.stale_until,
            envelope_flags: h.envelope_flags,
            live: h.kind == RecordKind::Value && slot.is_some(),
            suspect: slot.is_some_and(|s| s.suspect),
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
                let info = self.info(seg.id, &buf, slot.offset, &h);
                Ok(Some(RawRecord { info, envelope }))
            }
            _ => Err(DiskError::Corrupt {
                segment: seg.id,
                offset: slot.offset,
                reason: "record changed since the inspector opened the directory".into(),
            }),
        }
    }

    /// Read every segment again and check every record's CRC, for missing segments and for
    /// data after each written part; with the strays, suspect entries and state file found at
    /// `open`.
    pub fn verify(&self) -> Result<VerifyReport, DiskError> {
        let mut ends = Vec::new();
        let mut records = 0;
        for seg in &self.segs {
            let end = scan_file(&seg.file, seg.limit(), true, &mut |_| {});
            records += end.records;
            ends.push(end);
        }
        let damage = findings(&self.segs, &ends, self.high_water).into_iter().map(|f| f.damage);
        Ok(VerifyReport {
            segments: self.segs.len() as u32,
            records,
            bytes: ends.iter().map(|e| e.end).sum(),
            damage: damage.collect(),
            suspect_entries: self.stats.suspect_entries,
            strays: self.strays.clone(),
            state: self.state.clone(),
        })
    }
}

/// `name` as a stray when it exists but is not a regular file.
fn not_regular(dir: &Dir, name: &str, what: &str) -> Result<Option<StrayFile>, DiskError> {
    match dir.file_type(name).map_err(|e| DiskError::io("stat", dir.join(name), e))? {
        None | Some(rustix::fs::FileType::RegularFile) => Ok(None),
        Some(t) => Ok(Some(StrayFile {
            name: name.into(),
            reason: format!("is {}, not a regular file: {what}", crate::dir::describe(t)),
        })),
    }
}

/// Files an earlier open renamed aside (`{id:08x}.seg.damaged`, `.damaged.N`).
fn set_aside_earlier(dir: &Dir) -> Result<Vec<StrayFile>, DiskError> {
    let mut out: Vec<StrayFile> = dir
        .names()?
        .into_iter()
        .filter(|n| {
            n.split_once(SET_ASIDE_SUFFIX)
                .is_some_and(|(base, _)| parse_segment_name(base).is_some())
        })
        .map(|name| StrayFile {
            name,
            reason: "set aside by an earlier open: not a valid segment".into(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
