//! The live store: segment registry, index, the write path (append, rotate, reclaim) and the
//! read path.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tier_core::spi::{now_ms, Entry, Lookup};
use tier_core::{TierError, TierErrorKind};

use crate::builder::{DiskTierBuilder, FlushPolicy};
use crate::format::{
    check_record, encode_record, envelope_created_at, key_hash, record_key, record_value, scan,
    RecordHeader, RecordKind, MAX_KEY_LEN,
};
use crate::index::{Index, Loc};
use crate::metrics::Metrics;
use crate::report::{DiskStats, RecoveryReport};
use crate::segment::{DirLock, Segment};

/// The segments of a live tier, by id (ids grow in write order) and by id modulo 2^16 (what
/// the index stores; unique because live ids span fewer than 2^16 ids).
#[derive(Default)]
pub(crate) struct Segments(RwLock<SegmentMaps>);

#[derive(Default)]
pub(crate) struct SegmentMaps {
    by_id: BTreeMap<u32, Arc<Segment>>,
    by_slot: HashMap<u16, Arc<Segment>>,
}

/// Live segment ids must span fewer than this many ids (see [`Segments`]).
pub(crate) const MAX_ID_SPAN: u32 = u16::MAX as u32;

impl Segments {
    fn map(&self) -> std::sync::RwLockReadGuard<'_, SegmentMaps> {
        // Poison only means a panic elsewhere while held; the maps are always consistent.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, SegmentMaps> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
    /// The live segment whose id is `slot` modulo 2^16.
    pub fn get(&self, slot: u16) -> Option<Arc<Segment>> {
        self.map().by_slot.get(&slot).cloned()
    }
    pub fn insert(&self, seg: Arc<Segment>) {
        let mut m = self.map_mut();
        m.by_slot.insert(seg.id as u16, Arc::clone(&seg));
        m.by_id.insert(seg.id, seg);
    }
    pub fn remove(&self, id: u32) -> Option<Arc<Segment>> {
        let mut m = self.map_mut();
        let seg = m.by_id.remove(&id)?;
        if m.by_slot.get(&(id as u16)).is_some_and(|s| s.id == id) {
            m.by_slot.remove(&(id as u16));
        }
        Some(seg)
    }
    pub fn len(&self) -> usize {
        self.map().by_id.len()
    }
    pub fn oldest(&self) -> Option<Arc<Segment>> {
        self.map().by_id.values().next().cloned()
    }
    pub fn all(&self) -> Vec<Arc<Segment>> {
        self.map().by_id.values().cloned().collect()
    }
}

pub(crate) struct Writer {
    pub active: Arc<Segment>,
    pub next_id: u32,
}

/// Everything a [`DiskTier`](crate::DiskTier) is.
pub(crate) struct Store {
    pub cfg: DiskTierBuilder,
    pub index: Index,
    pub segments: Arc<Segments>,
    writer: Mutex<Writer>,
    pub metrics: Metrics,
    pub report: RecoveryReport,
    flusher: Option<mpsc::Sender<()>>,
    _lock: DirLock,
}

fn io_err(what: &str, e: std::io::Error) -> TierError {
    TierError::io(format!("disk tier: {what}"), e)
}

impl Store {
    pub fn new(
        cfg: DiskTierBuilder,
        index: Index,
        segments: Arc<Segments>,
        writer: Writer,
        report: RecoveryReport,
        lock: DirLock,
    ) -> Result<Self, std::io::Error> {
        let flusher = match cfg.flush {
            FlushPolicy::Periodic(every) => Some(spawn_flusher(Arc::downgrade(&segments), every)?),
            _ => None,
        };
        Ok(Self {
            metrics: Metrics::new(),
            cfg,
            index,
            segments,
            writer: Mutex::new(writer),
            report,
            flusher,
            _lock: lock,
        })
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Poison only means a panic elsewhere while held; `Writer` is updated atomically with
        // respect to readers (readable length published last), so it stays usable.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- read path -----

    /// Look `key` up. A record is read only within its segment's published, validated length.
    pub fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        if key.len() > MAX_KEY_LEN {
            return Ok(Lookup::Miss);
        }
        let hash = key_hash(key);
        let Some(loc) = self.index.get(hash, self.cfg.reinsert_hot) else {
            return Ok(Lookup::Miss);
        };
        // Holding the Arc keeps the mapping alive even if the segment is reclaimed meanwhile.
        let Some(seg) = self.segments.get(loc.seg) else {
            return Ok(Lookup::Miss);
        };
        let bytes = seg.bytes();
        let offset = loc.offset as usize;
        let header = match check_record(bytes, offset, self.cfg.verify_on_read) {
            Ok(Some(h)) if h.kind == RecordKind::Value => h,
            Ok(_) => return Ok(Lookup::Miss),
            Err(damage) => {
                tracing::warn!(segment = seg.id, offset, reason = %damage.reason, "disk tier: corrupt record on read");
                self.metrics.with(|m| m.decode_errors.increment(1));
                if self.index.remove_if(hash, loc) {
                    seg.live_entries.fetch_sub(1, Ordering::Relaxed);
                }
                return Ok(Lookup::Miss);
            }
        };
        if record_key(bytes, offset, &header) != key {
            return Ok(Lookup::Miss); // another key with the same hash
        }
        let now = now_ms();
        if header.stale_until <= now {
            if self.index.remove_if(hash, loc) {
                Self::forget(&seg, &header);
                self.metrics.with(|m| m.evicted_expired.increment(1));
            }
            return Ok(Lookup::Miss);
        }
        let value = Bytes::copy_from_slice(record_value(bytes, offset, &header));
        Ok(Entry::from_envelope(value)?.lookup_at(now))
    }

    /// The live record's header and the segment holding it, for `key`.
    fn locate(&self, key: &[u8]) -> Option<(Loc, Arc<Segment>, RecordHeader)> {
        let hash = key_hash(key);
        let loc = self.index.get(hash, false)?;
        let seg = self.segments.get(loc.seg)?;
        let h = check_record(seg.bytes(), loc.offset as usize, false).ok()??;
        (record_key(seg.bytes(), loc.offset as usize, &h) == key).then_some((loc, seg, h))
    }

    /// The raw envelope of `key`'s live record (expired or not), without touching hit bits.
    pub fn get_raw(&self, key: &[u8]) -> Option<(u32, Loc, RecordHeader, Bytes)> {
        let (loc, seg, h) = self.locate(key)?;
        let bytes = seg.bytes();
        check_record(bytes, loc.offset as usize, true).ok()??;
        let value = Bytes::copy_from_slice(record_value(bytes, loc.offset as usize, &h));
        Some((seg.id, loc, h, value))
    }

    // ----- write path -----

    /// Append a value record for `key`.
    pub fn insert(&self, key: &[u8], envelope: &[u8]) -> Result<(), TierError> {
        let (_, stale_until) = tier_core::spi::envelope::peek_times(envelope)?;
        if stale_until <= now_ms() {
            // Already gone: storing it would only shadow nothing; drop what was there.
            return self.remove(key);
        }
        self.check_size(key, envelope.len())?;
        let mut buf = Vec::new();
        let flags = envelope.get(4).copied().unwrap_or(0);
        encode_record(&mut buf, RecordKind::Value, flags, key, envelope, stale_until);
        let created = envelope_created_at(envelope);
        let mut w = self.writer();
        self.append(&mut w, &buf, key_hash(key), RecordKind::Value, created)
    }

    /// Write a tombstone for `key` if it has a record.
    pub fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        if key.len() > MAX_KEY_LEN {
            return Ok(());
        }
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Tombstone, 0, key, &[], 0);
        let mut w = self.writer();
        if self.locate(key).is_none() {
            return Ok(());
        }
        self.append(&mut w, &buf, key_hash(key), RecordKind::Tombstone, None)
    }

    /// Start a new segment with a clear marker, drop the index, delete every older segment.
    pub fn clear(&self) -> Result<(), TierError> {
        let mut w = self.writer();
        self.new_active(&mut w)?;
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Clear, 0, &[], &[], 0);
        self.append(&mut w, &buf, 0, RecordKind::Clear, None)?;
        self.index.clear();
        for seg in self.segments.all() {
            if seg.id != w.active.id {
                self.drop_segment(&seg);
            }
        }
        Ok(())
    }

    fn check_size(&self, key: &[u8], value_len: usize) -> Result<(), TierError> {
        if key.len() > MAX_KEY_LEN {
            return Err(TierError::too_large(format!(
                "disk tier: key of {} bytes, at most {MAX_KEY_LEN}",
                key.len()
            )));
        }
        let max = self.cfg.max_record_body();
        if (key.len() + value_len) as u64 > max {
            return Err(TierError::too_large(format!(
                "disk tier: key + value of {} bytes, a segment of {} holds at most {max}",
                key.len() + value_len,
                self.cfg.segment_size
            )));
        }
        Ok(())
    }

    /// Append an encoded record; publish it (readable length, then index) only once written.
    fn append(
        &self,
        w: &mut Writer,
        rec: &[u8],
        hash: u64,
        kind: RecordKind,
        created: Option<u64>,
    ) -> Result<(), TierError> {
        if w.active.readable() + rec.len() as u64 > w.active.size() {
            // Reclaim may copy hot entries into the new segment: they leave room for this record.
            self.rotate(w, rec.len() as u64)?;
        }
        let seg = Arc::clone(&w.active);
        let offset = seg.readable();
        seg.write_at(rec, offset).map_err(|e| io_err("append", e))?;
        seg.set_readable(offset + rec.len() as u64);
        let offset = u32::try_from(offset).map_err(|e| {
            TierError::with_source(TierErrorKind::Other, "disk tier: offset over 4 GiB", e)
        })?;
        let replaced = match kind {
            RecordKind::Value => {
                seg.live_bytes.fetch_add(rec.len() as u64, Ordering::Relaxed);
                seg.live_entries.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = created {
                    seg.note_created(c);
                }
                self.index.insert(hash, Loc::new(seg.id, offset))
            }
            RecordKind::Tombstone => self.index.remove(hash),
            RecordKind::Clear => None,
        };
        if let Some(old) = replaced {
            self.forget_loc(old);
        }
        Ok(())
    }

    /// Live accounting for a record the index no longer points at.
    fn forget_loc(&self, loc: Loc) {
        if let Some(seg) = self.segments.get(loc.seg) {
            if let Ok(Some(h)) = check_record(seg.bytes(), loc.offset as usize, false) {
                Self::forget(&seg, &h);
            }
        }
    }

    pub(crate) fn forget(seg: &Segment, h: &RecordHeader) {
        let _ = seg.live_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_sub(h.record_len() as u64))
        });
        let _ = seg
            .live_entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// Seal the active segment and start segment `next_id`.
    fn new_active(&self, w: &mut Writer) -> Result<(), TierError> {
        let id = w.next_id;
        let next = id.checked_add(1).ok_or_else(|| {
            TierError::new(TierErrorKind::Other, "disk tier: segment ids exhausted")
        })?;
        let seg = Segment::create(&self.cfg.dir, id, self.cfg.segment_size)
            .map_err(|e| io_err("create segment", e))?;
        let seg = Arc::new(seg);
        self.segments.insert(Arc::clone(&seg));
        w.active = seg;
        w.next_id = next;
        Ok(())
    }

    /// New active segment, then reclaim the oldest ones while over capacity, keeping `reserve`
    /// bytes of the new segment free for the record that asked for the rotation.
    fn rotate(&self, w: &mut Writer, reserve: u64) -> Result<(), TierError> {
        self.new_active(w)?;
        self.enforce_capacity_locked(w, reserve);
        Ok(())
    }

    /// Reclaim the oldest segments while there are more than the capacity allows.
    pub fn enforce_capacity(&self) {
        let mut w = self.writer();
        self.enforce_capacity_locked(&mut w, 0);
    }

    /// Also keeps live ids (and the next one) within [`MAX_ID_SPAN`], which the index relies on.
    fn enforce_capacity_locked(&self, w: &mut Writer, reserve: u64) {
        loop {
            let Some(old) = self.segments.oldest() else { break };
            let over = self.segments.len() > self.cfg.max_segments()
                || w.next_id.wrapping_sub(old.id) >= MAX_ID_SPAN;
            if !over || old.id == w.active.id {
                break;
            }
            self.reclaim(w, &old, reserve);
        }
    }

    /// Drop segment `seg`: hot, unexpired live entries are copied into the active segment when
    /// they fit; every other live entry is evicted. Then the file is unlinked (readers holding
    /// the segment's `Arc` keep a valid mapping until they let go).
    fn reclaim(&self, w: &mut Writer, seg: &Arc<Segment>, reserve: u64) {
        let now = now_ms();
        let (mut capacity, mut expired) = (0u64, 0u64);
        let bytes = seg.bytes();
        for rec in scan(bytes, false) {
            let h = rec.header;
            if h.kind != RecordKind::Value {
                continue;
            }
            let Ok(offset) = u32::try_from(rec.offset) else { continue };
            let here = Loc::new(seg.id, offset);
            let Some(cur) = self.index.get(h.key_hash, false) else { continue };
            if !cur.same_place(here) {
                continue;
            }
            let alive = h.stale_until > now;
            if alive
                && cur.hit
                && self.cfg.reinsert_hot
                && self.copy_forward(w, bytes, rec.offset, &h, here, reserve)
            {
                continue;
            }
            if self.index.remove_if(h.key_hash, here) {
                if alive {
                    capacity += 1;
                } else {
                    expired += 1;
                }
            }
        }
        self.metrics.with(|m| {
            m.evicted_capacity.increment(capacity);
            m.evicted_expired.increment(expired);
        });
        self.drop_segment(seg);
    }

    /// Copy one record verbatim (its CRC does not depend on where it is) into the active
    /// segment if it fits without another rotation, `reserve` bytes left free.
    fn copy_forward(
        &self,
        w: &mut Writer,
        bytes: &[u8],
        offset: usize,
        h: &RecordHeader,
        from: Loc,
        reserve: u64,
    ) -> bool {
        let len = h.record_len();
        let Some(rec) = bytes.get(offset..offset + len) else { return false };
        let active = &w.active;
        let at = active.readable();
        if at + len as u64 + reserve > active.size() || active.write_at(rec, at).is_err() {
            return false;
        }
        active.set_readable(at + len as u64);
        let Ok(at) = u32::try_from(at) else { return false };
        if self.index.replace_if(h.key_hash, from, Loc::new(active.id, at)) {
            active.live_bytes.fetch_add(len as u64, Ordering::Relaxed);
            active.live_entries.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = envelope_created_at(record_value(bytes, offset, h)) {
                active.note_created(c);
            }
        }
        true
    }

    fn drop_segment(&self, seg: &Segment) {
        self.segments.remove(seg.id);
        if let Err(e) = std::fs::remove_file(&seg.path) {
            tracing::warn!(path = %seg.path.display(), error = %e, "disk tier: could not delete reclaimed segment");
        }
    }

    // ----- figures -----

    pub fn stats(&self) -> DiskStats {
        let segs = self.segments.all();
        let mut s = DiskStats {
            segments: segs.len() as u32,
            entries: self.index.len() as u64,
            capacity_bytes: self.cfg.max_segments() as u64 * self.cfg.segment_size,
            oldest_segment: segs.first().map(|s| s.id),
            newest_segment: segs.last().map(|s| s.id),
            ..DiskStats::default()
        };
        for seg in &segs {
            s.file_bytes += seg.size();
            s.written_bytes += seg.readable();
            s.live_bytes += seg.live_bytes.load(Ordering::Relaxed);
            let (o, n) = (seg.oldest.load(Ordering::Relaxed), seg.newest.load(Ordering::Relaxed));
            if o <= n {
                s.oldest_created_at = Some(s.oldest_created_at.map_or(o, |x| x.min(o)));
                s.newest_created_at = Some(s.newest_created_at.map_or(n, |x| x.max(n)));
            }
        }
        s.dead_bytes = s.written_bytes.saturating_sub(s.live_bytes);
        s
    }

    /// fsync every segment written since its last sync.
    pub fn flush(&self) -> Result<(), TierError> {
        for seg in self.segments.all() {
            seg.sync().map_err(|e| io_err("fsync", e))?;
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flusher.take(); // stops the background flusher
        if self.cfg.flush != FlushPolicy::None {
            if let Err(e) = self.flush() {
                tracing::warn!(error = %e, "disk tier: final fsync failed");
            }
        }
    }
}

/// A thread that syncs dirty segments every `every`; it ends when the sender is dropped or the
/// segments are gone. It holds no lock and no strong reference between rounds, so dropping the
/// tier releases the directory at once.
fn spawn_flusher(segments: Weak<Segments>, every: Duration) -> std::io::Result<mpsc::Sender<()>> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new().name("tier-disk-flush".into()).spawn(move || loop {
        match rx.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let Some(segments) = segments.upgrade() else { return };
        for seg in segments.all() {
            if let Err(e) = seg.sync() {
                tracing::warn!(segment = seg.id, error = %e, "disk tier: periodic fsync failed");
            }
        }
    })?;
    Ok(tx)
}
