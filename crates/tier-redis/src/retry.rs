//! Background retry of failed writes, so that a Redis blip does not leave L3 permanently behind.
//!
//! Invariants:
//! - Bounded: at most `capacity` keys wait; a new key beyond that is dropped and counted
//!   (`outcome="dropped_full"`).
//! - Deduplicated per key: the latest failed operation on a key replaces an older one
//!   (`outcome="replaced"`); a successful direct write or remove of the key cancels what waits, so
//!   an older value is not written over a newer one and an invalidated value is not resurrected.
//!   (A retry already *in flight* when the direct write lands can still finish after it: the
//!   window is one round trip.)
//! - A retried write goes through the compare-and-set script like any other: it never replaces
//!   a newer entry. A pending write whose entry has passed `stale_until` is never written: an
//!   older entry of the key is removed instead (`outcome="expired"`), so that it does not stay
//!   in its place. A pending write older than a tombstone's lifetime (60 s) is dropped
//!   (`outcome="too_old"`): a removal after it may have no tombstone left to refuse it.
//! - Told of every invalidation and insert notice the hierarchy applies ([`RetryQueue::observe`]),
//!   it drops the pending writes they make obsolete.
//! - The worker backs off exponentially (50 ms up to 5 s) while writes keep failing, and stops when
//!   the tier is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use tier_core::spi::Invalidation;

use crate::commands::{self, Write};
use crate::connection::RedisConnection;
use crate::keys::KeyPrefix;
use crate::metrics::{Labels, RETRY_QUEUE, WRITE_RETRIES};

#[derive(Default)]
struct State {
    ops: HashMap<Bytes, Write>,
    order: VecDeque<Bytes>,
    /// The key the worker is writing now; it keeps its place in the capacity until done.
    in_flight: Option<Bytes>,
    /// The write in flight, made obsolete meanwhile ([`RetryQueue::observe`]): not put back if
    /// it fails, not counted.
    in_flight_op: Option<Write>,
    in_flight_obsolete: bool,
}

impl State {
    /// Keys waiting or being written (a key both in flight and queued again counts once).
    fn len(&self) -> usize {
        let in_flight_only = !self.in_flight_obsolete
            && self.in_flight.as_ref().is_some_and(|k| !self.ops.contains_key(k));
        self.ops.len() + usize::from(in_flight_only)
    }
}

pub(crate) struct RetryQueue {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    labels: Arc<RwLock<Labels>>,
}

impl RetryQueue {
    pub(crate) fn new(capacity: usize, labels: Arc<RwLock<Labels>>) -> Self {
        Self { state: Mutex::new(State::default()), notify: Notify::new(), capacity, labels }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the map and the queue consistent (no panics inside).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, outcome: &'static str, n: u64) {
        let labels = crate::metrics::read(&self.labels);
        metrics::counter!(WRITE_RETRIES, "cache" => labels.cache, "tier" => labels.tier, "outcome" => outcome)
            .increment(n);
    }

    fn gauge(&self, len: usize) {
        let labels = crate::metrics::read(&self.labels);
        metrics::gauge!(RETRY_QUEUE, "cache" => labels.cache, "tier" => labels.tier)
            .set(len as f64);
    }

    /// Queue `op` on `key` (the key without prefix).
    pub(crate) fn push(&self, key: Bytes, op: Write) {
        let (outcome, len) = {
            let mut st = self.state();
            if let Some(slot) = st.ops.get_mut(&key) {
                *slot = op;
                ("replaced", st.len())
            } else if st.in_flight.as_ref() == Some(&key) {
                // A newer op on the key being written takes that key's place (it is not a new
                // key): without it, a failed in-flight retry would come back and write the
                // older value over the newer intent.
                st.ops.insert(key.clone(), op);
                st.order.push_back(key);
                ("replaced", st.len())
            } else if st.len() >= self.capacity {
                ("dropped_full", st.len())
            } else {
                st.ops.insert(key.clone(), op);
                st.order.push_back(key);
                ("queued", st.len())
            }
        };
        self.count(outcome, 1);
        self.gauge(len);
        if outcome == "queued" || outcome == "replaced" {
            self.notify.notify_one();
        }
    }

    /// A direct write or remove of `key` succeeded: what waited for it is obsolete.
    pub(crate) fn cancel(&self, key: &[u8]) {
        let len = {
            let mut st = self.state();
            if st.ops.is_empty() || st.ops.remove(key).is_none() {
                return;
            }
            st.len()
        };
        self.gauge(len);
    }

    /// The keys starting with `prefix` were cleared (every key, for an empty prefix): what
    /// waited for them is not wanted any more.
    pub(crate) fn cancel_under(&self, prefix: &[u8]) {
        let len = {
            let mut st = self.state();
            if prefix.is_empty() {
                st.ops.clear();
                st.order.clear();
            } else {
                st.ops.retain(|k, _| !k.starts_with(prefix));
                // Keys in `order` without an op are skipped by `pop`.
            }
            st.len()
        };
        self.gauge(len);
    }

    /// An invalidation or insert notice was applied (here or on another instance): drop what
    /// waits and is made obsolete by it (`outcome="obsolete"`): a value of the key removed, or
    /// written anew (strictly newer: its own notice leaves a write alone); every value on a
    /// clear (created at or before it) or a new namespace (the tier holds one cache); the values
    /// carrying an invalidated tag. Pending removals stay. A write in flight is not stopped (it goes
    /// through the compare-and-set script, which refuses it if it is older) but is not put back
    /// if it fails.
    pub(crate) fn observe(&self, what: &Invalidation) {
        let (dropped, len) = {
            let mut st = self.state();
            let before = st.len();
            if before == 0 {
                return;
            }
            match what {
                // One key: a lookup, not a walk over the queue.
                Invalidation::Key(k) | Invalidation::Written { key: k, .. } => {
                    if st.ops.get(&k[..]).is_some_and(|op| obsolete(what, k, op)) {
                        st.ops.remove(&k[..]);
                    }
                }
                _ => st.ops.retain(|k, op| !obsolete(what, k, op)),
            }
            let st = &mut *st;
            if let (Some(k), Some(op)) = (&st.in_flight, &st.in_flight_op) {
                st.in_flight_obsolete |= obsolete(what, k, op);
            }
            (before - st.len(), st.len())
        };
        if dropped > 0 {
            self.count("obsolete", dropped as u64);
            self.gauge(len);
        }
    }

    /// Keys waiting, including the one being written (for tests and stats).
    pub(crate) fn len(&self) -> usize {
        self.state().len()
    }

    /// Take the oldest op; it stays counted (in flight) until [`Self::done`] or
    /// [`Self::requeue`].
    fn pop(&self) -> Option<(Bytes, Write)> {
        let mut st = self.state();
        while let Some(key) = st.order.pop_front() {
            if let Some(op) = st.ops.remove(&key) {
                st.in_flight = Some(key.clone());
                st.in_flight_op = Some(op.clone());
                st.in_flight_obsolete = false;
                return Some((key, op));
            }
        }
        None
    }

    /// The in-flight op was written (or dropped).
    fn done(&self) {
        let mut st = self.state();
        st.in_flight = None;
        st.in_flight_op = None;
    }

    /// Put back the in-flight op whose retry failed, unless a newer one arrived meanwhile (its
    /// place in the capacity was kept, so it always fits).
    fn requeue(&self, key: Bytes, op: Write) {
        let mut st = self.state();
        st.in_flight = None;
        st.in_flight_op = None;
        if !st.in_flight_obsolete && !st.ops.contains_key(&key) {
            st.ops.insert(key.clone(), op);
            st.order.push_back(key);
        }
    }
}

/// Does `what` (an applied invalidation or insert notice) make the pending `op` on `key`
/// obsolete?
fn obsolete(what: &Invalidation, key: &[u8], op: &Write) -> bool {
    // A pending removal is never dropped: whatever came, removing the key again is right (and
    // the notice of that very removal must not cancel its retry).
    if matches!(op, Write::Remove { .. }) {
        return false;
    }
    match what {
        Invalidation::Key(k) => &k[..] == key,
        // Strictly newer only: the notice of this very write (or one of the same instant: the
        // compare-and-set decides) leaves it alone.
        Invalidation::Written { key: k, created_at } => {
            &k[..] == key && op.created_at() < *created_at
        }
        Invalidation::Tag(tag) => carries(op, tag),
        Invalidation::Clear { at } => op.created_at() <= *at,
        // An expiry leaves a marker (or a tombstone) created at `at` that refuses older writes,
        // and the expiry floor makes them stale: a pending write of the key, or of any key,
        // created at or before it would only be refused.
        Invalidation::Expire { key: Some(k), at } => &k[..] == key && op.created_at() <= *at,
        Invalidation::Expire { key: None, at } => op.created_at() <= *at,
        // A new namespace (or what this version does not know): every value of the cache.
        _ => true,
    }
}

/// Does `op` store a value stamped with `tag`?
fn carries(op: &Write, tag: &str) -> bool {
    let Write::Set { envelope, .. } = op else { return false };
    // An envelope that does not parse cannot be told apart: drop it with the tag's entries.
    tier_core::spi::envelope::decode_meta(envelope)
        .map_or(true, |(meta, _)| meta.tags().iter().any(|t| &*t.tag == tag))
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The worker: drains the queue, one key at a time, backing off while Redis keeps failing.
/// A key whose Cluster master's breaker is open waits at the back of the queue without being
/// sent (sending it would only wait for the lost master, and make the cluster client reconnect
/// meanwhile).
pub(crate) async fn run(
    queue: Arc<RetryQueue>,
    conn: RedisConnection,
    prefix: KeyPrefix,
    nodes: Option<Arc<crate::nodes::Nodes>>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some((key, op)) = queue.pop() else {
            queue.notify.notified().await;
            continue;
        };
        if nodes.as_ref().is_some_and(|n| n.is_out(crate::connection::slot(&prefix.key(&key)))) {
            queue.requeue(key, op);
            tokio::time::sleep(MIN_BACKOFF).await;
            continue;
        }
        let now = tier_core::spi::now_ms();
        // A write older than a tombstone's lifetime is dropped: a removal it came before may
        // have left no tombstone by now to refuse it.
        // Counted before `done`: once the queue says it is empty, its outcome is counted (a
        // test that waited for the empty queue read the counter at 0 on Valkey, 1 run in CI).
        if op.too_old_at(now) {
            queue.count("too_old", 1);
            queue.done();
            queue.gauge(queue.len());
            continue;
        }
        // An expired write removes only an older entry (`commands::write`): an older value of
        // the key may have reached Redis after all (a command that timed out on our side can
        // still be delivered), and it must not stay in place of the newer, expired one.
        let expired = op.expired_at(now);
        let redis_key = prefix.key(&key);
        let build = |form| commands::write(&redis_key, &op, now, form);
        match conn
            .script_within::<redis::Value, _>(Some(conn.op_timeout()), "retry write", build)
            .await
        {
            Ok(_) => {
                queue.count(if expired { "expired" } else { "written" }, 1);
                queue.done();
                queue.gauge(queue.len());
                backoff = MIN_BACKOFF;
            }
            Err(err) => {
                tracing::debug!(error = %err, "retry of a Redis write failed; backing off {backoff:?}");
                queue.count("failed", 1);
                queue.requeue(key, op);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> RetryQueue {
        RetryQueue::new(capacity, Arc::new(RwLock::new(Labels::default())))
    }

    fn set(stale_until: u64) -> Write {
        Write::Set {
            envelope: Bytes::from_static(b"x"),
            created_at: 1,
            stale_until,
            wins_tie: false,
        }
    }

    #[test]
    fn dedups_bounds_and_cancels() {
        let q = queue(2);
        q.push(Bytes::from_static(b"a"), set(1));
        q.push(Bytes::from_static(b"a"), set(2)); // replaces
        q.push(Bytes::from_static(b"b"), Write::Remove { at: 1 });
        q.push(Bytes::from_static(b"c"), set(3)); // full: dropped
        assert_eq!(q.len(), 2);
        let (k, op) = q.pop().expect("a");
        assert_eq!(&k[..], b"a");
        assert!(matches!(op, Write::Set { stale_until: 2, .. }));
        q.cancel(b"b");
        assert!(q.pop().is_none());
        q.push(Bytes::from_static(b"d"), set(4));
        q.push(Bytes::from_static(b"ef"), set(4));
        q.cancel_under(b"e");
        let (k, _) = q.pop().expect("d is not under e");
        assert_eq!(&k[..], b"d");
        q.done();
        assert!(q.pop().is_none());
        q.push(Bytes::from_static(b"g"), set(5));
        q.cancel_under(b"");
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_newer_op_on_the_in_flight_key_is_kept_when_full() {
        let q = queue(2);
        q.push(Bytes::from("a"), set(u64::MAX));
        q.push(Bytes::from("b"), set(u64::MAX));
        let (key, old) = q.pop().expect("a is taken");
        assert_eq!(key, Bytes::from("a"));
        q.push(Bytes::from("a"), Write::Remove { at: 1 }); // full, but it is the in-flight key
        assert_eq!(q.len(), 2, "counted once");
        q.requeue(key, old); // the older op fails: the newer one stays
        let mut popped = Vec::new();
        while let Some((k, op)) = q.pop() {
            popped.push((k, matches!(op, Write::Remove { .. })));
            q.done();
        }
        assert_eq!(popped, vec![(Bytes::from("b"), false), (Bytes::from("a"), true)]);
    }

    #[test]
    fn an_obsolete_write_in_flight_is_not_put_back() {
        let q = queue(4);
        q.push(Bytes::from_static(b"a"), set(u64::MAX));
        q.push(Bytes::from_static(b"b"), set(u64::MAX));
        let (k, op) = q.pop().expect("a is taken");
        q.observe(&Invalidation::Key(Bytes::from_static(b"a")));
        assert_eq!(q.len(), 1, "only b is pending");
        q.requeue(k, op); // the write of a failed: not put back
        assert_eq!(q.len(), 1);
        q.observe(&Invalidation::Clear { at: 1 });
        assert_eq!(q.len(), 0, "b (created at 1) is covered by the clear");
        assert!(q.pop().is_none());
        // A removal's retry survives its own notice; a write survives its own notice.
        q.push(Bytes::from_static(b"r"), Write::Remove { at: 5 });
        q.push(Bytes::from_static(b"w"), set(u64::MAX));
        q.observe(&Invalidation::Key(Bytes::from_static(b"r")));
        q.observe(&Invalidation::Written { key: Bytes::from_static(b"w"), created_at: 1 });
        assert_eq!(q.len(), 2);
        q.observe(&Invalidation::Written { key: Bytes::from_static(b"w"), created_at: 2 });
        assert_eq!(q.len(), 1, "a newer write of w makes its retry obsolete");
    }

    #[test]
    fn requeue_yields_to_newer_ops() {
        let q = queue(4);
        q.push(Bytes::from_static(b"a"), set(1));
        let (k, op) = q.pop().expect("a");
        assert_eq!(q.len(), 1, "in flight still counts");
        q.push(Bytes::from_static(b"a"), set(9));
        q.requeue(k, op);
        let (_, op) = q.pop().expect("a again");
        assert!(matches!(op, Write::Set { stale_until: 9, .. }));
        assert!(q.pop().is_none());
    }
}
