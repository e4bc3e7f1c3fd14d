//! Circuit breaker: stop calling a tier that keeps failing, probe it after a cool-down.
//!
//! Closed → Open when, over a rolling window, at least `min_requests` calls were made and the
//! failure ratio reaches `failure_ratio`, or after `consecutive_failures` failures in a row.
//! Open → Half-open after `cooldown`; up to `probes` calls go through; `probes` successes close it,
//! one failure opens it again. An open breaker answers without touching the tier (one atomic load
//! and one clock read).
//!
//! Only failures that say the tier is sick count ([`TierError::is_tier_failure`]); a value that
//! fails to decode is the value's fault, not the tier's.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::entry::{Entry, Lookup, ReadyLookup, Storage};
use crate::error::{TierError, TierErrorKind};
use crate::layer::{Mount, TierLayer};
use crate::metrics::TIER_BREAKER_STATE;
use crate::tier::{BreakerState, Tier};

/// Breaker settings. The cache builder refuses a `failure_ratio` outside `(0, 1]` (or NaN) and
/// a zero `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Open at this failure ratio over the window. Range: `(0, 1]`. Default: 0.5.
    pub failure_ratio: f64,
    /// ... once the window holds at least this many calls. Default: 20.
    pub min_requests: u32,
    /// Length of the rolling window (ten buckets of a tenth each, at least 1 ms). Range: more
    /// than zero. Default: 10 s.
    pub window: Duration,
    /// Or open after this many failures in a row (0 counts as 1). Default: 5.
    pub consecutive_failures: u32,
    /// How long it stays open before probing (any; zero probes at once). Default: 5 s.
    pub cooldown: Duration,
    /// Probes allowed at once in half-open, and successes needed to close (0 counts as 1).
    /// Default: 3.
    pub probes: u32,
}

impl BreakerConfig {
    /// Why these settings are refused, if they are.
    fn check(&self) -> Result<(), String> {
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(format!(
                "breaker failure_ratio must be in (0, 1], not {}",
                self.failure_ratio
            ));
        }
        if self.window.is_zero() {
            return Err("breaker window is zero".into());
        }
        Ok(())
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            consecutive_failures: 5,
            cooldown: Duration::from_secs(5),
            probes: 3,
        }
    }
}

const BUCKETS: usize = 10;

/// `d` in milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Bucket {
    slot: AtomicU64,
    ok: AtomicU32,
    failed: AtomicU32,
}

/// A circuit breaker (lock-free; counts are approximate under races, which a breaker tolerates).
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    state: AtomicU8,
    opened_at_ms: AtomicU64,
    consecutive: AtomicU32,
    probes_in_flight: AtomicU32,
    probe_successes: AtomicU32,
    buckets: [Bucket; BUCKETS],
    on_change: std::sync::OnceLock<metrics::Gauge>,
    /// The cache and tier it guards, for its events.
    labels: std::sync::OnceLock<(String, String)>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// What [`CircuitBreaker::try_acquire`] says of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Permit {
    /// The breaker is closed: the call goes through.
    Granted,
    /// The breaker is half-open: the call goes through as one of its probes.
    Probe,
    /// The breaker is open (or every probe is taken): do not call the tier.
    Denied,
}

impl Permit {
    /// May the call go through?
    pub fn is_granted(self) -> bool {
        self != Self::Denied
    }
}

/// What happened to a call let through by [`CircuitBreaker::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The tier answered.
    Success,
    /// The tier is sick (unavailable, timeout, I/O).
    Failure,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: AtomicU8::new(BreakerState::Closed as u8),
            opened_at_ms: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probes_in_flight: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            buckets: Default::default(),
            on_change: std::sync::OnceLock::new(),
            labels: std::sync::OnceLock::new(),
        }
    }

    /// Report the state through this gauge from now on.
    pub fn set_gauge(&self, gauge: metrics::Gauge) {
        gauge.set(self.state.load(Ordering::Relaxed) as f64);
        let _ = self.on_change.set(gauge);
    }

    /// Name the cache and tier (or part of a tier) it guards in its `tracing` events (target
    /// `tier`): WARN when it opens, INFO when it half-opens or closes. The first call wins.
    pub fn set_labels(&self, cache: impl Into<String>, tier: impl Into<String>) {
        let _ = self.labels.set((cache.into(), tier.into()));
    }

    fn changed(&self, s: BreakerState) {
        let (cache, tier) = self.labels.get().map_or(("", ""), |(c, t)| (c.as_str(), t.as_str()));
        match s {
            BreakerState::Open => {
                tracing::warn!(target: "tier", cache, tier, state = s.as_str(), "circuit breaker opened: the tier is skipped")
            }
            _ => {
                tracing::info!(target: "tier", cache, tier, state = s.as_str(), "circuit breaker state changed")
            }
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn now_ms(&self) -> u64 {
        crate::time::monotonic_ms()
    }

    fn set_state(&self, s: BreakerState) {
        self.state.store(s as u8, Ordering::Release);
        if let Some(g) = self.on_change.get() {
            g.set(s as u8 as f64);
        }
        self.changed(s);
    }

    /// May a call go through now? Record its outcome with [`CircuitBreaker::record`].
    pub fn try_acquire(&self) -> Permit {
        match self.state() {
            BreakerState::Closed => Permit::Granted,
            BreakerState::Open => {
                let since = self.now_ms().saturating_sub(self.opened_at_ms.load(Ordering::Acquire));
                if since < millis(self.cfg.cooldown) {
                    return Permit::Denied;
                }
                if self
                    .state
                    .compare_exchange(
                        BreakerState::Open as u8,
                        BreakerState::HalfOpen as u8,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    self.probes_in_flight.store(0, Ordering::Release);
                    self.probe_successes.store(0, Ordering::Release);
                    if let Some(g) = self.on_change.get() {
                        g.set(BreakerState::HalfOpen as u8 as f64);
                    }
                    self.changed(BreakerState::HalfOpen);
                }
                self.try_probe()
            }
            BreakerState::HalfOpen => self.try_probe(),
        }
    }

    fn try_probe(&self) -> Permit {
        let n = self.probes_in_flight.fetch_add(1, Ordering::AcqRel);
        if n < self.cfg.probes.max(1) {
            Permit::Probe
        } else {
            self.probes_in_flight.fetch_sub(1, Ordering::AcqRel);
            Permit::Denied
        }
    }

    /// Record the outcome of a call let through with `permit` (a denied call records nothing).
    pub fn record(&self, permit: Permit, outcome: Outcome) {
        if permit == Permit::Denied {
            return;
        }
        if permit == Permit::Probe {
            self.probes_in_flight.fetch_sub(1, Ordering::AcqRel);
            if self.state() != BreakerState::HalfOpen {
                return;
            }
            match outcome {
                Outcome::Success => {
                    let s = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
                    if s >= self.cfg.probes.max(1) {
                        self.reset_window();
                        self.set_state(BreakerState::Closed);
                    }
                }
                Outcome::Failure => self.open(),
            }
            return;
        }
        let bucket = self.bucket();
        match outcome {
            Outcome::Success => {
                bucket.ok.fetch_add(1, Ordering::Relaxed);
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
            }
            Outcome::Failure => {
                bucket.failed.fetch_add(1, Ordering::Relaxed);
                let c = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                if self.state() == BreakerState::Closed
                    && (c >= self.cfg.consecutive_failures.max(1) || self.ratio_tripped())
                {
                    self.open();
                }
            }
        }
    }

    fn open(&self) {
        self.opened_at_ms.store(self.now_ms(), Ordering::Release);
        self.consecutive.store(0, Ordering::Release);
        self.set_state(BreakerState::Open);
    }

    fn bucket_ms(&self) -> u64 {
        (millis(self.cfg.window) / BUCKETS as u64).max(1)
    }

    fn bucket(&self) -> &Bucket {
        let slot = self.now_ms() / self.bucket_ms();
        let b = &self.buckets[(slot % BUCKETS as u64) as usize];
        let old = b.slot.load(Ordering::Acquire);
        if old != slot
            && b.slot.compare_exchange(old, slot, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            b.ok.store(0, Ordering::Release);
            b.failed.store(0, Ordering::Release);
        }
        b
    }

    fn ratio_tripped(&self) -> bool {
        let slot = self.now_ms() / self.bucket_ms();
        let (mut ok, mut failed) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.slot.load(Ordering::Acquire);
            if s + (BUCKETS as u64) > slot {
                ok += u64::from(b.ok.load(Ordering::Relaxed));
                failed += u64::from(b.failed.load(Ordering::Relaxed));
            }
        }
        let total = ok + failed;
        total >= u64::from(self.cfg.min_requests)
            && failed as f64 >= self.cfg.failure_ratio * total as f64
    }

    fn reset_window(&self) {
        for b in &self.buckets {
            b.ok.store(0, Ordering::Release);
            b.failed.store(0, Ordering::Release);
        }
        self.consecutive.store(0, Ordering::Release);
    }
}

/// A tier behind a circuit breaker: the same [`Tier`], that fails fast with
/// [`TierErrorKind::CircuitOpen`] while the breaker is open.
pub struct BreakerTier {
    inner: Arc<dyn Tier>,
    breaker: Arc<CircuitBreaker>,
}

impl BreakerTier {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Tier>, cfg: BreakerConfig) -> Self {
        Self { inner, breaker: Arc::new(CircuitBreaker::new(cfg)) }
    }

    /// The breaker, to read its state.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// A ready answer of the inner tier (`get_ready` or `peek_ready`). Only a closed breaker
    /// answers here (acquiring costs nothing then); open and half-open states go through the
    /// async path, which does the probe accounting. A ready answer is a success; `Ask` records
    /// nothing (the `get` that follows does).
    fn ready(&self, answer: impl FnOnce() -> ReadyLookup) -> ReadyLookup {
        if self.breaker.state() != BreakerState::Closed {
            return ReadyLookup::Ask;
        }
        let result = answer();
        if !matches!(result, ReadyLookup::Ask) {
            self.breaker.record(Permit::Granted, Outcome::Success);
        }
        result
    }

    async fn guarded<T, F>(&self, call: F) -> Result<T, TierError>
    where
        F: std::future::Future<Output = Result<T, TierError>>,
    {
        let permit = self.breaker.try_acquire();
        if !permit.is_granted() {
            return Err(TierError::new(
                TierErrorKind::CircuitOpen,
                format!("circuit breaker of tier {} is open", self.inner.name()),
            ));
        }
        let result = call.await;
        let outcome = match &result {
            Err(e) if e.is_tier_failure() => Outcome::Failure,
            _ => Outcome::Success,
        };
        self.breaker.record(permit, outcome);
        result
    }
}

#[async_trait]
impl Tier for BreakerTier {
    crate::tier::forward_tier_info!(except breaker_state);
    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.breaker.state())
    }
    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        self.guarded(self.inner.get(key)).await
    }
    fn get_ready(&self, key: &[u8]) -> ReadyLookup {
        self.ready(|| self.inner.get_ready(key))
    }
    fn peek_ready(&self, key: &[u8]) -> ReadyLookup {
        self.ready(|| self.inner.peek_ready(key))
    }
    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        self.guarded(self.inner.get_many(keys)).await
    }
    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        self.guarded(self.inner.insert(key, entry)).await
    }
    async fn insert_many(&self, entries: Vec<(Bytes, Entry)>) -> Result<(), TierError> {
        self.guarded(self.inner.insert_many(entries)).await
    }
    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        // Removal must not be skipped silently: an invalidation that did not reach a tier is an
        // error the caller sees, so it goes through even when the breaker is open.
        self.inner.remove(key).await
    }
    async fn clear(&self) -> Result<(), TierError> {
        self.inner.clear().await
    }
    async fn retime(&self, key: &[u8], how: crate::retime::Retime) -> Result<bool, TierError> {
        self.guarded(self.inner.retime(key, how)).await
    }
}

/// Whether a tier gets a circuit breaker, and which: the breaker setting of a
/// [`TierPolicy`](crate::TierPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Breaker {
    /// [`BreakerConfig::default`] for tiers that store envelopes or are shared (disk, Redis:
    /// they can be slow, down or broken); none for in-process object tiers, which cannot be
    /// down. Default.
    #[default]
    ByStorage,
    /// No breaker, whatever the tier.
    Off,
    /// This breaker, whatever the tier.
    On(BreakerConfig),
}

impl From<BreakerConfig> for Breaker {
    fn from(config: BreakerConfig) -> Self {
        Self::On(config)
    }
}

impl Breaker {
    /// The breaker a tier mounted so gets, if any.
    pub fn config_for(self, storage: Storage, shared: bool) -> Option<BreakerConfig> {
        match self {
            Self::ByStorage if storage == Storage::Objects && !shared => None,
            Self::ByStorage => Some(BreakerConfig::default()),
            Self::Off => None,
            Self::On(config) => Some(config),
        }
    }
}

/// The circuit-breaker layer: wraps a tier in a [`BreakerTier`] as its [`Breaker`] setting says,
/// with the breaker's state reported in `tier_breaker_state{cache, tier}`.
#[derive(Debug, Clone, Copy)]
pub struct BreakerLayer(pub Breaker);

impl TierLayer for BreakerLayer {
    fn name(&self) -> &'static str {
        "breaker"
    }

    fn check(&self) -> Result<(), String> {
        match self.0 {
            Breaker::On(config) => config.check(),
            Breaker::ByStorage | Breaker::Off => Ok(()),
        }
    }

    fn wrap(&self, tier: Arc<dyn Tier>, mount: &Mount<'_>) -> Arc<dyn Tier> {
        let Some(config) = self.0.config_for(mount.storage, mount.shared) else { return tier };
        let wrapped = BreakerTier::new(tier, config);
        let ctx = mount.context;
        let gauge = metrics::gauge!(TIER_BREAKER_STATE, "cache" => ctx.cache.clone(), "tier" => ctx.tier.clone());
        wrapped.breaker().set_gauge(gauge);
        wrapped.breaker().set_labels(ctx.cache.clone(), ctx.tier.clone());
        Arc::new(wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(60),
            consecutive_failures: 3,
            cooldown: Duration::from_millis(0),
            probes: 2,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_probes() {
        let b = CircuitBreaker::new(BreakerConfig { cooldown: Duration::from_secs(3600), ..cfg() });
        for _ in 0..2 {
            let p = b.try_acquire();
            assert_eq!(p, Permit::Granted, "closed");
            b.record(p, Outcome::Failure);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let p = b.try_acquire();
        assert_eq!(p, Permit::Granted, "closed");
        b.record(p, Outcome::Failure);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire(),
            Permit::Denied,
            "open breaker lets nothing through during cool-down"
        );
    }

    #[test]
    fn half_open_limits_probes_and_a_failure_reopens() {
        let b = CircuitBreaker::new(cfg());
        for _ in 0..3 {
            let p = b.try_acquire();
            assert_eq!(p, Permit::Granted, "closed");
            b.record(p, Outcome::Failure);
        }
        assert_eq!(b.state(), BreakerState::Open);
        // cool-down is 0: next acquire moves to half-open.
        let (p1, p2) = (b.try_acquire(), b.try_acquire());
        assert_eq!((p1, p2), (Permit::Probe, Permit::Probe));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(), Permit::Denied, "only two probes at once");
        b.record(Permit::Probe, Outcome::Success);
        b.record(Permit::Probe, Outcome::Failure);
        assert_eq!(b.state(), BreakerState::Open);
        let p = b.try_acquire();
        assert_eq!(p, Permit::Probe);
        b.record(p, Outcome::Success);
        let p = b.try_acquire();
        assert_eq!(p, Permit::Probe);
        b.record(p, Outcome::Success);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// A tier whose every call fails with `error`.
    struct Failing(TierError);

    #[async_trait]
    impl Tier for Failing {
        fn name(&self) -> &str {
            "failing"
        }
        fn storage(&self) -> crate::entry::Storage {
            crate::entry::Storage::Envelopes
        }
        async fn get(&self, _key: &[u8]) -> Result<Lookup, TierError> {
            Err(self.0.clone())
        }
        async fn insert(&self, _key: Bytes, _entry: Entry) -> Result<(), TierError> {
            Err(self.0.clone())
        }
        async fn remove(&self, _key: &[u8]) -> Result<(), TierError> {
            Err(self.0.clone())
        }
        async fn clear(&self) -> Result<(), TierError> {
            Err(self.0.clone())
        }
    }

    #[tokio::test]
    async fn failures_of_a_part_of_the_tier_do_not_open_it() {
        let timeout = TierError::new(TierErrorKind::Timeout, "one master is slow");
        assert!(timeout.is_tier_failure());
        let partial = timeout.clone().partial();
        assert!(partial.is_partial() && !partial.is_tier_failure());
        assert_eq!(partial.kind(), TierErrorKind::Timeout, "the kind is kept");

        let tier = BreakerTier::new(Arc::new(Failing(partial)), cfg());
        for _ in 0..50 {
            assert_eq!(tier.get(b"k").await.err().map(|e| e.kind()), Some(TierErrorKind::Timeout));
        }
        assert_eq!(tier.breaker().state(), BreakerState::Closed);

        let tier = BreakerTier::new(Arc::new(Failing(timeout)), cfg());
        for _ in 0..3 {
            let _ = tier.get(b"k").await;
        }
        assert_eq!(tier.breaker().state(), BreakerState::Open, "the same failure, whole: opens");
    }

    #[test]
    fn ratio_over_window_opens() {
        let b = CircuitBreaker::new(BreakerConfig { consecutive_failures: 1000, ..cfg() });
        for i in 0..10 {
            let p = b.try_acquire();
            assert_eq!(p, Permit::Granted, "closed");
            b.record(p, if i % 2 == 0 { Outcome::Success } else { Outcome::Failure });
        }
        assert_eq!(b.state(), BreakerState::Open, "5 of 10 failed = 0.5");
    }
}
