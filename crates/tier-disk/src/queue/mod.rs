//! [`DiskQueue`]: the write-behind queue kept with the disk tier, in the file `QUEUE` of its
//! directory (format and replay rule: `file.rs`); and what tools are shown of it
//! ([`QueueReport`]).

mod file;

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

use tier_core::spi::{DeadLetter, QueueBook, QueueOp, QueuedWrite, WriteQueue};
use tier_core::TierError;

use file::{FILE_HEADER_LEN, QUEUE_FILE, QUEUE_TMP};
pub use file::{MAX_QUEUE_KEY_LEN, MAX_QUEUE_VALUE_LEN};

use crate::config::FlushPolicy;
use crate::dir::{append_at, Dir, OpenError};
use crate::error::DiskError;

/// The file is rewritten to what it holds once it is this many times that size...
const COMPACT_RATIO: u64 = 4;
/// ...and at least this long.
const COMPACT_MIN: u64 = 1 << 20;

/// What a queue file holds, for tools ([`DiskInspector::queue`](crate::DiskInspector::queue))
/// and for the open ([`DiskTier::queue_report`](crate::DiskTier::queue_report)).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct QueueReport {
    /// The writes still owed to the origin, oldest first.
    pub pending: Vec<QueuedWrite>,
    /// The dead letters, oldest first.
    pub dead: Vec<DeadLetter>,
    /// The sequence number the next write gets.
    pub next_seq: u64,
    /// Records read back.
    pub records: u64,
    /// Bytes of the file.
    pub file_bytes: u64,
    /// Damage found (each: where, how many bytes were skipped, why); the good records around
    /// it were kept.
    pub damage: Vec<String>,
    /// A last write cut short by a crash was dropped (it was never acknowledged).
    pub interrupted_write: bool,
}

fn report(parsed: &file::Parsed, file_bytes: u64) -> QueueReport {
    let (torn, damage): (Vec<_>, Vec<_>) = parsed.problems.iter().partition(|p| p.torn);
    QueueReport {
        pending: parsed.book.pending().cloned().collect(),
        dead: parsed.book.dead().collect(),
        next_seq: parsed.book.next_seq(),
        records: parsed.records,
        file_bytes,
        damage: damage
            .iter()
            .map(|p| format!("offset {}: {} bytes skipped: {}", p.offset, p.len, p.reason))
            .collect(),
        interrupted_write: !torn.is_empty(),
    }
}

/// The write-behind queue of a [`DiskTier`](crate::DiskTier): the hierarchy's
/// [`WriteQueue`] when the tier is mounted in a cache that writes behind
/// ([`Tier::write_queue`](tier_core::spi::Tier::write_queue) opens it).
///
/// - **Durable on return.** An append has written its record when it returns: a `kill -9`
///   never loses it. It is synced per the tier's queue flush policy
///   ([`DiskTierBuilder::queue_flush`](crate::DiskTierBuilder::queue_flush); default
///   [`FlushPolicy::Always`]: `fdatasync` before it returns, so a power loss does not lose it
///   either).
/// - **Torn never replayed, damage skipped, not fatal.** Each record carries a CRC. A write cut
///   short by a crash is dropped; other damage is logged once (`tracing::warn!`) and skipped to
///   the next good record, so the good records after it are kept. The file is then rewritten
///   with what was read back — or, when that fails (a full disk), kept as it is (it reads back
///   the same) and rewritten before the next append: the open succeeds, the writes read back
///   are owed and written, and appends fail until there is room.
/// - **A full disk fails the append** (an `Io` error, and the partial record is cut off): the
///   caller's write-behind fails, nothing acknowledged is lost.
/// - **Bounded by what it holds.** The file is rewritten (new file, `fdatasync`, rename) to the
///   writes still owed once it is four times larger than them and at least 1 MiB.
pub struct DiskQueue {
    dir: Arc<Dir>,
    flush: FlushPolicy,
    opened: QueueBook,
    report: QueueReport,
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` after a failed rewrite: the next append tries again first.
    file: Option<File>,
    /// Where the next record goes.
    len: u64,
    /// What the file holds, kept as it is appended to (for rewrites).
    book: QueueBook,
    /// Do not try to rewrite before the file is this long.
    compact_at: u64,
    dirty: bool,
}

impl std::fmt::Debug for DiskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskQueue").field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

fn io(what: &'static str, dir: &Dir, e: std::io::Error) -> DiskError {
    DiskError::io(what, dir.join(QUEUE_FILE), e)
}

/// Read and replay an open queue file.
fn read(file: &File) -> std::io::Result<(file::Parsed, u64)> {
    let len = file.metadata()?.len();
    let n = usize::try_from(len).map_err(std::io::Error::other)?;
    Ok((file::parse(crate::scan::read_at_most(file, 0, n)?.into()), len))
}

impl DiskQueue {
    /// Open (or create) the queue file of `dir`.
    pub(crate) fn open(dir: Arc<Dir>, flush: FlushPolicy) -> Result<Self, DiskError> {
        let _ = dir.remove(QUEUE_TMP);
        let existed = dir.file_type(QUEUE_FILE).map_err(|e| io("stat", &dir, e))?.is_some();
        let file =
            dir.open_or_create(QUEUE_FILE, "the write-behind queue must be a regular file")?;
        let (parsed, len) = if existed {
            read(&file).map_err(|e| io("read", &dir, e))?
        } else {
            (file::Parsed::default(), 0)
        };
        // An empty file: created, and its first write failed (a full disk): a new one.
        let existed = existed && len > 0;
        let report = report(&parsed, len);
        if !report.damage.is_empty() {
            tracing::warn!(
                dir = %dir.path().display(),
                damage = ?report.damage,
                kept = parsed.records,
                "disk tier: the write-behind queue file was damaged; the good records were kept (an origin write in a damaged record is lost)"
            );
        }
        let book = parsed.book;
        let mut inner =
            Inner { file: Some(file), len, book: book.clone(), compact_at: 0, dirty: false };
        if !existed || !parsed.problems.is_empty() {
            // A new file, or one to cut back to what was read: written whole, then renamed.
            match rewrite(&dir, &book) {
                Ok(file) => {
                    inner.file = Some(file);
                    inner.len = file::image(&book).len() as u64;
                }
                Err(e) => {
                    // No room (a full disk): the file stays as it is — it reads back the same
                    // on the next open, so nothing acknowledged is lost — and the rewrite is
                    // tried again before the next append (which fails until there is room).
                    tracing::warn!(
                        dir = %dir.path().display(),
                        error = %e,
                        pending = book.pending_len(),
                        "disk tier: could not rewrite the write-behind queue file; it is kept as it is and rewritten before the next append (write-behind fails until there is room)"
                    );
                    inner.file = None;
                    inner.len = 0;
                }
            }
        }
        Ok(Self { dir, flush, opened: book, report, inner: Mutex::new(inner) })
    }

    /// What the open found.
    pub(crate) fn report(&self) -> &QueueReport {
        &self.report
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poison: a panic elsewhere while held; `len` moves only after a whole record is written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append `ops`, one write.
    fn append_ops(&self, ops: &[QueueOp]) -> Result<(), DiskError> {
        for op in ops {
            file::check(op).map_err(DiskError::TooLarge)?;
        }
        let mut rec = Vec::new();
        for op in ops {
            file::encode_op(&mut rec, op);
        }
        let mut w = self.lock();
        let file = match w.file.take() {
            Some(file) => file,
            None => {
                let file = rewrite(&self.dir, &w.book)?;
                w.len = file::image(&w.book).len() as u64;
                file
            }
        };
        let always = self.flush == FlushPolicy::Always;
        let appended = append_at(&file, w.len, &rec, always);
        if appended.is_ok() {
            w.len += rec.len() as u64;
        }
        w.dirty = !always || appended.is_err();
        w.file = Some(file);
        appended.map_err(|e| io("append to", &self.dir, e))?;
        for op in ops {
            w.book.apply(op.clone());
        }
        self.maybe_compact(&mut w);
        Ok(())
    }

    /// Rewrite the file to what it holds when it has grown several times past it.
    fn maybe_compact(&self, w: &mut Inner) {
        if w.len < COMPACT_MIN || w.len < w.compact_at {
            return;
        }
        let live = file::image(&w.book).len() as u64;
        if w.len < COMPACT_RATIO * live.max(FILE_HEADER_LEN as u64) {
            w.compact_at = w.len.saturating_mul(2);
            return;
        }
        match rewrite(&self.dir, &w.book) {
            Ok(file) => {
                w.file = Some(file);
                w.len = live;
                w.dirty = false;
                w.compact_at = 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "disk tier: could not rewrite the write-behind queue file; appending to it");
                w.compact_at = w.len.saturating_mul(2);
            }
        }
    }

    /// `fdatasync` the file when written since the last sync.
    pub(crate) fn sync(&self) -> Result<(), DiskError> {
        let w = &mut *self.lock();
        crate::dir::sync_dirty(w.file.as_ref(), &mut w.dirty).map_err(|e| io("fsync", &self.dir, e))
    }
}

impl WriteQueue for DiskQueue {
    fn book(&self) -> QueueBook {
        self.opened.clone()
    }

    fn append(&self, ops: &[QueueOp]) -> Result<(), TierError> {
        self.append_ops(ops).map_err(TierError::from)
    }
}

/// Write a new queue file holding `book` and rename it over the old one (synced first, so that
/// a crash leaves the old file or the new one, whole). Returns the new file, open.
fn rewrite(dir: &Dir, book: &QueueBook) -> Result<File, DiskError> {
    dir.replace(QUEUE_TMP, QUEUE_FILE, &file::image(book)).map_err(|e| io("write", dir, e))
}

/// What the queue file of `dir` holds, read-only (for the inspector): `None` when there is
/// none; the damage (never an error) when it cannot be read.
pub(crate) fn inspect(dir: &Dir) -> Option<QueueReport> {
    let unreadable = |why: String| QueueReport { damage: vec![why], ..QueueReport::default() };
    match dir.open_file(QUEUE_FILE, false) {
        Err(OpenError::Missing) => None,
        Err(e) => Some(unreadable(format!("cannot be read: {e}"))),
        Ok(file) => Some(match read(&file) {
            Ok((parsed, len)) => report(&parsed, len),
            Err(e) => unreadable(format!("cannot be read: {e}")),
        }),
    }
}
