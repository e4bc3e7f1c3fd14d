//! [`Stage`]: the writes sent to the writer thread and not yet written, in order, and the
//! inserts among them by key, so that a read sees an insert from the moment it returns.
//!
//! An insert is *staged*: it takes its bytes from a budget (waiting, asynchronously, while the
//! staged bytes are over it: the writers' back-pressure), enters the queue and the by-key map
//! under one lock (so the map's newest write for a key is also the queue's last), and
//! returns. The writer thread takes the queue in batches and writes each batch with as few
//! `pwrite`s as its segments allow (group commit); a staged insert leaves the map only once its
//! record is published in the index (index first, map second, so a read that misses the map
//! finds the index entry). Removes and clears are queued alike but their callers wait for the
//! written result. [`Stage::settle`] waits until everything queued before it is written.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use crate::format::{align, RECORD_HEADER_LEN};
use tier_core::TierError;
use tokio::sync::{oneshot, Semaphore};

/// Bytes of staged inserts (their envelopes and keys) that may wait for the writer.
pub(crate) const BUDGET: usize = 16 << 20;
/// The most writes the writer takes at once...
const BATCH_JOBS: usize = 256;
/// ...and the most bytes (a batch takes at least one write).
const BATCH_BYTES: usize = 2 << 20;

/// One write.
pub(crate) enum Op {
    Insert { key: Bytes, envelope: Bytes },
    Remove { key: Bytes },
    Clear,
}

/// A queued write: its place in the order, its bytes of the budget, and who waits for it
/// (nobody, for a staged insert).
pub(crate) struct Job {
    pub seq: u64,
    pub op: Op,
    pub reply: Option<oneshot::Sender<Result<(), TierError>>>,
    permits: u32,
}

impl Job {
    /// The bytes its record takes in a segment (at most); `u64::MAX` for a clear (it starts
    /// a new segment).
    fn record_len(&self) -> u64 {
        let body = |key: &Bytes, value: usize| align(RECORD_HEADER_LEN + key.len() + value) as u64;
        match &self.op {
            Op::Insert { key, envelope } => body(key, envelope.len()),
            Op::Remove { key } => body(key, 0),
            Op::Clear => u64::MAX,
        }
    }

    fn bytes(&self) -> usize {
        match &self.op {
            Op::Insert { key, envelope } => key.len() + envelope.len(),
            Op::Remove { key } => key.len(),
            Op::Clear => 0,
        }
    }
}

struct Staged {
    seq: u64,
    envelope: Bytes,
    hit: bool,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Job>,
    /// Staged inserts by key: the newest one's sequence number and envelope, and whether a
    /// lookup read it (so that its index entry starts with the hit bit, as if read there).
    by_key: HashMap<Bytes, Staged, foldhash::fast::RandomState>,
    next_seq: u64,
    /// Every write numbered below this is done.
    done_below: u64,
    /// Bytes of the active segment (reserved on the device when it was created) that no write
    /// queued so far may take: a staged insert must fit in them, so that the write it waits
    /// for never needs a new segment, the one step a full disk fails. Set by the writer after
    /// each batch, lowered by every write queued, 0 once a write did not fit.
    room: u64,
    /// Record bytes of the writes queued and not yet taken.
    queued: u64,
    /// The writer is waiting for work (a sender wakes it).
    idle: bool,
    closed: bool,
}

/// See the module docs.
pub(crate) struct Stage {
    inner: Mutex<Inner>,
    /// The writer waits here for work.
    work: Condvar,
    /// [`Stage::settle`] waits here for writes to be done.
    done: Condvar,
    budget: Semaphore,
    /// Entries of `by_key`, read without the lock: a read skips the map when it is 0.
    staged: AtomicUsize,
    /// The last write failed (a full disk): inserts wait for their result until one succeeds,
    /// so that a failing tier answers errors, not acknowledgements.
    failing: AtomicBool,
}

impl Default for Stage {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            work: Condvar::new(),
            done: Condvar::new(),
            budget: Semaphore::new(BUDGET),
            staged: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        }
    }
}

impl Stage {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poison only means a panic elsewhere while held; every update leaves the queue and
        // the map consistent with each other.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while the last write failed: the caller should wait for its insert's result.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Queue `op` (its bytes taken from the budget first, waiting for room). With `staged`
    /// (an insert), the envelope is visible to [`Stage::lookup`] at once and nobody waits;
    /// otherwise the returned receiver gets the written result. `None`: the writer is gone.
    pub async fn send(
        &self,
        op: Op,
        staged: bool,
    ) -> Option<Option<oneshot::Receiver<Result<(), TierError>>>> {
        let mut job = Job { seq: 0, op, reply: None, permits: 0 };
        let want = u32::try_from(job.bytes().clamp(1, BUDGET)).unwrap_or(u32::MAX);
        // The semaphore is never closed, so acquiring fails only if it were; then go on
        // without back-pressure rather than refuse the write.
        if let Ok(p) = self.budget.acquire_many(want).await {
            p.forget();
            job.permits = want;
        }
        let (reply, answer) = if staged {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        job.reply = reply;
        let mut inner = self.lock();
        if inner.closed {
            drop(inner);
            self.budget.add_permits(job.permits as usize);
            return None;
        }
        job.seq = inner.next_seq;
        inner.next_seq += 1;
        let len = job.record_len();
        let fits = len <= inner.room;
        inner.room = if fits { inner.room - len } else { 0 };
        inner.queued = inner.queued.saturating_add(len.min(1 << 32));
        let staged = staged && fits;
        let answer = match (staged, answer) {
            (false, None) => {
                // Does not fit the room: it waits for its write after all.
                let (tx, rx) = oneshot::channel();
                job.reply = Some(tx);
                Some(rx)
            }
            (_, answer) => answer,
        };
        if let (true, Op::Insert { key, envelope }) = (staged, &job.op) {
            let staged = Staged { seq: job.seq, envelope: envelope.clone(), hit: false };
            if inner.by_key.insert(key.clone(), staged).is_none() {
                self.staged.fetch_add(1, Ordering::AcqRel);
            }
        }
        inner.queue.push_back(job);
        if inner.idle {
            inner.idle = false;
            self.work.notify_one();
        }
        Some(answer)
    }

    /// The staged envelope of `key`, if an insert of it is not written yet; with `mark_hit`,
    /// noted as read.
    pub fn lookup(&self, key: &[u8], mark_hit: bool) -> Option<Bytes> {
        if self.staged.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut inner = self.lock();
        let staged = inner.by_key.get_mut(key)?;
        staged.hit |= mark_hit;
        Some(staged.envelope.clone())
    }

    /// The writer's side: the next batch in order, waiting for one; empty once closed and
    /// drained.
    pub fn take(&self) -> Vec<Job> {
        let mut inner = self.lock();
        while inner.queue.is_empty() && !inner.closed {
            inner.idle = true;
            inner = self.work.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner.idle = false;
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(job) = inner.queue.front() {
            if !batch.is_empty() && (batch.len() >= BATCH_JOBS || bytes + job.bytes() > BATCH_BYTES)
            {
                break;
            }
            bytes += job.bytes();
            inner.queued = inner.queued.saturating_sub(job.record_len().min(1 << 32));
            batch.extend(inner.queue.pop_front());
        }
        batch
    }

    /// The writer's side: `batch` is written (each job's result in `results`) and published.
    /// Staged inserts leave the map (unless a newer insert of the key is staged), waiters get
    /// their results, the budget gets its bytes back. `was_hit` is told each written key that
    /// a lookup read while it was staged. `free`: the bytes left in the active segment.
    pub fn finish(
        &self,
        batch: Vec<Job>,
        results: Vec<Result<(), TierError>>,
        free: u64,
        was_hit: impl Fn(&[u8]),
    ) {
        let failed = results.last().is_some_and(|r| r.is_err());
        self.failing.store(failed, Ordering::Relaxed);
        let mut permits = 0usize;
        {
            let mut inner = self.lock();
            for job in &batch {
                if let Op::Insert { key, .. } = &job.op {
                    if inner.by_key.get(key).is_some_and(|s| s.seq == job.seq) {
                        if inner.by_key.remove(key).is_some_and(|s| s.hit) {
                            was_hit(key);
                        }
                        self.staged.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                permits += job.permits as usize;
            }
            if let Some(last) = batch.last() {
                inner.done_below = last.seq + 1;
            }
            inner.room = free.saturating_sub(inner.queued);
        }
        self.done.notify_all();
        self.budget.add_permits(permits);
        for (job, result) in batch.into_iter().zip(results) {
            match job.reply {
                Some(reply) => {
                    let _ = reply.send(result); // the caller may have given up; it is done
                }
                None => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "disk tier: a staged insert could not be written; the key is dropped");
                    }
                }
            }
        }
    }

    /// Wait (blocking) until every write queued before this call is done.
    pub fn settle(&self) {
        let mut inner = self.lock();
        let target = inner.next_seq;
        while inner.done_below < target && !(inner.closed && inner.queue.is_empty()) {
            inner = self.done.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The writer's side, before the first batch: the bytes left in the active segment.
    pub fn set_room(&self, free: u64) {
        let mut inner = self.lock();
        inner.room = free.saturating_sub(inner.queued);
    }

    /// The writer ended without draining (it panicked): nothing queued will be written. Every
    /// waiter is told (its reply dropped) and nothing stays staged.
    pub fn abandon(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.queue.clear();
        inner.by_key.clear();
        self.staged.store(0, Ordering::Release);
        drop(inner);
        self.done.notify_all();
    }

    /// No more writes; the writer drains what is queued and ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.work.notify_all();
        self.done.notify_all();
    }
}
