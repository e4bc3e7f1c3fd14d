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
///
/// ```
/// use std::time::Duration;
/// use tier_core::{CallOptions, FailSafe};
/// let opts = CallOptions::new()
///     .fresh(Duration::from_secs(5))
///     .stale(Duration::from_secs(60))
///     .fail_safe(FailSafe::up_to(Duration::from_secs(60)))
///     .load_timeout(Duration::from_millis(200));
/// assert_eq!(opts.fresh, Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Go straight to the origin: no tier is read or written.
    pub bypass: bool,
    /// Tiers (by name) to skip for this call, reads and writes. Unknown names are ignored.
    pub skip_tiers: Vec<String>,
    /// Tags of the value loaded by this call.
    pub tags: Vec<Arc<str>>,
    /// How long the value loaded by this call is fresh, overriding the tiers' policies
    /// (graduated per tier as [`Loaded`](crate::Loaded) explains; a loader's own setting wins).
    /// Default: the policies.
    pub fresh: Option<Duration>,
    /// How long it may be served as stale after that (as `fresh`). Default: the policies.
    pub stale: Option<Duration>,
    /// Fail-safe for this call: `None` is the cache's setting, `Some(None)` off,
    /// `Some(Some(f))` on with `f`. It decides what this caller is answered when the load
    /// fails (each caller joining a load has its own), and, for the caller that starts the
    /// load, whether a stale value is kept serving (fail-safe's throttle).
    pub fail_safe: Option<Option<FailSafe>>,
    /// Load even when a value is cached fresh (a forced refresh): no tier is read first, the
    /// loader runs (or the call joins a load of the key already in flight), and its value is
    /// written as every load's is — it yields to an insert or invalidation of the key made
    /// while the loader ran, so a refresh racing a purge never puts back what was purged.
    /// There is no stale value to fall back on: a failed load is this call's error. Default:
    /// off.
    pub reload: bool,
    /// The loader's timeout for this call, in place of the cache's hard timeout: the load this
    /// call starts is bounded by it, and a call joining a load in flight waits at most this
    /// long (then fail-safe may serve a stale value, else
    /// [`LoadTimeout`](crate::CacheError::LoadTimeout)). Range: more than zero (zero is an
    /// [`InvalidInput`](crate::CacheError::InvalidInput) error). Default: the cache's.
    pub load_timeout: Option<Duration>,
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
    /// Load even when a value is cached fresh (see [`CallOptions::reload`]).
    ///
    /// The loaded value is written to the in-process tiers before it is answered, and to the
    /// others after: in a hierarchy without an in-process tier (Redis or disk alone) a `get`
    /// made right after the answer may still read the previous value until that write lands.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tier_core::{Cache, CallOptions, TierPolicy};
    /// use tier_memory::MemoryTier;
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let cache: Cache<String> = Cache::builder("docs")
    ///         .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
    ///         .build()?;
    ///     cache.insert("k", "old".to_string()).await?;
    ///     let reload = CallOptions::new().reload(true);
    ///     let v = cache
    ///         .get_or_load_with("k", &reload, || async { Ok::<_, std::io::Error>(Some("new".to_string())) })
    ///         .await?;
    ///     assert_eq!(v.as_deref().map(String::as_str), Some("new"));
    ///     assert_eq!(cache.get("k").await.as_deref().map(String::as_str), Some("new"));
    ///     Ok(())
    /// }
    /// ```
    #[must_use]
    pub fn reload(mut self, yes: bool) -> Self {
        self.reload = yes;
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
        self.tags = tag_list(tags);
        self
    }
    /// Fresh lifetime of the value this call loads (see [`CallOptions::fresh`]).
    #[must_use]
    pub fn fresh(mut self, fresh: Duration) -> Self {
        self.fresh = Some(fresh);
        self
    }
    /// Stale lifetime of the value this call loads (see [`CallOptions::stale`]).
    #[must_use]
    pub fn stale(mut self, stale: Duration) -> Self {
        self.stale = Some(stale);
        self
    }
    /// Fail-safe on for this call, with `fail_safe`.
    #[must_use]
    pub fn fail_safe(mut self, fail_safe: FailSafe) -> Self {
        self.fail_safe = Some(Some(fail_safe));
        self
    }
    /// Fail-safe off for this call (a load error is returned even when a stale value exists).
    #[must_use]
    pub fn no_fail_safe(mut self) -> Self {
        self.fail_safe = Some(None);
        self
    }
    /// The loader's timeout for this call (see [`CallOptions::load_timeout`]).
    #[must_use]
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = Some(timeout);
        self
    }

    /// What the loader run reads of these options, with the cache's `opts` filled in; an
    /// [`InvalidInput`](CacheError::InvalidInput) error for a value out of its range.
    pub(super) fn settings(&self, opts: &Options) -> Result<CallSettings, CacheError> {
        if self.load_timeout.is_some_and(|t| t.is_zero()) {
            return Err(CacheError::InvalidInput(
                "the call's load timeout is zero: no load could ever finish".into(),
            ));
        }
        check_tags(&self.tags, 0)?;
        Ok(CallSettings {
            tags: self.tags.clone(),
            lifetimes: Lifetimes { fresh: self.fresh, stale: self.stale },
            fail_safe: self.fail_safe.unwrap_or(opts.fail_safe),
            timeout: self.load_timeout.or(opts.hard_timeout),
            wait_bound: self.load_timeout,
            soft_timeout: opts.soft_timeout,
        })
    }
}

/// Lifetimes set for one entry (by its call or its loader), graduated per tier
/// (`lifetime.rs`); `None`: the tiers' policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Lifetimes {
    pub fresh: Option<Duration>,
    pub stale: Option<Duration>,
}

impl Lifetimes {
    /// `self`, with what `over` sets in its place.
    pub fn overridden_by(self, over: Lifetimes) -> Self {
        Self { fresh: over.fresh.or(self.fresh), stale: over.stale.or(self.stale) }
    }

    /// Set to nothing at all: zero fresh and zero stale (nothing is stored).
    pub fn is_nothing(self) -> bool {
        self.fresh == Some(Duration::ZERO) && self.stale == Some(Duration::ZERO)
    }
}

/// What a load runs with, per call: the cache's options with the call's in their place.
#[derive(Debug, Clone, Default)]
pub(super) struct CallSettings {
    /// Tags known before the load.
    pub tags: Vec<Arc<str>>,
    pub lifetimes: Lifetimes,
    pub fail_safe: Option<FailSafe>,
    /// The loader's (hard) timeout, of a load this call starts.
    pub timeout: Option<Duration>,
    /// The call's own load timeout: how long it waits for a load another call started.
    pub wait_bound: Option<Duration>,
    pub soft_timeout: Option<Duration>,
}

impl CallSettings {
    /// The cache's own settings (a batch load, a refresh without a call of its own).
    pub fn of_cache(opts: &Options) -> Self {
        Self {
            fail_safe: opts.fail_safe,
            timeout: opts.hard_timeout,
            soft_timeout: opts.soft_timeout,
            ..Self::default()
        }
    }
}

/// Tags as the hierarchy holds them.
pub(super) fn tag_list<I, S>(tags: I) -> Vec<Arc<str>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    tags.into_iter().map(|t| Arc::from(t.as_ref())).collect()
}

/// Tags over the envelope's limits (`already` tags are there besides): a clear error.
pub(super) fn check_tags(tags: &[Arc<str>], already: usize) -> Result<(), CacheError> {
    use crate::envelope::{MAX_TAGS, MAX_TAG_LEN};
    if tags.len() + already > MAX_TAGS {
        return Err(CacheError::InvalidInput(format!(
            "{} tags, at most {MAX_TAGS} allowed",
            tags.len() + already
        )));
    }
    if let Some(t) = tags.iter().find(|t| t.len() > MAX_TAG_LEN) {
        return Err(CacheError::InvalidInput(format!(
            "a tag of {} bytes ({:?}…), at most {MAX_TAG_LEN} allowed",
            t.len(),
            t.chars().take(16).collect::<String>()
        )));
    }
    Ok(())
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
    /// How keys appear in `tracing` spans.
    pub trace_keys: super::trace::TraceKeys,
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
            trace_keys: super::trace::TraceKeys::default(),
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

/// What [`Cache::write_behind`](crate::Cache::write_behind) does when the queue holds
/// [`WriteBehind::capacity`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Wait (asynchronously) until the writer has made room. Default.
    #[default]
    Wait,
    /// Fail at once with [`CacheError::WriteBehindFull`].
    Fail,
}

/// How a cache writes behind: batching, retries, dead letters and the queue's bound
/// ([`CacheBuilder::write_behind`](crate::CacheBuilder::write_behind)). The builder refuses
/// values outside the documented ranges, with a message naming the setting.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WriteBehind {
    /// At most this many writes in one call of the origin writer. Range: 1 ..= 1,000,000.
    /// Default: 100.
    pub max_batch: usize,
    /// A write waits at most this long for others to join its batch. Range: 0 ..= 1 hour.
    /// Default: 20 ms.
    pub max_delay: Duration,
    /// A batch that failed this many times in a row becomes dead letters. Range: 1 ..= 1,000.
    /// Default: 8.
    pub max_attempts: u32,
    /// The pause after the first failure; it doubles after each (with jitter: a random
    /// 50–100 % of it) up to `max_backoff`. Range: 1 ms ..= `max_backoff`. Default: 100 ms.
    pub backoff: Duration,
    /// The longest pause between retries. Range: `backoff` ..= 1 hour. Default: 10 s.
    pub max_backoff: Duration,
    /// At most this many writes held (pending and dead letters; writes of a key already held
    /// replace it and need no room). Range: 1 ..= 100,000,000. Default: 100,000.
    pub capacity: usize,
    /// What a write-behind does when the queue is full. Default: [`WhenFull::Wait`].
    pub when_full: WhenFull,
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self {
            max_batch: 100,
            max_delay: Duration::from_millis(20),
            max_attempts: 8,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            capacity: 100_000,
            when_full: WhenFull::Wait,
        }
    }
}

impl WriteBehind {
    /// At most `n` writes a batch.
    #[must_use]
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }
    /// A write waits at most `delay` for a batch to fill.
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }
    /// Dead letters after `n` failed attempts of a batch.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// The first pause after a failure and the longest one.
    #[must_use]
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }
    /// At most `n` writes held.
    #[must_use]
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }
    /// What to do when full.
    #[must_use]
    pub fn when_full(mut self, when: WhenFull) -> Self {
        self.when_full = when;
        self
    }

    /// These options, or the first one out of its range.
    pub(super) fn checked(self) -> Result<Self, CacheError> {
        const HOUR: Duration = Duration::from_secs(3600);
        let refuse = |why: String| Err(CacheError::Config(format!("write-behind: {why}")));
        if !(1..=1_000_000).contains(&self.max_batch) {
            return refuse(format!("max_batch must be in 1..=1000000, not {}", self.max_batch));
        }
        if self.max_delay > HOUR {
            return refuse(format!("max_delay must be at most 1 hour, not {:?}", self.max_delay));
        }
        if !(1..=1000).contains(&self.max_attempts) {
            return refuse(format!("max_attempts must be in 1..=1000, not {}", self.max_attempts));
        }
        if self.max_backoff > HOUR {
            return refuse(format!(
                "max_backoff must be at most 1 hour, not {:?}",
                self.max_backoff
            ));
        }
        if self.backoff < Duration::from_millis(1) || self.backoff > self.max_backoff {
            return refuse(format!(
                "backoff must be in 1 ms..=max_backoff ({:?}), not {:?}",
                self.max_backoff, self.backoff
            ));
        }
        if !(1..=100_000_000).contains(&self.capacity) {
            return refuse(format!("capacity must be in 1..=100000000, not {}", self.capacity));
        }
        Ok(self)
    }
}
