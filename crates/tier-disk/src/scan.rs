//! Reading a segment file for recovery and inspection: with `pread`, in bounded chunks, never
//! through a mapping. Reading a hole of a file through a mapping makes the kernel allocate a
//! page, which fails with a SIGBUS on a full tmpfs; `pread` of a hole is zeros. Only once a
//! record is validated here may the live tier read it through its mapping.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::SeekFrom;

use crate::format::{
    check_record, claimed_len, Damage, Scanned, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// Bytes read at a time, at most (a record longer than this is read whole)...
const CHUNK: usize = 1 << 20;
/// ...starting from this, doubling while records keep coming: the unwritten tail of a segment
/// is not read in bulk.
const FIRST_CHUNK: usize = 64 << 10;
const PAGE: u64 = 4096;

/// Bytes `[base, base + buf.len())` of a segment and the valid records that lie whole in them
/// (their offsets are offsets in the segment).
pub(crate) struct Chunk {
    pub base: u64,
    pub buf: Vec<u8>,
    pub records: Vec<Scanned>,
}

impl Chunk {
    fn empty() -> Self {
        Self { base: 0, buf: Vec::new(), records: Vec::new() }
    }

    /// The bytes from record `r` to the end of the chunk (what `format::record_key` and
    /// `format::record_value` take, at offset 0).
    pub fn at(&self, r: &Scanned) -> &[u8] {
        let from = usize::try_from(r.offset as u64 - self.base).unwrap_or(usize::MAX);
        self.buf.get(from..).unwrap_or_default()
    }
}

/// How a segment's scan ended.
#[derive(Debug, Clone)]
pub(crate) struct End {
    /// Where the valid, written part ends.
    pub end: u64,
    /// Set when the scan stopped on a torn or corrupt record (or a read error) at `end`.
    pub damage: Option<Damage>,
    /// Valid records.
    pub records: u64,
}

/// Read `[at, at + len)` of `file` with `pread`, fewer bytes at its end.
pub(crate) fn read_at_most(file: &File, at: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_into(file, at, len, &mut buf)?;
    Ok(buf)
}

/// [`read_at_most`] into `buf` (its old bytes overwritten, or dropped; a buffer used before
/// is not zeroed again, nor are its pages faulted in again).
fn read_into(file: &File, at: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(len, 0);
    let mut got = 0usize;
    while got < len {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(())
}

/// Walks a segment's records, handing each full chunk to `emit`.
struct Walk<'a> {
    file: &'a File,
    limit: u64,
    /// How much the next read takes (before the record that needs it).
    next: usize,
    chunk: Chunk,
    emit: &'a mut dyn FnMut(Chunk),
    /// A chunk to read into instead of a new one (a chunk handed back by whoever took it).
    reuse: &'a mut dyn FnMut() -> Option<Chunk>,
    /// A chunk read and left without records, to read into next.
    spare: Option<Chunk>,
}

impl Walk<'_> {
    /// Make sure the buffer holds `[pos, pos + len)`, or all of it up to `limit`.
    fn cover(&mut self, pos: u64, len: usize) -> io::Result<()> {
        let have = self.chunk.base + self.chunk.buf.len() as u64;
        let want = (pos + len as u64).min(self.limit);
        if self.chunk.base <= pos && want <= have {
            return Ok(());
        }
        // Reads end on a page boundary: a page read in part would look like written data to
        // `SEEK_DATA` afterwards (see `first_nonzero`).
        let end = (pos + len.max(self.next) as u64).next_multiple_of(PAGE).min(self.limit);
        let len = usize::try_from(end.saturating_sub(pos)).unwrap_or(usize::MAX);
        self.next = (self.next * 2).min(CHUNK);
        // A new buffer for each chunk would cost its page faults (and zeroing) every time.
        let mut next = self.spare.take().or_else(&mut *self.reuse).unwrap_or_else(Chunk::empty);
        next.records.clear();
        read_into(self.file, pos, len, &mut next.buf)?;
        next.base = pos;
        let done = std::mem::replace(&mut self.chunk, next);
        if done.records.is_empty() {
            self.spare = Some(done);
        } else {
            (self.emit)(done);
        }
        Ok(())
    }

    /// The buffered bytes from `pos` on, up to `limit`.
    fn from(&self, pos: u64) -> &[u8] {
        let end = (self.chunk.base + self.chunk.buf.len() as u64).min(self.limit);
        let from = usize::try_from(pos.saturating_sub(self.chunk.base)).unwrap_or(usize::MAX);
        let to = usize::try_from(end.saturating_sub(self.chunk.base)).unwrap_or(0);
        self.chunk.buf.get(from..to.max(from)).unwrap_or_default()
    }
}

/// Scan the records of `file` from the first one up to `limit` (the file's length or the
/// segment's size, the smaller), checking each record's CRC with `verify`.
pub(crate) fn scan_file(file: &File, limit: u64, verify: bool, emit: &mut dyn FnMut(Chunk)) -> End {
    scan_file_reusing(file, limit, verify, emit, &mut || None)
}

/// [`scan_file`], reading into the chunks `reuse` gives back (once `emit`'s taker is done with
/// them) before it makes new ones.
pub(crate) fn scan_file_reusing(
    file: &File,
    limit: u64,
    verify: bool,
    emit: &mut dyn FnMut(Chunk),
    reuse: &mut dyn FnMut() -> Option<Chunk>,
) -> End {
    // The reads are large already; the kernel's read-ahead would only pull the unwritten tail
    // of a segment into the page cache (as zeros, which `SEEK_DATA` then takes for data).
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Random);
    let end = scan_records(file, limit, verify, emit, reuse);
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Normal);
    end
}

fn scan_records(
    file: &File,
    limit: u64,
    verify: bool,
    emit: &mut dyn FnMut(Chunk),
    reuse: &mut dyn FnMut() -> Option<Chunk>,
) -> End {
    let chunk = Chunk::empty();
    let mut walk = Walk { file, limit, next: FIRST_CHUNK, chunk, emit, reuse, spare: None };
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut records = 0u64;
    let read_error = |pos: u64, e: io::Error| Damage {
        offset: pos as usize,
        reason: format!("read error: {e}"),
    };
    let damage = loop {
        if let Err(e) = walk.cover(pos, RECORD_HEADER_LEN) {
            break Some(read_error(pos, e));
        }
        let claimed = claimed_len(walk.from(pos));
        if let Some(n) = claimed {
            if let Err(e) = walk.cover(pos, n) {
                break Some(read_error(pos, e));
            }
        }
        match check_record(walk.from(pos), 0, verify) {
            Ok(None) => break None,
            Ok(Some(h)) => {
                walk.chunk.records.push(Scanned { offset: pos as usize, header: h });
                records += 1;
                pos += h.record_len() as u64;
            }
            Err(d) => break Some(Damage { offset: pos as usize, reason: d.reason }),
        }
    };
    let last = std::mem::replace(&mut walk.chunk, Chunk::empty());
    if !last.records.is_empty() {
        (walk.emit)(last);
    }
    End { end: pos.min(limit.max(SEGMENT_HEADER_LEN as u64)), damage, records }
}

/// The first offset in `[from, limit)` of `file` holding a non-zero byte. Holes are skipped
/// with `SEEK_DATA` where the file system has it, so the unwritten tail of a segment costs
/// little to check. (A reserved but unwritten range is a hole to `SEEK_DATA` only where no page
/// of it is cached, which reading it makes them: reads stop at 64 KiB boundaries without
/// read-ahead, and the seek from there skips what was never read.)
pub(crate) fn first_nonzero(file: &File, from: u64, limit: u64) -> io::Result<Option<u64>> {
    // No read-ahead while checking: pages read ahead would be cached zeros, which `SEEK_DATA`
    // takes for data.
    let advise = |a| rustix::fs::fadvise(file, 0, None, a);
    let _ = advise(rustix::fs::Advice::Random);
    let found = first_nonzero_from(file, from, limit);
    let _ = advise(rustix::fs::Advice::Normal);
    found
}

fn first_nonzero_from(file: &File, from: u64, limit: u64) -> io::Result<Option<u64>> {
    let mut pos = from;
    while pos < limit {
        match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(data) if data >= limit => return Ok(None),
            Ok(data) => pos = pos.max(data),
            Err(rustix::io::Errno::NXIO) => return Ok(None), // nothing but holes after `pos`
            Err(_) => {}                                     // no SEEK_DATA here: read it all
        }
        let end = ((pos / FIRST_CHUNK as u64 + 1) * FIRST_CHUNK as u64).min(limit);
        let buf = read_at_most(file, pos, usize::try_from(end - pos).unwrap_or(usize::MAX))?;
        if buf.is_empty() {
            return Ok(None);
        }
        if let Some(i) = buf.iter().position(|b| *b != 0) {
            return Ok(Some(pos + i as u64));
        }
        pos += buf.len() as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, segment_header, RecordKind};

    fn segment(records: usize, value_len: usize) -> Vec<u8> {
        let mut seg = segment_header(1, 1 << 22, None).to_vec();
        let mut rec = Vec::new();
        for i in 0..records {
            let key = format!("k{i}");
            encode_record(&mut rec, RecordKind::Value, 0, key.as_bytes(), &vec![7u8; value_len], 9);
            seg.extend_from_slice(&rec);
        }
        seg
    }

    #[test]
    fn chunked_scan_matches_the_slice_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Records longer and shorter than a chunk, so that some straddle chunk boundaries.
        for (n, len) in [(3000, 700), (5, (3 << 20) + 5), (1, 0)] {
            let seg = segment(n, len);
            let path = dir.path().join("s");
            std::fs::write(&path, &seg).expect("write");
            let file = File::open(&path).expect("open");
            let mut seen = Vec::new();
            let end = scan_file(&file, seg.len() as u64, true, &mut |c: Chunk| {
                for r in &c.records {
                    assert!(crate::format::record_key(c.at(r), 0, &r.header).starts_with(b"k"));
                    seen.push(r.offset);
                }
            });
            let want: Vec<usize> = crate::format::scan(&seg, true).map(|r| r.offset).collect();
            assert_eq!(seen, want);
            assert_eq!(end.records as usize, n);
            assert!(end.damage.is_none());
            assert_eq!(end.end as usize, seg.len());
            // Cut inside the last record: damage there.
            let at = *want.last().expect("a record") as u64;
            let cut = at as usize + 33; // inside its key
            let end = scan_file(&file, cut as u64, true, &mut |_| {});
            assert_eq!(end.damage.map(|d| d.offset as u64), Some(at));
        }
    }

    #[test]
    fn scan_reading_into_chunks_handed_back_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = segment(20_000, 150);
        let path = dir.path().join("s");
        std::fs::write(&path, &seg).expect("write");
        let file = File::open(&path).expect("open");
        let want: Vec<usize> = crate::format::scan(&seg, true).map(|r| r.offset).collect();
        // Chunks come back dirty (garbage after their bytes, stale records), and fewer of them
        // than the scan emits: it makes the rest.
        let back = std::cell::RefCell::new(Vec::new());
        let (mut seen, mut emitted) = (Vec::new(), 0);
        let end = scan_file_reusing(
            &file,
            seg.len() as u64,
            true,
            &mut |c: Chunk| {
                for r in &c.records {
                    assert!(crate::format::record_key(c.at(r), 0, &r.header).starts_with(b"k"));
                    seen.push(r.offset);
                }
                emitted += 1;
                let mut c = c;
                c.buf.extend_from_slice(&[0xAB; 4096]);
                if emitted % 2 == 0 {
                    back.borrow_mut().push(c);
                }
            },
            &mut || back.borrow_mut().pop(),
        );
        assert_eq!(seen, want);
        assert!(emitted > 4, "{emitted} chunks");
        assert!(end.damage.is_none());
        assert_eq!((end.records, end.end), (20_000, seg.len() as u64));
    }

    #[test]
    fn first_nonzero_skips_zeros_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        file.set_len(8 << 20).expect("sparse");
        assert_eq!(first_nonzero(&file, 0, 8 << 20).expect("read"), None);
        file.write_all_at(&[0u8; 5000], 100).expect("zeros");
        file.write_all_at(&[1], (5 << 20) + 3).expect("byte");
        assert_eq!(first_nonzero(&file, 0, 8 << 20).expect("read"), Some((5 << 20) + 3));
        assert_eq!(first_nonzero(&file, (5 << 20) + 4, 8 << 20).expect("read"), None);
        assert_eq!(first_nonzero(&file, 0, 5 << 20).expect("read"), None);
    }
}
