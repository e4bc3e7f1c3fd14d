//! [`Writer`]: the one writer of a directory — appends records to the active segment, rotates
//! to a new segment when it is full, and reclaims the oldest segments (FIFO, with copy-forward
//! of hot entries) to stay within the capacity.
//!
//! A record is published only once written whole: its bytes (CRC included) go first, then the
//! segment's readable length, then the index entry. A write that fails is undone (zeros) so that
//! nothing half written is left after the written part.

use std::sync::{Arc, Mutex, MutexGuard};

use tier_core::spi::now_ms;
use tier_core::{TierError, TierErrorKind};

use crate::config::{FlushPolicy, MAX_ID_SPAN};
use crate::dir::Dir;
use crate::format::{
    encode_record, envelope_created_at, key_hash, record_value, scan, Pos, RecordHeader,
    RecordKind, MAX_KEY_LEN,
};
use crate::ghost::Ghosts;
use crate::index::Loc;
use crate::segment::Segment;
use crate::stage::Op;
use crate::state::DiskState;
use crate::store::Store;

/// How many occupied ids (a stray file under the name) a rotation steps over before giving up.
const CREATE_TRIES: u32 = 16;

fn io_err(what: &str, e: std::io::Error) -> TierError {
    TierError::io(format!("disk tier: {what}"), e)
}

/// The segment being written and the id of the next one.
pub(crate) struct Active {
    /// `None` when no segment could be created (a full disk): every write tries again.
    pub segment: Option<Arc<Segment>>,
    pub next_id: u32,
    /// The newest segment created so far (the next one's predecessor).
    pub newest: Option<u32>,
}

/// The directory's writer.
pub(crate) struct Writer {
    active: Mutex<Active>,
    /// Keys reclaim evicted lately (taken only with the active segment's lock held).
    ghosts: Mutex<Ghosts>,
    dir: Arc<Dir>,
    state: Arc<DiskState>,
}

impl Writer {
    pub fn new(active: Active, dir: Arc<Dir>, state: Arc<DiskState>) -> Self {
        Self { active: Mutex::new(active), ghosts: Mutex::default(), dir, state }
    }

    fn lock(&self) -> MutexGuard<'_, Active> {
        // Poison only means a panic elsewhere while held; a record is published (readable
        // length, then index) only once whole, so the state stays usable.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ghosts(&self) -> MutexGuard<'_, Ghosts> {
        // Poison: a table of fingerprints that only advises; any content is usable.
        self.ghosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write `ops` in order, as few `pwrite`s as their segments allow (group commit): the
    /// result of each. A staged insert that cannot be written drops its key (a later read is a
    /// miss, never the value it replaced).
    pub fn write_batch<'a>(
        &self,
        s: &Store,
        ops: impl Iterator<Item = &'a Op>,
    ) -> Vec<Result<(), TierError>> {
        let mut out = Vec::new();
        let mut p = Pending::default();
        let mut a = self.lock();
        for op in ops {
            let slot = out.len();
            out.push(Ok(()));
            let done = match op {
                Op::Insert { key, envelope } => match encode_insert(s, key, envelope) {
                    Ok(Some((rec, created))) => {
                        let r = Rec::new(slot, &rec, key_hash(key), RecordKind::Value, created);
                        self.add(&mut a, s, &mut p, &mut out, &rec, r)
                    }
                    Ok(None) => self.add_remove(&mut a, s, &mut p, &mut out, key, slot),
                    Err(e) => Err(e),
                },
                Op::Remove { key } => self.add_remove(&mut a, s, &mut p, &mut out, key, slot),
                Op::Clear => {
                    self.flush(s, &mut p, &mut out);
                    self.clear_locked(&mut a, s)
                }
            };
            if let Err(e) = done {
                out[slot] = Err(e);
            }
        }
        self.flush(s, &mut p, &mut out);
        out
    }

    /// Add a tombstone for `key` if it has a record (or one waits in `p`).
    fn add_remove(
        &self,
        a: &mut Active,
        s: &Store,
        p: &mut Pending,
        out: &mut [Result<(), TierError>],
        key: &[u8],
        slot: usize,
    ) -> Result<(), TierError> {
        if key.len() > MAX_KEY_LEN {
            return Ok(());
        }
        let hash = key_hash(key);
        if p.recs.iter().any(|r| r.hash == hash) {
            self.flush(s, p, out); // the index must know the records before this one
        }
        if s.locate(key).is_none() {
            return Ok(());
        }
        let mut rec = Vec::new();
        encode_record(&mut rec, RecordKind::Tombstone, 0, key, &[], 0);
        self.add(a, s, p, out, &rec, Rec::new(slot, &rec, hash, RecordKind::Tombstone, None))
    }

    /// Start a new segment with a clear marker, drop the index, delete every older segment.
    fn clear_locked(&self, a: &mut Active, s: &Store) -> Result<(), TierError> {
        self.new_active(a, s)?;
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Clear, 0, &[], &[], 0);
        self.append(a, s, &buf, RecordKind::Clear)?;
        s.index.clear();
        let keep = a.segment.as_ref().map(|seg| seg.id);
        for seg in s.segments.all() {
            if Some(seg.id) != keep {
                self.drop_segment(s, &seg);
            }
        }
        Ok(())
    }

    /// Bytes left in the active segment (reserved when it was created); 0 without one.
    pub fn room(&self) -> u64 {
        self.lock().segment.as_ref().map_or(0, |seg| seg.size().saturating_sub(seg.readable()))
    }

    /// Create a segment to write to if there is none.
    pub fn ensure_active(&self, s: &Store) -> Result<(), TierError> {
        let mut a = self.lock();
        if a.segment.is_none() {
            self.new_active(&mut a, s)?;
        }
        Ok(())
    }

    /// Record that every record before `before` is suspect (so that later opens know it too).
    pub fn mark_suspect(&self, s: &Store, before: Pos) -> Result<(), TierError> {
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Suspect, 0, &[], &before.to_bytes(), 0);
        let mut a = self.lock();
        self.append(&mut a, s, &buf, RecordKind::Suspect)
    }

    /// Append one encoded marker record (no key) and publish it.
    fn append(
        &self,
        a: &mut Active,
        s: &Store,
        rec: &[u8],
        kind: RecordKind,
    ) -> Result<(), TierError> {
        let (mut p, mut out) = (Pending::default(), vec![Ok(())]);
        self.add(a, s, &mut p, &mut out, rec, Rec::new(0, rec, 0, kind, None))?;
        self.flush(s, &mut p, &mut out);
        out.pop().unwrap_or(Ok(()))
    }

    /// Add an encoded record to `p`, after the records already there when it fits in their
    /// segment; else those are written first and a new segment is started (reclaiming the
    /// oldest ones, whose hot entries may be copied forward, leaving room for this record).
    fn add(
        &self,
        a: &mut Active,
        s: &Store,
        p: &mut Pending,
        out: &mut [Result<(), TierError>],
        rec: &[u8],
        meta: Rec,
    ) -> Result<(), TierError> {
        let end = |seg: &Segment| if p.recs.is_empty() { seg.readable() } else { p.end() };
        if a.segment.as_deref().is_none_or(|seg| end(seg) + rec.len() as u64 > seg.size()) {
            self.flush(s, p, out);
            self.new_active(a, s)?;
            self.enforce_capacity_locked(a, s, rec.len() as u64);
        }
        let Some(seg) = a.segment.clone() else {
            return Err(TierError::new(TierErrorKind::Io, "disk tier: no segment to write to"));
        };
        if p.recs.is_empty() {
            p.start = seg.readable();
            p.buf.clear();
            p.seg = Some(seg);
        }
        p.recs.push(Rec { at: p.end(), ..meta });
        p.buf.extend_from_slice(rec);
        Ok(())
    }

    /// Write the records of `p` with one `pwrite` (synced with [`FlushPolicy::Always`]), then
    /// publish them in order: readable length, then the index. When that fails (a full disk
    /// part way), they are written one by one, as far as they go; a record that is not
    /// written gets the error and is not published (its bytes are zeroed again).
    fn flush(&self, s: &Store, p: &mut Pending, out: &mut [Result<(), TierError>]) {
        let Some(seg) = p.seg.take() else { return };
        let recs = std::mem::take(&mut p.recs);
        let mut ghosts = self.ghosts();
        if recs.len() > 1 && write_synced(s, &seg, &p.buf, p.start).is_ok() {
            seg.set_readable(p.end());
            for r in &recs {
                publish(s, &seg, r, out, &mut ghosts);
            }
            return;
        }
        let mut failed = None;
        for r in &recs {
            let from = usize::try_from(r.at - p.start).unwrap_or(usize::MAX);
            let bytes = p.buf.get(from..from + r.len).unwrap_or_default();
            if failed.is_none() {
                match write_synced(s, &seg, bytes, r.at) {
                    Ok(()) => {
                        seg.set_readable(r.at + r.len as u64);
                        publish(s, &seg, r, out, &mut ghosts);
                        continue;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = &failed {
                out[r.slot] = Err(e.clone());
                if r.kind == RecordKind::Value {
                    // Never the value this one replaced: a miss.
                    if let Some(old) = s.index.remove(r.hash) {
                        s.segments.forget(old);
                    }
                }
            }
        }
    }

    /// Create the next segment and make it the active one. An id already taken (by a stray
    /// file) is stepped over: the new segment's header names its real predecessor, so the
    /// skipped id is not mistaken for a missing segment.
    fn new_active(&self, a: &mut Active, s: &Store) -> Result<(), TierError> {
        let mut last = None;
        for _ in 0..CREATE_TRIES {
            let id = a.next_id;
            let next = id.checked_add(1).ok_or_else(|| {
                TierError::new(TierErrorKind::Other, "disk tier: segment ids exhausted")
            })?;
            match Segment::create(&self.dir, id, s.cfg.segment_size, a.newest) {
                Ok(seg) => {
                    if s.cfg.flush == FlushPolicy::Always {
                        self.dir.sync().map_err(|e| io_err("fsync directory", e))?;
                    }
                    let seg = Arc::new(seg);
                    s.segments.insert(Arc::clone(&seg));
                    (a.segment, a.next_id, a.newest) = (Some(seg), next, Some(id));
                    if let Err(e) = self.state.note_segment(id) {
                        tracing::warn!(error = %e, "disk tier: could not record the newest segment");
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    tracing::warn!(
                        segment = id,
                        "disk tier: a file holds the next segment's name; skipping that id"
                    );
                    a.next_id = next;
                    last = Some(e);
                }
                Err(e) => return Err(io_err("create segment", e)),
            }
        }
        Err(io_err("create segment", last.unwrap_or_else(|| std::io::Error::other("no free id"))))
    }

    /// Reclaim the oldest segments while there are more than the capacity allows.
    pub fn enforce_capacity(&self, s: &Store) {
        let mut a = self.lock();
        self.enforce_capacity_locked(&mut a, s, 0);
    }

    /// Also keeps live ids (and the next one) within [`MAX_ID_SPAN`], which the index relies
    /// on. `reserve` bytes of the active segment are kept free for the record that asked.
    fn enforce_capacity_locked(&self, a: &mut Active, s: &Store, reserve: u64) {
        loop {
            let Some(old) = s.segments.oldest() else { break };
            let over = s.segments.len() > s.cfg.max_segments()
                || a.next_id.wrapping_sub(old.id) >= MAX_ID_SPAN;
            if !over || a.segment.as_ref().is_some_and(|seg| seg.id == old.id) {
                break;
            }
            self.reclaim(a, s, &old, reserve);
        }
    }

    /// Drop segment `seg`: live entries that are unexpired, not suspect and of a frequency
    /// above 0 are copied into the active segment when they fit (their frequency one less);
    /// every other live entry is evicted, and an unexpired one's key becomes a ghost. Then the
    /// file is unlinked (readers holding the segment's `Arc` keep a valid mapping until they
    /// let go).
    ///
    /// The rule is S3-FIFO's main queue on the log: the frequency counts hits since the record
    /// was written, up to 2, and each copy forward spends one, so an entry read often survives
    /// two reclaims without being read again, one read once survives one, one never read is
    /// evicted — unless its key was evicted lately and inserted again (a ghost), which starts
    /// it at 1.
    fn reclaim(&self, a: &mut Active, s: &Store, seg: &Arc<Segment>, reserve: u64) {
        let now = now_ms();
        let (mut capacity, mut expired) = (0u64, 0u64);
        let (mut copied, mut copied_bytes) = (0u64, 0u64);
        let mut ghosts = self.ghosts();
        if s.cfg.reinsert_hot {
            ghosts.fit(s.index.len());
        }
        seg.advise_sequential(); // read in order, not one page per fault (reads are random)
        let bytes = seg.bytes();
        for rec in scan(bytes, false) {
            let h = rec.header;
            if h.kind != RecordKind::Value {
                continue;
            }
            let Ok(offset) = u32::try_from(rec.offset) else { continue };
            let here = Loc::new(seg.id, offset);
            let Some(cur) = s.index.get(h.key_hash, false) else { continue };
            if !cur.same_place(here) {
                continue;
            }
            let alive = h.stale_until > now;
            // A suspect entry is never copied forward: the copy would look newer than the
            // damage that made it suspect.
            if alive && cur.freq > 0 && !cur.suspect && s.cfg.reinsert_hot {
                if let Some(moved) = copy_forward(a, s, bytes, rec.offset, &h, here, reserve) {
                    if moved {
                        copied += 1;
                        copied_bytes += h.record_len() as u64;
                    }
                    continue;
                }
            }
            if s.index.remove_if(h.key_hash, here) {
                if alive {
                    capacity += 1;
                    if s.cfg.reinsert_hot {
                        ghosts.add(h.key_hash);
                    }
                } else {
                    expired += 1;
                }
            }
        }
        drop(ghosts);
        s.count_reinserted(copied, copied_bytes);
        s.metrics.with(|m| {
            m.evicted_capacity.increment(capacity);
            m.evicted_expired.increment(expired);
            m.reinserted.increment(copied);
            m.reinserted_bytes.increment(copied_bytes);
        });
        self.drop_segment(s, seg);
    }

    fn drop_segment(&self, s: &Store, seg: &Segment) {
        s.segments.remove(seg.id);
        if let Err(e) = self.dir.remove(&seg.name()) {
            tracing::warn!(segment = seg.id, error = %e, "disk tier: could not delete reclaimed segment");
        }
    }
}

/// Write `bytes` at `at` of `seg` (and sync, with [`FlushPolicy::Always`]); on failure the
/// bytes are zeroed again.
fn write_synced(s: &Store, seg: &Segment, bytes: &[u8], at: u64) -> Result<(), TierError> {
    seg.write_at(bytes, at).map_err(|e| io_err("append", e))?;
    if s.cfg.flush == FlushPolicy::Always {
        if let Err(e) = seg.sync() {
            seg.zero(at, bytes.len());
            return Err(io_err("fsync", e));
        }
    }
    Ok(())
}

/// Publish record `r`, written whole at its place in `seg`, in the index (the readable length
/// is past it already). A value whose key is a ghost starts at frequency 1.
fn publish(
    s: &Store,
    seg: &Segment,
    r: &Rec,
    out: &mut [Result<(), TierError>],
    ghosts: &mut Ghosts,
) {
    let Ok(offset) = u32::try_from(r.at) else {
        out[r.slot] = Err(TierError::new(TierErrorKind::Other, "disk tier: offset over 4 GiB"));
        return;
    };
    let replaced = match r.kind {
        RecordKind::Value => {
            seg.count(r.len as u64);
            if let Some(c) = r.created {
                seg.note_created(c);
            }
            let freq = u8::from(s.cfg.reinsert_hot && ghosts.take(r.hash));
            s.index.insert(r.hash, Loc { freq, ..Loc::record(seg.id, offset, r.len) })
        }
        RecordKind::Tombstone => s.index.remove(r.hash),
        RecordKind::Clear | RecordKind::Suspect => None,
    };
    if let Some(old) = replaced {
        s.segments.forget(old);
    }
}

/// Records encoded and not yet written: contiguous in segment `seg` from `start`.
#[derive(Default)]
struct Pending {
    seg: Option<Arc<Segment>>,
    start: u64,
    buf: Vec<u8>,
    recs: Vec<Rec>,
}

impl Pending {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
}

/// One record of a [`Pending`] batch: whose result it is, where it goes, what it publishes.
struct Rec {
    slot: usize,
    at: u64,
    len: usize,
    hash: u64,
    kind: RecordKind,
    created: Option<u64>,
}

impl Rec {
    fn new(slot: usize, rec: &[u8], hash: u64, kind: RecordKind, created: Option<u64>) -> Self {
        Self { slot, at: 0, len: rec.len(), hash, kind, created }
    }
}

/// An encoded record and its envelope's `created_at`.
type Encoded = (Vec<u8>, Option<u64>);

/// The value record of an insert and its envelope's `created_at`; `None` when the envelope
/// is already past `stale_until` (the insert is then a removal).
fn encode_insert(s: &Store, key: &[u8], envelope: &[u8]) -> Result<Option<Encoded>, TierError> {
    let (_, stale_until) = tier_core::spi::envelope::peek_times(envelope)?;
    if stale_until <= now_ms() {
        return Ok(None);
    }
    check_size(s, key, envelope.len())?;
    let mut buf = Vec::new();
    let flags = envelope.get(4).copied().unwrap_or(0);
    encode_record(&mut buf, RecordKind::Value, flags, key, envelope, stale_until);
    Ok(Some((buf, envelope_created_at(envelope))))
}

/// What refuses an insert before it is queued: an envelope whose times cannot be read, a key
/// or record too large. (The writer checks again: the same rule, one place.)
pub(crate) fn admit(s: &Store, key: &[u8], envelope: &[u8]) -> Result<(), TierError> {
    tier_core::spi::envelope::peek_times(envelope)?;
    check_size(s, key, envelope.len())
}

/// Check a record's size against the key limit and the segment size.
fn check_size(s: &Store, key: &[u8], value_len: usize) -> Result<(), TierError> {
    if key.len() > MAX_KEY_LEN {
        return Err(TierError::too_large(format!(
            "disk tier: key of {} bytes, at most {MAX_KEY_LEN}",
            key.len()
        )));
    }
    let max = s.cfg.max_record_body();
    if (key.len() + value_len) as u64 > max {
        return Err(TierError::too_large(format!(
            "disk tier: key + value of {} bytes, a segment of {} holds at most {max}",
            key.len() + value_len,
            s.cfg.segment_size
        )));
    }
    Ok(())
}

/// Copy one record verbatim (its CRC does not depend on where it is) into the active segment
/// if it fits without another rotation, `reserve` bytes left free. The index moves to the copy
/// only while it still points at `from` (a write or removal since wins) and the entry is not
/// suspect; the copy takes the entry's frequency less one. `None` when nothing was written;
/// else whether the index moved to the copy.
fn copy_forward(
    a: &Active,
    s: &Store,
    bytes: &[u8],
    offset: usize,
    h: &RecordHeader,
    from: Loc,
    reserve: u64,
) -> Option<bool> {
    let len = h.record_len();
    let (Some(rec), Some(active)) = (bytes.get(offset..offset + len), a.segment.as_ref()) else {
        return None;
    };
    let at = active.readable();
    if at + len as u64 + reserve > active.size() || active.write_at(rec, at).is_err() {
        return None;
    }
    active.set_readable(at + len as u64);
    let at = u32::try_from(at).ok()?;
    let moved = s.index.move_if(h.key_hash, from, Loc::record(active.id, at, len));
    if moved {
        active.count(len as u64);
        if let Some(c) = envelope_created_at(record_value(bytes, offset, h)) {
            active.note_created(c);
        }
    }
    Some(moved)
}
