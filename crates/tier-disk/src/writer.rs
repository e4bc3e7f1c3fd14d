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
use crate::index::Loc;
use crate::segment::Segment;
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
    dir: Arc<Dir>,
    state: Arc<DiskState>,
}

impl Writer {
    pub fn new(active: Active, dir: Arc<Dir>, state: Arc<DiskState>) -> Self {
        Self { active: Mutex::new(active), dir, state }
    }

    fn lock(&self) -> MutexGuard<'_, Active> {
        // Poison only means a panic elsewhere while held; a record is published (readable
        // length, then index) only once whole, so the state stays usable.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append a value record for `key`.
    pub fn insert(&self, s: &Store, key: &[u8], envelope: &[u8]) -> Result<(), TierError> {
        let (_, stale_until) = tier_core::spi::envelope::peek_times(envelope)?;
        if stale_until <= now_ms() {
            // Already gone: storing it would only shadow nothing; drop what was there.
            return self.remove(s, key);
        }
        check_size(s, key, envelope.len())?;
        let mut buf = Vec::new();
        let flags = envelope.get(4).copied().unwrap_or(0);
        encode_record(&mut buf, RecordKind::Value, flags, key, envelope, stale_until);
        let created = envelope_created_at(envelope);
        let mut a = self.lock();
        self.append(&mut a, s, &buf, key_hash(key), RecordKind::Value, created)
    }

    /// Write a tombstone for `key` if it has a record.
    pub fn remove(&self, s: &Store, key: &[u8]) -> Result<(), TierError> {
        if key.len() > MAX_KEY_LEN {
            return Ok(());
        }
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Tombstone, 0, key, &[], 0);
        let mut a = self.lock();
        if s.locate(key).is_none() {
            return Ok(());
        }
        self.append(&mut a, s, &buf, key_hash(key), RecordKind::Tombstone, None)
    }

    /// Start a new segment with a clear marker, drop the index, delete every older segment.
    pub fn clear(&self, s: &Store) -> Result<(), TierError> {
        let mut a = self.lock();
        self.new_active(&mut a, s)?;
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Clear, 0, &[], &[], 0);
        self.append(&mut a, s, &buf, 0, RecordKind::Clear, None)?;
        s.index.clear();
        let keep = a.segment.as_ref().map(|seg| seg.id);
        for seg in s.segments.all() {
            if Some(seg.id) != keep {
                self.drop_segment(s, &seg);
            }
        }
        Ok(())
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
        self.append(&mut a, s, &buf, 0, RecordKind::Suspect, None)
    }

    /// Append an encoded record; publish it (readable length, then index) only once written
    /// (and synced, with [`FlushPolicy::Always`]).
    fn append(
        &self,
        a: &mut Active,
        s: &Store,
        rec: &[u8],
        hash: u64,
        kind: RecordKind,
        created: Option<u64>,
    ) -> Result<(), TierError> {
        let fits = |seg: &Segment| seg.readable() + rec.len() as u64 <= seg.size();
        if !a.segment.as_deref().is_some_and(fits) {
            // Reclaim may copy hot entries into the new segment: they leave room for this record.
            self.new_active(a, s)?;
            self.enforce_capacity_locked(a, s, rec.len() as u64);
        }
        let Some(seg) = a.segment.clone() else {
            return Err(TierError::new(TierErrorKind::Io, "disk tier: no segment to write to"));
        };
        let offset = seg.readable();
        seg.write_at(rec, offset).map_err(|e| io_err("append", e))?;
        if s.cfg.flush == FlushPolicy::Always {
            if let Err(e) = seg.sync() {
                seg.zero(offset, rec.len());
                return Err(io_err("fsync", e));
            }
        }
        seg.set_readable(offset + rec.len() as u64);
        let offset = u32::try_from(offset).map_err(|e| {
            TierError::with_source(TierErrorKind::Other, "disk tier: offset over 4 GiB", e)
        })?;
        let replaced = match kind {
            RecordKind::Value => {
                seg.count(rec.len() as u64);
                if let Some(c) = created {
                    seg.note_created(c);
                }
                s.index.insert(hash, Loc::record(seg.id, offset, rec.len()))
            }
            RecordKind::Tombstone => s.index.remove(hash),
            RecordKind::Clear | RecordKind::Suspect => None,
        };
        if let Some(old) = replaced {
            s.segments.forget(old);
        }
        Ok(())
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

    /// Drop segment `seg`: hot, unexpired, unsuspect live entries are copied into the active
    /// segment when they fit; every other live entry is evicted. Then the file is unlinked
    /// (readers holding the segment's `Arc` keep a valid mapping until they let go).
    fn reclaim(&self, a: &mut Active, s: &Store, seg: &Arc<Segment>, reserve: u64) {
        let now = now_ms();
        let (mut capacity, mut expired) = (0u64, 0u64);
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
            if alive
                && cur.hit
                && !cur.suspect
                && s.cfg.reinsert_hot
                && copy_forward(a, s, bytes, rec.offset, &h, here, reserve)
            {
                continue;
            }
            if s.index.remove_if(h.key_hash, here) {
                if alive {
                    capacity += 1;
                } else {
                    expired += 1;
                }
            }
        }
        s.metrics.with(|m| {
            m.evicted_capacity.increment(capacity);
            m.evicted_expired.increment(expired);
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
/// if it fits without another rotation, `reserve` bytes left free.
fn copy_forward(
    a: &Active,
    s: &Store,
    bytes: &[u8],
    offset: usize,
    h: &RecordHeader,
    from: Loc,
    reserve: u64,
) -> bool {
    let len = h.record_len();
    let (Some(rec), Some(active)) = (bytes.get(offset..offset + len), a.segment.as_ref()) else {
        return false;
    };
    let at = active.readable();
    if at + len as u64 + reserve > active.size() || active.write_at(rec, at).is_err() {
        return false;
    }
    active.set_readable(at + len as u64);
    let Ok(at) = u32::try_from(at) else { return false };
    if s.index.replace_if(h.key_hash, from, Loc::record(active.id, at, len)) {
        active.count(len as u64);
        if let Some(c) = envelope_created_at(record_value(bytes, offset, h)) {
            active.note_created(c);
        }
    }
    true
}
