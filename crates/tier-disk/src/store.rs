//! [`Store`]: what readers and the writer share — the configuration, the index, the live
//! segments and the metric handles — and the read path.
//!
//! A read takes no lock but a shard of the index and the registry for an instant; it reads only
//! the pages of one record, below its segment's readable length, with `pread`
//! ([`Reads`](crate::read::Reads)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tier_core::spi::envelope::{peek_times, with_times};
use tier_core::spi::{now_ms, Entry, Lookup};
use tier_core::TierError;

use crate::config::Config;
use crate::format::{
    check_record, key_hash, record_key, record_value, RecordHeader, RecordKind, MAX_KEY_LEN,
    RECORD_HEADER_LEN,
};
use crate::index::{Index, Loc};
use crate::metrics::Metrics;
use crate::read::Reads;
use crate::report::DiskStats;
use crate::segment::{Segment, Segments};
use crate::stage::Stage;

/// Values from this size on are handed out in the buffer they were read into (no copy).
const SHARE_FROM: u32 = 4096;

/// Everything readers and the writer share.
pub(crate) struct Store {
    pub cfg: Config,
    pub index: Index,
    pub segments: Arc<Segments>,
    pub metrics: Metrics,
    /// The read side's I/O (the read pool).
    pub reads: Reads,
    /// Writes queued for the writer thread; inserts not yet written are read from here.
    pub stage: Arc<Stage>,
    /// When the directory was opened (Unix ms): a suspect entry is served as if its freshness
    /// had ended then.
    pub opened_at: u64,
    /// Records (and their bytes) reclaim copied forward since the open.
    pub reinserted: AtomicU64,
    pub reinserted_bytes: AtomicU64,
}

impl Store {
    /// Look `key` up. A record is read only within its segment's published, validated length,
    /// with `pread` (see [`Reads`]): never a page fault on the caller's thread.
    pub async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        if key.len() > MAX_KEY_LEN {
            return Ok(Lookup::Miss);
        }
        if let Some(envelope) = self.stage.lookup(key, self.cfg.reinsert_hot) {
            // Staged, not yet written: never suspect, never damaged.
            return Ok(Entry::from_envelope(envelope)?.lookup_at(now_ms()));
        }
        let hash = key_hash(key);
        let Some(loc) = self.index.get(hash, self.cfg.reinsert_hot) else {
            return Ok(Lookup::Miss);
        };
        // Holding the Arc keeps the file open even if the segment is reclaimed meanwhile.
        let Some(seg) = self.segments.get(loc.seg) else {
            return Ok(Lookup::Miss);
        };
        let record = self.reads.record(&seg, loc, &self.metrics).await?;
        self.answer(key, hash, loc, &seg, record)
    }

    /// What the bytes read for `key` at `loc` (a buffer starting at the record) say.
    fn answer(
        &self,
        key: &[u8],
        hash: u64,
        loc: Loc,
        seg: &Segment,
        mut record: Vec<u8>,
    ) -> Result<Lookup, TierError> {
        let header = match check_record(&record, 0, self.cfg.verify_on_read) {
            Ok(Some(h)) if h.kind == RecordKind::Value => h,
            Ok(_) => return Ok(Lookup::Miss),
            Err(damage) => {
                tracing::warn!(segment = seg.id, offset = loc.offset, reason = %damage.reason, "disk tier: corrupt record on read");
                self.metrics.with(|m| m.decode_errors.increment(1));
                if self.index.remove_if(hash, loc) {
                    seg.live_entries.fetch_sub(1, Ordering::Relaxed);
                }
                return Ok(Lookup::Miss);
            }
        };
        if record_key(&record, 0, &header) != key {
            return Ok(Lookup::Miss); // another key with the same hash
        }
        let now = now_ms();
        if header.stale_until <= now {
            if self.index.remove_if(hash, loc) {
                seg.forget(&header);
                self.metrics.with(|m| m.evicted_expired.increment(1));
            }
            return Ok(Lookup::Miss);
        }
        let value_at = RECORD_HEADER_LEN + header.key_len as usize;
        let value_end = value_at + header.value_len as usize;
        let mut value = if header.value_len < SHARE_FROM {
            Bytes::copy_from_slice(&record[value_at..value_end])
        } else {
            // Large: keep the buffer (header, key and at most 63 bytes more are a small part of
            // it) rather than copy.
            record.truncate(value_end);
            Bytes::from(record).slice(value_at..value_end)
        };
        if loc.suspect {
            // Damage found at open may have lost a newer write of this key: never fresh.
            let (fresh_until, stale_until) = peek_times(&value)?;
            value = with_times(&value, fresh_until.min(self.opened_at), stale_until)?;
        }
        Ok(Entry::from_envelope(value)?.lookup_at(now))
    }

    /// The live record's location, segment and header for `key`.
    pub fn locate(&self, key: &[u8]) -> Option<(Loc, Arc<Segment>, RecordHeader)> {
        let loc = self.index.get(key_hash(key), false)?;
        let (seg, h) = self.segments.record_at(loc)?;
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

    /// Count `records` of `bytes` copied forward by a reclaim.
    pub fn count_reinserted(&self, records: u64, bytes: u64) {
        self.reinserted.fetch_add(records, Ordering::Relaxed);
        self.reinserted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn stats(&self) -> DiskStats {
        let segs = self.segments.all();
        let mut s = DiskStats {
            segments: segs.len() as u32,
            entries: self.index.len() as u64,
            capacity_bytes: self.cfg.capacity(),
            oldest_segment: segs.first().map(|s| s.id),
            newest_segment: segs.last().map(|s| s.id),
            reinserted_records: self.reinserted.load(Ordering::Relaxed),
            reinserted_bytes: self.reinserted_bytes.load(Ordering::Relaxed),
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
}
