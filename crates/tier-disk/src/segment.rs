//! Segment files of a live tier (created reserved and whole, mapped read-only, appended with
//! `pwrite`), the registry of the live ones, and their live-bytes accounting.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use memmap2::{Advice, Mmap, MmapOptions};
use rustix::fs::FallocateFlags;
use rustix::io::Errno;

use crate::dir::{segment_file_name, Dir};
use crate::format::{check_record, segment_header, RecordHeader, SEGMENT_HEADER_LEN};
use crate::index::Loc;

/// One segment file of a live tier: its read-only mapping and how much of it is written.
///
/// Invariant: `readable()` never exceeds the mapped length, and every byte below it was written
/// and validated (checksummed at recovery, or written whole by this process) before
/// `readable()` moved past it, so a read below it never touches a page that was not written
/// (no SIGBUS, even on a full tmpfs). Nothing ever writes below `readable()` again, and this
/// crate never truncates a segment file while this handle lives.
pub(crate) struct Segment {
    pub id: u32,
    file: File,
    map: Mmap,
    readable: AtomicU64,
    /// Written since the last fsync.
    dirty: AtomicBool,
    /// Bytes of records the index points at.
    pub live_bytes: AtomicU64,
    /// Records the index points at.
    pub live_entries: AtomicU64,
    /// Smallest and largest `created_at` of value records written here (Unix ms).
    pub oldest: AtomicU64,
    pub newest: AtomicU64,
}

impl Segment {
    /// Create segment `id` of `size` bytes in `dir` (0600, never through a link), created after
    /// segment `prev`: reserved whole with `fallocate` where the file system has it (so a full
    /// disk fails here, at rotation, and never in the middle of the segment), else extended
    /// sparse; then the header is written and the file mapped read-only. Appends go through
    /// `pwrite` ([`Segment::write_at`]), so a full disk is an error from a system call, never
    /// a SIGBUS from a store into a mapping.
    pub fn create(dir: &Dir, id: u32, size: u64, prev: Option<u32>) -> io::Result<Self> {
        let name = segment_file_name(id);
        let file = dir.create_file(&name)?;
        let made = (|| {
            reserve(&file, 0, size)?;
            let size32 = u32::try_from(size).map_err(io::Error::other)?;
            file.write_all_at(&segment_header(id, size32, prev), 0)?;
            let seg = Self::with_file(id, file, size, SEGMENT_HEADER_LEN as u64)?;
            seg.advise_random();
            Ok(seg)
        })();
        if made.is_err() {
            let _ = dir.remove(&name);
        }
        made
    }

    /// A live segment over an opened segment file, mapping `map_len` bytes of it, with
    /// `readable` bytes already validated.
    pub fn with_file(id: u32, file: File, map_len: u64, readable: u64) -> io::Result<Self> {
        if map_len < SEGMENT_HEADER_LEN as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{map_len} bytes, shorter than a segment header"),
            ));
        }
        let len = usize::try_from(map_len).map_err(io::Error::other)?;
        let map = {
            // SAFETY: the mapping is read-only and covers at most the file's length as measured
            // (or as just set) by us. The directory lock keeps other cooperating processes out,
            // and this crate never truncates a segment file: it only creates and unlinks whole
            // files, and an unlinked file stays valid for as long as it is mapped. Reads only
            // go below `readable`, over pages that were written (see the type's invariant).
            unsafe { MmapOptions::new().len(len).map(&file)? }
        };
        Ok(Self {
            id,
            file,
            map,
            readable: AtomicU64::new(readable.min(map_len)),
            dirty: AtomicBool::new(false),
            live_bytes: AtomicU64::new(0),
            live_entries: AtomicU64::new(0),
            oldest: AtomicU64::new(u64::MAX),
            newest: AtomicU64::new(0),
        })
    }

    /// The file name.
    pub fn name(&self) -> String {
        segment_file_name(self.id)
    }

    /// Bytes mapped (the segment's size).
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

    /// Append to `buf` up to `want` bytes read from `offset`, only as far as the page cache
    /// holds them, without waiting for the device (`preadv2(RWF_NOWAIT)`): the bytes read (0 at
    /// the end of the file), or `WouldBlock` when the first page is not cached, or
    /// `Unsupported` when the file system cannot tell.
    pub fn read_cached(&self, buf: &mut Vec<u8>, want: usize, offset: u64) -> io::Result<usize> {
        match self.read_into(buf, want, offset, libc::RWF_NOWAIT) {
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => Err(io::ErrorKind::WouldBlock.into()),
                Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
                    Err(io::ErrorKind::Unsupported.into())
                }
                _ => Err(e),
            },
            read => read,
        }
    }

    /// Append to `buf` the `want` bytes from `offset`, waiting for the device: the bytes read
    /// (fewer only at the end of the file).
    pub fn read_blocking(&self, buf: &mut Vec<u8>, want: usize, offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < want {
            match self.read_into(buf, want - done, offset + done as u64, 0) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// One `preadv2(flags)` of up to `want` bytes at `offset` into `buf`'s spare capacity,
    /// appended to it (retried when interrupted). The buffer is not zeroed first: the kernel
    /// writes the bytes, and only the ones it wrote become part of `buf`.
    fn read_into(
        &self,
        buf: &mut Vec<u8>,
        want: usize,
        offset: u64,
        flags: i32,
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        buf.reserve(want);
        let offset = i64::try_from(offset).map_err(io::Error::other)?;
        loop {
            let spare = &mut buf.spare_capacity_mut()[..want];
            let iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
            // SAFETY: `iov` describes `want` bytes of `buf`'s spare capacity (reserved above),
            // writable and borrowed by nothing else for the call; the kernel writes at most
            // `iov_len` bytes there and reads nothing from it; the descriptor is open (`self`
            // owns it).
            let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, offset, flags) };
            if let Ok(n) = usize::try_from(n) {
                let n = n.min(want); // the kernel never returns more than asked
                                     // SAFETY: the kernel initialised the first `n` bytes of the spare capacity
                                     // (`n <= want <= capacity - len`).
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// True when the file lives in memory (tmpfs, ramfs): a read never waits for a device.
    pub fn in_memory(&self) -> bool {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        #[allow(clippy::unnecessary_cast)] // `f_type`'s type differs between targets
        rustix::fs::fstatfs(&self.file)
            .is_ok_and(|s| matches!(s.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC))
    }

    /// Tell the kernel that the segment is read at random from now on (lookups): a cold read
    /// must fetch its record's pages, not the device's read-ahead window (megabytes on some
    /// devices). Not before recovery has scanned it in order. Advice only: a failure changes
    /// nothing.
    pub fn advise_random(&self) {
        let _ = self.map.advise(Advice::Random);
        let _ = rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::Random);
    }

    /// Tell the kernel the whole segment is about to be read in order (before a reclaim scans
    /// it), so that it reads ahead instead of one page per fault.
    /// Only the readable part, which was written: advice never makes the kernel fill a hole.
    pub fn advise_sequential(&self) {
        let len = self.bytes().len();
        let _ = self.map.advise_range(Advice::Sequential, 0, len);
        let _ = self.map.advise_range(Advice::WillNeed, 0, len);
    }

    /// Append `buf` at `offset` with `pwrite`. A write that fails part way is undone as far as
    /// it can be (zeros written back), so no half record is left after the written part.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.size() {
            return Err(io::Error::other("write past the end of the segment"));
        }
        self.dirty.store(true, Ordering::Release);
        if let Err(e) = self.file.write_all_at(buf, offset) {
            self.zero(offset, buf.len());
            return Err(e);
        }
        Ok(())
    }

    /// Best effort: write zeros over `[offset, offset + len)` (after a failed or unsynced write).
    pub fn zero(&self, offset: u64, len: usize) {
        if let Err(e) = self.file.write_all_at(&vec![0u8; len], offset) {
            tracing::debug!(segment = self.id, offset, error = %e, "disk tier: could not zero a failed write");
        }
    }

    /// `fdatasync` when written since the last sync.
    pub fn sync(&self) -> io::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reserve the unwritten rest of the segment (a segment reopened for writes).
    pub fn reserve_rest(&self) -> io::Result<bool> {
        let at = self.readable();
        reserve(&self.file, at, self.size().saturating_sub(at).max(1))
    }

    /// Note a value record's `created_at`.
    pub fn note_created(&self, created_at: u64) {
        self.oldest.fetch_min(created_at, Ordering::Relaxed);
        self.newest.fetch_max(created_at, Ordering::Relaxed);
    }

    /// Count a record the index now points at.
    pub fn count(&self, record_len: u64) {
        self.live_bytes.fetch_add(record_len, Ordering::Relaxed);
        self.live_entries.fetch_add(1, Ordering::Relaxed);
    }

    /// Uncount a record the index no longer points at.
    pub fn forget(&self, h: &RecordHeader) {
        let len = h.record_len() as u64;
        let _ = self
            .live_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(len)));
        let _ = self
            .live_entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
    }
}

/// Reserve `[offset, offset + len)` of `file` (and extend it to there): `fallocate` where the
/// file system has it, else a sparse extension. True when the space is reserved.
pub(crate) fn reserve(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    match rustix::fs::fallocate(file, FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(true),
        // Not supported here (EINVAL: not for this file system or this kind of file).
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
            let end = offset + len;
            if file.metadata()?.len() < end {
                file.set_len(end)?;
            }
            Ok(false)
        }
        Err(e) => Err(io::Error::from_raw_os_error(e.raw_os_error())),
    }
}

/// The segments of a live tier, by id (ids grow in write order) and by id modulo 2^16 (what
/// the index stores; unique because live ids span fewer than 2^16 ids).
#[derive(Default)]
pub(crate) struct Segments(RwLock<SegmentMaps>);

#[derive(Default)]
struct SegmentMaps {
    by_id: BTreeMap<u32, Arc<Segment>>,
    /// Looked up on every hit: foldhash, not SipHash (the ids are the tier's own, nobody
    /// else's to choose; SipHash took ~86 instructions of a ~3,600-instruction warm hit).
    by_slot: HashMap<u16, Arc<Segment>, foldhash::fast::RandomState>,
}

impl Segments {
    fn map(&self) -> RwLockReadGuard<'_, SegmentMaps> {
        // Poison only means a panic elsewhere while held; the maps are always consistent.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    fn map_mut(&self) -> RwLockWriteGuard<'_, SegmentMaps> {
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
    /// The full id of each live segment, by the 16 bits the index keeps.
    pub fn ids_by_slot(&self) -> HashMap<u16, u32> {
        self.map().by_slot.iter().map(|(slot, s)| (*slot, s.id)).collect()
    }

    /// The header of the record at `loc`, with its segment (within the readable part).
    pub fn record_at(&self, loc: Loc) -> Option<(Arc<Segment>, RecordHeader)> {
        let seg = self.get(loc.seg)?;
        let h = check_record(seg.bytes(), loc.offset as usize, false).ok()??;
        Some((seg, h))
    }

    /// Live accounting for a record the index no longer points at.
    pub fn forget(&self, loc: Loc) {
        if let Some((seg, h)) = self.record_at(loc) {
            seg.forget(&h);
        }
    }

    /// Forget every segment's live figures (after a clear marker).
    pub fn forget_all(&self) {
        for s in self.all() {
            s.live_bytes.store(0, Ordering::Relaxed);
            s.live_entries.store(0, Ordering::Relaxed);
        }
    }
}
