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
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use futures::FutureExt;

use super::context::{self, LoadContext};
use super::flight::{Joined, LoadResult, Publisher, Waiter};
use super::hierarchy::Hierarchy;
use super::lifetime::new_meta;
use super::loader::{Answer, BatchLoader, LoadFuture, Loader};
use super::lookup::Counting;
use super::options::{CacheValue, CallSettings, FailSafe, Lifetimes};
use super::rule::{stale_servable, Found};
use super::tiers::TierSet;
use crate::backplane::Invalidation;
use crate::entry::Entry;
use crate::envelope::Meta;
use crate::error::{BoxError, CacheError};
use crate::lock::LockToken;
use crate::time::now_ms;

/// What a flight asks the origin.
pub(super) enum Origin<V> {
    /// One key: its loader and the settings of its call.
    One(Loader<V>, CallSettings),
    /// Many keys in one loader call.
    Many(BatchLoader<V>),
}

/// One key a flight loads: the flight's publisher, the stale entry to fall back on, the entry
/// the load replaces (shown to a loader's context), the tiers the call skips, its fail-safe
/// and why it loads.
pub(super) struct Job<V> {
    pub(super) publisher: Publisher<V>,
    pub(super) stale: Option<Found<V>>,
    pub(super) previous: Option<Found<V>>,
    pub(super) skip: TierSet,
    pub(super) fail_safe: Option<FailSafe>,
    pub(super) renewal: Renewal,
}

/// Why a flight loads, which decides what a fresh value found in the tiers on the way means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// A miss, or a stale entry: a fresh value found after taking the fleet lock (its previous
    /// holder wrote it) or while waiting for it is the answer.
    Miss,
    /// An early refresh of an entry that is still fresh: the fresh value found after taking
    /// the lock is (most likely) the very entry being renewed, so the flight loads anyway; one
    /// that appears while another instance holds the lock is that instance's refresh.
    Refresh,
    /// A reload ([`CallOptions::reload`](crate::CallOptions::reload)): the flight loads whatever
    /// the tiers hold, and waits for no other instance's value.
    Reload,
}

impl<V> Job<V> {
    pub(super) fn key(&self) -> &Bytes {
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
    /// `renewal` is [`Renewal::Miss`] for a miss (looked again before loading), or
    /// [`Renewal::Reload`] to load whatever the tiers hold (no look in the tiers first, none
    /// after taking the lock); either way the write yields to an insert or invalidation of
    /// the key made while the load ran.
    pub fn join_or_load(
        self: &Arc<Self>,
        key: Bytes,
        loader: Loader<V>,
        stale: Option<Found<V>>,
        skip: TierSet,
        call: CallSettings,
        renewal: Renewal,
    ) -> Waiter<V> {
        let seq = self.stripes().seq(&key);
        match self.flights().join_or_start(&key, seq, self.metrics()) {
            Joined::Running(waiter) => waiter,
            Joined::Started(waiter, publisher) => {
                let (previous, fail_safe) = (stale.clone(), call.fail_safe);
                let job = Job { publisher, stale, previous, skip, fail_safe, renewal };
                let look_again = renewal == Renewal::Miss;
                self.spawn_run(vec![job], Origin::One(loader, call), look_again);
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
                    let fail_safe = self.opts().fail_safe;
                    let skip = TierSet::EMPTY;
                    let renewal = Renewal::Miss;
                    jobs.push(Job { publisher, stale, previous: None, skip, fail_safe, renewal });
                }
            }
        }
        if !jobs.is_empty() {
            self.spawn_run(jobs, Origin::Many(loader), true);
        }
        waiters
    }

    /// What a caller waiting on `waiter` is answered (see [`Waiter::answer`]).
    pub async fn wait(
        &self,
        waiter: Waiter<V>,
        stale: Option<&Found<V>>,
        call: &CallSettings,
    ) -> LoadResult<V> {
        waiter.answer(stale, call, self.metrics(), self.name()).await
    }

    /// Start a background refresh of `key` unless a load of it is already in flight;
    /// `previous` is the entry it renews, when the caller has it, and `renewal` says whether
    /// that entry is still fresh ([`Renewal::Refresh`]) or stale ([`Renewal::Miss`]).
    pub fn start_refresh(
        self: &Arc<Self>,
        key: Bytes,
        loader: Loader<V>,
        skip: TierSet,
        call: CallSettings,
        previous: Option<Found<V>>,
        renewal: Renewal,
    ) {
        let seq = self.stripes().seq(&key);
        let Some(publisher) = self.flights().start_unless_running(&key, seq) else { return };
        self.metrics().refreshes.increment(1);
        let fail_safe = call.fail_safe;
        self.spawn_run(
            vec![Job { publisher, stale: None, previous, skip, fail_safe, renewal }],
            Origin::One(loader, call),
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
        let watch = job.renewal != Renewal::Reload;
        match self.lock_or_wait(key, job.skip, watch).await {
            Locked::Held(token) => {
                // The previous holder may have written the value and released the lock just
                // before we took it: look in the tiers before loading again (on a miss only:
                // a refresh would find the entry it renews).
                if job.renewal == Renewal::Miss {
                    if let Some(value) = self.fresh_value(key, job.skip, Counting::Quiet).await {
                        self.unlock(key, Some(token)).await;
                        job.publisher.publish(Ok(value));
                        return Prepared::Answered;
                    }
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

    /// Call the origin and land what it answered (one key: `land.rs`; many: here).
    async fn load(&self, jobs: &[Job<V>], origin: Origin<V>) {
        match origin {
            Origin::One(loader, call) => {
                if let Some(job) = jobs.first() {
                    self.load_one(job, loader, call).await;
                }
            }
            Origin::Many(loader) => self.load_many(jobs, loader).await,
        }
    }

    /// Call a batch origin for `jobs` (untagged: a batch has no tags), land every job's value
    /// (or fail them all).
    async fn load_many(&self, jobs: &[Job<V>], loader: BatchLoader<V>) {
        // Above every floor raised before the load started (a clear or expiry in this very
        // millisecond came first).
        let started = self.fleet().created_now();
        // Read-your-writes: keys with a write-behind still owed to the origin are answered
        // with it; the origin is asked for the others (not at all when none is left).
        let mut queued: HashMap<Bytes, V> = HashMap::new();
        if let Some(behind) = self.behind() {
            for job in jobs {
                if let Some(v) = behind.pending_value(job.key()) {
                    queued.insert(job.key().clone(), v);
                }
            }
        }
        let keys: Vec<Bytes> =
            jobs.iter().map(|job| job.key().clone()).filter(|k| !queued.contains_key(k)).collect();
        let timeout = self.opts().hard_timeout;
        let (outcome, cost) = if keys.is_empty() {
            (Ok(HashMap::new()), Duration::ZERO)
        } else {
            self.call_origin((loader.0)(keys), timeout).await
        };
        let outcome = match outcome {
            Err(e) if !queued.is_empty() => {
                // The origin failed: the keys answered from the queue still land.
                let (answered, failed): (Vec<&Job<V>>, Vec<&Job<V>>) =
                    jobs.iter().partition(|job| queued.contains_key(job.key()));
                for job in failed {
                    self.fail(job, e.clone()).await;
                }
                let mut rest = Vec::with_capacity(answered.len());
                for job in &answered {
                    let value = queued.remove(job.key()).map(Arc::new);
                    let meta = new_meta(started, value.is_none(), None, cost);
                    rest.push(self.land_local(job, value, &meta, Lifetimes::default()).await);
                }
                for (job, (entries, wrote_local)) in answered.into_iter().zip(rest) {
                    self.land_rest(job, entries, wrote_local, started).await;
                }
                return;
            }
            Ok(mut found) => {
                found.extend(queued);
                Ok(found)
            }
            other => other,
        };
        match outcome {
            Ok(mut found) => {
                let mut rest = Vec::with_capacity(jobs.len());
                for job in jobs {
                    let value = found.remove(job.key()).map(Arc::new);
                    let meta = new_meta(started, value.is_none(), None, cost);
                    rest.push(self.land_local(job, value, &meta, Lifetimes::default()).await);
                }
                for (job, (entries, wrote_local)) in jobs.iter().zip(rest) {
                    self.land_rest(job, entries, wrote_local, started).await;
                }
            }
            Err(e) => {
                for job in jobs {
                    self.fail(job, e.clone()).await;
                }
            }
        }
    }

    /// Write a loaded value's entries to the tiers that are not in-process (after
    /// [`land_local`](Self::land_local)) and publish the notice of the write.
    pub(super) async fn land_rest(
        &self,
        job: &Job<V>,
        entries: Vec<(usize, Entry)>,
        wrote_local: bool,
        created_at: u64,
    ) {
        let seq = job.publisher.seq();
        let written = self.writer().write_if_unchanged(job.key(), seq, entries).await;
        if wrote_local || !written.is_empty() {
            self.notify_written(job.key(), created_at).await;
        }
    }

    /// The one call of an origin: under the (hard) `timeout`, timed and counted. A loader
    /// that panics is a failed load ([`LoadAborted`](CacheError::LoadAborted)): its waiters
    /// get the error (or fail-safe's stale value), nothing is cached, the cache keeps working.
    pub(super) async fn call_origin<T: Answer>(
        &self,
        load: LoadFuture<T>,
        timeout: Option<Duration>,
    ) -> (Result<T, CacheError>, Duration) {
        let started = Instant::now();
        let failed = |e: BoxError| CacheError::Load(Arc::from(e));
        // The loader is the caller's code: a panic in it must not take the flight's task down
        // with its lock held and its waiters told only "aborted". Nothing of the hierarchy's
        // state is borrowed by the future, so unwinding through it leaves nothing half-done.
        let load = std::panic::AssertUnwindSafe(load).catch_unwind();
        let unwound = |r: Result<Result<T, BoxError>, Box<dyn std::any::Any + Send>>| match r {
            Ok(r) => r.map_err(failed),
            Err(panic) => Err(CacheError::LoadAborted(format!(
                "the loader panicked: {}",
                panic_message(panic.as_ref())
            ))),
        };
        let outcome = match timeout {
            Some(hard) => match tokio::time::timeout(hard, load).await {
                Ok(r) => unwound(r),
                Err(_) => Err(CacheError::LoadTimeout(hard)),
            },
            None => unwound(load.await),
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
    pub(super) async fn land_local(
        &self,
        job: &Job<V>,
        value: Option<Arc<V>>,
        meta: &Meta,
        set: Lifetimes,
    ) -> (Vec<(usize, Entry)>, bool) {
        match self.entries().of_value(job.key(), value.as_ref(), meta, job.skip, set) {
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
    pub(super) async fn notify_written(&self, key: &Bytes, created_at: u64) {
        let what = Invalidation::Written { key: key.clone(), created_at };
        self.observe(&what);
        if let Err(e) = self.publish(what).await {
            tracing::debug!(cache = %self.name(), error = %e, "the notice of a loaded value was not published");
        }
    }

    /// A failed load: keep serving a servable stale value for fail-safe's throttle without
    /// calling the failing origin, and answer the error.
    pub(super) async fn fail(&self, job: &Job<V>, e: CacheError) {
        if let (Some(fs), Some(stale)) = (job.fail_safe, &job.stale) {
            if stale_servable(&stale.entry.meta, now_ms(), Some(fs)) {
                let writes = self.entries().throttled(job.key(), stale, fs.throttle, job.skip);
                self.writer().write_if_unchanged(job.key(), stale.seq, writes).await;
            }
        }
        job.publisher.publish(Err(e));
    }

    /// Call the origin directly: nothing is read from or written to any tier.
    pub async fn load_bypassing(&self, loader: Loader<V>, call: &CallSettings) -> LoadResult<V> {
        let ctx = LoadContext::new(Bytes::new(), None);
        let loaded = self.call_origin((loader.call)(ctx), call.timeout).await.0?;
        match loaded.answer {
            context::Answer::Value(v) => Ok(v.map(Arc::new)),
            context::Answer::NotModified => Err(not_modified_without_value()),
        }
    }

    /// Call a batch origin directly: nothing is read from or written to any tier.
    pub async fn load_many_bypassing(
        &self,
        keys: Vec<Bytes>,
        loader: BatchLoader<V>,
    ) -> Result<HashMap<Bytes, V>, CacheError> {
        self.call_origin((loader.0)(keys), self.opts().hard_timeout).await.0
    }

    /// Take the fleet-wide lock, or wait (polling the tiers with backoff, when `watch`) for the
    /// holder's value.
    async fn lock_or_wait(&self, key: &Bytes, skip: TierSet, watch: bool) -> Locked<V> {
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
            if !watch {
                continue;
            }
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

/// What a panic's payload says (a `&str` or a `String`, else nothing).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A loader that answered "not modified" with no value to keep.
pub(super) fn not_modified_without_value() -> CacheError {
    CacheError::Load(Arc::from(BoxError::from(
        "the loader answered \"not modified\", but there was no previous value to keep",
    )))
}
