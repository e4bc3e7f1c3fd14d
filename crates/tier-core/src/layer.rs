//! Layers: the wrappers a tier is mounted in (tower's `Layer` idea). A [`TierPolicy`] holds
//! them in order, innermost first — by default the timeout (when set) inside the circuit
//! breaker — and the builder wraps each tier in its policy's layers instead of hard-coding
//! them. A wrapper is itself a [`Tier`], so the hierarchy sees "a tier" whatever it is wrapped
//! in, and each wrapper is tested alone.
//!
//! [`TierPolicy`]: crate::TierPolicy

use std::fmt;
use std::sync::Arc;

use crate::entry::Storage;
use crate::tier::{Tier, TierContext};

/// Where a tier is being mounted: what a layer may need to decide how to wrap it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Mount<'a> {
    /// The hierarchy's and the tier's names (the `cache` and `tier` labels).
    pub context: &'a TierContext,
    /// Which form of value the tier stores.
    pub storage: Storage,
    /// Whether every instance shares the tier.
    pub shared: bool,
    /// Whether the tier this layer wraps is the tier itself and answers each call within
    /// `context.timeout` by itself ([`Tier::bounds_calls`]): a timeout layer then has nothing
    /// to add. False for every layer but the innermost.
    pub bounded: bool,
}

impl<'a> Mount<'a> {
    /// A tier named by `context`, storing `storage`, shared or not (not `bounded`).
    pub fn new(context: &'a TierContext, storage: Storage, shared: bool) -> Self {
        Self { context, storage, shared, bounded: false }
    }
}

/// A wrapper around a tier.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tier_core::spi::{Mount, Tier, TierLayer};
/// use tier_core::TierPolicy;
///
/// /// Hands the tier back unwrapped (a real layer returns a wrapper that is a `Tier`).
/// #[derive(Debug)]
/// struct Audit;
///
/// impl TierLayer for Audit {
///     fn name(&self) -> &'static str {
///         "audit"
///     }
///     fn wrap(&self, tier: Arc<dyn Tier>, _mount: &Mount<'_>) -> Arc<dyn Tier> {
///         tier
///     }
/// }
///
/// let policy = TierPolicy::fresh(Duration::from_secs(60)).timeout(Duration::from_millis(5)).layer(Audit);
/// let names: Vec<_> = policy.layers().iter().map(|l| l.name()).collect();
/// assert_eq!(names, ["timeout", "breaker", "audit"]);
/// ```
pub trait TierLayer: fmt::Debug + Send + Sync + 'static {
    /// The layer's name: a policy holds one layer of each name (setting one again replaces it
    /// where it is).
    fn name(&self) -> &'static str;

    /// Why this layer's settings are out of range, if they are: the cache builder refuses them
    /// with [`CacheError::Config`](crate::CacheError::Config) naming the tier. Default: fine.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// The bound this layer puts on each call of the tier, if it is a timeout (passed to the
    /// tier in its [`TierContext`](crate::spi::TierContext)). Default: none.
    fn call_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// `tier` wrapped in this layer (or `tier` itself, when the layer does not apply to it).
    fn wrap(&self, tier: Arc<dyn Tier>, mount: &Mount<'_>) -> Arc<dyn Tier>;
}
