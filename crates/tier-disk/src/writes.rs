//! [`WriteThread`]: the tier's writes (insert, remove, clear) run, in the order they were
//! sent, on a thread of their own, so that what a write can wait for — the page cache's
//! write-back throttling, a rotation's `fallocate`, a reclaim reading the oldest segment, an
//! `fdatasync` — never holds the caller's runtime.
//!
//! The thread takes what is queued in batches ([`Stage`]) and writes each batch with one
//! `pwrite` per segment it lands in (and one `fdatasync`, with [`FlushPolicy::Always`]): group
//! commit. What a write's return means:
//!
//! - an **insert** returns once *staged* (unless the tier is built with
//!   [`stage_inserts(false)`](crate::DiskTierBuilder::stage_inserts), or with
//!   [`FlushPolicy::Always`], or the last write failed): every read of the tier sees it at once;
//!   it is in the file (survives a kill of the process) once the thread has written it, in
//!   order, and [`DiskTier::flush`](crate::DiskTier::flush) waits for that;
//! - a **remove** or **clear**, and an insert that is not staged, returns once written and
//!   published (with `Always`: synced).
//!
//! [`FlushPolicy::Always`]: crate::FlushPolicy::Always

use std::sync::Arc;
use std::thread::JoinHandle;

use tier_core::{TierError, TierErrorKind};

use crate::format::key_hash;
pub(crate) use crate::stage::Op;
use crate::stage::Stage;
use crate::store::Store;
use crate::writer::Writer;

/// The thread and its queue. [`WriteThread::stop`] (also on drop) lets it finish what was
/// sent, then joins it.
pub(crate) struct WriteThread {
    stage: Arc<Stage>,
    thread: Option<JoinHandle<()>>,
}

impl WriteThread {
    /// Start the thread, writing through `writer` into `store` what `store.stage` queues.
    pub fn start(store: Arc<Store>, writer: Arc<Writer>) -> std::io::Result<Self> {
        let stage = Arc::clone(&store.stage);
        let thread =
            std::thread::Builder::new().name("tier-disk-write".into()).spawn(move || {
                let guard = Abandon(&store.stage);
                store.stage.set_room(writer.room());
                loop {
                    let batch = store.stage.take();
                    if batch.is_empty() {
                        break; // closed and drained
                    }
                    let results = writer.write_batch(&store, batch.iter().map(|j| &j.op));
                    let was_hit = |key: &[u8]| {
                        store.index.get(key_hash(key), true);
                    };
                    store.stage.finish(batch, results, writer.room(), was_hit);
                }
                std::mem::forget(guard);
            })?;
        Ok(Self { stage, thread: Some(thread) })
    }

    /// Run `op` on the thread. With `staged` (an insert), returns once queued and visible to
    /// reads; otherwise once written. A write whose caller stops waiting (its future dropped)
    /// once it is queued is still done.
    pub async fn run(&self, op: Op, staged: bool) -> Result<(), TierError> {
        let gone = || TierError::new(TierErrorKind::Other, "disk tier: the writer thread ended");
        let staged = staged && !self.stage.failing();
        match self.stage.send(op, staged).await {
            None => Err(gone()),
            Some(None) => Ok(()),
            Some(Some(done)) => done.await.map_err(|_| gone())?,
        }
    }

    /// Run `ops` on the thread, in order, like [`WriteThread::run`] each; returns once every
    /// one is staged or written. Every one is tried; the first failure is the answer.
    pub async fn run_many(&self, ops: Vec<Op>, staged: bool) -> Result<(), TierError> {
        let gone = || TierError::new(TierErrorKind::Other, "disk tier: the writer thread ended");
        let staged = staged && !self.stage.failing();
        let mut waits = Vec::new();
        for op in ops {
            match self.stage.send(op, staged).await {
                None => return Err(gone()),
                Some(None) => {}
                Some(Some(done)) => waits.push(done),
            }
        }
        let mut first = Ok(());
        for done in waits {
            first = first.and(done.await.map_err(|_| gone())?);
        }
        first
    }

    /// Wait (blocking) until every write sent before is written.
    pub fn settle(&self) {
        self.stage.settle();
    }

    /// Let the thread finish the writes already sent, and wait for it.
    pub fn stop(&mut self) {
        self.stage.close();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("disk tier: the writer thread panicked");
            }
        }
    }
}

/// Tells the stage, should the writer panic, that nothing queued will be written.
struct Abandon<'a>(&'a Stage);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl Drop for WriteThread {
    fn drop(&mut self) {
        self.stop();
    }
}
