//! The loader run: what a flight does once started, for one key (`get_or_load`, a refresh) or
//! for many (`get_many_or_load`'s misses), in one sequence:
//! 1. **look again** (the keys' values may have landed just before the flight started);
//! 2. **the fleet lock**: take it per key, or wait for its holder's value to appear;
//! 3. **stamp tags** before the origin is called (a tag invalidated during the load makes the
//!    value born invalid); the value's `created_at` is this instant, before the origin is read.
//!    When the generation store is unavailable the load still runs and answers, but its value
//!    is not cached (it could not be told from an invalidated one);
//! 4. **call the origin** once, under the hard timeout, counted in `cache_loads_total`;
//! 5. **land**: write the in-process tiers, answer the waiters, write the other tiers and
//!    publish a value-free notice of the write (other instances drop their local copies) — or,
//!    on failure, re-stamp a servable stale value for fail-safe's throttle and answer the error
//!    (errors are never cached); release the locks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::flight::{Joined, LoadResult, Publisher, Waiter};
use super::hierarchy::Hierarchy;
use super::lifetime::new_meta;
use super::lookup::Counting;
use super::options::CacheValue;
use super::rule::{stale_servable, Found};
use super::tags;
use super::tiers::TierSet;
use crate::backplane::Invalidation;
use crate::entry::Entry;
use crate::envelope::Meta;
use crate::error::{BoxError, CacheError};
use crate::lock::LockToken;
use crate::time::now_ms;

type LoadFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A type-erased loader of one key.
pub(super) struct Loader<V>(Box<dyn FnOnce() -> LoadFuture<Option<V>> + Send>);

impl<V: CacheValue> Loader<V> {
    pub fn new<F, Fut, E>(f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self(Box::new(move || Box::pin(async move { f().await.map_err(Into::into) })))
    }
}

type LoadManyFn<V> = dyn FnOnce(Vec<Bytes>) -> LoadFuture<HashMap<Bytes, V>> + Send;

/// A type-erased loader of many keys: the values it found, by key.
pub(super) struct BatchLoader<V>(Box<LoadManyFn<V>>);

impl<V: CacheValue> BatchLoader<V> {
    pub fn new<F, Fut, E>(f: F) -> Self
    where
        F: FnOnce(Vec<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<HashMap<Bytes, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self(Box::new(move |keys| Box::pin(async move { f(keys).await.map_err(Into::into) })))
    }
}

/// What a flight asks the origin.
pub(super) enum Origin<V> {
    /// One key: its loader and the tags of its value.
    One(Loader<V>, Vec<Arc<str>>),
    /// Many keys in one loader call.
    Many(BatchLoader<V>),
}

/// An origin's answer, as `cache_loads_total` counts it.
trait Answer {
    /// `ok` (true) or `none`.
    fn has_value(&self) -> bool;
}

impl<V> Answer for Option<V> {
    fn has_value(&self) -> bool {
        self.is_some()
    }
}

impl<V> Answer for HashMap<Bytes, V> {
    /// A batch load that answered is counted `ok`, whatever it found.
    fn has_value(&self) -> bool {
        true
    }
}

/// One key a flight loads: the flight's publisher, the stale entry to fall back on, and the
/// tiers the call skips.
struct Job<V> {
    publisher: Publisher<V>,
    stale: Option<Found<V>>,
    skip: TierSet,
}

impl<V> Job<V> {
    fn key(&self) -> &Bytes {
        self.publisher.key()
    }
}

/// What the lock step said of a key.
enum Locked<V> {
    /// This instance holds the lock: load.
    Held(LockToken),
    /// The holder's value appeared in the tiers.
    Appeared(Option<Arc<V>>),
    /// No lock (none configured, unavailable, or the wait is over): load.
    Without,
}

/// A job after the look-again and lock steps.
enum Prepared {
    /// Its waiters have their answer.
    Answered,
    /// Load it (holding the lock when there is a token).
    Load(Option<LockToken>),
}

impl<V: CacheValue> Hierarchy<V> {
    /// Join the flight of `key`, or start one that loads it with `loader`. Returns the waiter.
    pub fn join_or_load(
        self: &Arc<Self>,
        key: Bytes,
        loader: Loader<V>,
        stale: Option<Found<V>>,
        skip: TierSet,
        tags: Vec<Arc<str>>,
    ) -> Waiter<V> {
        let seq = self.stripes().seq(&key);
        match self.flights().join_or_start(&key, seq, self.metrics()) {
            Joined::Running(waiter) => waiter,
            Joined::Started(waiter, publisher) => {
                let job = Job { publisher, stale, skip };
                self.spawn_run(vec![job], Origin::One(loader, tags), true);
                waiter
            }
        }
    }

    /// Join the flights of the keys already loading, and start one for each of the others, all
    /// loaded by one call of `loader`. Returns a waiter per key, in order.
    pub fn join_or_load_many(
        self: &Arc<Self>,
        keys: Vec<(Bytes, Option<Found<V>>)>,
        loader: BatchLoader<V>,
    ) -> Vec<Waiter<V>> {
        let mut waiters = Vec::with_capacity(keys.len());
        let mut jobs = Vec::new();
        for (key, stale) in keys {
            let seq = self.stripes().seq(&key);
            match self.flights().join_or_start(&key, seq, self.metrics()) {
                Joined::Running(waiter) => waiters.push(waiter),
                Joined::Started(waiter, publisher) => {
                    waiters.push(waiter);
                    jobs.push(Job { publisher, stale, skip: TierSet::EMPTY });
                }
            }
        }
        if !jobs.is_empty() {
            self.spawn_run(jobs, Origin::Many(loader), true);
        }
        waiters
    }

    /// What a caller waiting on `waiter` is answered (see [`Waiter::answer`]).
    pub async fn wait(&self, waiter: Waiter<V>, stale: Option<&Found<V>>) -> LoadResult<V> {
        waiter.answer(stale, self.opts(), self.metrics(), self.name()).await
    }

    /// Start a background refresh of `key` unless a load of it is already in flight.
    pub fn start_refresh(
        self: &Arc<Self>,
        key: Bytes,
        loader: Loader<V>,
        skip: TierSet,
        tags: Vec<Arc<str>>,
    ) {
        let seq = self.stripes().seq(&key);
        let Some(publisher) = self.flights().start_unless_running(&key, seq) else { return };
        self.metrics().refreshes.increment(1);
        self.spawn_run(
            vec![Job { publisher, stale: None, skip }],
            Origin::One(loader, tags),
            false,
        );
    }

    /// Run the flights of `jobs` in a task of their own (a caller that gives up strands nobody).
    fn spawn_run(self: &Arc<Self>, jobs: Vec<Job<V>>, origin: Origin<V>, look_again: bool) {
        let hierarchy = self.clone();
        tokio::spawn(async move {
            let (jobs, tokens) = hierarchy.prepare_all(jobs, look_again).await;
            if !jobs.is_empty() {
                hierarchy.load(&jobs, origin).await;
            }
            for (job, token) in jobs.iter().zip(tokens) {
                hierarchy.unlock(job.key(), token).await;
            }
        });
    }

    /// The look-again and lock steps of every job at once; the jobs still to load, with their
    /// lock tokens.
    async fn prepare_all(
        &self,
        jobs: Vec<Job<V>>,
        look_again: bool,
    ) -> (Vec<Job<V>>, Vec<Option<LockToken>>) {
        let prepared =
            futures::future::join_all(jobs.iter().map(|job| self.prepare(job, look_again))).await;
        jobs.into_iter()
            .zip(prepared)
            .filter_map(|(job, p)| match p {
                Prepared::Load(token) => Some((job, token)),
                Prepared::Answered => None,
            })
            .unzip()
    }

    /// Look again, then take the fleet lock or wait for its holder's value.
    async fn prepare(&self, job: &Job<V>, look_again: bool) -> Prepared {
        let key = job.key();
        // A caller may have missed in the tiers just before a previous flight wrote them and
        // left the map. A flight writes the in-process tiers before it answers, so looking at
        // those again is enough (and costs no I/O: a slow remote tier is not waited on twice).
        if look_again {
            let skip = job.skip.union(self.tiers().recheck_skips());
            if let Some(value) = self.fresh_value(key, skip, Counting::Quiet).await {
                job.publisher.publish(Ok(value));
                return Prepared::Answered;
            }
        }
        match self.lock_or_wait(key, job.skip).await {
            Locked::Held(token) => {
                // The previous holder may have written the value and released the lock just
                // before we took it: look in the tiers before loading again.
                if let Some(value) = self.fresh_value(key, job.skip, Counting::Quiet).await {
                    self.unlock(key, Some(token)).await;
                    job.publisher.publish(Ok(value));
                    return Prepared::Answered;
                }
                Prepared::Load(Some(token))
            }
            Locked::Appeared(value) => {
                job.publisher.publish(Ok(value));
                Prepared::Answered
            }
            Locked::Without => Prepared::Load(None),
        }
    }

    /// Stamp, call the origin, land every job's value (or fail them all).
    async fn load(&self, jobs: &[Job<V>], origin: Origin<V>) {
        let tags = match &origin {
            Origin::One(_, tags) => tags.as_slice(),
            Origin::Many(_) => &[],
        };
        let started = now_ms();
        let stamps = tags::stamp(self.generations(), &self.guards().generations, tags).await;
        let (outcome, cost) = self.ask(origin, jobs).await;
        let stamps = match (stamps, outcome) {
            (Ok(stamps), outcome) => (stamps, outcome),
            (Err(e), Ok(values)) => {
                // Answered, not cached: without its stamps the value could outlive an
                // invalidation of its tags.
                tracing::debug!(cache = %self.name(), error = %e, "tags not stamped: the loaded value is not cached");
                for (job, value) in jobs.iter().zip(values) {
                    job.publisher.publish(Ok(value));
                }
                return;
            }
            (Err(_), Err(e)) => (None, Err(e)),
        };
        let (stamps, outcome) = stamps;
        match outcome {
            Ok(values) => {
                let mut rest = Vec::with_capacity(jobs.len());
                for (job, value) in jobs.iter().zip(values) {
                    let meta = new_meta(started, value.is_none(), stamps.clone(), cost);
                    rest.push(self.land_local(job, value, &meta).await);
                }
                for (job, (entries, wrote_local)) in jobs.iter().zip(rest) {
                    let seq = job.publisher.seq();
                    let written = self.writer().write_if_unchanged(job.key(), seq, entries).await;
                    if wrote_local || !written.is_empty() {
                        self.notify_written(job.key(), started).await;
                    }
                }
            }
            Err(e) => {
                for job in jobs {
                    self.fail(job, e.clone()).await;
                }
            }
        }
    }

    /// Call the origin for `jobs`: a value (or none) per job, in order, and what it cost.
    async fn ask(
        &self,
        origin: Origin<V>,
        jobs: &[Job<V>],
    ) -> (Result<Vec<Option<Arc<V>>>, CacheError>, Duration) {
        match origin {
            Origin::One(loader, _) => {
                let (outcome, cost) = self.call_origin((loader.0)()).await;
                (outcome.map(|value| vec![value.map(Arc::new)]), cost)
            }
            Origin::Many(loader) => {
                let keys = jobs.iter().map(|job| job.key().clone()).collect();
                let (outcome, cost) = self.call_origin((loader.0)(keys)).await;
                let values = |mut found: HashMap<Bytes, V>| {
                    jobs.iter().map(|job| found.remove(job.key()).map(Arc::new)).collect()
                };
                (outcome.map(values), cost)
            }
        }
    }

    /// The one call of an origin: under the hard timeout, timed and counted.
    async fn call_origin<T: Answer>(
        &self,
        load: LoadFuture<T>,
    ) -> (Result<T, CacheError>, Duration) {
        let started = Instant::now();
        let failed = |e: BoxError| CacheError::Load(Arc::from(e));
        let outcome = match self.opts().hard_timeout {
            Some(hard) => match tokio::time::timeout(hard, load).await {
                Ok(r) => r.map_err(failed),
                Err(_) => Err(CacheError::LoadTimeout(hard)),
            },
            None => load.await.map_err(failed),
        };
        let cost = started.elapsed();
        let m = self.metrics();
        m.load_duration.record(cost);
        match &outcome {
            Ok(answer) if answer.has_value() => m.loads_ok.increment(1),
            Ok(_) => m.loads_none.increment(1),
            Err(e) => {
                match e {
                    CacheError::LoadTimeout(_) => m.loads_timeout.increment(1),
                    _ => m.loads_error.increment(1),
                }
                tracing::debug!(cache = %self.name(), error = %e, "load failed");
            }
        }
        (outcome, cost)
    }

    /// Write a loaded value to the in-process tiers and answer the waiters; the entries of the
    /// other tiers, to be written after (the flight stays joinable until both are written, see
    /// [`Tiers::recheck_skips`](super::tiers::Tiers::recheck_skips)), and whether an in-process
    /// tier was written.
    async fn land_local(
        &self,
        job: &Job<V>,
        value: Option<Arc<V>>,
        meta: &Meta,
    ) -> (Vec<(usize, Entry)>, bool) {
        match self.entries().of_value(job.key(), value.as_ref(), meta, job.skip) {
            Ok(entries) => {
                let (objects, remote): (Vec<_>, Vec<_>) =
                    entries.into_iter().partition(|(j, _)| self.tiers().get(*j).holds_objects());
                let seq = job.publisher.seq();
                let written = self.writer().write_if_unchanged(job.key(), seq, objects).await;
                job.publisher.publish(Ok(value));
                (remote, !written.is_empty())
            }
            Err(e) => {
                job.publisher.publish(Err(e));
                (Vec::new(), false)
            }
        }
    }

    /// A load's value was written: observed by every tier, and a notice for the other
    /// instances (a failure to publish is logged: nobody waits for it).
    async fn notify_written(&self, key: &Bytes, created_at: u64) {
        let what = Invalidation::Written { key: key.clone(), created_at };
        self.observe(&what);
        if let Err(e) = self.publish(what).await {
            tracing::debug!(cache = %self.name(), error = %e, "the notice of a loaded value was not published");
        }
    }

    /// A failed load: keep serving a servable stale value for fail-safe's throttle without
    /// calling the failing origin, and answer the error.
    async fn fail(&self, job: &Job<V>, e: CacheError) {
        if let (Some(fs), Some(stale)) = (self.opts().fail_safe, &job.stale) {
            if stale_servable(&stale.entry.meta, now_ms(), Some(fs)) {
                let writes = self.entries().throttled(job.key(), stale, fs.throttle, job.skip);
                self.writer().write_if_unchanged(job.key(), stale.seq, writes).await;
            }
        }
        job.publisher.publish(Err(e));
    }

    /// Call the origin directly: nothing is read from or written to any tier.
    pub async fn load_bypassing(&self, loader: Loader<V>) -> LoadResult<V> {
        self.call_origin((loader.0)()).await.0.map(|v| v.map(Arc::new))
    }

    /// Call a batch origin directly: nothing is read from or written to any tier.
    pub async fn load_many_bypassing(
        &self,
        keys: Vec<Bytes>,
        loader: BatchLoader<V>,
    ) -> Result<HashMap<Bytes, V>, CacheError> {
        self.call_origin((loader.0)(keys)).await.0
    }

    /// Take the fleet-wide lock, or wait (polling the tiers with backoff) for the holder's value.
    async fn lock_or_wait(&self, key: &Bytes, skip: TierSet) -> Locked<V> {
        let Some((lock, opts)) = self.lock() else { return Locked::Without };
        // A wait too long to be an instant is no deadline at all.
        let deadline = Instant::now().checked_add(opts.wait);
        let mut poll = opts.first_poll;
        loop {
            match self.guards().lock.run(lock.try_acquire(key, opts.ttl)).await {
                Ok(Some(token)) => return Locked::Held(token),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(cache = %self.name(), error = %e, "lock unavailable: loading without it");
                    return Locked::Without;
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                tracing::debug!(cache = %self.name(), "lock wait over: loading without it");
                return Locked::Without;
            }
            tokio::time::sleep(left.map_or(poll, |left| poll.min(left))).await;
            poll = poll.saturating_mul(2).min(opts.max_poll);
            if let Some(value) = self.fresh_value(key, skip, Counting::Quiet).await {
                return Locked::Appeared(value);
            }
        }
    }

    /// Release the fleet lock of `key` when held (a failed release is left to expire).
    async fn unlock(&self, key: &Bytes, token: Option<LockToken>) {
        let (Some(token), Some((lock, _))) = (token, self.lock()) else { return };
        if let Err(e) = self.guards().lock.run(lock.release(key, &token)).await {
            tracing::debug!(cache = %self.name(), error = %e, "lock release failed (it expires)");
        }
    }
}
