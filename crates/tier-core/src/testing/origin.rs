//! [`RecordingOrigin`]: an [`OriginWriter`] that records every write it is handed, fails or
//! holds batches on command.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::cache::{CacheValue, OriginWrite, OriginWriter};
use crate::error::TierError;

#[derive(Default)]
struct Recorded<V> {
    /// Every write handed over, in order: (key, value, seq).
    writes: Vec<(Bytes, V, u64)>,
    /// The size of every call that succeeded.
    batches: Vec<usize>,
    calls: u32,
}

/// An origin writer for tests: records what it is handed; `fail(n)` makes the next `n` calls
/// fail (`u32::MAX`: every call); `hold()` makes the next call wait (after saying so through
/// [`entered`](Self::entered)) until [`release`](Self::release); `reject(key)` makes every call
/// holding `key` fail (a poisoned write: the whole call fails, as a transaction would).
/// Clones share the record.
pub struct RecordingOrigin<V> {
    inner: Arc<Shared<V>>,
}

struct Shared<V> {
    recorded: Mutex<Recorded<V>>,
    failures: AtomicU32,
    rejected: Mutex<Vec<Bytes>>,
    hold: AtomicU32,
    entered: Notify,
    released: Semaphore,
}

impl<V> Clone for RecordingOrigin<V> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<V: Clone> Default for RecordingOrigin<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone> RecordingOrigin<V> {
    /// An origin that accepts everything.
    pub fn new() -> Self {
        let inner = Shared {
            recorded: Mutex::new(Recorded { writes: Vec::new(), batches: Vec::new(), calls: 0 }),
            failures: AtomicU32::new(0),
            rejected: Mutex::new(Vec::new()),
            hold: AtomicU32::new(0),
            entered: Notify::new(),
            released: Semaphore::new(0),
        };
        Self { inner: Arc::new(inner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded<V>> {
        self.inner.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fail the next `n` calls (`u32::MAX`: every call until `fail(0)`).
    pub fn fail(&self, n: u32) {
        self.inner.failures.store(n, Ordering::SeqCst);
    }

    /// Fail every call whose batch holds `key` (until [`accept`](Self::accept)).
    pub fn reject(&self, key: impl AsRef<[u8]>) {
        let mut r = self.inner.rejected.lock().unwrap_or_else(|p| p.into_inner());
        r.push(Bytes::copy_from_slice(key.as_ref()));
    }

    /// Stop rejecting any key.
    pub fn accept(&self) {
        self.inner.rejected.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Hold the next call until [`release`](Self::release).
    pub fn hold(&self) {
        self.inner.hold.fetch_add(1, Ordering::SeqCst);
    }

    /// Wait until a held call has started.
    pub async fn entered(&self) {
        self.inner.entered.notified().await;
    }

    /// Let one held call go on.
    pub fn release(&self) {
        self.inner.released.add_permits(1);
    }

    /// Every write accepted, in order: (key, value, seq).
    pub fn writes(&self) -> Vec<(Bytes, V, u64)> {
        self.lock().writes.clone()
    }

    /// The size of every accepted call.
    pub fn batches(&self) -> Vec<usize> {
        self.lock().batches.clone()
    }

    /// Calls made, accepted or failed.
    pub fn calls(&self) -> u32 {
        self.lock().calls
    }
}

#[async_trait]
impl<V: CacheValue + Clone> OriginWriter<V> for RecordingOrigin<V> {
    type Error = TierError;

    async fn write_batch(&self, batch: &[OriginWrite<V>]) -> Result<(), TierError> {
        let held = self
            .inner
            .hold
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| h.checked_sub(1))
            .is_ok();
        if held {
            self.inner.entered.notify_one();
            if let Ok(permit) = self.inner.released.acquire().await {
                permit.forget();
            }
        }
        self.lock().calls += 1;
        let failing = self
            .inner
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| match f {
                0 => None,
                u32::MAX => Some(u32::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if failing {
            return Err(TierError::new(
                crate::error::TierErrorKind::Unavailable,
                "origin down (test)",
            ));
        }
        let rejected = self.inner.rejected.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(w) = batch.iter().find(|w| rejected.contains(&w.key)) {
            return Err(TierError::new(
                crate::error::TierErrorKind::Other,
                format!("origin rejects key {:?} (test)", String::from_utf8_lossy(&w.key)),
            ));
        }
        let mut rec = self.lock();
        rec.batches.push(batch.len());
        rec.writes.extend(batch.iter().map(|w| (w.key.clone(), w.value.clone(), w.seq)));
        Ok(())
    }
}
