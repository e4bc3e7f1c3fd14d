//! [`DiskTier`]: the [`Tier`] implementation and its own methods.

use std::path::Path;
use std::sync::{mpsc, Arc};

use async_trait::async_trait;
use bytes::Bytes;
use tier_core::spi::{Entry, Lookup, StateStore, Tier, TierContext};
use tier_core::{Storage, TierError, TierErrorKind, TierStats};

use crate::builder::DiskTierBuilder;
use crate::config::{Config, FlushPolicy};
use crate::dir::DirLock;
use crate::error::DiskError;
use crate::flush::spawn_flusher;
use crate::format::RecordKind;
use crate::report::{DiskStats, RawRecord, RecordInfo, RecoveryReport};
use crate::state::DiskState;
use crate::store::Store;
use crate::writes::{Op, WriteThread};

/// The disk tier (L2): log-structured, memory-mapped segment files in one directory, with an
/// in-memory index, bounded capacity and crash recovery. Stores envelopes
/// ([`Storage::Envelopes`]). It also keeps a small durable key/value [`DiskState`].
///
/// Dropping the last handle finishes the writes already sent, syncs (per the [`FlushPolicy`])
/// and releases the directory's lock. No call waits for the device on the caller's thread: a
/// hit the page cache holds is read inline, any other on the tier's read threads; writes run on
/// its writer thread (see the crate docs, "Blocking").
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
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    writes: WriteThread,
    state: Arc<DiskState>,
    report: RecoveryReport,
    flusher: Option<mpsc::Sender<()>>,
    _lock: DirLock,
}

impl Inner {
    fn flush(&self) -> Result<(), TierError> {
        for seg in self.store.segments.all() {
            seg.sync().map_err(|e| TierError::io("disk tier: fsync", e))?;
        }
        self.state.sync().map_err(TierError::from)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.take(); // stops the background flusher
        self.writes.stop(); // the writes already sent are done first
        if self.store.cfg.flush != FlushPolicy::None {
            if let Err(e) = self.flush() {
                tracing::warn!(error = %e, "disk tier: final fsync failed");
            }
        }
    }
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

    pub(crate) fn with_config(cfg: Config) -> Result<Self, DiskError> {
        let dir = cfg.dir.clone();
        let flush = cfg.flush;
        let opened = crate::open::open(cfg)?;
        let flusher = match flush {
            FlushPolicy::Periodic(every) => Some(
                spawn_flusher(
                    Arc::downgrade(&opened.store.segments),
                    Arc::downgrade(&opened.state),
                    every,
                )
                .map_err(|e| DiskError::io("start flusher for", &dir, e))?,
            ),
            _ => None,
        };
        let store = Arc::new(opened.store);
        let writes = WriteThread::start(Arc::clone(&store), Arc::new(opened.writer))
            .map_err(|e| DiskError::io("start the writer thread for", &dir, e))?;
        let inner = Inner {
            store,
            writes,
            state: opened.state,
            report: opened.report,
            flusher,
            _lock: opened.lock,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.store.cfg.dir
    }

    /// What opening the directory found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The tier's durable key/value state (see [`DiskState`]).
    pub fn state(&self) -> &DiskState {
        &self.inner.state
    }

    /// Figures from the tier's counters (cheap; no scan).
    pub fn disk_stats(&self) -> DiskStats {
        self.inner.store.stats()
    }

    /// Heap bytes held by the in-memory index (12-byte slots plus hash table control bytes).
    pub fn index_bytes(&self) -> usize {
        self.inner.store.index.heap_bytes()
    }

    /// The raw envelope `key` has on disk, with its record's figures, even when expired
    /// (its CRC is checked; no hit is recorded).
    pub fn get_raw(&self, key: &[u8]) -> Option<RawRecord> {
        let (seg, loc, h, envelope) = self.inner.store.get_raw(key)?;
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
                suspect: loc.suspect,
            },
            envelope,
        })
    }

    /// fsync every segment written since its last sync, and the state file.
    pub fn flush(&self) -> Result<(), TierError> {
        self.inner.flush()
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
        &self.inner.store.cfg.name
    }

    fn storage(&self) -> Storage {
        Storage::Envelopes
    }

    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        self.inner.store.get(key).await
    }

    /// All keys at once: the index is asked for each, and the records not in the page cache
    /// are read concurrently by the read threads (not one after the other).
    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        let store = &self.inner.store;
        futures::future::join_all(keys.iter().map(|k| store.get(k))).await.into_iter().collect()
    }

    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        let envelope = envelope_of(&entry)?.clone();
        self.inner.writes.run(Op::Insert { key, envelope }).await
    }

    /// One trip to the writer thread for the whole batch (written in order); every entry is
    /// tried, the first failure is returned.
    async fn insert_many(&self, entries: Vec<(Bytes, Entry)>) -> Result<(), TierError> {
        let entries = entries
            .into_iter()
            .map(|(key, entry)| Ok((key, envelope_of(&entry)?.clone())))
            .collect::<Result<Vec<_>, TierError>>()?;
        self.inner.writes.run(Op::InsertMany { entries }).await
    }

    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        self.inner.writes.run(Op::Remove { key: Bytes::copy_from_slice(key) }).await
    }

    async fn clear(&self) -> Result<(), TierError> {
        self.inner.writes.run(Op::Clear).await
    }

    fn stats(&self) -> TierStats {
        let s = self.inner.store.stats();
        TierStats { entries: s.entries, bytes: s.file_bytes, capacity_bytes: s.capacity_bytes }
    }

    fn attach(&self, ctx: &TierContext) {
        self.inner.store.metrics.attach(ctx, &self.inner.report);
    }

    /// The tier's [`DiskState`]: the hierarchy keeps its generations, clear floor and log
    /// position there, so that they survive restarts.
    fn state_store(&self) -> Option<Arc<dyn StateStore>> {
        Some(self.inner.state.clone())
    }
}

/// The disk state is where a hierarchy persists its fleet state (see [`StateStore`]).
impl StateStore for DiskState {
    fn get(&self, name: &[u8]) -> Result<Option<Bytes>, TierError> {
        Ok(DiskState::get(self, name))
    }
    fn put(&self, name: &[u8], value: &[u8]) -> Result<(), TierError> {
        DiskState::put(self, name, value).map_err(TierError::from)
    }
    fn put_many(&self, items: &[(&[u8], &[u8])]) -> Result<(), TierError> {
        DiskState::put_many(self, items).map_err(TierError::from)
    }
    fn was_lost(&self) -> bool {
        DiskState::was_lost(self)
    }
    fn clear_lost(&self) -> Result<(), TierError> {
        DiskState::clear_lost(self).map_err(TierError::from)
    }
}
