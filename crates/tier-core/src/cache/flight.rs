//! Single-flight: one load per key per process. Concurrent callers of a key join one
//! [`Flight`]; the load runs in a task of its own (started by the loader run, `load.rs`), so a
//! caller that gives up strands nobody; a flight leaves the map when its task ends, however it
//! ends, through its [`Publisher`]'s guard.
//!
//! A flight is joined only while it is still the current one (no insert or invalidation of its
//! key since it started): nobody is handed a value that was invalidated after it was loaded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::sync::watch;

use super::options::CallSettings;
use super::rule::{stale_servable, Found};
use crate::error::CacheError;
use crate::metrics::CacheMetrics;
use crate::time::now_ms;

/// What a load answers: the value, `None` when the origin has none, or the error.
pub(super) type LoadResult<V> = Result<Option<Arc<V>>, CacheError>;
type Slot<V> = Option<LoadResult<V>>;
type Map<V> = HashMap<Bytes, Flight<V>>;

/// A load in flight: its id, the receiver of its result, and how many callers wait for it.
struct Flight<V> {
    id: u64,
    /// The key's write sequence when the flight started.
    seq: u64,
    rx: watch::Receiver<Slot<V>>,
    waiters: Arc<AtomicUsize>,
}

impl<V> Flight<V> {
    /// A flight whose task died (loader panic) without a result: its guard is about to remove
    /// it; it is not joined.
    fn is_dead(&self) -> bool {
        self.rx.has_changed().is_err() && self.rx.borrow().is_none()
    }

    /// A flight that answered an error and is finishing (a caller arriving now asks the origin
    /// again: errors are never cached, not even for the instant a flight takes to end).
    fn failed(&self) -> bool {
        matches!(&*self.rx.borrow(), Some(Err(_)))
    }
}

/// In-flight loads by key.
pub(super) struct Flights<V> {
    map: Arc<Mutex<Map<V>>>,
    ids: AtomicU64,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Self { map: Arc::default(), ids: AtomicU64::new(0) }
    }
}

/// A caller's place in a flight: counted in the flight's waiters while it lives.
pub(super) struct Waiter<V> {
    rx: watch::Receiver<Slot<V>>,
    waiters: Arc<AtomicUsize>,
    /// Joined a flight another call started (its wait is bounded by its own load timeout; the
    /// starter's is the flight's).
    joined: bool,
}

impl<V> Waiter<V> {
    fn new(flight: &Flight<V>, joined: bool) -> Self {
        flight.waiters.fetch_add(1, Ordering::SeqCst);
        Self { rx: flight.rx.clone(), waiters: flight.waiters.clone(), joined }
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
    map: Weak<Mutex<Map<V>>>,
    key: Bytes,
    id: u64,
}

impl<V> Drop for FlightGuard<V> {
    fn drop(&mut self) {
        if let Some(map) = self.map.upgrade() {
            let mut flights = map.lock().unwrap_or_else(|p| p.into_inner());
            if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
                flights.remove(&self.key);
            }
        }
    }
}

/// The sending end of a flight, held by the task that loads; the flight leaves the map when it
/// is dropped (after the task wrote every tier).
pub(super) struct Publisher<V> {
    tx: watch::Sender<Slot<V>>,
    guard: FlightGuard<V>,
    seq: u64,
}

impl<V> Publisher<V> {
    /// Hand `result` to every waiter.
    pub fn publish(&self, result: LoadResult<V>) {
        let _ = self.tx.send(Some(result));
    }

    /// The key loaded.
    pub fn key(&self) -> &Bytes {
        &self.guard.key
    }

    /// The key's write sequence when the flight started.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// What [`Flights::join_or_start`] did.
pub(super) enum Joined<V> {
    /// A flight of the key was running: wait for it.
    Running(Waiter<V>),
    /// A new flight: wait for it, and load through the publisher.
    Started(Waiter<V>, Publisher<V>),
}

impl<V> Flights<V> {
    fn lock(&self) -> MutexGuard<'_, Map<V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new flight of `key` in the map, with its first waiter.
    fn insert(&self, flights: &mut Map<V>, key: &Bytes, seq: u64) -> (Waiter<V>, Publisher<V>) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let flight = Flight { id, seq, rx, waiters: Arc::default() };
        let waiter = Waiter::new(&flight, false);
        flights.insert(key.clone(), flight);
        let guard = FlightGuard { map: Arc::downgrade(&self.map), key: key.clone(), id };
        (waiter, Publisher { tx, guard, seq })
    }

    /// Join the flight of `key` if it is the current one (started at write sequence `seq`, the
    /// key's now), or start one.
    pub fn join_or_start(&self, key: &Bytes, seq: u64, metrics: &CacheMetrics) -> Joined<V> {
        let mut flights = self.lock();
        if let Some(flight) = flights.get(key) {
            if !flight.is_dead() && !flight.failed() && flight.seq == seq {
                metrics.coalesced.increment(1);
                return Joined::Running(Waiter::new(flight, true));
            }
        }
        let (waiter, publisher) = self.insert(&mut flights, key, seq);
        Joined::Started(waiter, publisher)
    }

    /// Start a flight of `key` that nobody waits for (a background refresh), unless one is
    /// running.
    pub fn start_unless_running(&self, key: &Bytes, seq: u64) -> Option<Publisher<V>> {
        let mut flights = self.lock();
        if flights.contains_key(key) {
            return None;
        }
        Some(self.insert(&mut flights, key, seq).1)
    }

    /// How many callers wait for the flight of `key` (0 when none is running).
    pub fn waiters(&self, key: &[u8]) -> usize {
        self.lock().get(key).map_or(0, |f| f.waiters.load(Ordering::SeqCst))
    }
}

impl<V> Waiter<V> {
    /// The flight's result.
    async fn result(&mut self) -> LoadResult<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(slot) => slot.clone().unwrap_or_else(|| {
                Err(CacheError::LoadAborted("flight ended without a result".into()))
            }),
            Err(_) => Err(CacheError::LoadAborted("loader task ended".into())),
        }
    }

    /// What the waiting caller is answered: the flight's result — waited for at most the call's
    /// own load timeout when it joined another call's flight; with a stale value and a soft timeout, the stale value when the
    /// load is slow; on a load error, the stale value when the call's fail-safe allows.
    pub async fn answer(
        mut self,
        stale: Option<&Found<V>>,
        call: &CallSettings,
        metrics: &CacheMetrics,
        cache: &str,
    ) -> LoadResult<V> {
        let servable = |s: &Found<V>| stale_servable(&s.entry.meta, now_ms(), call.fail_safe);
        let soft = match (call.soft_timeout, stale) {
            (Some(soft), Some(stale)) if servable(stale) => Some((soft, stale)),
            _ => None,
        };
        let bound = if self.joined { call.wait_bound } else { None };
        let wait = async move {
            match bound {
                Some(t) => tokio::time::timeout(t, self.result())
                    .await
                    .unwrap_or(Err(CacheError::LoadTimeout(t))),
                None => self.result().await,
            }
        };
        let result = match soft {
            Some((soft, stale)) => match tokio::time::timeout(soft, wait).await {
                Ok(r) => r,
                Err(_) => {
                    metrics.stale_served.increment(1);
                    return Ok(stale.value.clone());
                }
            },
            None => wait.await,
        };
        match (result, stale) {
            (Err(e), Some(stale)) if call.fail_safe.is_some() && servable(stale) => {
                if let Some(suppressed) = metrics.fail_safe_events.admit() {
                    tracing::warn!(target: "tier", cache, error = %e, suppressed, "origin failed: serving stale value (fail-safe)");
                }
                metrics.stale_served.increment(1);
                Ok(stale.value.clone())
            }
            (r, _) => r,
        }
    }
}
