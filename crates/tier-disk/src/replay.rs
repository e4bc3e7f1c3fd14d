//! Rebuilding what a directory holds — for the live tier's recovery and for the inspector
//! alike: the one rule for what each record does, the scan of every segment in write order, and
//! the rule for which damage may have lost records.
//!
//! **What a record does** ([`Target`]): a value record makes its key live there (unless it is
//! already past `stale_until`, which removes the key), a tombstone removes its key, a clear
//! marker removes everything before it, a suspect marker names a position before which every
//! record is suspect.
//!
//! **What damage means.** Records are written in order, so a record that is lost could have
//! replaced or removed any record written before it. Whenever a record may have been lost —
//! a torn or corrupt record, non-zero bytes after the written part, a truncated file, a
//! missing segment (each header names its predecessor, so a gap it does not explain), missing
//! newest segments (the state file names the newest ever created) — every entry written before
//! that point is *suspect*. That holds for the last record of the newest segment too: a write
//! cut short by a crash (never acknowledged) cannot be told for sure from a damaged record that
//! was, so it is treated alike (a crash rarely cuts a write: only between pages of one).

use std::sync::mpsc;

use crate::format::{record_key, record_value, Pos, RecordKind, Scanned, SEGMENT_HEADER_LEN};
use crate::report::SegmentDamage;
use crate::scan::{first_nonzero, scan_file, scan_file_reusing, Chunk, End};
use crate::survey::Candidate;

/// Where the records of a replay go: the live index, or the inspector's map.
pub(crate) trait Target {
    /// The value record `rec` (in `chunk`, segment `seg`) is now its key's live record.
    fn value(&mut self, seg: u32, chunk: &Chunk, rec: &Scanned);
    /// `key` has no live record any more.
    fn remove(&mut self, key: &[u8], hash: u64);
    /// Nothing replayed so far is live any more (a clear marker in segment `seg`).
    fn clear(&mut self, seg: u32);
    /// About `records` more records are coming (room may be made for them at once).
    fn expect(&mut self, _records: u64) {}
}

/// Figures of a replay.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub records: u64,
    pub tombstones: u64,
    pub expired: u64,
    pub bytes: u64,
}

/// What replaying the segments found.
pub(crate) struct Replayed {
    /// How each segment's scan ended (same order as the segments).
    pub ends: Vec<End>,
    /// The latest position named by a suspect marker.
    pub marker: Option<Pos>,
    pub counts: Counts,
}

/// Apply one valid record: the replay rule.
fn apply(
    target: &mut dyn Target,
    seg: u32,
    chunk: &Chunk,
    rec: &Scanned,
    now: u64,
    replayed: &mut Replayed,
) {
    let h = rec.header;
    let at = chunk.at(rec);
    replayed.counts.records += 1;
    match h.kind {
        RecordKind::Clear => target.clear(seg),
        RecordKind::Tombstone => {
            replayed.counts.tombstones += 1;
            target.remove(record_key(at, 0, &h), h.key_hash);
        }
        RecordKind::Value if h.stale_until <= now => {
            replayed.counts.expired += 1;
            target.remove(record_key(at, 0, &h), h.key_hash);
        }
        RecordKind::Value => target.value(seg, chunk, rec),
        RecordKind::Suspect => {
            if let Some(p) = Pos::from_bytes(record_value(at, 0, &h)) {
                replayed.marker = replayed.marker.max(Some(p));
            }
        }
    }
}

enum Msg {
    Chunk(usize, Chunk),
    End(End),
}

/// Segments whose reading the prefetcher may have started ahead of the scan.
const AHEAD: usize = 2;

/// Ask the kernel to read segment `c` into the page cache in the background
/// (`POSIX_FADV_WILLNEED`): the device gets the whole file's reads at once, not one chunk of
/// the scan at a time. Advice only: the scan reads with `pread` either way.
fn prefetch(c: &Candidate) {
    let len = std::num::NonZeroU64::new(c.limit());
    let _ = rustix::fs::fadvise(&c.file, 0, len, rustix::fs::Advice::WillNeed);
}

/// Scan every segment in id order and apply its records to `target`. The reading and CRC
/// checks run on a helper thread up to four chunks ahead of the applying (inline if no thread
/// can be started), reading into the chunks applied and handed back; another thread has the
/// kernel read the next segments ahead of that scan (not the newest one, whose unwritten tail
/// would only fill the page cache with zeros).
pub(crate) fn replay(segments: &[Candidate], now: u64, target: &mut dyn Target) -> Replayed {
    let mut out = Replayed { ends: Vec::new(), marker: None, counts: Counts::default() };
    let ahead = 1..segments.len().saturating_sub(1);
    std::thread::scope(|scope| {
        let (go, prefetched) = mpsc::sync_channel::<()>(AHEAD);
        let to_prefetch = ahead.clone();
        // No prefetcher (it could not start): its sender is gone, and the scan does not wait.
        let _ = std::thread::Builder::new().name("tier-disk-prefetch".into()).spawn_scoped(
            scope,
            move || {
                for c in segments.get(to_prefetch).unwrap_or_default() {
                    prefetch(c);
                    if go.send(()).is_err() {
                        return;
                    }
                }
            },
        );
        let (tx, rx) = mpsc::sync_channel::<Msg>(4);
        // Chunks applied go back to the scan, to be read into again.
        let (spent, reusable) = mpsc::channel::<Chunk>();
        let helper = std::thread::Builder::new().name("tier-disk-recover".into()).spawn_scoped(
            scope,
            move || {
                for (i, c) in segments.iter().enumerate() {
                    if ahead.contains(&i) {
                        let _ = prefetched.recv(); // this one's reading has started
                    }
                    let mut emit = |chunk| {
                        let _ = tx.send(Msg::Chunk(i, chunk));
                    };
                    let mut reuse = || reusable.try_recv().ok();
                    let end = scan_file_reusing(&c.file, c.limit(), true, &mut emit, &mut reuse);
                    if tx.send(Msg::End(end)).is_err() {
                        return;
                    }
                }
            },
        );
        if helper.is_ok() {
            for msg in rx {
                match msg {
                    Msg::Chunk(i, chunk) => {
                        for rec in &chunk.records {
                            apply(target, segments[i].id, &chunk, rec, now, &mut out);
                        }
                        let _ = spent.send(chunk); // the scan may have ended: then it is dropped
                    }
                    Msg::End(end) => {
                        if out.ends.is_empty() && segments.len() > 1 {
                            // The first segment says how many the others may hold, about.
                            target.expect(end.records * (segments.len() as u64 - 1));
                        }
                        out.ends.push(end);
                    }
                }
            }
        } else {
            for c in segments {
                let mut emit = |chunk: Chunk| {
                    for rec in &chunk.records {
                        apply(target, c.id, &chunk, rec, now, &mut out);
                    }
                };
                let end = scan_file(&c.file, c.limit(), true, &mut emit);
                out.ends.push(end);
            }
        }
    });
    out.counts.bytes = out.ends.iter().map(|e| e.end).sum();
    out
}

/// How to make damage that lost nothing stop showing (only the live tier does it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seal {
    /// Give segment `seg`'s file the length its header names.
    Resize { seg: u32, to: u64 },
}

/// One piece of damage.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub damage: SegmentDamage,
    /// Entries written before this are suspect (`None`: nothing was lost).
    pub suspect_before: Option<Pos>,
    pub seal: Option<Seal>,
}

/// The damage the scans of `segments` (ended as in `ends`) show, with missing segments:
/// between two segments, and after the newest when the state says `high_water` was created.
pub(crate) fn findings(
    segments: &[Candidate],
    ends: &[End],
    high_water: Option<u32>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let lost = |seg: u32, offset: u64, reason: String| Finding {
        damage: SegmentDamage { segment: seg, offset, reason, suspect: true },
        suspect_before: Some(Pos::at(seg, offset)),
        seal: None,
    };
    for pair in segments.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        // A header written before predecessors were named cannot tell a missing segment from
        // an empty one that an earlier version deleted at open (it left such gaps): not judged.
        let Some(prev) = b.header.prev else { continue };
        if prev > a.id {
            let reason = format!("segments {:08x}..={prev:08x} are missing", a.id + 1);
            out.push(Finding {
                suspect_before: Some(Pos::start(b.id)),
                ..lost(a.id + 1, 0, reason)
            });
        }
    }
    if let (Some(h), Some(last)) = (high_water, segments.last()) {
        if h > last.id {
            let reason = format!("the newest segments {:08x}..={h:08x} are missing", last.id + 1);
            let before = Pos::start(h.saturating_add(1));
            out.push(Finding { suspect_before: Some(before), ..lost(last.id + 1, 0, reason) });
        }
    }
    let newest = segments.last().map(|c| c.id);
    for (c, e) in segments.iter().zip(ends) {
        let (size, limit) = (c.size(), c.limit());
        let sealed = |reason: String, seal| Finding {
            damage: SegmentDamage { segment: c.id, offset: e.end, reason, suspect: false },
            suspect_before: None,
            seal: Some(seal),
        };
        match &e.damage {
            Some(d) => out.push(lost(c.id, d.offset as u64, d.reason.clone())),
            None => match first_nonzero(&c.file, e.end.max(SEGMENT_HEADER_LEN as u64), limit) {
                // A whole record right where the scan ended: appended by a live writer since
                // (only the read-only inspector can see that), not damage.
                Ok(Some(at)) if Some(c.id) == newest && appended(c, e.end, at) => {}
                Ok(Some(at)) => out.push(lost(
                    c.id,
                    e.end,
                    format!("data at offset {at}, after the written part: its records are lost"),
                )),
                Err(err) => {
                    out.push(lost(c.id, e.end, format!("read error after the written part: {err}")))
                }
                Ok(None) if c.len != size => out.push(sealed(
                    format!(
                        "segment file of {} bytes, its header says {size} (nothing written lost)",
                        c.len
                    ),
                    Seal::Resize { seg: c.id, to: size },
                )),
                Ok(None) => {}
            },
        }
    }
    out
}

/// True when a valid record starts at `end`, the first non-zero byte `at` being in its header.
fn appended(c: &Candidate, end: u64, at: u64) -> bool {
    if at >= end + crate::format::RECORD_HEADER_LEN as u64 {
        return false;
    }
    let mut head = [0u8; crate::format::RECORD_HEADER_LEN];
    let Ok(()) = std::os::unix::fs::FileExt::read_exact_at(&c.file, &mut head, end) else {
        return false;
    };
    let Some(len) = crate::format::claimed_len(&head) else { return false };
    let mut rec = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&c.file, &mut rec, end).is_ok()
        && matches!(crate::format::check_record(&rec, 0, true), Ok(Some(_)))
}

/// Entries before this are suspect: the latest of the findings' positions.
pub(crate) fn suspect_before(findings: &[Finding]) -> Option<Pos> {
    findings.iter().filter_map(|f| f.suspect_before).max()
}
