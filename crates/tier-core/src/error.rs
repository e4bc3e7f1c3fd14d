//! Errors of tiers and of the hierarchy.
//!
//! A [`TierError`] says *what kind* of failure happened so that the circuit breaker can tell a
//! sick tier ([`TierError::is_tier_failure`]: unavailable, timeout, I/O) from a bad value
//! ([`TierErrorKind::Decode`], [`TierErrorKind::TooLarge`]) that says nothing about the tier's
//! health.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// A boxed error that can cross tasks.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong in a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TierErrorKind {
    /// The tier cannot be reached (connection refused, server down, lost connection).
    Unavailable,
    /// The tier did not answer within its timeout.
    Timeout,
    /// Local I/O failed (disk full, permission, read error).
    Io,
    /// The stored bytes are not a valid envelope (foreign format, corruption, old version).
    Decode,
    /// The key or value is over the tier's limit; the tier is healthy.
    TooLarge,
    /// The circuit breaker is open: the tier was not called.
    CircuitOpen,
    /// The tier is disabled by an operator switch: it was not called.
    Disabled,
    /// The tier refused the request for a reason that is not its health (bad argument, read-only).
    Rejected,
    /// Anything else; counted as a tier failure.
    Other,
}

impl TierErrorKind {
    /// A short, stable name (used in logs and the CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Decode => "decode",
            Self::TooLarge => "too_large",
            Self::CircuitOpen => "circuit_open",
            Self::Disabled => "disabled",
            Self::Rejected => "rejected",
            Self::Other => "other",
        }
    }
}

/// An error returned by a [`Tier`](crate::spi::Tier).
#[derive(Debug, Clone)]
pub struct TierError {
    kind: TierErrorKind,
    message: Arc<str>,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
    /// A failure of one part of the tier, counted by that part's own breaker.
    partial: bool,
}

impl TierError {
    /// An error of `kind` with a message giving context.
    pub fn new(kind: TierErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: Arc::from(message.into()), source: None, partial: false }
    }

    /// An error of `kind` with context and the underlying cause.
    pub fn with_source(
        kind: TierErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            kind,
            message: Arc::from(message.into()),
            source: Some(Arc::from(source.into())),
            partial: false,
        }
    }

    /// Shorthand for a [`TierErrorKind::Decode`] error.
    pub fn decode(message: impl Into<String>) -> Self {
        Self::new(TierErrorKind::Decode, message)
    }

    /// Shorthand for a [`TierErrorKind::TooLarge`] error.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(TierErrorKind::TooLarge, message)
    }

    /// Shorthand for an I/O error with context.
    pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Self::with_source(TierErrorKind::Io, message, source)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TierErrorKind {
        self.kind
    }

    /// The context message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Mark this as the failure of one part of the tier — one master of a Redis Cluster — that
    /// the tier counts against a breaker of that part's own: the kind stays what it is (metrics
    /// still say `timeout` or `error`), but the tier as a whole is not sick, so the hierarchy's
    /// breaker does not count it ([`is_tier_failure`](Self::is_tier_failure) is false).
    pub fn partial(mut self) -> Self {
        self.partial = true;
        self
    }

    /// True for the failure of one part of the tier (see [`partial`](Self::partial)).
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// True when the failure says the tier is sick (it counts against the circuit breaker):
    /// unavailable, timeout, I/O or other, unless it is the failure of one part of the tier
    /// ([`partial`](Self::partial)). A bad value, an open breaker or a disabled tier is not.
    pub fn is_tier_failure(&self) -> bool {
        !self.partial
            && matches!(
                self.kind,
                TierErrorKind::Unavailable
                    | TierErrorKind::Timeout
                    | TierErrorKind::Io
                    | TierErrorKind::Other
            )
    }

    /// True for a timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == TierErrorKind::Timeout
    }

    /// True when the stored bytes could not be decoded.
    pub fn is_decode(&self) -> bool {
        self.kind == TierErrorKind::Decode
    }
}

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for TierError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

/// An error returned by a [`Cache`](crate::Cache) to its caller.
///
/// Clone is cheap: a loader error is shared (`Arc`) by every caller that waited for that load.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The loader returned an error and no stale value could be served.
    #[error("loader failed: {0}")]
    Load(Arc<dyn StdError + Send + Sync + 'static>),
    /// The loader did not finish within the hard timeout and no stale value could be served.
    #[error("loader timed out after {0:?}")]
    LoadTimeout(std::time::Duration),
    /// The loader task panicked or was aborted (runtime shut down).
    #[error("loader task ended without a result: {0}")]
    LoadAborted(String),
    /// The value could not be encoded for the byte tiers (serialization failed).
    #[error("value could not be encoded: {0}")]
    Encode(String),
    /// A write or invalidation could not reach a tier.
    #[error("tier {tier} failed: {source}")]
    Tier {
        /// The tier's name.
        tier: String,
        /// What it said.
        source: TierError,
    },
    /// The cache configuration is not valid (returned by the builder).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A call's input is out of its documented range (tags over the limits, a zero timeout):
    /// nothing was read, loaded or written for it.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl CacheError {
    /// The loader's own error, when this is a loader failure: downcast it to your type.
    pub fn load_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            Self::Load(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}
