//! [`WriteThread`]: the tier's writes (insert, remove, clear) run, in the order they were
//! sent, on a thread of their own, so that what a write can wait for — the page cache's
//! write-back throttling, a rotation's `fallocate`, a reclaim reading the oldest segment, an
//! `fdatasync` — never holds the caller's runtime. A write returns once it is done (and
//! published: a read after it sees it). The queue is bounded; a full queue makes the sender
//! wait (asynchronously), which is the writers' back-pressure.

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use tier_core::{TierError, TierErrorKind};
use tokio::sync::{mpsc, oneshot};

use crate::store::Store;
use crate::writer::Writer;

/// Writes that may wait in the queue.
const QUEUE: usize = 1024;

/// One write.
pub(crate) enum Op {
    Insert {
        key: Bytes,
        envelope: Bytes,
    },
    /// A batch: each written in order; the first failure is the answer.
    InsertMany {
        entries: Vec<(Bytes, Bytes)>,
    },
    Remove {
        key: Bytes,
    },
    Clear,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<(), TierError>>,
}

/// The thread and its queue. [`WriteThread::stop`] (also on drop) lets it finish what was
/// sent, then joins it.
pub(crate) struct WriteThread {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl WriteThread {
    /// Start the thread, writing through `writer` into `store`.
    pub fn start(store: Arc<Store>, writer: Arc<Writer>) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let thread =
            std::thread::Builder::new().name("tier-disk-write".into()).spawn(move || {
                while let Some(Job { op, reply }) = rx.blocking_recv() {
                    let done = match op {
                        Op::Insert { key, envelope } => writer.insert(&store, &key, &envelope),
                        Op::InsertMany { entries } => {
                            // Every entry is tried (no short cut); the first failure is kept.
                            let mut first = Ok(());
                            for (key, envelope) in &entries {
                                let done = writer.insert(&store, key, envelope);
                                first = first.and(done);
                            }
                            first
                        }
                        Op::Remove { key } => writer.remove(&store, &key),
                        Op::Clear => writer.clear(&store),
                    };
                    let _ = reply.send(done); // the caller may have given up; the write is done
                }
            })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    /// Run `op` on the thread; returns when it is written. A write whose caller stops waiting
    /// (its future dropped) once it is queued is still done.
    pub async fn run(&self, op: Op) -> Result<(), TierError> {
        let gone = || TierError::new(TierErrorKind::Other, "disk tier: the writer thread ended");
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        let (reply, done) = oneshot::channel();
        tx.send(Job { op, reply }).await.map_err(|_| gone())?;
        done.await.map_err(|_| gone())?
    }

    /// Let the thread finish the writes already sent, and wait for it.
    pub fn stop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("disk tier: the writer thread panicked");
            }
        }
    }
}

impl Drop for WriteThread {
    fn drop(&mut self) {
        self.stop();
    }
}
