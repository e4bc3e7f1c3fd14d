//! Per-tier policy: lifetimes, timeout, breaker, admission, backfill.

use std::time::Duration;

use crate::breaker::BreakerConfig;

/// When a hit in a lower tier is copied into this tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackfillPolicy {
    /// Every hit below is copied up. Default.
    #[default]
    Always,
    /// Never copy up (the tier is filled by loads and inserts only).
    Never,
    /// Copy up after `n` hits of the key below within a sliding window (frequency sketch).
    OnHits(u32),
    /// Copy up only values of at most this many bytes (large values stay low).
    MaxSize(u32),
}

/// Lifetimes of entries in one tier: fresh, then stale, then gone; each jittered.
#[derive(Debug, Clone, Copy, PartialEq)]
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
/// assert_eq!(p.ttl.fresh, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct TierPolicy {
    /// Lifetimes.
    pub ttl: TtlPolicy,
    /// Per-call timeout; `None` = no timeout. Default: `None`.
    pub timeout: Option<Duration>,
    /// Circuit breaker settings; `None` = no breaker. Default: [`BreakerConfig::default`] for
    /// tiers that store envelopes (disk, Redis: they can be slow, down or broken); none for
    /// in-process object tiers, which cannot be down (set one with [`TierPolicy::breaker`]).
    pub breaker: Option<BreakerConfig>,
    /// True until [`TierPolicy::breaker`] or [`TierPolicy::no_breaker`] is called: the builder
    /// then picks the default above by the tier's storage.
    pub breaker_by_storage: bool,
    /// Largest encoded value this tier admits, in bytes. Default: unlimited.
    pub max_value_size: Option<u32>,
    /// When hits below are copied into this tier. Default: [`BackfillPolicy::Always`].
    pub backfill: BackfillPolicy,
    /// Lifetime of negative entries (the origin said "none"); capped by `ttl`. Default: 30 s fresh,
    /// no stale.
    pub negative_ttl: Duration,
    /// The `tier` metric label; default: the tier's own name.
    pub name: Option<String>,
}

impl TierPolicy {
    /// A policy whose entries are fresh for `fresh` (everything else default).
    pub fn fresh(fresh: Duration) -> Self {
        Self {
            ttl: TtlPolicy { fresh, stale: Duration::ZERO, jitter: 0.1 },
            timeout: None,
            breaker: Some(BreakerConfig::default()),
            breaker_by_storage: true,
            max_value_size: None,
            backfill: BackfillPolicy::Always,
            negative_ttl: Duration::from_secs(30),
            name: None,
        }
    }

    /// How long after fresh an entry may be served as stale. Default: 0.
    pub fn stale(mut self, stale: Duration) -> Self {
        self.ttl.stale = stale;
        self
    }

    /// Relative jitter of lifetimes (0.0–1.0). Default: 0.1.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.ttl.jitter = jitter;
        self
    }

    /// Per-call timeout. Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Circuit breaker settings. Default: [`BreakerConfig::default`] for envelope tiers, none
    /// for in-process object tiers.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self.breaker_by_storage = false;
        self
    }

    /// No circuit breaker, whatever the tier.
    pub fn no_breaker(mut self) -> Self {
        self.breaker = None;
        self.breaker_by_storage = false;
        self
    }

    /// Largest value admitted, in encoded bytes. Default: unlimited.
    pub fn max_value_size(mut self, bytes: u32) -> Self {
        self.max_value_size = Some(bytes);
        self
    }

    /// Backfill policy. Default: [`BackfillPolicy::Always`].
    pub fn backfill(mut self, policy: BackfillPolicy) -> Self {
        self.backfill = policy;
        self
    }

    /// Lifetime of negative entries. Default: 30 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The `tier` metric label. Default: the tier's own name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}
