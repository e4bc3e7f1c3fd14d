//! [`Reads`]: how a hit gets its record's bytes without blocking the caller's thread on the
//! device.
//!
//! The record is read with `pread` into a buffer of its own, never through the mapping (a
//! page fault on a cold page would hold the caller's thread for the whole device read). First
//! `preadv2(RWF_NOWAIT)`, which copies what the page cache holds and never waits: a warm hit
//! is answered inline. Whatever is not cached goes to the [`ReadPool`]; a full pool is a
//! `Timeout` error at once (the hierarchy reads it as a miss of this tier), counted in
//! `tier_disk_reads_total{path="rejected"}`. The index keeps the record's length (to 63 bytes
//! more), so one call asks for the record's bytes and no more; only a record longer than the
//! index can say ([`MAX_KNOWN_LEN`]) takes a second call, once its header says its length.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tier_core::{TierError, TierErrorKind};
use tokio::sync::oneshot;

use crate::format::claimed_len;
use crate::index::{Loc, MAX_KNOWN_LEN};
use crate::metrics::Metrics;
use crate::pool::ReadPool;
use crate::segment::Segment;

/// What the file system does with `RWF_NOWAIT` (learnt on the first read).
const MODE_NOWAIT: u8 = 0;
/// No `RWF_NOWAIT`, and the files are in memory (tmpfs): plain `pread` inline.
const MODE_MEMORY: u8 = 1;
/// No `RWF_NOWAIT` on a device: every read goes to the pool.
const MODE_POOL: u8 = 2;

/// The read side's I/O: the pool and what the file system supports.
pub(crate) struct Reads {
    pool: ReadPool,
    mode: AtomicU8,
}

impl Reads {
    /// Start the pool's threads.
    pub fn start(threads: usize, queue: usize) -> io::Result<Self> {
        Ok(Self { pool: ReadPool::start(threads, queue)?, mode: AtomicU8::new(MODE_NOWAIT) })
    }

    /// The bytes from `loc` to the end of its record (or of the readable part, when shorter:
    /// the caller checks the record). Never waits for the device on the caller's thread.
    pub async fn record(
        &self,
        seg: &Arc<Segment>,
        loc: Loc,
        metrics: &Metrics,
    ) -> Result<Vec<u8>, TierError> {
        let start = u64::from(loc.offset);
        let readable = seg.readable();
        let mut end = planned_end(loc, readable);
        let mut buf = Vec::new();
        let mut pooled = false;
        loop {
            let want = usize::try_from(end.saturating_sub(start)).unwrap_or(0);
            buf = self.fill(seg, buf, want, start, &mut pooled, metrics).await?;
            // A record longer than the index could say: read the rest once its length is known.
            match claimed_len(&buf) {
                Some(len)
                    if len > buf.len()
                        && buf.len() as u64 == end - start
                        && start + len as u64 <= readable =>
                {
                    end = start + len as u64;
                }
                _ => break,
            }
        }
        metrics.with(|m| if pooled { &m.reads_pool } else { &m.reads_cached }.increment(1));
        Ok(buf)
    }

    /// Extend `buf` (the bytes from file offset `start` on) to `want` bytes: from the page cache
    /// inline, the rest on the pool. Returns the buffer, shorter only at the end of the file.
    async fn fill(
        &self,
        seg: &Arc<Segment>,
        mut buf: Vec<u8>,
        want: usize,
        start: u64,
        pooled: &mut bool,
        metrics: &Metrics,
    ) -> Result<Vec<u8>, TierError> {
        let io = |e| TierError::io("disk tier: read", e);
        while buf.len() < want {
            let (at, rest) = (start + buf.len() as u64, want - buf.len());
            match self.mode.load(Ordering::Relaxed) {
                MODE_NOWAIT => {}
                MODE_MEMORY => {
                    seg.read_blocking(&mut buf, rest, at).map_err(io)?;
                    return Ok(buf);
                }
                _ => break,
            }
            match seg.read_cached(&mut buf, rest, at) {
                Ok(0) => return Ok(buf),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    let mode = if seg.in_memory() { MODE_MEMORY } else { MODE_POOL };
                    self.mode.store(mode, Ordering::Relaxed);
                }
                Err(e) => return Err(io(e)),
            }
        }
        if buf.len() >= want {
            return Ok(buf);
        }
        *pooled = true;
        let (reply, answer) = oneshot::channel();
        let seg = Arc::clone(seg);
        let job = move || {
            let (at, rest) = (start + buf.len() as u64, want - buf.len());
            let read = seg.read_blocking(&mut buf, rest, at).map(|_| buf);
            let _ = reply.send(read); // the reader may have given up
        };
        if self.pool.run(job).is_err() {
            metrics.with(|m| m.reads_rejected.increment(1));
            return Err(saturated());
        }
        match answer.await {
            Ok(read) => read.map_err(io),
            Err(_) => Err(TierError::new(TierErrorKind::Other, "disk tier: a read thread ended")),
        }
    }
}

/// The error of a read refused because the read threads and their queue are full. Partial:
/// the tier is busy, not sick, so the hierarchy's breaker does not count it.
fn saturated() -> TierError {
    TierError::new(
        TierErrorKind::Timeout,
        "disk tier: every read thread is busy and the read queue is full",
    )
    .partial()
}

/// Where the first read of the record at `loc` ends: the end of the record when the index knows
/// its length, else [`MAX_KNOWN_LEN`] bytes on; never past the readable part.
fn planned_end(loc: Loc, readable: u64) -> u64 {
    let len = if loc.len == 0 { MAX_KNOWN_LEN } else { loc.len };
    (u64::from(loc.offset) + u64::from(len)).min(readable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::Dir;
    use crate::format::{encode_record, RecordKind, SEGMENT_HEADER_LEN};

    #[tokio::test]
    async fn a_read_that_finds_the_pool_full_is_a_partial_timeout_and_then_is_served() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = Dir::open_private(tmp.path()).expect("dir");
        let seg = Arc::new(Segment::create(&dir, 0, 1 << 20, None).expect("segment"));
        let mut rec = Vec::new();
        encode_record(&mut rec, RecordKind::Value, 0, b"key", &[7u8; 20_000], u64::MAX);
        let at = SEGMENT_HEADER_LEN as u64;
        seg.write_at(&rec, at).expect("write");
        seg.set_readable(at + rec.len() as u64);
        let loc = Loc::record(0, at as u32, rec.len());

        // One thread, held by a job of the test's, and a queue of one, holding another: every
        // read goes to the pool.
        let reads = Reads::start(1, 1).expect("reads");
        reads.mode.store(MODE_POOL, Ordering::Relaxed);
        let (started, has_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        reads
            .pool
            .run(move || {
                started.send(()).expect("test waits");
                released.recv().expect("test releases");
            })
            .expect("the thread is free");
        has_started.recv().expect("the job runs");
        reads.pool.run(|| {}).expect("one job may wait");
        let metrics = Metrics::new();
        let e = reads.record(&seg, loc, &metrics).await.expect_err("the pool is full");
        assert!(e.is_timeout() && e.is_partial() && !e.is_tier_failure(), "{e}");

        release.send(()).expect("the job waits");
        // Once the thread is free again, the same read is served (retry until it took the job).
        let got = loop {
            match reads.record(&seg, loc, &metrics).await {
                Ok(got) => break got,
                Err(e) if e.is_timeout() => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(&got[..rec.len()], &rec[..], "the record's bytes, read on the pool");
    }

    #[test]
    fn a_read_asks_for_the_record_bytes_only() {
        assert_eq!(planned_end(Loc::record(1, 4000, 104), 1 << 20), 4104);
        // Long records: rounded up to 64 bytes.
        assert_eq!(planned_end(Loc::record(1, 0, 16_440), 1 << 20), 16_448);
        // Never past the readable part.
        assert_eq!(planned_end(Loc::record(1, 64, 104), 100), 100);
        // Longer than the index can say: MAX_KNOWN_LEN bytes first.
        assert_eq!(planned_end(Loc::record(1, 0, 1 << 20), 1 << 30), u64::from(MAX_KNOWN_LEN));
    }
}
