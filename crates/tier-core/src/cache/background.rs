//! Background tasks of a hierarchy and the fleet state they keep: what is restored at build
//! (the suspect floor, a lost state file, the local clear floor and namespace version), the
//! gauge task, and the backplane listener — the start-up catch-up (replay of the log from the
//! last applied position), other instances' invalidations and insert notices applied to the
//! local tiers, proofs of delivery (the lease) and gaps. The tasks end when the last clone of
//! the cache is dropped. And the write-behind writer, draining the queue to the origin.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::behind::{Behind, Next};
use super::fleet::POSITION_EVERY;
use super::hierarchy::Hierarchy;
use super::options::CacheValue;
use super::tags::{expiry_floor_name, namespace_tag};
use crate::backplane::{BackplaneEvent, Invalidation, LogPosition, ReconnectPolicy, Replay};
use crate::error::CacheError;
use crate::generations::LocalGenerations;
use crate::retime::Retime;
use crate::time::now_ms;

/// How long the start-up replay of the log may take before it counts as a gap.
const REPLAY_BOUND: Duration = Duration::from_secs(5);

/// What the listener does first, decided at build (before anything is written).
pub(super) enum StartUp {
    /// Replay the log from this position.
    Replay(LogPosition),
    /// Local entries exist and what they missed cannot be known.
    Gap(&'static str),
    /// Nothing local: start from the log's head.
    Head,
}

/// Start the background tasks of `hierarchy` when inside a tokio runtime; with a shared
/// generation store, read the clear floor and namespace version from it.
pub(super) fn start<V: CacheValue>(
    hierarchy: &Arc<Hierarchy<V>>,
    gauge_interval: Duration,
    start_up: Option<StartUp>,
) {
    if hierarchy.shares_generations() {
        // Until the version is read (below, or by a read that asks the store), keys carry 0.
        hierarchy.fleet().set_namespace_unread(true);
        hierarchy.fleet().set_shared_unread(true);
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::debug!(cache = %hierarchy.name(), "built outside a tokio runtime: no background tasks");
        if hierarchy.backplane().is_some() {
            // Nobody will apply what others publish: local entries are never fresh.
            tracing::warn!(cache = %hierarchy.name(), "a backplane without a runtime to listen: local entries are served only as stale");
            hierarchy.fleet().set_catching_up(true);
        }
        return;
    };
    let weak = Arc::downgrade(hierarchy);
    let mut tasks = vec![handle.spawn(report_gauges(weak.clone(), gauge_interval))];
    if hierarchy.shares_generations() {
        tasks.push(handle.spawn(sync_shared_state(weak.clone())));
    }
    if let Some(behind) = hierarchy.behind() {
        tasks.push(handle.spawn(write_behind(weak.clone(), behind.clone())));
    }
    tasks.extend(listen(&handle, hierarchy, weak, start_up.unwrap_or(StartUp::Head)));
    hierarchy.keep_tasks(tasks);
}

async fn report_gauges<V>(weak: Weak<Hierarchy<V>>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hierarchy) = weak.upgrade() else { return };
        hierarchy.report_gauges();
    }
}

/// The write-behind writer: batches of the queue to the origin writer, one at a time (see
/// `behind.rs`); a key invalidated while its write was pending is invalidated again once the
/// write is done.
async fn write_behind<V: CacheValue>(weak: Weak<Hierarchy<V>>, behind: Arc<Behind<V>>) {
    loop {
        match behind.next() {
            Next::Batch(batch) => {
                let again = behind.write(batch).await;
                if let (false, Some(hierarchy)) = (again.is_empty(), weak.upgrade()) {
                    hierarchy.invalidate_again(again).await;
                }
                behind.finish();
            }
            Next::Wait(pause) => behind.wait(Some(pause)).await,
            Next::Idle => behind.wait(None).await,
        }
        if weak.strong_count() == 0 {
            return;
        }
    }
}

/// Read the clear floor and the namespace version from a shared store (retried until it
/// answers).
async fn sync_shared_state<V: CacheValue>(weak: Weak<Hierarchy<V>>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let Some(hierarchy) = weak.upgrade() else { return };
        let floor = hierarchy.guards().floor.run(hierarchy.generations().floor(hierarchy.name()));
        let floor = floor.await;
        let expiry = expiry_floor_name(hierarchy.name());
        let expiry = hierarchy.guards().floor.run(hierarchy.generations().floor(&expiry)).await;
        let ticket = hierarchy.fleet().namespace_ticket();
        // A stamp, not the current version: a namespace version that is missing in the shared
        // store (never moved on, or lost to an eviction, a flush, a restart without persistence)
        // gets a fresh start there, so no key of an earlier life of the namespace is ever built
        // again.
        let ns = hierarchy.read_namespace(false).await;
        if let Ok(floor) = &floor {
            hierarchy.fleet().raise_floor(*floor);
        }
        if let Ok(expiry) = &expiry {
            hierarchy.fleet().raise_expiry_floor(*expiry);
        }
        if let Ok(v) = ns {
            hierarchy.adopt_namespace(v, ticket).await;
        }
        if floor.is_ok() && expiry.is_ok() && ns.is_ok() {
            hierarchy.fleet().set_shared_unread(false);
            return;
        }
        drop(hierarchy);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The backplane listener, when there is a backplane.
fn listen<V: CacheValue>(
    handle: &tokio::runtime::Handle,
    hierarchy: &Hierarchy<V>,
    weak: Weak<Hierarchy<V>>,
    start_up: StartUp,
) -> Option<JoinHandle<()>> {
    // Subscribed before the catch-up: what arrives meanwhile waits in the channel (applying a
    // message twice is harmless).
    let mut rx = hierarchy.backplane()?.subscribe();
    let handle = handle.clone();
    Some(handle.clone().spawn(async move {
        match weak.upgrade() {
            Some(hierarchy) => hierarchy.start_up(start_up).await,
            None => return,
        }
        let mut flush = tokio::time::interval(POSITION_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                _ = flush.tick() => {
                    let Some(hierarchy) = weak.upgrade() else { return };
                    hierarchy.kept().flush();
                    // A namespace move whose notice failed: retried until told.
                    hierarchy.tell_namespace().await;
                    continue;
                }
            };
            let Some(hierarchy) = weak.upgrade() else { return };
            match event {
                Ok(BackplaneEvent::Invalidate { cache, what, position }) => {
                    if cache == hierarchy.name() {
                        hierarchy.apply_remote(what).await;
                    }
                    if let Some(position) = position {
                        hierarchy.kept().applied(position);
                    }
                }
                Ok(BackplaneEvent::Passed { position }) => hierarchy.kept().applied(position),
                Ok(BackplaneEvent::Confirmed { sent_at_ms }) => {
                    hierarchy.fleet().confirmed(sent_at_ms)
                }
                Ok(BackplaneEvent::Gap) => {
                    hierarchy.recover("backplane gap").await;
                    resync(&handle, &hierarchy, &weak);
                }
                Err(RecvError::Lagged(n)) => {
                    let why = format!("{n} backplane messages dropped (slow consumer)");
                    hierarchy.recover(&why).await;
                    resync(&handle, &hierarchy, &weak);
                }
                Err(RecvError::Closed) => return,
            }
        }
    }))
}

/// After a gap: a namespace move or a clear may have been missed, so read the namespace version
/// and the clear floor from a shared store again (in the background, retried until it answers).
fn resync<V: CacheValue>(
    handle: &tokio::runtime::Handle,
    hierarchy: &Hierarchy<V>,
    weak: &Weak<Hierarchy<V>>,
) {
    if hierarchy.shares_generations() {
        handle.spawn(sync_shared_state(weak.clone()));
    }
}

impl<V: CacheValue> Hierarchy<V> {
    /// Build keys with namespace version `v` read from a shared store (a version never goes
    /// back). When it moved this instance on, the other instances are told: a version the store
    /// had lost (an eviction, a flush, a restart without persistence) was started again by this
    /// read, and the instances still on the lost one would otherwise keep building keys that
    /// nobody else writes or invalidates any more. `ticket`: taken before the read (see
    /// `FleetState::namespace_read`).
    pub(super) async fn adopt_namespace(&self, v: u64, ticket: u64) {
        let before = self.keys().version();
        self.keys().set_version(v);
        self.fleet().namespace_read(ticket);
        if v <= before {
            return;
        }
        self.stripes().bump_all();
        // A notice that fails is kept and retried until told (`publish`).
        let _ = self.publish(Invalidation::Namespace(v)).await;
    }

    /// At build: restore what the local state keeps (a lost state file makes every local entry
    /// suspect, said once), and with `local` generations the clear floor and namespace version.
    /// With a backplane: what the listener does first.
    pub(super) fn restore(&self, local: Option<&LocalGenerations>) -> Option<StartUp> {
        if let Some(state) = self.kept().state().filter(|s| s.was_lost()) {
            let now = now_ms();
            tracing::warn!(
                cache = %self.name(),
                "the local state file was lost or damaged: every local entry written before now is served only as stale until replaced"
            );
            match self.kept().keep_suspect_before(now).and_then(|()| state.clear_lost()) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(cache = %self.name(), error = %e, "the loss could not be recorded; the next start treats local entries as suspect again")
                }
            }
            self.fleet().mark_local_suspect(now);
        }
        self.fleet().mark_local_suspect(self.kept().suspect_before());
        if let Some(local) = local {
            match local.floor_now(self.name()) {
                Ok(floor) => self.fleet().raise_floor(floor),
                Err(e) => {
                    tracing::warn!(cache = %self.name(), error = %e, "the clear floor could not be read")
                }
            }
            match local.floor_now(&expiry_floor_name(self.name())) {
                Ok(floor) => self.fleet().raise_expiry_floor(floor),
                Err(e) => {
                    tracing::warn!(cache = %self.name(), error = %e, "the expiry floor could not be read")
                }
            }
            match local.current_now(&namespace_tag(self.name())) {
                Ok(Some(v)) => self.keys().set_version(v),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(cache = %self.name(), error = %e, "the namespace version could not be read")
                }
            }
        }
        let Some(backplane) = self.backplane() else {
            self.fleet().set_started();
            return None;
        };
        if backplane.confirms_delivery() {
            self.fleet().start_lease(self.opts().propagation_bound);
        }
        let start_up = match (self.opts().reconnect, self.kept().position()) {
            (ReconnectPolicy::CatchUp, Some(after)) => StartUp::Replay(after),
            _ if self.holds_local_entries() => {
                StartUp::Gap("no replayable log position while local tiers hold entries")
            }
            _ => StartUp::Head,
        };
        // Until the listener has caught up (or judged the gap), nothing local is fresh.
        if !matches!(start_up, StartUp::Head) {
            self.fleet().set_catching_up(true);
        }
        Some(start_up)
    }

    /// Do the local tiers hold anything?
    fn holds_local_entries(&self) -> bool {
        self.tiers().iter().any(|(_, l)| !l.is_shared() && l.tier().stats().entries > 0)
    }

    /// The start-up catch-up: replay the log from the last applied position; without one,
    /// local entries are suspect (unless there are none), and the log's head is where to start.
    async fn start_up(&self, start_up: StartUp) {
        let Some(backplane) = self.backplane().cloned() else { return };
        match start_up {
            StartUp::Replay(after) => {
                match tokio::time::timeout(REPLAY_BOUND, backplane.replay(&after)).await {
                    Ok(Ok(Replay::Events(events))) => {
                        let n = events.len();
                        self.apply_replayed(events).await;
                        tracing::debug!(cache = %self.name(), events = n, "caught up with the invalidation log");
                    }
                    Ok(Ok(Replay::Gap)) => {
                        self.recover("the log no longer holds the last applied position").await
                    }
                    Ok(Err(e)) => {
                        self.recover(&format!("the log could not be replayed: {e}")).await
                    }
                    Err(_) => self.recover("the log's replay took too long").await,
                }
            }
            StartUp::Gap(why) => self.recover(why).await,
            StartUp::Head => {}
        }
        if self.kept().position().is_none() {
            if let Ok(Ok(Some(head))) = tokio::time::timeout(REPLAY_BOUND, backplane.head()).await {
                self.kept().applied(head);
                self.kept().flush();
            }
        }
        self.fleet().set_catching_up(false);
        self.fleet().set_started();
    }

    /// Apply what a replay found, in order; record the last position.
    async fn apply_replayed(&self, events: Vec<(String, Invalidation, LogPosition)>) {
        let mut last = None;
        for (cache, what, position) in events {
            if cache == self.name() {
                self.apply_remote(what).await;
            }
            last = Some(position);
        }
        if let Some(last) = last {
            self.kept().applied(last);
            self.kept().flush();
        }
    }

    /// Apply another instance's invalidation or insert notice to this instance's local tiers
    /// (also a replayed notice of this instance's own, from before a restart: harmless).
    pub(super) async fn apply_remote(&self, what: Invalidation) {
        let failed = |e: crate::error::CacheError| {
            // The local copy may still be there (a disk tier's removal that timed out may be
            // applied later, or never): nothing local written up to now is fresh any more.
            let now = self.stripes().written_up_to(now_ms());
            self.fleet().mark_local_suspect(now);
            let kept = self.kept().keep_suspect_before(now).is_ok();
            tracing::warn!(cache = %self.name(), kind = what.kind(), error = %e, kept, "a remote invalidation failed on a local tier: local entries are served only as stale until replaced");
        };
        match &what {
            Invalidation::Key(key) => {
                if let Some(e) = self.writer().remove_everywhere(key, true).await {
                    failed(e);
                }
            }
            Invalidation::Written { key, created_at } => {
                if let Some(e) = self.writer().remove_older_local(key, *created_at).await {
                    failed(e);
                }
            }
            Invalidation::Tag(tag) => {
                let _ = self.generations().remote_bump(tag, None);
            }
            Invalidation::Namespace(v) => {
                let held = self.generations().remote_bump(&namespace_tag(self.name()), Some(*v));
                // With generations of its own, a move heard at or below the version this
                // instance holds moved it past it (two moves at once reach the same version:
                // its entries under it may be older than the sender's move): keys are built
                // with the store's new version, which is told back so that the fleet meets on
                // it. A shared store holds the move itself (and a store given to the builder
                // counts as shared, even a `LocalGenerations` that tests share in process).
                let to = match held {
                    Some(held) if !self.shares_generations() => held.max(*v),
                    _ => *v,
                };
                let before = self.keys().version();
                self.keys().set_version(to);
                self.fleet().set_namespace_unread(false);
                // A version this instance builds keys with already (another instance read it
                // at its start, see `adopt_namespace`) changes nothing: writes in flight stay.
                if to > before {
                    self.stripes().bump_all();
                }
                if to > *v {
                    // Told by the listener within 50 ms, before any later notice of this one.
                    self.untold_namespace().fetch_max(to, std::sync::atomic::Ordering::AcqRel);
                }
            }
            Invalidation::Expire { key, at } => {
                if let Some(e) = self.apply_remote_expire(key.as_ref(), *at).await {
                    failed(e);
                }
            }
            Invalidation::Clear { at } => {
                self.fleet().raise_floor(*at);
                // Kept locally too (a local store persists it; a shared one has it already).
                let floor = self.generations().raise_floor(self.name(), *at);
                let _ = self.guards().floor.run(floor).await;
                if let Some(e) = self.writer().clear_everywhere(true).await {
                    failed(e);
                }
            }
        }
        self.observe(&what);
        self.metrics().invalidation(what.kind(), "backplane");
    }

    /// Another instance's expiry, applied here: one key's local entries retimed, or the expiry
    /// floor raised (and kept in the generation store, which persists it for a local one).
    pub(super) async fn apply_remote_expire(
        &self,
        key: Option<&Bytes>,
        at: u64,
    ) -> Option<CacheError> {
        match key {
            Some(key) => {
                let how = Retime::Expire { at, cut: now_ms(), floor: self.fleet().floor() };
                self.writer().retime_everywhere(key, true, how).await
            }
            None => {
                self.fleet().raise_expiry_floor(at);
                self.stripes().bump_all();
                let name = expiry_floor_name(self.name());
                let raise = self.generations().raise_floor(&name, at);
                let _ = self.guards().floor.run(raise).await;
                None
            }
        }
    }

    /// Messages may have been missed: the local tiers are suspect, and with a shared store the
    /// namespace version is uncertain until it is read again (a move may have been missed:
    /// until then an entry of a shared tier is checked against the store's version).
    async fn recover(&self, why: &str) {
        self.generations().forget_cached();
        if self.shares_generations() {
            self.fleet().set_namespace_unread(true);
        }
        match self.opts().reconnect {
            ReconnectPolicy::Clear => {
                tracing::warn!(cache = %self.name(), reason = why, "backplane gap: clearing local tiers");
                if let Some(e) = self.writer().clear_everywhere(true).await {
                    tracing::warn!(cache = %self.name(), error = %e, "clearing local tiers failed");
                }
            }
            _ => {
                tracing::warn!(cache = %self.name(), reason = why, "backplane gap: local entries are served only as stale until replaced");
                // Every entry written before the gap, also one whose `created_at` was moved a
                // little ahead of the clock (two inserts of a stripe within a tick).
                let now = self.stripes().written_up_to(now_ms());
                self.stripes().bump_all();
                self.fleet().mark_local_suspect(now);
                if let Err(e) = self.kept().keep_suspect_before(now) {
                    tracing::warn!(cache = %self.name(), error = %e, "the suspect floor could not be recorded");
                }
            }
        }
        self.metrics().invalidation("clear", "backplane");
    }
}
