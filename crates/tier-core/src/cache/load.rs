//! Loads: single-flight, the loader task, fail-safe, lifetimes of written entries, warm-up.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::read::{Counting, Found};
use super::{Cache, CacheValue, Inner};
use crate::entry::{Entry, Storage, Value};
use crate::envelope::{self, Meta, TagStamp};
use crate::error::{BoxError, CacheError};
use crate::lock::LockToken;
use crate::time::{after_ms, jittered, now_ms};

type LoadFuture<V> = Pin<Box<dyn Future<Output = Result<Option<V>, BoxError>> + Send>>;

/// A type-erased loader.
pub(crate) struct Loader<V>(Box<dyn FnOnce() -> LoadFuture<V> + Send>);

impl<V: CacheValue> Loader<V> {
    pub(crate) fn new<F, Fut, E>(f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self(Box::new(move || Box::pin(async move { f().await.map_err(Into::into) })))
    }
}

pub(crate) type LoadResult<V> = Result<Option<Arc<V>>, CacheError>;
type Slot<V> = Option<LoadResult<V>>;

/// A load in flight: its id, the receiver of its result, and how many callers wait for it.
pub(crate) struct Flight<V> {
    id: u64,
    /// The key's write sequence when the flight started: a flight is joined only while it is
    /// still the current one (no insert or invalidation of the key since), so nobody is handed
    /// a value that was invalidated after it was loaded.
    seq: u64,
    rx: watch::Receiver<Slot<V>>,
    pub waiters: Arc<AtomicUsize>,
}

/// In-flight loads by key.
pub(crate) type Flights<V> = HashMap<Bytes, Flight<V>>;

/// A caller's place in a flight: counted in [`Flight::waiters`] while it lives.
pub(crate) struct Waiter<V> {
    rx: watch::Receiver<Slot<V>>,
    waiters: Arc<AtomicUsize>,
}

impl<V> Waiter<V> {
    fn new(flight: &Flight<V>) -> Self {
        flight.waiters.fetch_add(1, Ordering::SeqCst);
        Self { rx: flight.rx.clone(), waiters: flight.waiters.clone() }
    }
}

impl<V> Drop for Waiter<V> {
    fn drop(&mut self) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Removes a flight from the map when its task ends, however it ends (also on panic), so a dead
/// flight never strands later callers.
struct FlightGuard<V> {
    inner: Weak<Inner<V>>,
    key: Bytes,
    id: u64,
}

impl<V> Drop for FlightGuard<V> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut flights = inner.flights.lock().unwrap_or_else(|p| p.into_inner());
            if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
                flights.remove(&self.key);
            }
        }
    }
}

/// The sending end of a flight; the flight leaves the map when its task ends (after it wrote
/// every tier), through the guard.
struct Publisher<V> {
    tx: watch::Sender<Slot<V>>,
    _guard: FlightGuard<V>,
}

impl<V> Publisher<V> {
    fn publish(&self, result: LoadResult<V>) {
        let _ = self.tx.send(Some(result));
    }
}

/// Progress of [`Cache::warm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmProgress {
    /// Keys done so far.
    pub done: usize,
    /// Keys in all.
    pub total: usize,
}

/// Outcome of [`Cache::warm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Keys that now have a value (loaded or already cached).
    pub loaded: usize,
    /// Keys the origin says do not exist.
    pub none: usize,
    /// Keys whose load failed.
    pub failed: usize,
}

impl<V: CacheValue> Inner<V> {
    /// Join the flight of `key`, or start one. Returns the receiver of its result.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        key: Bytes,
        loader: Loader<V>,
        stale: Option<Found<V>>,
        skip: u64,
        tags: Vec<Arc<str>>,
    ) -> Waiter<V> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&key) {
            // A flight whose task died (loader panic) without a result is not joined: its
            // guard is about to remove it; start a new one in its place.
            let dead = flight.rx.has_changed().is_err() && flight.rx.borrow().is_none();
            if !dead && flight.seq == self.seq(&key) {
                self.metrics.coalesced.increment(1);
                return Waiter::new(flight);
            }
        }
        let id = self.flight_ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let seq = self.seq(&key);
        let flight = Flight { id, seq, rx, waiters: Arc::default() };
        let waiter = Waiter::new(&flight);
        flights.insert(key.clone(), flight);
        drop(flights);
        let tx = Publisher {
            tx,
            _guard: FlightGuard { inner: Arc::downgrade(self), key: key.clone(), id },
        };
        let inner = self.clone();
        tokio::spawn(async move {
            inner.run_flight(key, seq, tx, loader, stale, skip, tags, false).await;
        });
        waiter
    }

    /// Start a background refresh of `key` unless a load of it is already in flight.
    pub(crate) fn start_refresh(
        self: &Arc<Self>,
        key: Bytes,
        loader: Loader<V>,
        skip: u64,
        tags: Vec<Arc<str>>,
    ) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.contains_key(&key) {
            return;
        }
        let id = self.flight_ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let seq = self.seq(&key);
        flights.insert(key.clone(), Flight { id, seq, rx, waiters: Arc::default() });
        drop(flights);
        self.metrics.refreshes.increment(1);
        let tx = Publisher {
            tx,
            _guard: FlightGuard { inner: Arc::downgrade(self), key: key.clone(), id },
        };
        let inner = self.clone();
        tokio::spawn(async move {
            inner.run_flight(key, seq, tx, loader, None, skip, tags, true).await;
        });
    }

    /// Wait for a flight's result; with a stale value and a soft timeout, answer stale when the
    /// load is slow; on a load error, answer stale when fail-safe allows.
    pub(crate) async fn wait(
        &self,
        mut waiter: Waiter<V>,
        stale: Option<&Found<V>>,
    ) -> LoadResult<V> {
        let rx = &mut waiter.rx;
        let result = {
            let waiting = async {
                match rx.wait_for(Option::is_some).await {
                    Ok(slot) => slot.clone().unwrap_or_else(|| {
                        Err(CacheError::LoadAborted("flight ended without a result".into()))
                    }),
                    Err(_) => Err(CacheError::LoadAborted("loader task ended".into())),
                }
            };
            match (self.opts.soft_timeout, stale) {
                (Some(soft), Some(stale)) if self.stale_servable(stale, now_ms()) => {
                    match tokio::time::timeout(soft, waiting).await {
                        Ok(r) => r,
                        Err(_) => {
                            self.metrics.stale_served.increment(1);
                            return Ok(stale.value.clone());
                        }
                    }
                }
                _ => waiting.await,
            }
        };
        match (result, stale) {
            (Err(e), Some(stale))
                if self.opts.fail_safe.is_some() && self.stale_servable(stale, now_ms()) =>
            {
                tracing::debug!(cache = %self.name, error = %e, "origin failed: serving stale value");
                self.metrics.stale_served.increment(1);
                Ok(stale.value.clone())
            }
            (r, _) => r,
        }
    }

    /// May this stale entry still be served (before its `stale_until`, within fail-safe's age)?
    fn stale_servable(&self, stale: &Found<V>, now: u64) -> bool {
        let m = &stale.entry.meta;
        let max_age = self.opts.fail_safe.map(|f| after_ms(m.fresh_until, f.max_stale_age));
        m.is_alive(now) && max_age.is_none_or(|limit| now < limit)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_flight(
        self: Arc<Self>,
        key: Bytes,
        seq: u64,
        tx: Publisher<V>,
        loader: Loader<V>,
        stale: Option<Found<V>>,
        skip: u64,
        tags: Vec<Arc<str>>,
        refresh: bool,
    ) {
        // A caller may have missed in the tiers just before a previous flight wrote them and
        // left the map. A flight writes the in-process tiers before it answers, so looking at
        // those again is enough (and costs no I/O: a slow remote tier is not waited on twice).
        if !refresh {
            if let Some(value) =
                self.fresh_value(&key, skip | self.recheck_mask(), Counting::Quiet).await
            {
                tx.publish(Ok(value));
                return;
            }
        }
        let token = match &self.lock {
            Some((lock, _)) => match self.acquire_or_wait(&key, skip).await {
                LockOutcome::Held(t) => {
                    // The previous holder may have written the value and released the lock
                    // just before we took it: look in the tiers before loading again.
                    if let Some(value) = self.fresh_value(&key, skip, Counting::Quiet).await {
                        if let Err(e) = lock.release(&key, &t).await {
                            tracing::debug!(cache = %self.name, error = %e, "lock release failed (it expires)");
                        }
                        tx.publish(Ok(value));
                        return;
                    }
                    Some(t)
                }
                LockOutcome::Appeared(value) => {
                    tx.publish(Ok(value));
                    return;
                }
                LockOutcome::Proceed => None,
            },
            None => None,
        };
        // Stamp tag generations before loading: a tag invalidated during the load makes the
        // loaded value born invalid.
        let stamps = match self.stamp(&tags).await {
            Ok(s) => s,
            Err(e) => {
                tx.publish(Err(e));
                return;
            }
        };
        let started = Instant::now();
        let outcome = match self.opts.hard_timeout {
            Some(hard) => match tokio::time::timeout(hard, (loader.0)()).await {
                Ok(r) => r.map_err(|e| CacheError::Load(Arc::from(e))),
                Err(_) => Err(CacheError::LoadTimeout(hard)),
            },
            None => (loader.0)().await.map_err(|e| CacheError::Load(Arc::from(e))),
        };
        let cost = started.elapsed();
        self.metrics.load_duration.record(cost);
        match outcome {
            Ok(value) => {
                let value = value.map(Arc::new);
                if value.is_some() {
                    self.metrics.loads_ok.increment(1);
                } else {
                    self.metrics.loads_none.increment(1);
                }
                let meta = Meta {
                    created_at: now_ms(),
                    load_cost_us: u32::try_from(cost.as_micros()).unwrap_or(u32::MAX),
                    negative: value.is_none(),
                    tags: stamps,
                    ..Meta::default()
                };
                match self.entries(value.as_ref(), &meta, skip) {
                    Ok(entries) => {
                        // The in-process tiers before the answer, the remote ones after it;
                        // the flight stays joinable until both are written (see `recheck_mask`).
                        let (objects, remote): (Vec<_>, Vec<_>) = entries
                            .into_iter()
                            .partition(|(j, _)| self.layers[*j].storage == Storage::Objects);
                        self.write_if_unchanged(&key, seq, objects).await;
                        tx.publish(Ok(value));
                        self.write_if_unchanged(&key, seq, remote).await;
                    }
                    Err(e) => {
                        tx.publish(Err(e));
                    }
                }
            }
            Err(e) => {
                match &e {
                    CacheError::LoadTimeout(_) => self.metrics.loads_timeout.increment(1),
                    _ => self.metrics.loads_error.increment(1),
                }
                tracing::debug!(cache = %self.name, error = %e, "load failed");
                if let (Some(fs), Some(stale)) = (self.opts.fail_safe, &stale) {
                    if self.stale_servable(stale, now_ms()) {
                        self.throttle(&key, stale, fs.throttle, skip, stale.seq).await;
                    }
                }
                tx.publish(Err(e));
            }
        }
        if let (Some(token), Some((lock, _))) = (token, &self.lock) {
            if let Err(e) = lock.release(&key, &token).await {
                tracing::debug!(cache = %self.name, error = %e, "lock release failed (it expires)");
            }
        }
    }

    /// Keep serving a stale value for `throttle` without calling the failing origin: re-stamp it
    /// fresh in the local object tiers, never beyond its own `stale_until`.
    async fn throttle(
        &self,
        key: &Bytes,
        stale: &Found<V>,
        throttle: Duration,
        skip: u64,
        seq: u64,
    ) {
        let now = now_ms();
        let mut writes = Vec::new();
        let m = &stale.entry.meta;
        let fresh_until = after_ms(now, throttle).min(m.stale_until);
        for (j, layer) in self.layers.iter().enumerate() {
            if layer.storage != Storage::Objects
                || layer.shared
                || skip & (1 << j) != 0
                || !layer.enabled()
            {
                continue;
            }
            if let Ok(entry) =
                self.entry_for(j, stale.value.as_ref(), m, fresh_until, m.stale_until, None)
            {
                writes.push((j, entry));
            }
        }
        self.write_if_unchanged(key, seq, writes).await;
    }

    async fn stamp(&self, tags: &[Arc<str>]) -> Result<Option<Arc<[TagStamp]>>, CacheError> {
        if tags.is_empty() {
            return Ok(None);
        }
        let generations = self
            .generations
            .current(tags)
            .await
            .map_err(|e| CacheError::Tier { tier: "generations".into(), source: e })?;
        Ok(Some(
            tags.iter()
                .zip(generations)
                .map(|(t, g)| TagStamp { tag: t.clone(), generation: g })
                .collect(),
        ))
    }

    /// Lifetime of a new entry in tier `j`, jittered: (fresh_until, stale_until).
    pub(crate) fn lifetime(&self, j: usize, now: u64, negative: bool) -> (u64, u64) {
        let p = &self.layers[j].policy;
        if negative {
            let fresh = jittered(p.negative_ttl.min(p.ttl.fresh), p.ttl.jitter);
            let until = after_ms(now, fresh);
            return (until, until);
        }
        let fresh_until = after_ms(now, jittered(p.ttl.fresh, p.ttl.jitter));
        (fresh_until, after_ms(fresh_until, jittered(p.ttl.stale, p.ttl.jitter)))
    }

    /// The entry for tier `j` holding `value` with `meta`'s flags and tags and the given times.
    /// `envelope` is an already encoded form to reuse (its times are rewritten).
    pub(crate) fn entry_for(
        &self,
        j: usize,
        value: Option<&Arc<V>>,
        meta: &Meta,
        fresh_until: u64,
        stale_until: u64,
        envelope: Option<&Bytes>,
    ) -> Result<Entry, CacheError> {
        let meta = Meta { fresh_until, stale_until, ..meta.clone() };
        let bytes = match envelope {
            Some(b) => envelope::with_times(b, fresh_until, stale_until)
                .map_err(|e| CacheError::Encode(e.to_string()))?,
            None => {
                self.codec.encode(&meta, value.map(|v| v.as_ref())).map_err(CacheError::Encode)?
            }
        };
        let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let value = match self.layers[j].storage {
            Storage::Envelopes => Value::Envelope(bytes),
            Storage::Objects => match value {
                Some(v) => Value::Object(v.clone()),
                None => Value::Object(Arc::new(())),
            },
        };
        Ok(Entry { meta, value, size })
    }

    /// Entries of a freshly loaded or inserted value for every enabled, admitting tier.
    /// The value is encoded once; each tier gets its own (jittered) times.
    pub(crate) fn entries(
        &self,
        value: Option<&Arc<V>>,
        meta: &Meta,
        skip: u64,
    ) -> Result<Vec<(usize, Entry)>, CacheError> {
        let encoded =
            self.codec.encode(meta, value.map(|v| v.as_ref())).map_err(CacheError::Encode)?;
        let now = meta.created_at;
        let mut out = Vec::with_capacity(self.layers.len());
        for (j, layer) in self.layers.iter().enumerate() {
            if skip & (1 << j) != 0 || !layer.enabled() {
                continue;
            }
            if layer.policy.max_value_size.is_some_and(|m| encoded.len() as u64 > u64::from(m)) {
                continue;
            }
            let (fresh_until, stale_until) = self.lifetime(j, now, meta.negative);
            out.push((
                j,
                self.entry_for(j, value, meta, fresh_until, stale_until, Some(&encoded))?,
            ));
        }
        Ok(out)
    }

    /// Write entries to their tiers; returns the tiers written.
    pub(crate) async fn write_layers(
        &self,
        key: &Bytes,
        entries: Vec<(usize, Entry)>,
    ) -> Vec<usize> {
        let mut written = Vec::with_capacity(entries.len());
        for (j, entry) in entries {
            if self.write_one(j, key.clone(), entry).await.is_ok() {
                written.push(j);
            }
        }
        written
    }

    /// Write one entry, counting the result.
    pub(crate) async fn write_one(
        &self,
        j: usize,
        key: Bytes,
        entry: Entry,
    ) -> Result<(), crate::TierError> {
        let layer = &self.layers[j];
        let start = Instant::now();
        let r = layer.tier.insert(key, entry).await;
        layer.metrics.write_duration.record(start.elapsed());
        match &r {
            Ok(()) => layer.metrics.write_ok.increment(1),
            Err(e) => match e.kind() {
                crate::TierErrorKind::CircuitOpen | crate::TierErrorKind::Disabled => {
                    layer.metrics.write_skipped.increment(1)
                }
                crate::TierErrorKind::Timeout => layer.metrics.write_timeout.increment(1),
                _ => {
                    layer.metrics.write_error.increment(1);
                    tracing::debug!(cache = %self.name, tier = %layer.name, error = %e, "write failed");
                }
            },
        }
        r
    }

    /// Call the origin directly: nothing is read from or written to any tier.
    pub(crate) async fn load_bypassing(&self, loader: Loader<V>) -> LoadResult<V> {
        let started = Instant::now();
        let r = match self.opts.hard_timeout {
            Some(hard) => match tokio::time::timeout(hard, (loader.0)()).await {
                Ok(r) => r.map_err(|e| CacheError::Load(Arc::from(e))),
                Err(_) => Err(CacheError::LoadTimeout(hard)),
            },
            None => (loader.0)().await.map_err(|e| CacheError::Load(Arc::from(e))),
        };
        self.metrics.load_duration.record(started.elapsed());
        match &r {
            Ok(Some(_)) => self.metrics.loads_ok.increment(1),
            Ok(None) => self.metrics.loads_none.increment(1),
            Err(CacheError::LoadTimeout(_)) => self.metrics.loads_timeout.increment(1),
            Err(_) => self.metrics.loads_error.increment(1),
        }
        r.map(|v| v.map(Arc::new))
    }

    /// Take the fleet-wide lock, or wait (polling the tiers with backoff) for the holder's value.
    async fn acquire_or_wait(&self, key: &Bytes, skip: u64) -> LockOutcome<V> {
        let Some((lock, opts)) = &self.lock else { return LockOutcome::Proceed };
        let deadline = Instant::now() + opts.wait;
        let mut poll = opts.first_poll;
        loop {
            match lock.try_acquire(key, opts.ttl).await {
                Ok(Some(token)) => return LockOutcome::Held(token),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(cache = %self.name, error = %e, "lock unavailable: loading without it");
                    return LockOutcome::Proceed;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::debug!(cache = %self.name, "lock wait over: loading without it");
                return LockOutcome::Proceed;
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
            poll = (poll * 2).min(opts.max_poll);
            if let Some(value) = self.fresh_value(key, skip, Counting::Quiet).await {
                return LockOutcome::Appeared(value);
            }
        }
    }
}

enum LockOutcome<V> {
    Held(LockToken),
    Appeared(Option<Arc<V>>),
    Proceed,
}

impl<V: CacheValue> Cache<V> {
    /// Load `keys` with at most `concurrency` loads at once (start-up warming). Keys already
    /// fresh in a tier are not loaded again. `progress` is called after each key.
    pub async fn warm<I, K, F, Fut, E>(
        &self,
        keys: I,
        concurrency: usize,
        load: F,
        progress: impl Fn(WarmProgress),
    ) -> WarmReport
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
        F: Fn(Bytes) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let keys: Vec<Bytes> =
            keys.into_iter().map(|k| Bytes::copy_from_slice(k.as_ref())).collect();
        let total = keys.len();
        let mut report = WarmReport::default();
        let mut results = futures::stream::iter(keys)
            .map(|key| {
                let load = load.clone();
                let k = key.clone();
                async move { self.get_or_load(&key, move || load(k)).await }
            })
            .buffer_unordered(concurrency.max(1));
        let mut done = 0;
        while let Some(r) = results.next().await {
            match r {
                Ok(Some(_)) => report.loaded += 1,
                Ok(None) => report.none += 1,
                Err(_) => report.failed += 1,
            }
            done += 1;
            progress(WarmProgress { done, total });
        }
        report
    }
}
