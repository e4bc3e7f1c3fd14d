//! The usability rule: is an entry found in a tier *fresh*, *stale-servable* or *unusable*?
//!
//! One function, [`usability`], used by every read: the first tier's fast path, the walk of a
//! single-key read and the batch walk. Each input caps what the entry can be, and the answer is
//! the least of the caps:
//! - **time**: fresh before `fresh_until`, stale before `stale_until`, unusable after;
//! - **the fleet state** ([`FleetState`], what this instance knows of the fleet): entries of a
//!   local tier created at or before `suspect_before` (a backplane gap) are at most stale;
//! - **tag stamps** ([`TagVerdict`]): an outdated stamp makes the entry unusable, and so, today,
//!   does a generation the store cannot read.
//!
//! The coherence work extends the rule here, each as one more cap: a clear floor
//! (`cleared_before`: unusable), a suspect floor for shared tiers, a backplane lease (local
//! entries at most stale once it lapsed), and "generation unknown: at most stale".
//!
//! Serving a stale entry is a second question, [`stale_servable`]: alive, and within
//! fail-safe's `max_stale_age` past its freshness.

use std::sync::atomic::{AtomicU64, Ordering};
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
            // An entry that may have been invalidated is not served.
            Self::Outdated | Self::Unknown => Usability::Unusable,
        }
    }
}

/// What this instance knows of the fleet that the rule depends on.
#[derive(Debug, Default)]
pub(super) struct FleetState {
    /// Local entries created at or before this instant (Unix ms) are at most stale (after a
    /// backplane gap with [`ReconnectPolicy::MarkStale`](crate::ReconnectPolicy::MarkStale)).
    suspect_before: AtomicU64,
}

impl FleetState {
    /// Local entries created at or before `now` are suspect from now on.
    pub fn mark_local_suspect(&self, now: u64) {
        self.suspect_before.fetch_max(now, Ordering::Relaxed);
    }

    /// The best an entry can be in a tier so placed, by the fleet state alone.
    #[inline]
    pub fn cap(&self, meta: &Meta, placement: Placement) -> Usability {
        if placement == Placement::Local
            && meta.created_at <= self.suspect_before.load(Ordering::Relaxed)
        {
            Usability::Stale
        } else {
            Usability::Fresh
        }
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
    by_time(meta, now).min(fleet.cap(meta, placement)).min(tags.cap())
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
        assert_eq!(at(50, TagVerdict::Unknown), Usability::Unusable);
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
