//! Opening a directory for writing: check it, take its lock, open its state file, find its
//! segments, replay them into a fresh index, decide what the damage found means, and get a
//! segment ready for writes — in that order. No segment is changed before every check (and, in
//! strict mode, the damage check) has passed.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tier_core::spi::now_ms;

use crate::config::{Config, RecoveryMode};
use crate::dir::{parse_segment_name, Dir, DirLock, SET_ASIDE_SUFFIX};
use crate::error::DiskError;
use crate::format::{record_key, Pos, Scanned};
use crate::index::{Index, Loader, Loc};
use crate::metrics::Metrics;
use crate::read::Reads;
use crate::replay::{findings, replay, suspect_before, Finding, Seal, Target};
use crate::report::{RecoveryReport, StrayFile};
use crate::scan::Chunk;
use crate::segment::{reserve, Segment, Segments};
use crate::state::DiskState;
use crate::store::Store;
use crate::survey::{survey, Action, Candidate, Stray};
use crate::writer::{Active, Writer};

/// A directory opened for writing.
pub(crate) struct Opened {
    pub lock: DirLock,
    pub store: Store,
    pub writer: Writer,
    pub state: Arc<DiskState>,
    pub report: RecoveryReport,
    pub dir: Arc<Dir>,
}

/// Open `cfg.dir` (see the module docs).
pub(crate) fn open(cfg: Config) -> Result<Opened, DiskError> {
    let started = Instant::now();
    let opened_at = now_ms();
    let dir = Arc::new(Dir::open_private(&cfg.dir)?);
    let lock = DirLock::acquire(&dir)?;
    let mut report = RecoveryReport::default();
    if cfg.recovery == RecoveryMode::Discard {
        discard(&dir, &mut report)?;
    }
    let segments_exist = dir.names()?.iter().any(|n| parse_segment_name(n).is_some());
    let (state, state_report) = DiskState::open(Arc::clone(&dir), cfg.flush, segments_exist)?;
    let state = Arc::new(state);
    report.state = state_report;
    let high_water = state.high_water();
    let found = survey(&dir, high_water)?;

    let index = Index::default();
    let segments = Arc::new(Segments::default());
    let reusable = register(&dir, &cfg, &found.segments, &segments)?;
    let mut rebuild = Rebuild::new(&index, &segments);
    let replayed = replay(&found.segments, opened_at, &mut rebuild);
    let cleared_in = rebuild.finish();
    for (c, end) in found.segments.iter().zip(&replayed.ends) {
        if let Some(seg) = segments.get(c.id as u16) {
            seg.set_readable(end.end);
            seg.advise_random(); // scanned in order; read at random from now on
        }
    }
    let all = findings(&found.segments, &replayed.ends, high_water);
    // A segment with damage is never written to again (what follows the damage is not read).
    let damaged: Vec<u32> = all.iter().map(|f| f.damage.segment).collect();
    let known = |f: &Finding| f.suspect_before.is_some() && f.suspect_before <= replayed.marker;
    let (known, new): (Vec<Finding>, Vec<Finding>) = all.into_iter().partition(known);
    if cfg.recovery == RecoveryMode::Strict {
        refuse_new_damage(&new, &found.strays)?;
    }

    // Decided: from here on the directory is changed.
    let threshold = suspect_before(&new).max(replayed.marker);
    report.suspect = settle_suspects(&cfg, &index, &segments, threshold);
    settle_strays(&dir, &found.strays, &mut report);
    seal(&dir, &new);
    if let Some(c) = cleared_in {
        for seg in segments.all().into_iter().filter(|s| s.id < c) {
            segments.remove(seg.id);
            remove_segment(&dir, &seg.name(), &mut report);
        }
    }
    for f in &new {
        tracing::warn!(segment = f.damage.segment, offset = f.damage.offset, reason = %f.damage.reason, suspect = f.damage.suspect, "disk tier: damage found");
    }

    let newest = found.segments.last().map(|c| c.id);
    // New records must land after everything that is suspect.
    let newest_end = replayed.ends.last().map(|e| e.end).unwrap_or(0);
    let reuse = reusable.filter(|id| {
        Some(*id) == newest
            && !damaged.contains(id)
            && threshold.is_none_or(|t| t <= Pos::at(*id, newest_end))
    });
    let active = active_segment(reuse, &segments, newest, high_water);
    let reads = Reads::start(cfg.read_threads, cfg.read_queue)
        .map_err(|e| DiskError::io("start read threads for", &cfg.dir, e))?;
    let stage = Arc::default();
    let store = Store {
        cfg,
        index,
        segments,
        metrics: Metrics::new(),
        reads,
        stage,
        opened_at,
        reinserted: AtomicU64::new(0),
        reinserted_bytes: AtomicU64::new(0),
    };
    let writer = Writer::new(active, Arc::clone(&dir), Arc::clone(&state));
    if let Err(e) = writer.ensure_active(&store) {
        // A full disk fails the writes (each tries again), not the open: reads go on.
        tracing::warn!(error = %e, "disk tier: no segment for writes yet");
    }
    if let Some(t) = threshold.filter(|_| threshold > replayed.marker) {
        if let Err(e) = writer.mark_suspect(&store, t) {
            tracing::warn!(error = %e, "disk tier: could not record the damage; the next open finds it again");
        }
    }
    let before = store.segments.len();
    writer.enforce_capacity(&store);
    report.deleted_segments += (before - store.segments.len()) as u32;

    report.segments = found.segments.len() as u32;
    report.records = replayed.counts.records;
    report.tombstones = replayed.counts.tombstones;
    report.expired = replayed.counts.expired;
    report.bytes_scanned = replayed.counts.bytes;
    report.known_damage = known.len() as u64;
    report.corrupt = new.len() as u64
        + found.strays.iter().filter(|s| s.action == Action::SetAside).count() as u64;
    report.damage = new.into_iter().map(|f| f.damage).collect();
    report.entries = store.index.len() as u64;
    report.duration = started.elapsed();
    Ok(Opened { lock, store, writer, state, report, dir })
}

/// `RecoveryMode::Strict`: any damage not recorded by an earlier open is an error.
fn refuse_new_damage(new: &[Finding], strays: &[Stray]) -> Result<(), DiskError> {
    if let Some(f) = new.first() {
        let d = &f.damage;
        return Err(DiskError::Corrupt {
            segment: d.segment,
            offset: d.offset,
            reason: d.reason.clone(),
        });
    }
    if let Some(s) = strays.iter().find(|s| s.action != Action::Unborn) {
        let reason = format!("{} {}", s.name, s.reason);
        return Err(DiskError::Corrupt { segment: s.id, offset: 0, reason });
    }
    Ok(())
}

/// Make every entry written before `threshold` suspect (or drop it, per the mode); how many.
fn settle_suspects(
    cfg: &Config,
    index: &Index,
    segments: &Segments,
    threshold: Option<Pos>,
) -> u64 {
    let Some(t) = threshold else { return 0 };
    let ids = segments.ids_by_slot();
    let before = |loc: Loc| ids.get(&loc.seg).is_some_and(|id| Pos::at(*id, loc.offset.into()) < t);
    if cfg.recovery == RecoveryMode::DropSuspect {
        let mut n = 0;
        index.remove_where(before, |loc| {
            segments.forget(loc);
            n += 1;
        });
        n
    } else {
        index.mark_suspect(before)
    }
}

/// Register a live segment for each valid segment file (the newest one opened for writing
/// when it could become the active segment again). Returns that one's id when it can.
fn register(
    dir: &Dir,
    cfg: &Config,
    found: &[Candidate],
    segments: &Segments,
) -> Result<Option<u32>, DiskError> {
    let mut reusable = None;
    for (i, c) in found.iter().enumerate() {
        let newest = i + 1 == found.len();
        let writable = (newest && c.len == c.size() && c.size() == cfg.segment_size)
            .then(|| dir.open_file(&crate::dir::segment_file_name(c.id), true).ok())
            .flatten()
            .filter(|f| same_file(f, &c.file));
        let file = match writable {
            Some(f) => {
                reusable = Some(c.id);
                f
            }
            None => c.file.try_clone().map_err(|e| DiskError::io("open segment", dir.path(), e))?,
        };
        let seg = Segment::with_file(c.id, file, c.limit(), 0).map_err(|e| {
            DiskError::io("map segment", dir.join(&crate::dir::segment_file_name(c.id)), e)
        })?;
        segments.insert(Arc::new(seg));
    }
    Ok(reusable)
}

fn same_file(a: &std::fs::File, b: &std::fs::File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The segment to write to: the reopened newest one, else a new one after everything known.
fn active_segment(
    reuse: Option<u32>,
    segments: &Segments,
    newest: Option<u32>,
    high_water: Option<u32>,
) -> Active {
    let last = newest.max(high_water);
    let next_id = last.map_or(Some(0), |l| l.checked_add(1));
    if let Some(seg) = reuse.and_then(|id| segments.get(id as u16)) {
        if let Err(e) = seg.reserve_rest() {
            tracing::debug!(segment = seg.id, error = %e, "disk tier: could not reserve the rest of the reopened segment");
        }
        return Active { segment: Some(seg), next_id: next_id.unwrap_or(u32::MAX), newest: last };
    }
    Active { segment: None, next_id: next_id.unwrap_or(u32::MAX), newest: last }
}

/// Rename aside or delete the strays, as their action says; report each.
fn settle_strays(dir: &Dir, strays: &[Stray], report: &mut RecoveryReport) {
    for s in strays {
        let done = match s.action {
            Action::Skip => s.reason.clone(),
            Action::Unborn => match dir.remove(&s.name) {
                Ok(()) => {
                    report.deleted_segments += 1;
                    format!("{}: deleted", s.reason)
                }
                Err(e) => format!("{}: could not delete it ({e})", s.reason),
            },
            Action::SetAside => match set_aside(dir, &s.name) {
                Ok(to) => format!("{}: set aside as {to}", s.reason),
                Err(e) => format!("{}: could not set it aside ({e})", s.reason),
            },
        };
        tracing::warn!(file = %s.name, "disk tier: {done}");
        report.strays.push(StrayFile { name: s.name.clone(), reason: done });
    }
}

/// Rename `name` to `name.damaged` (or `.damaged.N`, never replacing a file).
fn set_aside(dir: &Dir, name: &str) -> std::io::Result<String> {
    let mut last = None;
    for n in 0..100 {
        let to = if n == 0 {
            format!("{name}{SET_ASIDE_SUFFIX}")
        } else {
            format!("{name}{SET_ASIDE_SUFFIX}.{n}")
        };
        match dir.rename_new(name, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
}

/// Seal the damage that lost nothing (a segment file of the wrong length), so that it is not
/// found again; a failure is logged (it is found, and counted, again next time).
fn seal(dir: &Dir, found: &[Finding]) {
    for Seal::Resize { seg, to } in found.iter().filter_map(|f| f.seal) {
        let done = rewrite(dir, seg, |f| {
            let len = f.metadata()?.len();
            if len < to {
                reserve(f, len, to - len).map(|_| ())
            } else {
                f.set_len(to)
            }
        });
        if let Err(e) = done {
            tracing::warn!(segment = seg, error = %e, "disk tier: could not seal damage; it is found again at the next open");
        }
    }
}

/// Open segment `seg` for writing (as a regular file, never through a link) and run `f` on it.
fn rewrite(
    dir: &Dir,
    seg: u32,
    f: impl FnOnce(&std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let file = dir
        .open_file(&crate::dir::segment_file_name(seg), true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    f(&file)
}

fn remove_segment(dir: &Dir, name: &str, report: &mut RecoveryReport) {
    match dir.remove(name) {
        Ok(()) => report.deleted_segments += 1,
        Err(e) => tracing::warn!(file = name, error = %e, "disk tier: could not delete a segment"),
    }
}

/// `RecoveryMode::Discard`: delete every segment file (regular files and links named like
/// segments; anything else is left and reported).
fn discard(dir: &Dir, report: &mut RecoveryReport) -> Result<(), DiskError> {
    for name in dir.names()? {
        if parse_segment_name(&name).is_none() {
            continue;
        }
        match dir.file_type(&name) {
            Ok(Some(rustix::fs::FileType::RegularFile | rustix::fs::FileType::Symlink)) => {
                remove_segment(dir, &name, report);
            }
            Ok(Some(t)) => report.strays.push(StrayFile {
                name,
                reason: format!("is {}, not a regular file: skipped", crate::dir::describe(t)),
            }),
            Ok(None) => {}
            Err(e) => return Err(DiskError::io("stat", dir.join(&name), e)),
        }
    }
    Ok(())
}

/// Replays records into the live index and the segments' accounting. It holds the index
/// whole (a [`Loader`]) and keeps the figures of the segment being replayed itself, so that
/// replaying a record takes no lock and no atomic instruction; `finish` hands the figures over.
struct Rebuild<'a> {
    index: Loader<'a>,
    segments: &'a Segments,
    /// The newest segment holding a clear marker.
    cleared_in: Option<u32>,
    /// The segment records come from (they come segment by segment) and its figures so far.
    current: Option<(Arc<Segment>, Tally)>,
    /// Value records of the current segment not yet in the index: inserted together
    /// ([`Loader::insert_all`]) before anything looks at the index or the segment changes.
    pending: Vec<(u64, Loc)>,
    /// Locations the pending inserts replaced.
    replaced: Vec<Loc>,
}

/// Value records inserted together, at most.
const BATCH: usize = 1 << 18;

/// What replaying a segment's records adds to its live figures.
#[derive(Default)]
struct Tally {
    bytes: u64,
    entries: u64,
    oldest: Option<u64>,
    newest: u64,
}

impl<'a> Rebuild<'a> {
    fn new(index: &'a Index, segments: &'a Segments) -> Self {
        let (pending, replaced) = (Vec::new(), Vec::new());
        Self { index: index.loader(), segments, cleared_in: None, current: None, pending, replaced }
    }

    /// The segment `seg`, its figures kept here from now on (the previous one's handed over).
    fn enter(&mut self, seg: u32) -> Option<&mut (Arc<Segment>, Tally)> {
        if self.current.as_ref().is_none_or(|(s, _)| s.id != seg) {
            self.hand_over();
            self.current = self.segments.get(seg as u16).map(|s| (s, Tally::default()));
        }
        self.current.as_mut()
    }

    /// Insert the pending value records (and uncount what they replaced).
    fn insert_pending(&mut self) {
        let replaced = &mut self.replaced;
        self.index.insert_all(&mut self.pending, |old| replaced.push(old));
        for old in std::mem::take(&mut self.replaced) {
            self.forget(old);
        }
    }

    /// Add the figures kept here to the current segment's own.
    fn hand_over(&mut self) {
        self.insert_pending();
        if let Some((s, t)) = self.current.take() {
            s.live_bytes.fetch_add(t.bytes, Ordering::Relaxed);
            s.live_entries.fetch_add(t.entries, Ordering::Relaxed);
            if let Some(oldest) = t.oldest {
                s.note_created(oldest);
                s.note_created(t.newest);
            }
        }
    }

    /// Uncount the record at `loc`, which the index no longer points at.
    fn forget(&mut self, loc: Loc) {
        let Some((seg, h)) = self.segments.record_at(loc) else { return };
        match &mut self.current {
            Some((s, t)) if s.id == seg.id => {
                // Counted here, not yet handed over.
                t.bytes = t.bytes.saturating_sub(h.record_len() as u64);
                t.entries = t.entries.saturating_sub(1);
            }
            _ => seg.forget(&h),
        }
    }

    /// Hand the figures over and give the index back; the newest segment with a clear marker.
    fn finish(mut self) -> Option<u32> {
        self.hand_over();
        self.cleared_in
    }
}

impl Target for Rebuild<'_> {
    fn value(&mut self, seg: u32, chunk: &Chunk, rec: &Scanned) {
        let h = rec.header;
        let len = h.record_len() as u64;
        let Some((s, t)) = self.enter(seg) else { return };
        // Validated up to here: later records of this segment may look this one up.
        s.set_readable(s.readable().max(rec.offset as u64 + len));
        t.bytes += len;
        t.entries += 1;
        let value = crate::format::record_value(chunk.at(rec), 0, &h);
        if let Some(c) = crate::format::envelope_created_at(value) {
            t.oldest = Some(t.oldest.map_or(c, |o| o.min(c)));
            t.newest = t.newest.max(c);
        }
        let Ok(offset) = u32::try_from(rec.offset) else { return };
        self.pending.push((h.key_hash, Loc::record(seg, offset, h.record_len())));
        if self.pending.len() >= BATCH {
            self.insert_pending();
        }
    }

    fn remove(&mut self, key: &[u8], hash: u64) {
        self.insert_pending();
        let Some(loc) = self.index.get(hash) else { return };
        let Some((seg, h)) = self.segments.record_at(loc) else { return };
        if record_key(seg.bytes(), loc.offset as usize, &h) == key
            && self.index.remove_if(hash, loc)
        {
            self.forget(loc);
        }
    }

    fn expect(&mut self, records: u64) {
        self.index.reserve(usize::try_from(records).unwrap_or(usize::MAX));
    }

    fn clear(&mut self, seg: u32) {
        self.pending.clear();
        self.index.clear();
        self.current = None; // its figures so far are gone with the rest
        self.segments.forget_all();
        self.cleared_in = Some(seg);
    }
}
