//! Segment files: creation (0600, sparse, fixed size), read-only mappings, and the directory's
//! exclusive lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::{Mmap, MmapOptions};

use crate::error::DiskError;
use crate::format::{segment_header, SEGMENT_HEADER_LEN};

/// Name of the lock file in a disk-tier directory.
pub const LOCK_FILE: &str = "LOCK";
const SEGMENT_SUFFIX: &str = ".seg";

/// The file name of segment `id`: `{id:08x}.seg` (so that names sort in write order).
pub fn segment_file_name(id: u32) -> String {
    format!("{id:08x}{SEGMENT_SUFFIX}")
}

/// Segment ids and paths found in `dir`, in write (id) order. Other files are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, DiskError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DiskError::io("read directory", dir, e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| DiskError::io("read directory", dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hex) = name.strip_suffix(SEGMENT_SUFFIX) else { continue };
        if hex.len() != 8 {
            continue;
        }
        if let Ok(id) = u32::from_str_radix(hex, 16) {
            out.push((id, ent.path()));
        }
    }
    out.sort_unstable_by_key(|(id, _)| *id);
    Ok(out)
}

/// One segment file of a live tier: its read-only mapping and how much of it is written.
///
/// Invariant: `readable()` never exceeds the mapped length, and every byte below it was written
/// (and, for the active segment, checksummed) before `readable()` moved past it. Nothing ever
/// writes below `readable()` again, and the file is never truncated while this handle lives.
pub struct Segment {
    pub id: u32,
    pub path: PathBuf,
    file: File,
    map: Mmap,
    readable: AtomicU64,
    /// Written since the last fsync.
    pub dirty: AtomicBool,
    /// Bytes of records the index points at.
    pub live_bytes: AtomicU64,
    /// Records the index points at.
    pub live_entries: AtomicU64,
    /// Smallest and largest `created_at` of value records written here (Unix ms).
    pub oldest: AtomicU64,
    pub newest: AtomicU64,
}

impl Segment {
    /// Create segment `id` of `size` bytes in `dir`: 0600, header written, extended (sparse) to
    /// `size`, then mapped read-only. Appends go through `pwrite` ([`Segment::write_at`]), so a
    /// full disk is an `ENOSPC`/`EFBIG` error from a system call, never a SIGBUS from a store
    /// into a mapping; reading a hole of the sparse file is zeros, never a SIGBUS.
    pub fn create(dir: &Path, id: u32, size: u64) -> std::io::Result<Self> {
        let path = dir.join(segment_file_name(id));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        let made = (|| {
            file.set_len(size)?;
            let size32 = u32::try_from(size).map_err(std::io::Error::other)?;
            write_all_at(&file, &segment_header(id, size32), 0)?;
            Self::map(id, path.clone(), file, size, SEGMENT_HEADER_LEN as u64)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        made
    }

    /// Open an existing segment read-only for recovery; maps `min(file length, max_len)` bytes.
    pub fn open(id: u32, path: PathBuf, max_len: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).open(&path)?;
        let len = file.metadata()?.len().min(max_len);
        Self::map(id, path, file, len, 0)
    }

    fn map(id: u32, path: PathBuf, file: File, len: u64, readable: u64) -> std::io::Result<Self> {
        if len < SEGMENT_HEADER_LEN as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{len} bytes, shorter than a segment header"),
            ));
        }
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let map = {
            // SAFETY: the mapping is read-only and covers at most the file's length as measured
            // (or as just set) by us. The directory lock keeps other cooperating processes out,
            // and this crate never truncates a segment file: it only creates and unlinks whole
            // files, and an unlinked file stays valid for as long as it is mapped. So no page of
            // the mapping can lie beyond the end of the file (no SIGBUS).
            unsafe { MmapOptions::new().len(len).map(&file)? }
        };
        Ok(Self {
            id,
            path,
            file,
            map,
            readable: AtomicU64::new(readable),
            dirty: AtomicBool::new(false),
            live_bytes: AtomicU64::new(0),
            live_entries: AtomicU64::new(0),
            oldest: AtomicU64::new(u64::MAX),
            newest: AtomicU64::new(0),
        })
    }

    /// Bytes mapped (the file's size at creation or open).
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// How far records are written and valid.
    pub fn readable(&self) -> u64 {
        self.readable.load(Ordering::Acquire)
    }

    /// Publish that bytes up to `end` are written and valid.
    pub fn set_readable(&self, end: u64) {
        self.readable.store(end.min(self.size()), Ordering::Release);
    }

    /// The readable part of the segment, header included.
    pub fn bytes(&self) -> &[u8] {
        // `readable <= size == map.len()` (set_readable clamps), so the slice is in bounds.
        let end = usize::try_from(self.readable()).unwrap_or(usize::MAX).min(self.map.len());
        &self.map[..end]
    }

    /// The whole mapping (for recovery, which validates before publishing).
    pub fn mapped(&self) -> &[u8] {
        &self.map
    }

    /// Append `buf` at `offset` with `pwrite`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.size() {
            return Err(std::io::Error::other("write past the end of the segment"));
        }
        write_all_at(&self.file, buf, offset)?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// `fdatasync` when written since the last sync.
    pub fn sync(&self) -> std::io::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Note a value record's `created_at`.
    pub fn note_created(&self, created_at: u64) {
        self.oldest.fetch_min(created_at, Ordering::Relaxed);
        self.newest.fetch_max(created_at, Ordering::Relaxed);
    }
}

fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

/// Create `dir` (and missing parents) with mode 0700. An existing directory is left as it is.
pub fn create_dir(dir: &Path) -> Result<(), DiskError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| DiskError::io("create directory", dir, e))?;
    // The umask may have cleared bits we asked for; it cannot have added any, but be exact.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| DiskError::io("set permissions of", dir, e))
}

/// The directory's exclusive lock: `flock(LOCK_EX | LOCK_NB)` on `dir/LOCK`, held while this
/// value lives (closing the file releases it). The lock file names the owner's pid.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the lock or fail at once with [`DiskError::Locked`].
    pub fn acquire(dir: &Path) -> Result<Self, DiskError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| DiskError::io("open lock file", &path, e))?;
        // SAFETY: `flock` only reads its two integer arguments; the descriptor is valid and
        // open for the duration of the call (owned by `file`).
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DiskError::Locked { owner: read_owner(&path), lock: path });
            }
            return Err(DiskError::io("lock", &path, err));
        }
        // Name ourselves as the owner (for the error another opener gets, and for the CLI).
        let pid = std::process::id().to_string();
        let named = file.set_len(0).and_then(|()| write_all_at(&file, pid.as_bytes(), 0));
        if let Err(e) = named {
            tracing::warn!(error = %e, lock = %path.display(), "could not write pid to lock file");
        }
        Ok(Self { _file: file })
    }
}

/// The pid written in a lock file, if readable.
pub fn read_owner(lock: &Path) -> Option<u32> {
    std::fs::read_to_string(lock).ok()?.trim().parse().ok()
}
