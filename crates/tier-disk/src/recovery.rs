//! Opening a directory: scan every segment in write order, verify every record, rebuild the
//! index (last write wins; tombstones and expired records delete; a clear marker drops
//! everything before it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tier_core::now_ms;

use crate::builder::{DiskTierBuilder, RecoveryMode, MAX_SEGMENT_SIZE};
use crate::error::DiskError;
use crate::format::{
    check_record, envelope_created_at, parse_segment_header, record_key, record_value, scan,
    RecordKind,
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
    let delete =
        |path: &std::path::Path, report: &mut RecoveryReport| match std::fs::remove_file(path) {
            Ok(()) => {
                report.deleted_segments += 1;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DiskError::io("delete segment", path, e)),
        };
    if cfg.recovery == RecoveryMode::Discard {
        for (_, path) in &found {
            delete(path, &mut report)?;
        }
        report.duration = started.elapsed();
        return Ok((report, next_id));
    }
    let now = now_ms();
    let mut cleared_before: Option<u32> = None;
    for (id, path) in found {
        if next_id.saturating_add(1).wrapping_sub(id) >= MAX_ID_SPAN {
            // Far older than the newest: the index's 16-bit segment ids could not tell it apart.
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
        report.segments += 1;
        let mapped = seg.mapped();
        let bytes = &mapped[..mapped.len().min(size)];
        let mut walk = scan(bytes, true);
        let mut records = 0u64;
        for rec in walk.by_ref() {
            records += 1;
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
                    cleared_before = Some(id);
                }
                RecordKind::Tombstone => {
                    report.tombstones += 1;
                    remove_if_key(index, segments, key, h.key_hash);
                }
                RecordKind::Value if h.stale_until <= now => {
                    report.expired += 1;
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
        report.records += records;
        let end = walk.end();
        seg.set_readable(end as u64);
        report.bytes_scanned += end as u64;
        if records == 0 && walk.damage.is_none() && mapped.len() >= size {
            // An empty segment (the active one of a run that wrote nothing): drop it, so that
            // restarts do not pile empty files up.
            segments.remove(id);
            delete(&path, &mut report)?;
            continue;
        }
        let damage = match walk.damage.take() {
            Some(d) => Some(damaged(d.offset as u64, d.reason)),
            None if mapped.len() < size => Some(damaged(
                mapped.len() as u64,
                format!("segment truncated to {} of {size} bytes", mapped.len()),
            )),
            None => None,
        };
        if let Some(d) = damage {
            let offset = d.offset;
            note_damage(cfg, &mut report, d)?;
            seal_damage(&path, offset, size as u64);
        }
    }
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
