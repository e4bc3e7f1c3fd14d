//! A circuit breaker per Redis Cluster master, inside [`RedisTier`](crate::RedisTier), so that one
//! lost master takes out its own keys and nothing else.
//!
//! The slot → master map comes from `CLUSTER SLOTS`: read when the tier is built, again every
//! [`REFRESH_INTERVAL`], and soon after a call to a master fails (a slot that moved, a failover
//! that promoted a replica, a surfaced `MOVED`/`ASK`; at most one read per [`MIN_REFRESH_GAP`]).
//! Each master has a [`CircuitBreaker`] of tier-core, kept across refreshes by address.
//!
//! Invariants:
//! - **A key's call is counted by its master's breaker.** Closed: the call is made and its
//!   outcome recorded there. Open or half-open: the call is not made; the key answers
//!   [`CircuitOpen`](TierErrorKind::CircuitOpen) at once (a batch: see `RedisTier`), and is
//!   counted in `tier_redis_node_skipped_total{reason="open"}`. No caller ever waits for a
//!   master that is out, not even as a half-open probe.
//! - **Probes are the background task's.** While a breaker is not closed, the task `PING`s that
//!   master once its cool-down has passed; `probes` answers in a row close the breaker, one
//!   failure opens it again for another cool-down.
//! - **Each failure is counted by one breaker.** A failure of a call whose master is known is
//!   that master's, and is returned [`partial`](TierError::partial) (the hierarchy's breaker of
//!   the whole tier does not count it); a failure whose master is not known (no topology yet, a
//!   slot no master serves) is the tier's.
//! - **A slow master is the master's failure.** A call is bounded by the connection's operation
//!   timeout and, when the tier is mounted with a timeout, by a deadline [`DEADLINE_MARGIN`]
//!   shorter than it (see `deadline_for`): the tier answers for a slow master before the
//!   hierarchy's timeout fires (which would count against the whole tier). The tier says so
//!   (`Tier::bounds_calls`), and the hierarchy puts no timer of its own around it.
//! - **Bounded background work.** Topology reads that fail back off (1 s doubling to 30 s, with
//!   ±20 % jitter) and are counted (`tier_redis_topology_refreshes_total{result}`); a server that
//!   does not know `CLUSTER SLOTS` turns the per-master breakers off with one log line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tier_core::spi::{CircuitBreaker, Outcome, Permit};
use tier_core::{BreakerConfig, BreakerState, TierError, TierErrorKind};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::commands;
use crate::connection::{RedisConnection, Route, SLOTS};
use crate::metrics::{Labels, NODE_BREAKER_STATE, NODE_SKIPPED, TOPOLOGY_REFRESHES};

/// How often the slot → master map is read while nothing fails.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest time between two reads of the slot → master map.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);
/// How much shorter than the hierarchy's timeout a call's deadline is.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(1);

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Slot of the map that no master serves.
const NO_MASTER: u16 = u16::MAX;

/// The per-master breakers' settings unless the builder says otherwise: tier-core's default
/// breaker with a 250 ms cool-down (the background probe's period while a master is out) and
/// one probe: the probes are background `PING`s that no caller waits for, so a master is back
/// within a cool-down of answering again (with 1 s and three probes, a master was out for about
/// 1.5 s after every blip, and its removals — not sent while it is out — failed meanwhile).
pub fn default_node_breaker() -> BreakerConfig {
    BreakerConfig { cooldown: Duration::from_millis(250), probes: 1, ..BreakerConfig::default() }
}

/// Is `config` one the per-master breakers can run with? (A zero cool-down would probe a lost
/// master in a busy loop.)
pub(crate) fn check_config(config: &BreakerConfig) -> Result<(), String> {
    if !(config.failure_ratio > 0.0 && config.failure_ratio <= 1.0) {
        return Err(format!(
            "node breaker: failure_ratio must be in (0, 1], not {}",
            config.failure_ratio
        ));
    }
    if config.cooldown < Duration::from_millis(10) {
        return Err(format!(
            "node breaker: cooldown must be at least 10 ms, not {:?}",
            config.cooldown
        ));
    }
    if config.window.is_zero() {
        return Err("node breaker: window must be positive".into());
    }
    Ok(())
}

/// The deadline of a call when the hierarchy bounds the tier's calls by `timeout`: a little
/// shorter, so that the tier's own answer (a master's timeout) comes first.
pub(crate) fn deadline_for(timeout: Duration) -> Duration {
    timeout.saturating_sub(DEADLINE_MARGIN).max(timeout / 2)
}

/// One master and its breaker.
pub(crate) struct Master {
    /// `host:port`, as the Cluster announces it (the `node` label).
    pub(crate) address: String,
    route: Route,
    breaker: CircuitBreaker,
    /// The state gauge, once the tier's labels are known (set once: the breaker reports to it).
    gauge: OnceLock<()>,
}

impl Master {
    fn new(route: Route, config: BreakerConfig) -> Self {
        Self {
            address: route.address().unwrap_or_default(),
            route,
            breaker: CircuitBreaker::new(config),
            gauge: OnceLock::new(),
        }
    }

    /// The breaker's state.
    pub(crate) fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    fn label_gauge(&self, labels: &Labels) {
        if labels.cache.is_empty() {
            return;
        }
        self.gauge.get_or_init(|| {
            self.breaker.set_gauge(metrics::gauge!(NODE_BREAKER_STATE, "cache" => labels.cache.clone(), "tier" => labels.tier.clone(), "node" => self.address.clone()));
            // Its tracing events name the master: "redis master 10.0.0.5:6379".
            self.breaker.set_labels(labels.cache.clone(), format!("{} master {}", labels.tier, self.address));
        });
    }
}

/// The slot → master map.
#[derive(Default)]
struct SlotMap {
    /// Index into `masters` of each slot's master, [`NO_MASTER`] when none; empty while the
    /// topology is not known.
    slots: Vec<u16>,
    masters: Vec<Arc<Master>>,
}

/// The per-master breakers of one tier.
pub(crate) struct Nodes {
    config: BreakerConfig,
    labels: Arc<RwLock<Labels>>,
    map: RwLock<Arc<SlotMap>>,
    /// Asks the background task for an early topology read.
    refresh: Notify,
}

/// The deadline of each call of a tier, a little below the hierarchy's timeout (see
/// [`deadline_for`]); none until the tier is mounted with a timeout.
#[derive(Default)]
pub(crate) struct Deadline(AtomicU64);

impl Deadline {
    /// The hierarchy bounds each call by `timeout` (or nothing).
    pub(crate) fn set(&self, timeout: Option<Duration>) {
        let us = timeout.map_or(0, |t| u64::try_from(deadline_for(t).as_micros()).unwrap_or(0));
        self.0.store(us, Ordering::Relaxed);
    }

    /// The deadline is `deadline` (already below the timeout it serves).
    pub(crate) fn set_deadline(&self, deadline: Duration) {
        let us = u64::try_from(deadline.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.store(us, Ordering::Relaxed);
    }

    /// The deadline, if any.
    pub(crate) fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

impl Nodes {
    pub(crate) fn new(config: BreakerConfig, labels: Arc<RwLock<Labels>>) -> Self {
        Self { config, labels, map: RwLock::new(Arc::default()), refresh: Notify::new() }
    }

    fn map(&self) -> Arc<SlotMap> {
        // The map is replaced whole; a poisoned lock still holds a consistent one.
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The master serving `slot`, when known.
    pub(crate) fn master_of(&self, slot: u16) -> Option<Arc<Master>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let i = *map.slots.get(usize::from(slot))?;
        map.masters.get(usize::from(i)).cloned()
    }

    /// Every known master with its breaker's state, sorted by address.
    pub(crate) fn states(&self) -> Vec<(String, BreakerState)> {
        let mut out: Vec<_> =
            self.map().masters.iter().map(|m| (m.address.clone(), m.state())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The labels are known (the tier was mounted): report every breaker's state under them.
    pub(crate) fn label_gauges(&self) {
        let labels = crate::metrics::read(&self.labels);
        for m in &self.map().masters {
            m.label_gauge(&labels);
        }
    }

    /// Refuse a call of `keys` keys to `master` unless its breaker is closed: with
    /// `CircuitOpen` (the hierarchy skips the tier for these keys), or — a `removal`, which must
    /// not pass for done — with a partial `Unavailable` error (the write path queues it).
    pub(crate) fn admit(
        &self,
        master: &Master,
        keys: usize,
        removal: bool,
    ) -> Result<(), TierError> {
        if master.state() == BreakerState::Closed {
            return Ok(());
        }
        self.skipped(master, "open", keys);
        let open =
            format!("the circuit breaker of Redis Cluster master {} is open", master.address);
        Err(if removal {
            TierError::new(TierErrorKind::Unavailable, format!("{open}: removal not sent"))
                .partial()
        } else {
            TierError::new(TierErrorKind::CircuitOpen, open)
        })
    }

    /// Is the master of `slot` known and its breaker not closed? (Then nothing is sent there.)
    pub(crate) fn is_out(&self, slot: u16) -> bool {
        self.master_of(slot).is_some_and(|m| m.state() != BreakerState::Closed)
    }

    /// Count `keys` keys that `master` did not answer, for `reason` (`open`, `failed`).
    pub(crate) fn skipped(&self, master: &Master, reason: &'static str, keys: usize) {
        let labels = crate::metrics::read(&self.labels);
        metrics::counter!(NODE_SKIPPED, "cache" => labels.cache, "tier" => labels.tier, "node" => master.address.clone(), "reason" => reason)
            .increment(keys as u64);
    }

    /// Record the outcome of a call made to `master`: a failure that says the master is sick
    /// counts against its breaker, asks for an early topology read, and is returned partial.
    pub(crate) fn record<T>(
        &self,
        master: &Master,
        result: Result<T, TierError>,
    ) -> Result<T, TierError> {
        match result {
            Err(e) if e.is_tier_failure() => {
                master.breaker.record(Permit::Granted, Outcome::Failure);
                self.refresh.notify_one();
                Err(e.partial())
            }
            other => {
                master.breaker.record(Permit::Granted, Outcome::Success);
                other
            }
        }
    }

    /// Put the map of `ranges` in place, keeping the breakers of masters already known.
    fn install(&self, ranges: Vec<(u16, u16, Route)>) {
        let old = self.map();
        let known: HashMap<&Route, &Arc<Master>> =
            old.masters.iter().map(|m| (&m.route, m)).collect();
        let labels = crate::metrics::read(&self.labels);
        let mut masters: Vec<Arc<Master>> = Vec::new();
        let mut index: HashMap<Route, u16> = HashMap::new();
        let mut slots = vec![NO_MASTER; usize::from(SLOTS)];
        for (first, last, route) in ranges {
            let i = match index.get(&route) {
                Some(i) => *i,
                None => {
                    let Ok(i) = u16::try_from(masters.len()) else { continue };
                    let master = known
                        .get(&route)
                        .map(|m| Arc::clone(m))
                        .unwrap_or_else(|| Arc::new(Master::new(route.clone(), self.config)));
                    master.label_gauge(&labels);
                    masters.push(master);
                    index.insert(route, i);
                    i
                }
            };
            for s in first..=last {
                slots[usize::from(s)] = i;
            }
        }
        // A master that left the topology (failed over, removed) reports closed from now on:
        // its series would otherwise say "open" for ever.
        for m in &old.masters {
            if !index.contains_key(&m.route) && m.gauge.get().is_some() {
                metrics::gauge!(NODE_BREAKER_STATE, "cache" => labels.cache.clone(), "tier" => labels.tier.clone(), "node" => m.address.clone()).set(0.0);
            }
        }
        let map = Arc::new(SlotMap { slots, masters });
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Read the topology and put it in place. `Err(true)`: the server does not know the
    /// command.
    pub(crate) async fn refresh_from(&self, conn: &RedisConnection) -> Result<(), RefreshError> {
        let labels = crate::metrics::read(&self.labels);
        let counter = |result: &'static str| {
            metrics::counter!(TOPOLOGY_REFRESHES, "cache" => labels.cache.clone(), "tier" => labels.tier.clone(), "result" => result).increment(1);
        };
        match conn.slot_ranges().await {
            Ok(ranges) => {
                counter("ok");
                self.install(ranges);
                Ok(())
            }
            Err(e) if crate::error::is_unknown_command(&e) => {
                counter("unsupported");
                Err(RefreshError::Unsupported(e))
            }
            Err(e) => {
                counter("error");
                Err(RefreshError::Failed(e))
            }
        }
    }

    /// No per-master breakers from now on (the server does not tell its topology): every call
    /// is the whole tier's.
    pub(crate) fn disable(&self) {
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::default();
    }

    /// Probe every master whose breaker is not closed and whose cool-down has passed; true
    /// while some breaker is still not closed.
    async fn probe(&self, conn: &RedisConnection) -> bool {
        let mut out = false;
        for master in &self.map().masters {
            loop {
                if master.state() == BreakerState::Closed {
                    break;
                }
                // A probe may go once the cool-down has passed; anything else: not now.
                let permit @ Permit::Probe = master.breaker.try_acquire() else {
                    out = true;
                    break;
                };
                let ping = conn.query_on("node probe", &master.route, commands::ping()).await;
                let outcome = if ping.is_ok() { Outcome::Success } else { Outcome::Failure };
                master.breaker.record(permit, outcome);
                if outcome == Outcome::Failure {
                    tracing::debug!(node = %master.address, "Redis Cluster master still out");
                    out = true;
                    break;
                }
            }
        }
        out
    }
}

/// Why a topology read failed.
pub(crate) enum RefreshError {
    /// The server does not know `CLUSTER SLOTS`.
    Unsupported(TierError),
    /// Anything else (a node down, a timeout).
    Failed(TierError),
}

/// `d` ± 20 %.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

/// The background task: topology reads (periodic, early after failures, backing off while they
/// fail) and the probes of masters that are out; the first read `first_read` from now. Ends when
/// the tier aborts it.
pub(crate) async fn run(nodes: Arc<Nodes>, conn: RedisConnection, first_read: Duration) {
    let probe_tick = (nodes.config.cooldown / 4).clamp(Duration::from_millis(10), MIN_REFRESH_GAP);
    let mut backoff = MIN_BACKOFF;
    let mut last_read = Instant::now();
    let mut next_read = last_read + first_read;
    loop {
        let now = Instant::now();
        if now >= next_read {
            last_read = now;
            match nodes.refresh_from(&conn).await {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    next_read = now + REFRESH_INTERVAL;
                }
                Err(RefreshError::Unsupported(e)) => {
                    tracing::warn!(error = %e, "the Redis server does not tell its Cluster topology: one circuit breaker for the whole tier, none per master");
                    nodes.disable();
                    return;
                }
                Err(RefreshError::Failed(e)) => {
                    tracing::debug!(error = %e, "Redis Cluster topology not read; again in {backoff:?}");
                    next_read = now + jittered(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let out = nodes.probe(&conn).await;
        let wake = if out { next_read.min(Instant::now() + probe_tick) } else { next_read };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = nodes.refresh.notified() => {
                // A call failed: read the topology soon (a slot may have moved), not at once
                // again and again.
                next_read = next_read.min(last_read + MIN_REFRESH_GAP);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(port: u16) -> Route {
        Route::Master { host: "10.0.0.1".into(), port }
    }

    fn nodes() -> Nodes {
        Nodes::new(default_node_breaker(), Arc::new(RwLock::new(Labels::default())))
    }

    #[test]
    fn slots_map_to_their_masters_and_breakers_survive_a_refresh() {
        let n = nodes();
        assert!(n.master_of(0).is_none(), "no topology yet");
        n.install(vec![(0, 99, m(1)), (100, 16383, m(2))]);
        assert_eq!(n.master_of(0).unwrap().address, "10.0.0.1:1");
        assert_eq!(n.master_of(99).unwrap().address, "10.0.0.1:1");
        assert_eq!(n.master_of(100).unwrap().address, "10.0.0.1:2");
        let first = n.master_of(5).unwrap();
        for _ in 0..5 {
            let _ = n.record::<()>(&first, Err(TierError::new(TierErrorKind::Unavailable, "x")));
        }
        assert_eq!(first.state(), BreakerState::Open);
        // Slots 0..=49 move to a new master; master 1 keeps its breaker (still open).
        n.install(vec![(0, 49, m(3)), (50, 99, m(1)), (100, 16383, m(2))]);
        assert_eq!(n.master_of(0).unwrap().address, "10.0.0.1:3");
        assert!(Arc::ptr_eq(&n.master_of(50).unwrap(), &first));
        assert_eq!(n.master_of(50).unwrap().state(), BreakerState::Open);
        // A slot no master serves.
        n.install(vec![(0, 99, m(1))]);
        assert!(n.master_of(100).is_none());
        assert_eq!(n.states(), [("10.0.0.1:1".to_string(), BreakerState::Open)]);
    }

    #[test]
    fn an_open_master_refuses_and_failures_are_partial() {
        let n = nodes();
        n.install(vec![(0, 16383, m(1))]);
        let master = n.master_of(7).unwrap();
        assert!(n.admit(&master, 1, false).is_ok());
        let e = n.record::<()>(&master, Err(TierError::new(TierErrorKind::Timeout, "slow")));
        let e = e.unwrap_err();
        assert!(e.is_partial() && !e.is_tier_failure() && e.is_timeout());
        // A value that does not decode says nothing about the master.
        let d = n.record::<()>(&master, Err(TierError::decode("foreign bytes"))).unwrap_err();
        assert!(!d.is_partial());
        for _ in 0..5 {
            let _ = n.record::<()>(&master, Err(TierError::new(TierErrorKind::Unavailable, "x")));
        }
        let refused = n.admit(&master, 1, false).unwrap_err();
        assert_eq!(refused.kind(), TierErrorKind::CircuitOpen);
        assert!(refused.to_string().contains("10.0.0.1:1"), "{refused}");
        assert!(n.is_out(7));
        // A removal is not skipped silently: an error the hierarchy does not take for "skipped".
        let removal = n.admit(&master, 1, true).unwrap_err();
        assert_eq!(removal.kind(), TierErrorKind::Unavailable);
        assert!(removal.is_partial(), "{removal:?}");
    }

    #[test]
    fn deadlines_end_before_the_hierarchy_timeout() {
        assert_eq!(deadline_for(Duration::from_millis(100)), Duration::from_millis(99));
        assert_eq!(deadline_for(Duration::from_millis(1)), Duration::from_micros(500));
        assert_eq!(deadline_for(Duration::ZERO), Duration::ZERO);
        assert_eq!(deadline_for(Duration::MAX), Duration::MAX - DEADLINE_MARGIN);
        let d = Deadline::default();
        assert_eq!(d.get(), None);
        d.set(Some(Duration::from_millis(10)));
        assert_eq!(d.get(), Some(Duration::from_millis(9)));
        d.set(Some(Duration::MAX));
        assert_eq!(d.get(), None, "past u64 µs: no deadline of our own");
        d.set(None);
        assert_eq!(d.get(), None);
    }

    #[test]
    fn configs_that_cannot_run_are_refused() {
        assert!(check_config(&default_node_breaker()).is_ok());
        let with = |f: fn(&mut BreakerConfig)| {
            let mut c = default_node_breaker();
            f(&mut c);
            check_config(&c)
        };
        assert!(with(|c| c.cooldown = Duration::ZERO).is_err());
        assert!(with(|c| c.failure_ratio = f64::NAN).is_err());
        assert!(with(|c| c.failure_ratio = 0.0).is_err());
        assert!(with(|c| c.failure_ratio = 1.5).is_err());
        assert!(with(|c| c.window = Duration::ZERO).is_err());
        assert!(with(|c| c.cooldown = Duration::MAX).is_ok());
    }
}
