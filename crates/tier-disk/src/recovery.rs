//! Opening a directory: scan every segment in write order, verify every record, rebuild the
//! index (last write wins; tombstones and expired records delete; a clear marker drops
//! everything before it).

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tier_core::spi::now_ms;

use crate::builder::{DiskTierBuilder, RecoveryMode, MAX_SEGMENT_SIZE};
use crate::error::DiskError;
use crate::format::{
    check_record, envelope_created_at, parse_segment_header, record_key, record_value, scan,
    Damage, RecordKind, Scanned,
};
use crate::index::{Index, Loc};
use crate::report::{RecoveryReport, SegmentDamage};
use crate::segment::{list_segments, Segment};
use crate::store::{Segments, Store, MAX_ID_SPAN};

/// Rebuild `index` and `segments` from `cfg.dir`. Returns the report and the next segment id.
pub(crate) fn recover(
    cfg: &DiskTierBuilder,
    index: &Index,
    segments: &Segments,
) -> Result<(RecoveryReport, u32), DiskError> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let found = list_segments(&cfg.dir)?;
    let next_id = match found.last() {
        None => 0,
        Some((id, _)) => id.checked_add(1).ok_or_else(|| {
            DiskError::Config("segment ids exhausted; clear the directory".into())
        })?,
    };
    let delete = delete_file;
    if cfg.recovery == RecoveryMode::Discard {
        for (_, path) in &found {
            delete(path, &mut report)?;
        }
        report.duration = started.elapsed();
        return Ok((report, next_id));
    }
    // Open every segment and check its header; register the good ones (in id order).
    let mut opened: Vec<(Arc<Segment>, usize)> = Vec::new();
    for (id, path) in found {
        if next_id.saturating_add(1).wrapping_sub(id) >= MAX_ID_SPAN {
            // Far older than the newest: the index's 16-bit segment ids could not tell it apart.
            delete(&path, &mut report)?;
            continue;
        }
        if id.wrapping_add(1) == next_id && unborn(&path) {
            // The newest file has no header yet: a crash while it was being created. Not damage.
            delete(&path, &mut report)?;
            continue;
        }
        let damaged = |offset: u64, reason: String| SegmentDamage { segment: id, offset, reason };
        let seg = match Segment::open(id, path.clone(), MAX_SEGMENT_SIZE) {
            Ok(seg) => seg,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                note_damage(cfg, &mut report, damaged(0, e.to_string()))?;
                delete(&path, &mut report)?;
                continue;
            }
            Err(e) => return Err(DiskError::io("open segment", path, e)),
        };
        let size = match parse_segment_header(seg.mapped()) {
            Ok((named, size)) if named == id => size as usize,
            Ok((named, _)) => {
                note_damage(cfg, &mut report, damaged(0, format!("header names segment {named}")))?;
                delete(&path, &mut report)?;
                continue;
            }
            Err(reason) => {
                note_damage(cfg, &mut report, damaged(0, reason))?;
                delete(&path, &mut report)?;
                continue;
            }
        };
        let seg = Arc::new(seg);
        segments.insert(Arc::clone(&seg));
        opened.push((seg, size));
    }
    // Verify (CRC, page faults) on a helper thread, one segment ahead of applying the records to
    // the index here, in write order. Without a helper thread, verify inline.
    let mut cleared_before: Option<u32> = None;
    std::thread::scope(|scope| -> Result<(), DiskError> {
        let (tx, rx) = mpsc::sync_channel::<Walked>(2);
        let list = &opened;
        let helper = std::thread::Builder::new().name("tier-disk-recover".into()).spawn_scoped(
            scope,
            move || {
                for (seg, size) in list {
                    if tx.send(walk(seg, *size)).is_err() {
                        return; // the applier stopped (strict mode error)
                    }
                }
            },
        );
        let rx = helper.is_ok().then_some(rx);
        let mut apply = Apply { index, segments, report: &mut report, now: now_ms() };
        for (seg, size) in &opened {
            let walked = match &rx {
                Some(rx) => rx.recv().map_err(|_| {
                    DiskError::Config("the recovery scan thread ended early".into())
                })?,
                None => walk(seg, *size),
            };
            if apply.segment(cfg, seg, *size, walked)? {
                cleared_before = Some(seg.id);
            }
        }
        Ok(())
    })?;
    if let Some(clear_id) = cleared_before {
        for seg in segments.all().into_iter().filter(|s| s.id < clear_id) {
            segments.remove(seg.id);
            delete(&seg.path, &mut report)?;
        }
    }
    report.entries = index.len() as u64;
    report.duration = started.elapsed();
    Ok((report, next_id))
}

/// Make the valid part of a damaged segment end cleanly at `offset`, so that the damage is
/// counted once, not again at every open: zero the (bad) record header there and give a
/// truncated file back its size. Only bytes past the valid part change (never served, never
/// indexed), and the file only grows. A failure is logged: the damage is then counted again
/// next time, nothing worse.
fn seal_damage(path: &std::path::Path, offset: u64, size: u64) {
    use std::os::unix::fs::FileExt;
    let sealed = std::fs::OpenOptions::new().write(true).open(path).and_then(|f| {
        if f.metadata()?.len() < size {
            f.set_len(size)?;
        }
        let n = size.saturating_sub(offset).min(crate::format::RECORD_HEADER_LEN as u64) as usize;
        f.write_all_at(&[0u8; crate::format::RECORD_HEADER_LEN][..n], offset)
    });
    if let Err(e) = sealed {
        tracing::warn!(path = %path.display(), error = %e, "disk tier: could not seal a damaged segment");
    }
}

/// True when the file's first header-size bytes are all zero (or it is shorter and all zero):
/// a segment whose creation was cut short before its header was written.
pub(crate) fn unborn(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(crate::format::SEGMENT_HEADER_LEN);
    match std::fs::File::open(path) {
        Ok(f) => {
            f.take(crate::format::SEGMENT_HEADER_LEN as u64).read_to_end(&mut head).is_ok()
                && head.iter().all(|b| *b == 0)
        }
        Err(_) => false,
    }
}

/// One segment's records, verified.
struct Walked {
    records: Vec<Scanned>,
    end: usize,
    damage: Option<Damage>,
}

fn walk(seg: &Segment, size: usize) -> Walked {
    let mapped = seg.mapped();
    let mut walk = scan(&mapped[..mapped.len().min(size)], true);
    let records = walk.by_ref().collect();
    Walked { records, end: walk.end(), damage: walk.damage.take() }
}

/// Applies verified records to the index, in write order.
struct Apply<'a> {
    index: &'a Index,
    segments: &'a Segments,
    report: &'a mut RecoveryReport,
    now: u64,
}

impl Apply<'_> {
    /// Apply one segment; true when it holds a clear marker.
    fn segment(
        &mut self,
        cfg: &DiskTierBuilder,
        seg: &Arc<Segment>,
        size: usize,
        walked: Walked,
    ) -> Result<bool, DiskError> {
        let (index, segments) = (self.index, self.segments);
        let id = seg.id;
        let mapped = seg.mapped();
        let bytes = &mapped[..mapped.len().min(size)];
        self.report.segments += 1;
        let mut cleared = false;
        for rec in &walked.records {
            let h = rec.header;
            let key = record_key(bytes, rec.offset, &h);
            let Ok(offset) = u32::try_from(rec.offset) else { break };
            match h.kind {
                RecordKind::Clear => {
                    index.clear();
                    for s in segments.all() {
                        s.live_bytes.store(0, Ordering::Relaxed);
                        s.live_entries.store(0, Ordering::Relaxed);
                    }
                    cleared = true;
                }
                RecordKind::Tombstone => {
                    self.report.tombstones += 1;
                    remove_if_key(index, segments, key, h.key_hash);
                }
                RecordKind::Value if h.stale_until <= self.now => {
                    self.report.expired += 1;
                    remove_if_key(index, segments, key, h.key_hash);
                }
                RecordKind::Value => {
                    seg.live_bytes.fetch_add(h.record_len() as u64, Ordering::Relaxed);
                    seg.live_entries.fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = envelope_created_at(record_value(bytes, rec.offset, &h)) {
                        seg.note_created(c);
                    }
                    if let Some(old) = index.insert(h.key_hash, Loc::new(id, offset)) {
                        forget_loc(segments, old);
                    }
                }
            }
        }
        let records = walked.records.len() as u64;
        self.report.records += records;
        seg.set_readable(walked.end as u64);
        self.report.bytes_scanned += walked.end as u64;
        if records == 0 && walked.damage.is_none() && mapped.len() >= size {
            // An empty segment (the active one of a run that wrote nothing): drop it, so that
            // restarts do not pile empty files up.
            segments.remove(id);
            delete_file(&seg.path, self.report)?;
            return Ok(false);
        }
        let damaged = |offset: u64, reason: String| SegmentDamage { segment: id, offset, reason };
        let damage = match walked.damage {
            Some(d) => Some(damaged(d.offset as u64, d.reason)),
            None if mapped.len() < size => Some(damaged(
                mapped.len() as u64,
                format!("segment truncated to {} of {size} bytes", mapped.len()),
            )),
            None => None,
        };
        if let Some(d) = damage {
            let offset = d.offset;
            note_damage(cfg, self.report, d)?;
            seal_damage(&seg.path, offset, size as u64);
        }
        Ok(cleared)
    }
}

fn delete_file(path: &std::path::Path, report: &mut RecoveryReport) -> Result<(), DiskError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            report.deleted_segments += 1;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DiskError::io("delete segment", path, e)),
    }
}

fn note_damage(
    cfg: &DiskTierBuilder,
    report: &mut RecoveryReport,
    d: SegmentDamage,
) -> Result<(), DiskError> {
    tracing::warn!(segment = d.segment, offset = d.offset, reason = %d.reason, "disk tier: torn or corrupt record; the rest of the segment is skipped");
    if cfg.recovery == RecoveryMode::Strict {
        return Err(DiskError::Corrupt { segment: d.segment, offset: d.offset, reason: d.reason });
    }
    report.corrupt += 1;
    report.damage.push(d);
    Ok(())
}

fn forget_loc(segments: &Segments, loc: Loc) {
    if let Some(seg) = segments.get(loc.seg) {
        if let Ok(Some(h)) = check_record(seg.mapped(), loc.offset as usize, false) {
            Store::forget(&seg, &h);
        }
    }
}

/// Remove `hash` from the index when the record it points at has this very key.
fn remove_if_key(index: &Index, segments: &Segments, key: &[u8], hash: u64) {
    let Some(loc) = index.get(hash, false) else { return };
    let Some(seg) = segments.get(loc.seg) else { return };
    let bytes = seg.mapped();
    let Ok(Some(h)) = check_record(bytes, loc.offset as usize, false) else { return };
    if record_key(bytes, loc.offset as usize, &h) == key && index.remove_if(hash, loc) {
        Store::forget(&seg, &h);
    }
}
