//! [`DiskTier`]: the [`Tier`] implementation and its own methods.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tier_core::spi::{Entry, Lookup, Tier, TierContext};
use tier_core::{Storage, TierError, TierErrorKind, TierStats};

use crate::builder::DiskTierBuilder;
use crate::error::DiskError;
use crate::format::RecordKind;
use crate::index::Index;
use crate::recovery::recover;
use crate::report::{DiskStats, RawRecord, RecordInfo, RecoveryReport};
use crate::segment::{create_dir, DirLock};
use crate::store::{Segments, Store, Writer};

/// The disk tier (L2): log-structured, memory-mapped segment files in one directory, with an
/// in-memory index, bounded capacity and crash recovery. Stores envelopes
/// ([`Storage::Envelopes`]).
///
/// Dropping the last handle syncs (per the [`FlushPolicy`](crate::FlushPolicy)) and releases
/// the directory's lock. Calls do short blocking file I/O inline (a `pwrite` into the page
/// cache, a read from a mapping): no `spawn_blocking` per call, which would cost more than the
/// I/O it moves.
///
/// ```
/// use bytes::Bytes;
/// use tier_core::spi::{now_ms, Codec, Entry, Meta, Tier};
/// use tier_disk::DiskTier;
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let dir = tempfile::tempdir()?;
///     let tier = DiskTier::builder(dir.path())
///         .capacity_bytes(64 << 20)
///         .segment_size(8 << 20)
///         .build()?;
///
///     let now = now_ms();
///     let meta = Meta { created_at: now, fresh_until: now + 60_000, stale_until: now + 600_000, ..Meta::default() };
///     let envelope = Codec::default().encode(&meta, Some(&"hello".to_string()))?;
///     tier.insert(Bytes::from_static(b"greeting"), Entry::from_envelope(envelope)?).await?;
///     assert!(tier.get(b"greeting").await?.is_hit());
///
///     // Close, reopen: the entry survived.
///     drop(tier);
///     let tier = DiskTier::open(dir.path())?;
///     assert_eq!(tier.recovery_report().entries, 1);
///     assert!(tier.get(b"greeting").await?.is_hit());
///     Ok(())
/// }
/// ```
pub struct DiskTier {
    store: Arc<Store>,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier").field("dir", &self.dir()).finish_non_exhaustive()
    }
}

impl DiskTier {
    /// A builder for a tier in `dir` (created, mode 0700, when missing).
    pub fn builder(dir: impl AsRef<Path>) -> DiskTierBuilder {
        DiskTierBuilder::new(dir.as_ref())
    }

    /// Open `dir` with every default (1 GiB, 64 MiB segments, recover what is there).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DiskError> {
        Self::builder(dir).build()
    }

    pub(crate) fn from_builder(cfg: DiskTierBuilder) -> Result<Self, DiskError> {
        let started = std::time::Instant::now();
        create_dir(&cfg.dir)?;
        let lock = DirLock::acquire(&cfg.dir)?;
        let index = Index::default();
        let segments = Arc::new(Segments::default());
        let (mut report, next_id) = recover(&cfg, &index, &segments)?;
        let active = crate::segment::Segment::create(&cfg.dir, next_id, cfg.segment_size)
            .map_err(|e| DiskError::io("create segment in", &cfg.dir, e))?;
        let active = Arc::new(active);
        segments.insert(Arc::clone(&active));
        let next_id = next_id.checked_add(1).ok_or_else(|| {
            DiskError::Config("segment ids exhausted; clear the directory".into())
        })?;
        let dir = cfg.dir.clone();
        let before = segments.len();
        report.duration = started.elapsed();
        let store = Store::new(cfg, index, segments, Writer { active, next_id }, report, lock)
            .map_err(|e| DiskError::io("start flusher for", &dir, e))?;
        store.enforce_capacity();
        let mut store = store;
        store.report.deleted_segments += (before - store.segments.len()) as u32;
        store.report.entries = store.index.len() as u64;
        Ok(Self { store: Arc::new(store) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.store.cfg.dir
    }

    /// What opening the directory found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.store.report
    }

    /// Figures from the tier's counters (cheap; no scan).
    pub fn disk_stats(&self) -> DiskStats {
        self.store.stats()
    }

    /// Heap bytes held by the in-memory index (16-byte slots plus hash table control bytes).
    pub fn index_bytes(&self) -> usize {
        self.store.index.heap_bytes()
    }

    /// The raw envelope `key` has on disk, with its record's figures, even when expired
    /// (its CRC is checked; no hit is recorded).
    pub fn get_raw(&self, key: &[u8]) -> Option<RawRecord> {
        let (seg, loc, h, envelope) = self.store.get_raw(key)?;
        Some(RawRecord {
            info: RecordInfo {
                segment: seg,
                offset: u64::from(loc.offset),
                kind: RecordKind::Value,
                key: Bytes::copy_from_slice(key),
                value_len: h.value_len,
                record_len: h.record_len() as u32,
                stale_until: h.stale_until,
                envelope_flags: h.envelope_flags,
                live: true,
            },
            envelope,
        })
    }

    /// fsync every segment written since its last sync.
    pub fn flush(&self) -> Result<(), TierError> {
        self.store.flush()
    }
}

fn envelope_of(entry: &Entry) -> Result<&Bytes, TierError> {
    entry.envelope().ok_or_else(|| {
        TierError::new(TierErrorKind::Rejected, "disk tier stores envelopes, got a decoded object")
    })
}

#[async_trait]
impl Tier for DiskTier {
    fn name(&self) -> &str {
        &self.store.cfg.name
    }

    fn storage(&self) -> Storage {
        Storage::Envelopes
    }

    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        self.store.get(key)
    }

    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        self.store.insert(&key, envelope_of(&entry)?)
    }

    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        self.store.remove(key)
    }

    async fn clear(&self) -> Result<(), TierError> {
        self.store.clear()
    }

    fn stats(&self) -> TierStats {
        let s = self.store.stats();
        TierStats { entries: s.entries, bytes: s.file_bytes, capacity_bytes: s.capacity_bytes }
    }

    fn attach(&self, ctx: &TierContext) {
        self.store.metrics.attach(ctx, &self.store.report);
    }
}
