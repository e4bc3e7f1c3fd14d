//! The usability rule: is an entry found in a tier *fresh*, *stale-servable* or *unusable*?
//!
//! One function, [`usability`], used by every read: the first tier's fast path, the walk of a
//! single-key read and the batch walk. Each input caps what the entry can be, and the answer is
//! the least of the caps:
//! - **time**: fresh before `fresh_until`, stale before `stale_until`, unusable after;
//! - **the fleet state** ([`FleetState`], what this instance knows of the fleet):
//!   - the **clear floor**: an entry created at or before it is unusable, in every tier (also
//!     another instance's old value in a shared tier);
//!   - the **expiry floor** (`Cache::expire_all`): an entry created at or before it is at most
//!     stale, in every tier;
//!   - the **suspect floor**: an entry of a local tier created at or before `suspect_before`
//!     (a backplane gap, a lost state file) is at most stale;
//!   - **catching up**: until the start-up replay of the invalidation log is done, local
//!     entries are at most stale;
//!   - the **lease** (a backplane that confirms delivery): local entries are fresh only while
//!     the last proof of delivery is younger than the propagation bound δ; while it has lapsed,
//!     an entry of a shared tier under a key of this cache's namespace is checked against the
//!     store's namespace version (`tags::namespace_verdict`: a move not delivered makes it
//!     unusable, a version the store cannot give makes it at most stale) — and so is every
//!     entry under such a key until the version was first read from a shared store (keys are
//!     built with version 0 until then, which an earlier life of the fleet may have used);
//! - **tag stamps** ([`TagVerdict`]): an outdated stamp makes the entry unusable; a generation
//!   the store cannot give (unknown, or the store is unavailable) makes it at most stale.
//!
//! Serving a stale entry is a second question, [`stale_servable`]: alive, and within
//! fail-safe's `max_stale_age` past its freshness.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::options::FailSafe;
use crate::entry::Entry;
use crate::envelope::Meta;
use crate::time::after_ms;

/// What an entry can be used as, from worst to best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Usability {
    /// Not to be served.
    Unusable,
    /// Servable as stale (fail-safe, soft timeout, stale-while-revalidate), not as fresh.
    Stale,
    /// Served as is.
    Fresh,
}

/// Where the tier holding an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// This instance's own (memory, disk).
    Local,
    /// Shared by every instance of the fleet (Redis).
    Shared,
}

impl Placement {
    /// The placement of a tier that says whether it is shared.
    pub fn of(shared: bool) -> Self {
        if shared {
            Self::Shared
        } else {
            Self::Local
        }
    }
}

/// What the generation store says of an entry's tag stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TagVerdict {
    /// The entry has no tags.
    Untagged,
    /// Every stamp is its tag's current generation.
    Current,
    /// A tag was invalidated since the entry was stamped.
    Outdated,
    /// The store could not say.
    Unknown,
}

impl TagVerdict {
    fn cap(self) -> Usability {
        match self {
            Self::Untagged | Self::Current => Usability::Fresh,
            // An entry that was invalidated is not served.
            Self::Outdated => Usability::Unusable,
            // One that may have been is served only as a fallback (never fresh).
            Self::Unknown => Usability::Stale,
        }
    }
}

/// What this instance knows of the fleet that the rule depends on.
#[derive(Debug, Default)]
pub(super) struct FleetState {
    /// Entries created at or before this instant (Unix ms) are gone (the clear floor).
    floor: AtomicU64,
    /// Entries created at or before this instant (Unix ms) are at most stale (the expiry
    /// floor of `expire_all`).
    expired_before: AtomicU64,
    /// Local entries created at or before this instant (Unix ms) are at most stale.
    suspect_before: AtomicU64,
    /// The start-up catch-up is not done: local entries are at most stale.
    catching_up: AtomicBool,
    /// The start-up (catch-up, gap or the log's head) is done.
    started: AtomicBool,
    /// The first read of the clear floor, expiry floor and namespace version from a shared
    /// generation store is still to come.
    shared_unread: AtomicBool,
    /// Bit 0: the namespace version is unread — not read from a shared store yet (keys are
    /// built with version 0, which may be an earlier life's, see `tags::namespace_verdict`), or
    /// a move may have been missed since (a gap, a failed move). The other bits count the times
    /// it was made unread: a read clears it only if it was not made unread again since the read
    /// started (see [`namespace_ticket`](Self::namespace_ticket)).
    namespace: AtomicU64,
    /// The lease's length δ in ms; 0: no lease (the backplane does not confirm delivery).
    lease_ms: AtomicU64,
    /// When the last proof of delivery was sent (Unix ms).
    confirmed_at: AtomicU64,
    /// Woken when the start-up ends and at the first proof of delivery (see
    /// [`caught_up`](Self::caught_up)).
    caught_up: tokio::sync::Notify,
}

impl FleetState {
    /// Local entries created at or before `at` are suspect from now on (a floor never goes back).
    pub fn mark_local_suspect(&self, at: u64) {
        self.suspect_before.fetch_max(at, Ordering::AcqRel);
    }

    /// Entries created at or before `at` are gone from now on (a floor never goes back).
    pub fn raise_floor(&self, at: u64) {
        self.floor.fetch_max(at, Ordering::AcqRel);
    }

    /// Entries created at or before `at` are at most stale from now on, in every tier (a floor
    /// never goes back).
    pub fn raise_expiry_floor(&self, at: u64) {
        self.expired_before.fetch_max(at, Ordering::AcqRel);
    }

    /// The clear floor.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// The `created_at` of an entry written now: now, but above every floor (a write in the
    /// millisecond of a clear, an expiry or a gap comes after it).
    pub fn created_now(&self) -> u64 {
        let floor = self.floor().max(self.suspect_before.load(Ordering::Acquire));
        let floor = floor.max(self.expired_before.load(Ordering::Acquire));
        crate::time::now_ms().max(floor.saturating_add(1))
    }

    /// Start (true) or end (false) the start-up catch-up.
    pub fn set_catching_up(&self, yes: bool) {
        self.catching_up.store(yes, Ordering::Release);
    }

    /// The start-up is done (the listener knows where it is in the log).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
        self.caught_up.notify_waiters();
    }

    /// The shared state (floors, namespace version) is (true) or has been (false) read from a
    /// shared generation store for the first time.
    pub fn set_shared_unread(&self, yes: bool) {
        self.shared_unread.store(yes, Ordering::Release);
        if !yes {
            self.caught_up.notify_waiters();
        }
    }

    /// Is the start-up done?
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Has this instance caught up since it started: the start-up done and, with a lease,
    /// delivery proven once? A backplane that could not read the log's head at build (a lazy
    /// connection not made yet) reports the gap before its first proof, and the listener
    /// handles events in order: once this holds, that gap has made what was written before it
    /// suspect, and what is written from now on is not caught by it. With a shared generation
    /// store, the start-up's read of the floors and the namespace version must have answered too.
    pub fn is_caught_up(&self) -> bool {
        self.started()
            && !self.shared_unread.load(Ordering::Acquire)
            && (self.lease_ms.load(Ordering::Acquire) == 0
                || self.confirmed_at.load(Ordering::Acquire) > 0)
    }

    /// Wait until [`is_caught_up`](Self::is_caught_up).
    pub async fn caught_up(&self) {
        loop {
            let woken = self.caught_up.notified();
            tokio::pin!(woken);
            // Registered before the check: a wake between the check and the wait is not lost.
            woken.as_mut().enable();
            if self.is_caught_up() {
                return;
            }
            woken.await;
        }
    }

    /// The namespace version is (true) or is no longer (false) to be read from a shared store.
    /// `false` unconditionally: for a move delivered by the backplane (a message read after
    /// whatever made it unread); a read of the store clears it with
    /// [`namespace_read`](Self::namespace_read).
    pub fn set_namespace_unread(&self, yes: bool) {
        if yes {
            // Counted, so that a read started before this one cannot clear it.
            let _ = self.namespace.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some((w | 1).wrapping_add(2))
            });
        } else {
            self.namespace.fetch_and(!1, Ordering::AcqRel);
        }
    }

    /// Taken before a read of the namespace version from the store, handed to
    /// [`namespace_read`](Self::namespace_read) when it answered.
    pub fn namespace_ticket(&self) -> u64 {
        self.namespace.load(Ordering::Acquire) >> 1
    }

    /// A read of the store's namespace version that started at `ticket` answered: the version
    /// is read — unless it was made unread again since the read started (a gap or a failed move
    /// while the read was in flight: its answer may be from before a move that was missed). The
    /// checker's candidate: a version read sent before a gap, answered after it, cleared the
    /// flag the gap had set, and keys of the old namespace were served until the re-read.
    pub fn namespace_read(&self, ticket: u64) {
        let _ = self.namespace.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w >> 1 == ticket && w & 1 == 1).then_some(w & !1)
        });
    }

    /// Is the namespace version of keys built now uncertain at `now` — not yet read from the
    /// shared store, or the lease lapsed (a move may not have been delivered)? `shared`: the
    /// entry is in a shared tier (a lapsed lease already makes local entries stale).
    pub fn namespace_uncertain(&self, shared: bool, now: u64) -> bool {
        self.namespace.load(Ordering::Acquire) & 1 == 1 || (shared && self.lease_lapsed(now))
    }

    /// Serve local entries as fresh only while a proof of delivery is younger than `bound`.
    pub fn start_lease(&self, bound: std::time::Duration) {
        let ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX).max(1);
        self.lease_ms.store(ms, Ordering::Release);
    }

    /// Everything published before `sent_at_ms` has been delivered.
    pub fn confirmed(&self, sent_at_ms: u64) {
        if self.confirmed_at.fetch_max(sent_at_ms, Ordering::AcqRel) == 0 && sent_at_ms > 0 {
            self.caught_up.notify_waiters();
        }
    }

    /// Has the lease lapsed at `now` (a lease is on and the last proof of delivery is older
    /// than δ)? Then a namespace move may not have been delivered. `now` is the coarse clock,
    /// which may be behind the true time by its lag (a tick, 4 ms on most Linux kernels): the
    /// lease ends that much earlier, so that it holds in true time (the checker found a read
    /// 101 ms after an acknowledged move served from a proof ~100 ms old).
    pub fn lease_lapsed(&self, now: u64) -> bool {
        let lease = self.lease_ms.load(Ordering::Acquire);
        lease != 0
            && now.saturating_add(crate::time::now_ms_lag())
                > self.confirmed_at.load(Ordering::Acquire).saturating_add(lease)
    }

    /// The best an entry created at `created_at` (Unix ms) can be in a tier so placed, by the
    /// fleet state alone (reads the clock only when a lease is on).
    #[inline]
    pub fn cap(&self, created_at: u64, placement: Placement) -> Usability {
        if created_at <= self.floor.load(Ordering::Acquire) {
            return Usability::Unusable;
        }
        if created_at <= self.expired_before.load(Ordering::Acquire) {
            return Usability::Stale;
        }
        if placement == Placement::Shared {
            return Usability::Fresh;
        }
        if created_at <= self.suspect_before.load(Ordering::Acquire)
            || self.catching_up.load(Ordering::Acquire)
        {
            return Usability::Stale;
        }
        if self.lease_lapsed(crate::time::now_ms()) {
            return Usability::Stale;
        }
        Usability::Fresh
    }
}

/// The best an entry can be at `now`, by its own times.
fn by_time(meta: &Meta, now: u64) -> Usability {
    if meta.is_fresh(now) {
        Usability::Fresh
    } else if meta.is_alive(now) {
        Usability::Stale
    } else {
        Usability::Unusable
    }
}

/// The rule: what an entry with `meta`, found in a tier so placed, can be used as at `now`.
pub(super) fn usability(
    meta: &Meta,
    placement: Placement,
    fleet: &FleetState,
    tags: TagVerdict,
    now: u64,
) -> Usability {
    by_time(meta, now).min(fleet.cap(meta.created_at, placement)).min(tags.cap())
}

/// May an entry judged stale be served now: before its `stale_until`, and within fail-safe's
/// `max_stale_age` past its `fresh_until` when fail-safe is on?
pub(super) fn stale_servable(meta: &Meta, now: u64, fail_safe: Option<FailSafe>) -> bool {
    let max_age = fail_safe.map(|f| after_ms(meta.fresh_until, f.max_stale_age));
    meta.is_alive(now) && max_age.is_none_or(|limit| now < limit)
}

/// An entry found in a tier and judged usable, with its decoded value (`None` for a negative
/// entry).
pub(super) struct Found<V> {
    /// The tier it was found in.
    pub level: usize,
    /// The key's write sequence before the tier was read (see the writes' stripes).
    pub seq: u64,
    pub entry: Entry,
    pub value: Option<Arc<V>>,
}

impl<V> Clone for Found<V> {
    fn clone(&self) -> Self {
        Self {
            level: self.level,
            seq: self.seq,
            entry: self.entry.clone(),
            value: self.value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(created_at: u64, fresh_until: u64, stale_until: u64) -> Meta {
        Meta { created_at, fresh_until, stale_until, ..Meta::default() }
    }

    #[test]
    fn the_least_cap_wins() {
        let fleet = FleetState::default();
        let m = meta(10, 100, 200);
        let at = |now, tags| usability(&m, Placement::Local, &fleet, tags, now);
        assert_eq!(at(50, TagVerdict::Untagged), Usability::Fresh);
        assert_eq!(at(150, TagVerdict::Current), Usability::Stale);
        assert_eq!(at(200, TagVerdict::Untagged), Usability::Unusable);
        assert_eq!(at(50, TagVerdict::Outdated), Usability::Unusable);
        assert_eq!(at(50, TagVerdict::Unknown), Usability::Stale, "unknown: at most stale");
        fleet.mark_local_suspect(10);
        assert_eq!(at(50, TagVerdict::Untagged), Usability::Stale, "created at the floor");
        assert_eq!(
            usability(&m, Placement::Shared, &fleet, TagVerdict::Untagged, 50),
            Usability::Fresh,
            "the suspect floor is for local tiers"
        );
        fleet.mark_local_suspect(5);
        assert_eq!(at(50, TagVerdict::Untagged), Usability::Stale, "a floor never goes back");
    }

    #[test]
    fn the_clear_floor_holds_in_every_tier_and_catching_up_and_the_lease_cap_local_ones() {
        let fleet = FleetState::default();
        let m = meta(10, u64::MAX - 1, u64::MAX);
        let now = crate::time::now_ms();
        let at = |p| usability(&m, p, &fleet, TagVerdict::Untagged, now);
        fleet.set_catching_up(true);
        assert_eq!(at(Placement::Local), Usability::Stale);
        assert_eq!(at(Placement::Shared), Usability::Fresh);
        fleet.set_catching_up(false);
        fleet.start_lease(std::time::Duration::from_millis(100));
        assert_eq!(at(Placement::Local), Usability::Stale, "no proof of delivery yet");
        fleet.confirmed(now);
        assert_eq!(at(Placement::Local), Usability::Fresh);
        fleet.raise_expiry_floor(10);
        assert_eq!(at(Placement::Local), Usability::Stale, "expired everywhere");
        assert_eq!(at(Placement::Shared), Usability::Stale, "expired everywhere");
        fleet.raise_floor(10);
        assert_eq!(at(Placement::Local), Usability::Unusable);
        assert_eq!(at(Placement::Shared), Usability::Unusable, "cleared everywhere");
    }

    /// The checker (standalone, seed 21): a disk entry served as fresh 101 ms after another
    /// instance's acknowledged namespace move, on a proof of delivery sent just before it:
    /// the coarse clock was behind the true time, and the lease of 100 ms held for ~104.
    #[test]
    fn the_lease_holds_in_true_time_whatever_the_coarse_clocks_lag() {
        let fleet = FleetState::default();
        fleet.start_lease(std::time::Duration::from_millis(100));
        let proof = 1_000_000;
        fleet.confirmed(proof);
        let lag = crate::time::now_ms_lag();
        assert!(lag >= 1);
        // A coarse `now` this far past the proof may be 101 ms past it in true time.
        let now = proof + 100 - lag + 1;
        assert!(fleet.lease_lapsed(now), "lag {lag} ms: the lease outlived δ in true time");
        assert!(!fleet.lease_lapsed(proof + 100 - lag), "within δ even in true time");
    }

    #[test]
    fn stale_is_servable_within_its_life_and_fail_safes_age() {
        let m = meta(0, 100, 1_000);
        assert!(stale_servable(&m, 500, None));
        assert!(!stale_servable(&m, 1_000, None));
        let fs = FailSafe::up_to(std::time::Duration::from_millis(200));
        assert!(stale_servable(&m, 299, Some(fs)));
        assert!(!stale_servable(&m, 300, Some(fs)));
        let forever = FailSafe::up_to(std::time::Duration::MAX);
        assert!(stale_servable(&m, 999, Some(forever)));
    }
}
