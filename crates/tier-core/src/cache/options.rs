//! What a cache and a call are configured with: the public option types, the ranges the builder
//! accepts for each, and the validated options the hierarchy runs with.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backplane::ReconnectPolicy;
use crate::error::CacheError;

/// What a value type must be to live in a [`Cache`](crate::Cache).
pub trait CacheValue: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

/// Serving stale values when the origin fails.
///
/// Any durations are accepted (`Duration::MAX` means "no limit"; instants saturate).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct FailSafe {
    /// A stale value is served at most this long after its `fresh_until` (and never after its
    /// `stale_until`). Zero: never past `fresh_until`.
    pub max_stale_age: Duration,
    /// After serving a stale value because the origin failed, it is served as is (without
    /// calling the origin) for this long. Default: 5 s. Zero: no throttle.
    pub throttle: Duration,
}

impl FailSafe {
    /// Serve stale values up to `max_stale_age` past their freshness.
    pub fn up_to(max_stale_age: Duration) -> Self {
        Self { max_stale_age, throttle: Duration::from_secs(5) }
    }

    /// How long a stale value served on failure keeps the origin from being called again.
    /// Default: 5 s.
    #[must_use]
    pub fn throttle(mut self, throttle: Duration) -> Self {
        self.throttle = throttle;
        self
    }
}

/// Refresh a fresh entry in the background before it expires.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum EarlyRefresh {
    /// XFetch (Vattani et al.): refresh when `now - load_cost × beta × ln(rand) ≥ fresh_until`.
    /// `beta = 1.0` is the paper's optimum; larger refreshes earlier. Range: finite, ≥ 0
    /// (the builder refuses NaN, ∞ and negative values).
    XFetch {
        /// Eagerness.
        beta: f64,
    },
    /// Refresh once this fraction of the fresh lifetime has passed (e.g. 0.8). Range: 0.0–1.0
    /// (the builder refuses NaN and values outside it).
    Ahead(f64),
}

impl EarlyRefresh {
    fn check(self) -> Result<Self, CacheError> {
        match self {
            Self::XFetch { beta } if !(beta.is_finite() && beta >= 0.0) => Err(CacheError::Config(
                format!("early refresh: XFetch beta must be finite and >= 0, not {beta}"),
            )),
            Self::Ahead(ratio) if !(0.0..=1.0).contains(&ratio) => Err(CacheError::Config(
                format!("early refresh: the refresh-ahead ratio must be in 0.0..=1.0, not {ratio}"),
            )),
            ok => Ok(ok),
        }
    }
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Go straight to the origin: no tier is read or written.
    pub bypass: bool,
    /// Tiers (by name) to skip for this call, reads and writes. Unknown names are ignored.
    pub skip_tiers: Vec<String>,
    /// Tags of the value loaded by this call.
    pub tags: Vec<Arc<str>>,
}

impl CallOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Bypass caching for this call.
    #[must_use]
    pub fn bypass(mut self, yes: bool) -> Self {
        self.bypass = yes;
        self
    }
    /// Skip the tier named `name` for this call.
    #[must_use]
    pub fn skip_tier(mut self, name: impl Into<String>) -> Self {
        self.skip_tiers.push(name.into());
        self
    }
    /// Tag the loaded value.
    #[must_use]
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.tags = tags.into_iter().map(|t| Arc::from(t.as_ref())).collect();
        self
    }
}

/// The options a hierarchy runs with, checked by [`Options::checked`].
#[derive(Debug, Clone)]
pub(super) struct Options {
    pub fail_safe: Option<FailSafe>,
    pub soft_timeout: Option<Duration>,
    pub hard_timeout: Option<Duration>,
    pub early_refresh: Option<EarlyRefresh>,
    pub stale_while_revalidate: bool,
    pub sync_backfill: bool,
    pub reconnect: ReconnectPolicy,
    /// One access in this many is recorded in the hot keys; a power of two.
    pub hot_key_sample: u64,
    pub max_pending_backfills: usize,
    /// The bound on each call to a part of the fleet state.
    pub fleet_timeout: Duration,
    /// δ: how long a backplane that confirms delivery may stay silent before local entries
    /// turn stale (the lease).
    pub propagation_bound: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fail_safe: None,
            soft_timeout: None,
            hard_timeout: None,
            early_refresh: None,
            stale_while_revalidate: false,
            sync_backfill: false,
            reconnect: ReconnectPolicy::default(),
            hot_key_sample: 64,
            max_pending_backfills: 1024,
            fleet_timeout: Duration::from_millis(100),
            propagation_bound: Duration::from_millis(100),
        }
    }
}

impl Options {
    /// These options, or the first one out of its documented range.
    pub fn checked(mut self) -> Result<Self, CacheError> {
        if self.hard_timeout.is_some_and(|t| t.is_zero()) {
            return Err(CacheError::Config(
                "the hard timeout is zero: no load could ever finish".into(),
            ));
        }
        if self.fleet_timeout.is_zero() {
            return Err(CacheError::Config(
                "the fleet-state timeout is zero: no call to the shared state could finish".into(),
            ));
        }
        if self.propagation_bound.is_zero() {
            return Err(CacheError::Config(
                "the propagation bound is zero: no local entry could ever be fresh".into(),
            ));
        }
        self.early_refresh = self.early_refresh.map(EarlyRefresh::check).transpose()?;
        self.hot_key_sample =
            self.hot_key_sample.max(1).checked_next_power_of_two().unwrap_or(1 << 63);
        Ok(self)
    }
}
