//! Per-tier policy: lifetimes, admission, backfill, and the layers (timeout, circuit breaker,
//! your own) the tier is mounted in.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::{Breaker, BreakerLayer};
use crate::layer::TierLayer;
use crate::timeout::TimeoutLayer;

/// When a hit in a lower tier is copied into this tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackfillPolicy {
    /// Every hit below is copied up. Default.
    #[default]
    Always,
    /// Never copy up (the tier is filled by loads and inserts only).
    Never,
    /// Copy up after `n` hits of the key below within a sliding window (frequency sketch);
    /// `OnHits(0)` and `OnHits(1)` copy every hit.
    OnHits(u32),
    /// Copy up only values of at most this many bytes (large values stay low).
    MaxSize(u32),
}

/// Lifetimes of entries in one tier: fresh, then stale, then gone; each jittered.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TtlPolicy {
    /// How long an entry is served as fresh.
    pub fresh: Duration,
    /// How long after `fresh` it may still be served as stale. Default: 0.
    pub stale: Duration,
    /// Relative jitter applied to both (0.1 = ±10 %). Default: 0.1.
    pub jitter: f64,
}

/// Everything the hierarchy needs to know about one of its tiers.
///
/// ```
/// use std::time::Duration;
/// use tier_core::{BackfillPolicy, TierPolicy};
/// let p = TierPolicy::fresh(Duration::from_secs(60))
///     .stale(Duration::from_secs(600))
///     .timeout(Duration::from_millis(5))
///     .max_value_size(64 << 10)
///     .backfill(BackfillPolicy::OnHits(2));
/// assert_eq!(p.ttl().fresh, Duration::from_secs(60));
/// // The tier is wrapped in its timeout, then in its breaker.
/// let layers: Vec<_> = p.layers().iter().map(|l| l.name()).collect();
/// assert_eq!(layers, ["timeout", "breaker"]);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct TierPolicy {
    pub(crate) ttl: TtlPolicy,
    pub(crate) max_value_size: Option<u32>,
    pub(crate) backfill: BackfillPolicy,
    pub(crate) negative_ttl: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) name: Option<String>,
    /// The wrappers, innermost first.
    layers: Vec<Arc<dyn TierLayer>>,
}

impl TierPolicy {
    /// A policy whose entries are fresh for `fresh` (everything else default). Range: more than
    /// zero (the builder refuses zero); `Duration::MAX` never expires (instants saturate).
    pub fn fresh(fresh: Duration) -> Self {
        Self {
            ttl: TtlPolicy { fresh, stale: Duration::ZERO, jitter: 0.1 },
            max_value_size: None,
            backfill: BackfillPolicy::Always,
            negative_ttl: Duration::from_secs(30),
            max_lifetime: None,
            name: None,
            layers: vec![Arc::new(BreakerLayer(Breaker::ByStorage))],
        }
    }

    /// The lifetimes.
    pub fn ttl(&self) -> &TtlPolicy {
        &self.ttl
    }

    /// The layers the tier is mounted in, innermost first.
    pub fn layers(&self) -> &[Arc<dyn TierLayer>] {
        &self.layers
    }

    /// The per-call timeout of the tier (its timeout layer's), if it has one.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.layers.iter().find_map(|l| l.call_timeout())
    }

    /// Why this policy is refused, if it is (the builder names the tier).
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.ttl.fresh.is_zero() {
            return Err("fresh lifetime is zero".into());
        }
        if !(0.0..=1.0).contains(&self.ttl.jitter) {
            return Err(format!("jitter must be in 0.0..=1.0, not {}", self.ttl.jitter));
        }
        if self.max_value_size == Some(0) {
            return Err("max_value_size is 0: the tier would admit nothing (switch a tier off \
                        with Cache::set_tier_enabled)"
                .into());
        }
        if self.name.as_deref() == Some("") {
            return Err("the tier name is empty".into());
        }
        for layer in &self.layers {
            layer.check().map_err(|e| format!("{} layer: {e}", layer.name()))?;
        }
        Ok(())
    }

    /// How long after fresh an entry may be served as stale. Any duration (instants saturate).
    /// Default: 0.
    pub fn stale(mut self, stale: Duration) -> Self {
        self.ttl.stale = stale;
        self
    }

    /// Relative jitter of lifetimes. Range: 0.0–1.0 (the builder refuses NaN and anything
    /// outside). Default: 0.1.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.ttl.jitter = jitter;
        self
    }

    /// Per-call timeout: the tier is wrapped in a [`TimeoutTier`](crate::spi::TimeoutTier), inside
    /// its breaker (a timeout counts as a failure), unless it bounds its calls within the
    /// timeout itself ([`Tier::bounds_calls`](crate::spi::Tier::bounds_calls): the Redis tier
    /// does; a late answer is the same `Timeout` error). Range: more than zero (the builder refuses
    /// zero); `Duration::MAX` is no timeout. Default: none.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with_layer(Arc::new(TimeoutLayer(timeout)), Place::Innermost)
    }

    /// The circuit breaker: [`Breaker::ByStorage`] (the default: one for envelope and shared
    /// tiers, none for in-process object tiers), [`Breaker::Off`], or a [`BreakerConfig`]
    /// (`Breaker::On`) whatever the tier.
    ///
    /// [`BreakerConfig`]: crate::BreakerConfig
    pub fn breaker(self, breaker: impl Into<Breaker>) -> Self {
        self.with_layer(Arc::new(BreakerLayer(breaker.into())), Place::Outermost)
    }

    /// No circuit breaker, whatever the tier (`breaker(Breaker::Off)`).
    pub fn no_breaker(self) -> Self {
        self.breaker(Breaker::Off)
    }

    /// Wrap the tier in `layer` too, outside the layers already set (a layer of the same name
    /// is replaced where it is).
    pub fn layer(self, layer: impl TierLayer) -> Self {
        self.with_layer(Arc::new(layer), Place::Outermost)
    }

    fn with_layer(mut self, layer: Arc<dyn TierLayer>, place: Place) -> Self {
        match self.layers.iter().position(|l| l.name() == layer.name()) {
            Some(i) => self.layers[i] = layer,
            None if place == Place::Innermost => self.layers.insert(0, layer),
            None => self.layers.push(layer),
        }
        self
    }

    /// Largest value admitted, in encoded bytes. Range: at least 1 (the builder refuses 0).
    /// Default: unlimited.
    pub fn max_value_size(mut self, bytes: u32) -> Self {
        self.max_value_size = Some(bytes);
        self
    }

    /// Backfill policy. Default: [`BackfillPolicy::Always`].
    pub fn backfill(mut self, policy: BackfillPolicy) -> Self {
        self.backfill = policy;
        self
    }

    /// Lifetime of negative entries (the origin said "none"); capped by the fresh lifetime.
    /// Any duration (zero: negative answers are not cached). Default: 30 s fresh, no stale.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The longest an entry may live in this tier, fresh plus stale, whatever its policy, its
    /// call or its loader set (a lifetime set longer is clamped to it: fresh first, then stale).
    /// Any duration. Default: unlimited.
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// The `tier` metric label. Range: not empty. Default: the tier's own name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Where a new layer goes.
#[derive(PartialEq, Eq)]
enum Place {
    Innermost,
    Outermost,
}
