//! Write-behind: [`Cache::write_behind`] writes through to the cache tiers at once (as `insert`
//! does) and queues a write to the origin, acknowledged once the queue entry is durable; the
//! writer task (`background.rs`) drains the queue through the application's [`OriginWriter`].
//!
//! **The invariant: an acknowledged write-behind entry is written to the origin at least once,
//! in per-key order, never older over newer.**
//! - *Durable before acknowledged*: the entry is appended to the first local tier's
//!   [`WriteQueue`] (the disk tier's `QUEUE` file) before `write_behind` returns; a restart
//!   replays what is still owed ([`QueueBook`]: the one rule, shared with the file's replay).
//!   Without such a tier the queue is in memory: **lossy** (a crash or a drop of the cache
//!   loses what is pending; the build says so in a WARN line).
//! - *At least once*: an entry leaves the queue (a `Done` record) only after the writer said
//!   `Ok`; a crash in between writes it again after the restart.
//! - *Per-key order, never older over newer*: a key's writes take the key's lock from queue
//!   append to tier write, so queue order is call order; a newer write of a key supersedes the
//!   older one in the queue (coalescing: only the newest value is written); one batch is in
//!   flight at a time and holds each key once; sequence numbers grow across restarts and reach
//!   the writer ([`OriginWrite::seq`]), so an origin can also refuse a replayed older one.
//!
//! With the other writes: an `insert` (or `insert_many`) of a key with a pending write
//! supersedes it (the caller wrote the origin itself; the queued, older value is not written) —
//! unless that write is already in a batch in flight ([`Behind::supersede`]: the one rule); an
//! `invalidate` does not cancel the origin write, and once the write is done the key is
//! invalidated again, so that nothing cached before the write landed outlives it.
//! Read-your-writes: a load of a key with a write still owed answers the queued value
//! ([`Behind::pending_value`]) instead of the origin's older one.
//!
//! With a keyring, queued values are sealed ([`QueueSeal`]); a write that does not read back
//! is a dead letter with its reason, never written, never dropped. A batch that fails all its
//! attempts is split down to the writes that fail alone (see [`Behind::write`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use metrics::Label;
use tokio::sync::Notify;

use super::options::{CacheValue, WhenFull, WriteBehind};
use crate::error::{BoxError, CacheError, TierError, TierErrorKind};
use crate::metrics::{self as names, LazyCounter, LazyGauge};
use crate::queue::{DeadLetter, QueueBook, QueueOp, QueuedWrite, WriteQueue};
use crate::time::{now_ms, rand_u64};

/// One write handed to the origin writer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OriginWrite<V> {
    /// The cache key.
    pub key: Bytes,
    /// The newest value written behind for it.
    pub value: V,
    /// Grows with every write-behind of the cache, across restarts: of two writes of a key the
    /// newer has the larger number. A write may be handed over again after a crash (at least
    /// once); an origin that keeps the number per key can refuse anything not newer.
    pub seq: u64,
}

/// Where a cache that writes behind sends its writes: the application's origin (a database).
/// Called by one background task, one batch at a time; a batch holds each key once.
#[async_trait]
pub trait OriginWriter<V>: Send + Sync + 'static {
    /// What a failed write says (kept as a dead letter's reason after the last attempt).
    type Error: Into<BoxError> + Send + 'static;

    /// Write every entry of `batch`, or fail (the whole batch is retried with backoff).
    async fn write_batch(&self, batch: &[OriginWrite<V>]) -> Result<(), Self::Error>;
}

/// The writer, with its error boxed.
pub(super) trait AnyWriter<V>: Send + Sync {
    fn write<'a>(&'a self, batch: &'a [OriginWrite<V>]) -> BoxFuture<'a, Result<(), BoxError>>;
}

impl<V: CacheValue, W: OriginWriter<V>> AnyWriter<V> for W {
    fn write<'a>(&'a self, batch: &'a [OriginWrite<V>]) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move { self.write_batch(batch).await.map_err(Into::into) })
    }
}

/// What an operator sees of a cache's write-behind queue.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WriteBehindStatus {
    /// Writes not yet written to the origin.
    pub pending: usize,
    /// Dead letters kept.
    pub dead_letters: usize,
    /// How long the oldest pending write has waited.
    pub oldest_age: Option<Duration>,
    /// The queue is in memory (no local tier keeps one): pending writes die with the process.
    pub in_memory: bool,
}

/// How many key locks order a key's queue append and tier write.
const KEY_LOCKS: usize = 64;

struct State {
    book: QueueBook,
    /// The writes of the batch in flight.
    in_flight: HashSet<u64>,
    /// Room taken by callers between admission and append.
    reserved: usize,
    /// Keys invalidated while a write of theirs was pending.
    invalidated: HashSet<Bytes>,
}

struct BehindMetrics {
    depth: LazyGauge,
    oldest: LazyGauge,
    dead: LazyGauge,
    writes: LazyCounter,
    ok: LazyCounter,
    failed: LazyCounter,
    retries: LazyCounter,
    dead_lettered: LazyCounter,
    unreadable: LazyCounter,
}

impl BehindMetrics {
    fn new(cache: &str) -> Self {
        let l = || vec![Label::new("cache", cache.to_string())];
        let result =
            |r: &'static str| vec![Label::new("cache", cache.to_string()), Label::new("result", r)];
        Self {
            depth: LazyGauge::new(names::WRITE_BEHIND_DEPTH, l()),
            oldest: LazyGauge::new(names::WRITE_BEHIND_OLDEST_AGE, l()),
            dead: LazyGauge::new(names::WRITE_BEHIND_DEAD_LETTERS, l()),
            writes: LazyCounter::new(names::WRITE_BEHIND_WRITES, l()),
            ok: LazyCounter::new(names::WRITE_BEHIND_BATCHES, result("ok")),
            failed: LazyCounter::new(names::WRITE_BEHIND_BATCHES, result("error")),
            retries: LazyCounter::new(names::WRITE_BEHIND_RETRIES, l()),
            dead_lettered: LazyCounter::new(names::WRITE_BEHIND_DEAD_LETTERED, l()),
            unreadable: LazyCounter::new(names::WRITE_BEHIND_UNREADABLE, l()),
        }
    }
}

/// How a cache keeps the values of its queued writes: sealed under its keyring (feature
/// `encryption`: [`crate::seal::seal_queued`]), or in clear. The rule both ways is here: with a
/// keyring every write is sealed and only a sealed write that opens is read back; without one
/// only a write in clear is.
#[derive(Clone, Default)]
pub(super) struct QueueSeal {
    cache: String,
    #[cfg(feature = "encryption")]
    keyring: Option<crate::seal::Keyring>,
}

impl QueueSeal {
    /// The seal of cache `cache`'s queue, with the keyring of its `sealer`.
    pub fn new(cache: &str, sealer: &super::sealer::Sealer) -> Self {
        let _ = sealer;
        Self {
            cache: cache.to_string(),
            #[cfg(feature = "encryption")]
            keyring: sealer.keyring.clone(),
        }
    }

    /// `plain` as write `seq` of `key` keeps it: the value and its sealing item, if sealed.
    fn seal(&self, seq: u64, key: &[u8], plain: Bytes) -> Result<(Bytes, Option<Bytes>), String> {
        #[cfg(feature = "encryption")]
        if let Some(keyring) = &self.keyring {
            let (value, sealing) =
                crate::seal::seal_queued(keyring, &self.cache, key, seq, &plain)?;
            return Ok((value, Some(sealing)));
        }
        let _ = (seq, key);
        Ok((plain, None))
    }

    /// The MessagePack value of `w`, or why it cannot be read back.
    fn open(&self, w: &QueuedWrite) -> Result<Bytes, String> {
        #[cfg(feature = "encryption")]
        if let Some(keyring) = &self.keyring {
            return crate::seal::open_queued(keyring, &self.cache, w)
                .map(Bytes::from)
                .map_err(|e| e.to_string());
        }
        match w.sealing {
            None => Ok(w.value.clone()),
            Some(_) => Err(format!(
                "the queued write is sealed (key {}) and the cache {:?} has no keyring to open it",
                w.key_id().map_or_else(|| "?".to_string(), |id| id.to_string()),
                self.cache
            )),
        }
    }
}

/// A cache's write-behind queue and its writer.
pub(super) struct Behind<V> {
    writer: Box<dyn AnyWriter<V>>,
    opts: WriteBehind,
    seal: QueueSeal,
    /// `None`: in memory.
    queue: Option<Arc<dyn WriteQueue>>,
    state: Mutex<State>,
    /// A write was queued (wakes the writer task).
    queued: Notify,
    /// Room was made or the queue drained (wakes waiting callers).
    freed: Notify,
    key_locks: Box<[tokio::sync::Mutex<()>]>,
    metrics: BehindMetrics,
}

/// What the writer task does next.
pub(super) enum Next {
    /// Write this batch.
    Batch(Vec<QueuedWrite>),
    /// Nothing due before this long.
    Wait(Duration),
    /// Nothing pending.
    Idle,
}

fn queue_failed(e: TierError) -> CacheError {
    CacheError::Tier { tier: "write-behind queue".into(), source: e }
}

impl<V> Behind<V> {
    /// A queue over `queue` (what it replayed is pending again), or in memory.
    pub fn new(
        cache: &str,
        writer: Box<dyn AnyWriter<V>>,
        opts: WriteBehind,
        queue: Option<Arc<dyn WriteQueue>>,
        seal: QueueSeal,
    ) -> Self {
        let book = queue.as_ref().map(|q| q.book()).unwrap_or_default();
        if !book.is_empty() {
            tracing::info!(
                cache,
                pending = book.pending_len(),
                dead_letters = book.dead_len(),
                "write-behind: replaying the queue left by an earlier run"
            );
        }
        let state =
            State { book, in_flight: HashSet::new(), reserved: 0, invalidated: HashSet::new() };
        let behind = Self {
            writer,
            opts,
            seal,
            queue,
            state: Mutex::new(state),
            queued: Notify::new(),
            freed: Notify::new(),
            key_locks: (0..KEY_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            metrics: BehindMetrics::new(cache),
        };
        behind.report(&behind.lock());
        behind
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Poison: a panic elsewhere while held; every change to the state is one call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn key_lock(&self, key: &[u8]) -> &tokio::sync::Mutex<()> {
        &self.key_locks[self.key_lock_index(key)]
    }

    fn key_lock_index(&self, key: &[u8]) -> usize {
        let h = xxhash_rust::xxh3::xxh3_64(key);
        (h % KEY_LOCKS as u64) as usize
    }

    /// Update the gauges from `state`.
    fn report(&self, state: &State) {
        self.metrics.depth.set(state.book.pending_len() as f64);
        self.metrics.dead.set(state.book.dead_len() as f64);
        let oldest = state.book.pending().next().map(|w| now_ms().saturating_sub(w.queued_at_ms));
        self.metrics.oldest.set(oldest.unwrap_or(0) as f64 / 1000.0);
    }

    /// Update the gauges now.
    pub fn report_gauges(&self) {
        self.report(&self.lock());
    }

    /// Append `ops` to the durable queue (off the runtime's workers), when there is one.
    async fn persist(&self, ops: Vec<QueueOp>) -> Result<(), CacheError> {
        let Some(queue) = self.queue.clone() else { return Ok(()) };
        match tokio::task::spawn_blocking(move || queue.append(&ops)).await {
            Ok(done) => done.map_err(queue_failed),
            Err(e) => Err(queue_failed(TierError::new(
                TierErrorKind::Other,
                format!("the queue append did not finish: {e}"),
            ))),
        }
    }

    /// Wait for room for a write of `key` (or fail, per [`WhenFull`]); the room stays reserved
    /// while the [`Reservation`] lives.
    pub(super) async fn admit(self: &Arc<Self>, key: &[u8]) -> Result<Reservation<V>, CacheError> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.lock();
                // A write of a key already held replaces it: no room needed.
                if st.book.of_key(key).is_some() || st.book.len() + st.reserved < self.opts.capacity
                {
                    st.reserved += 1;
                    return Ok(Reservation(Arc::clone(self)));
                }
                if self.opts.when_full == WhenFull::Fail {
                    return Err(CacheError::WriteBehindFull(format!(
                        "{} writes held (capacity {}); nothing was written",
                        st.book.len(),
                        self.opts.capacity
                    )));
                }
            }
            freed.await;
        }
    }

    /// Append the write to the queue and apply it, holding `room` until then.
    async fn append(
        &self,
        room: Reservation<V>,
        key: Bytes,
        value: Bytes,
    ) -> Result<(), CacheError> {
        let seq = self.lock().book.take_seq();
        let (value, sealing) = match self.seal.seal(seq, &key, value) {
            Ok(sealed) => sealed,
            Err(e) => {
                drop(room);
                return Err(CacheError::Encode(format!("sealing the queued write: {e}")));
            }
        };
        let write = QueuedWrite { seq, key, value, queued_at_ms: now_ms(), sealing };
        #[cfg(any(test, feature = "test-util"))]
        crate::fault::fault_point("write-behind.before-append");
        let persisted = self.persist(vec![QueueOp::Write(write.clone())]).await;
        #[cfg(any(test, feature = "test-util"))]
        crate::fault::fault_point("write-behind.after-append");
        if persisted.is_ok() {
            let mut st = self.lock();
            st.book.apply(QueueOp::Write(write));
            self.report(&st);
            self.queued.notify_one();
        }
        drop(room);
        persisted
    }

    /// An `insert` (or `insert_many`) of `keys`: the rule of what it does to the queue. A
    /// pending write of each key that is not in flight (or its dead letter) is superseded —
    /// done, never written: the caller wrote the origin itself. One `Done` record for all.
    pub async fn supersede(&self, keys: &[Bytes]) -> Result<(), CacheError> {
        // The keys' locks, each once, in ascending order (a write-behind holds one of them at
        // a time, another insert takes them in the same order: no deadlock).
        let mut locks: Vec<usize> = keys.iter().map(|k| self.key_lock_index(k)).collect();
        locks.sort_unstable();
        locks.dedup();
        let mut held = Vec::with_capacity(locks.len());
        for i in locks {
            held.push(self.key_locks[i].lock().await);
        }
        let seqs: Vec<u64> = {
            let st = self.lock();
            keys.iter()
                .filter_map(|key| match st.book.of_key(key) {
                    Some((w, _)) if !st.in_flight.contains(&w.seq) => Some(w.seq),
                    _ => None,
                })
                .collect()
        };
        if seqs.is_empty() {
            return Ok(());
        }
        self.persist(vec![QueueOp::Done(seqs.clone())]).await?;
        let mut st = self.lock();
        st.book.apply(QueueOp::Done(seqs));
        self.report(&st);
        drop(st);
        drop(held);
        self.freed.notify_waiters();
        Ok(())
    }

    /// An `invalidate` of `key`: a pending write of it stays; once it is done the key is
    /// invalidated again.
    pub fn note_invalidated(&self, key: &Bytes) {
        let mut st = self.lock();
        if st.book.of_key(key).is_some_and(|(_, dead)| !dead) {
            st.invalidated.insert(key.clone());
        }
    }

    /// What the writer task does next (a batch is marked in flight).
    pub fn next(&self) -> Next {
        let mut st = self.lock();
        let Some(oldest) = st.book.pending().next() else { return Next::Idle };
        let waited = Duration::from_millis(now_ms().saturating_sub(oldest.queued_at_ms));
        if st.book.pending_len() < self.opts.max_batch && waited < self.opts.max_delay {
            return Next::Wait(self.opts.max_delay - waited);
        }
        let batch: Vec<QueuedWrite> =
            st.book.pending().take(self.opts.max_batch).cloned().collect();
        st.in_flight = batch.iter().map(|w| w.seq).collect();
        Next::Batch(batch)
    }

    /// Wait until a write is queued or `wait` passed.
    pub async fn wait(&self, wait: Option<Duration>) {
        match wait {
            Some(d) => {
                let _ = tokio::time::timeout(d, self.queued.notified()).await;
            }
            None => self.queued.notified().await,
        }
    }

    /// The pause after the `attempts`-th failure: doubling from `backoff`, at most
    /// `max_backoff`, a random 50–100 % of it.
    fn backoff(&self, attempts: u32) -> Duration {
        let full = self.opts.backoff.saturating_mul(1 << attempts.saturating_sub(1).min(30));
        let full = full.min(self.opts.max_backoff);
        let jitter = 0.5 + (rand_u64() % 1024) as f64 / 2048.0;
        full.mul_f64(jitter)
    }

    /// `batch` was written: it leaves the queue. The keys invalidated while it was pending
    /// (and not written again since) are returned.
    async fn done(&self, batch: Vec<QueuedWrite>) -> Vec<Bytes> {
        let seqs: Vec<u64> = batch.iter().map(|w| w.seq).collect();
        if let Err(e) = self.persist(vec![QueueOp::Done(seqs.clone())]).await {
            // Written, but the queue could not say so: written again after a restart.
            tracing::warn!(error = %e, "write-behind: the queue could not record written writes; a restart writes them again");
        }
        let mut st = self.lock();
        st.book.apply(QueueOp::Done(seqs));
        let mut again = Vec::new();
        for w in &batch {
            if st.book.of_key(&w.key).is_none() && st.invalidated.remove(&w.key) {
                again.push(w.key.clone());
            }
        }
        self.report(&st);
        again
    }

    /// The batch in flight is settled (written or buried, and what follows from it done):
    /// the next may start, and callers waiting for room or a drain look again.
    pub fn finish(&self) {
        self.lock().in_flight.clear();
        self.freed.notify_waiters();
    }

    /// Keep `writes` as dead letters, each with its failed attempts and reason.
    async fn bury(&self, writes: Vec<(QueuedWrite, u32, String)>) {
        let ops: Vec<QueueOp> = writes
            .iter()
            .map(|(w, attempts, reason)| QueueOp::Dead {
                seq: w.seq,
                attempts: *attempts,
                reason: reason.clone(),
            })
            .collect();
        if let Err(e) = self.persist(ops.clone()).await {
            tracing::warn!(error = %e, "write-behind: the queue could not record dead letters; a restart tries them again");
        }
        let mut st = self.lock();
        for op in ops {
            st.book.apply(op);
        }
        for (w, _, _) in &writes {
            if st.book.of_key(&w.key).is_none_or(|(_, dead)| dead) {
                st.invalidated.remove(&w.key);
            }
        }
        self.metrics.dead_lettered.increment(writes.len() as u64);
        self.report(&st);
        drop(st);
        self.freed.notify_waiters();
    }

    pub(super) fn status(&self) -> WriteBehindStatus {
        let st = self.lock();
        let status = WriteBehindStatus {
            pending: st.book.pending_len(),
            dead_letters: st.book.dead_len(),
            oldest_age: st
                .book
                .pending()
                .next()
                .map(|w| Duration::from_millis(now_ms().saturating_sub(w.queued_at_ms))),
            in_memory: self.queue.is_none(),
        };
        drop(st);
        status
    }

    /// Wait until nothing is pending (written, or dead letters).
    pub(super) async fn drained(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let idle = {
                let st = self.lock();
                st.book.pending_len() == 0 && st.in_flight.is_empty()
            };
            if idle {
                return;
            }
            freed.await;
        }
    }

    /// The dead letters, oldest first, their values opened (MessagePack) when they open; one
    /// that does not stays as it is kept (sealed; its reason says why).
    pub(super) fn dead_letters(&self) -> Vec<DeadLetter> {
        let dead: Vec<DeadLetter> = self.lock().book.dead().collect();
        dead.into_iter()
            .map(|mut d| {
                if let Ok(plain) = self.seal.open(&d.write) {
                    d.write.value = plain;
                    d.write.sealing = None;
                }
                d
            })
            .collect()
    }

    /// Revive (`true`) or discard every dead letter; how many.
    pub(super) async fn settle_dead(&self, revive: bool) -> Result<usize, CacheError> {
        let seqs: Vec<u64> = self.lock().book.dead().map(|d| d.write.seq).collect();
        if seqs.is_empty() {
            return Ok(0);
        }
        let op = if revive { QueueOp::Revive(seqs.clone()) } else { QueueOp::Done(seqs.clone()) };
        self.persist(vec![op.clone()]).await?;
        let mut st = self.lock();
        st.book.apply(op);
        self.report(&st);
        drop(st);
        if revive {
            self.queued.notify_one();
        } else {
            self.freed.notify_waiters();
        }
        Ok(seqs.len())
    }
}

impl<V: CacheValue> Behind<V> {
    /// Read-your-writes: the value of the newest pending write of `key` (in flight or not; a
    /// dead letter never reached the origin and is not one), when it reads back. A load of the
    /// key answers it instead of calling the origin, which does not have it yet (or is about
    /// to get it: a write leaves the queue only after the origin acknowledged it).
    pub fn pending_value(&self, key: &[u8]) -> Option<V> {
        let write = {
            let st = self.lock();
            match st.book.of_key(key) {
                Some((w, false)) => w.clone(),
                _ => return None,
            }
        };
        let plain = self.seal.open(&write).ok()?;
        rmp_serde::from_slice::<V>(&plain).ok()
    }

    /// Queue `value` (encoded) for `key`, durably, in the room `room` reserved. The append and
    /// its bookkeeping run in a task of their own: a caller that gives up meanwhile leaves no
    /// write that is durable but unknown to the writer task.
    pub(super) async fn queue(
        self: &Arc<Self>,
        room: Reservation<V>,
        key: Bytes,
        value: Bytes,
    ) -> Result<(), CacheError> {
        let behind = Arc::clone(self);
        match tokio::spawn(async move { behind.append(room, key, value).await }).await {
            Ok(queued) => queued,
            Err(e) => Err(queue_failed(TierError::new(
                TierErrorKind::Other,
                format!("the queue append did not finish: {e}"),
            ))),
        }
    }

    /// Write `batch` through the origin writer, retrying with backoff; then done (or dead
    /// letters). Returns the keys to invalidate again (see the module docs).
    ///
    /// A write that cannot be read back (sealed with a key the keyring lacks, failing
    /// authentication, not decoding) is never written and never dropped: it is kept as a dead
    /// letter with the reason, counted (`tier_write_behind_unreadable_total`) and logged at
    /// ERROR. A batch that fails all its attempts is split in halves, each tried once, down to
    /// single writes: only a write that fails alone becomes a dead letter; the rest is written.
    pub async fn write(&self, batch: Vec<QueuedWrite>) -> Vec<Bytes> {
        let piece = self.readable(batch).await;
        let mut again = Vec::new();
        let (piece, reason) = match self.attempt(piece, self.opts.max_attempts, &mut again).await {
            None => return again,
            Some(failed) => failed,
        };
        if piece.queued.len() == 1 {
            tracing::warn!(attempts = piece.attempts, error = %reason, "write-behind: a write failed too often: kept as a dead letter");
            self.bury(piece.dead(&reason)).await;
            return again;
        }
        tracing::warn!(writes = piece.queued.len(), attempts = piece.attempts, error = %reason, "write-behind: a batch failed too often: trying its halves alone, to keep only the failing writes as dead letters");
        // Halves, each tried once, down to single writes (a stack: first half on top).
        let mut todo = Vec::new();
        let (a, b) = piece.halves();
        todo.push(b);
        todo.push(a);
        while let Some(piece) = todo.pop() {
            let Some((piece, reason)) = self.attempt(piece, 1, &mut again).await else {
                continue;
            };
            if piece.queued.len() == 1 {
                tracing::warn!(attempts = piece.attempts, error = %reason, "write-behind: a write failed alone too: kept as a dead letter");
                self.bury(piece.dead(&reason)).await;
            } else {
                let (a, b) = piece.halves();
                todo.push(b);
                todo.push(a);
            }
            // A pause between failed tries, so that a down origin is not hammered.
            tokio::time::sleep(self.backoff(1)).await;
        }
        again
    }

    /// The writes of `batch` that read back (decoded), the others buried as dead letters.
    async fn readable(&self, batch: Vec<QueuedWrite>) -> Piece<V> {
        let mut piece = Piece { queued: Vec::new(), writes: Vec::new(), attempts: 0 };
        let mut bad = Vec::new();
        for w in batch {
            let decoded = self.seal.open(&w).and_then(|plain| {
                rmp_serde::from_slice::<V>(&plain).map_err(|e| {
                    format!("the queued value does not decode as the cache's type: {e}")
                })
            });
            match decoded {
                Ok(value) => {
                    piece.writes.push(OriginWrite { key: w.key.clone(), value, seq: w.seq });
                    piece.queued.push(w);
                }
                Err(reason) => {
                    tracing::error!(
                        seq = w.seq,
                        key_id = w.key_id(),
                        error = %reason,
                        "write-behind: a queued write cannot be read back: kept as a dead letter, not written (replay it once the keyring holds its key)"
                    );
                    bad.push((w, 1, reason));
                }
            }
        }
        if !bad.is_empty() {
            self.metrics.unreadable.increment(bad.len() as u64);
            self.bury(bad).await;
        }
        piece
    }

    /// Try `piece` up to `tries` times (with backoff between): `None` when written (or nothing
    /// is left of it: superseded meanwhile), else what is left and the last failure.
    async fn attempt(
        &self,
        mut piece: Piece<V>,
        tries: u32,
        again: &mut Vec<Bytes>,
    ) -> Option<(Piece<V>, String)> {
        let mut tried = 0u32;
        loop {
            // What was superseded meanwhile is not written (its successor will be).
            {
                let st = self.lock();
                piece.retain(|seq| st.book.holds(seq));
            }
            if piece.queued.is_empty() {
                return None;
            }
            match self.writer.write(&piece.writes).await {
                Ok(()) => {
                    #[cfg(any(test, feature = "test-util"))]
                    crate::fault::fault_point("write-behind.after-batch");
                    self.metrics.ok.increment(1);
                    self.metrics.writes.increment(piece.writes.len() as u64);
                    again.extend(self.done(piece.queued).await);
                    return None;
                }
                Err(e) => {
                    tried += 1;
                    piece.attempts += 1;
                    self.metrics.failed.increment(1);
                    if tried >= tries {
                        return Some((piece, e.to_string()));
                    }
                    self.metrics.retries.increment(1);
                    tracing::debug!(writes = piece.queued.len(), attempts = piece.attempts, error = %e, "write-behind: the origin writer failed; retrying");
                    tokio::time::sleep(self.backoff(tried)).await;
                }
            }
        }
    }
}

/// Writes of a batch in flight, as queued and as handed to the writer (the same order), and
/// how many times the writer failed them so far.
struct Piece<V> {
    queued: Vec<QueuedWrite>,
    writes: Vec<OriginWrite<V>>,
    attempts: u32,
}

impl<V> Piece<V> {
    /// Keep the writes whose sequence number `keep` accepts.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let kept: Vec<bool> = self.queued.iter().map(|w| keep(w.seq)).collect();
        let mut k = kept.iter();
        self.queued.retain(|_| *k.next().unwrap_or(&false));
        let mut k = kept.iter();
        self.writes.retain(|_| *k.next().unwrap_or(&false));
    }

    /// The first half and the second (of two or more writes).
    fn halves(mut self) -> (Self, Self) {
        let at = self.queued.len() / 2;
        let queued = self.queued.split_off(at);
        let writes = self.writes.split_off(at);
        let second = Self { queued, writes, attempts: self.attempts };
        (self, second)
    }

    /// Its writes as dead letters failing with `reason`.
    fn dead(self, reason: &str) -> Vec<(QueuedWrite, u32, String)> {
        let attempts = self.attempts;
        self.queued.into_iter().map(|w| (w, attempts, reason.to_string())).collect()
    }
}

/// Room in the queue for one write, given back when dropped (a write queued, failed, or given
/// up by its caller).
pub(super) struct Reservation<V>(Arc<Behind<V>>);

impl<V> Drop for Reservation<V> {
    fn drop(&mut self) {
        let behind = &self.0;
        behind.lock().reserved -= 1;
        behind.freed.notify_waiters();
    }
}

/// The write-behind of a cache, when configured: the writer and its options.
pub(super) struct Configured<V> {
    pub writer: Box<dyn AnyWriter<V>>,
    pub opts: WriteBehind,
}
