//! The backplane: how an invalidation on one instance reaches every other instance.
//!
//! The hierarchy publishes every invalidation; it consumes [`BackplaneEvent`]s and applies them to
//! its *local* tiers (those whose [`Tier::is_shared`](crate::spi::Tier) is false). After a disconnect
//! an instance cannot know what it missed: the backplane sends [`BackplaneEvent::Reconnected`] and
//! the hierarchy clears its local tiers or marks them stale, as configured
//! ([`ReconnectPolicy`]).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::error::TierError;

/// What to invalidate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Invalidation {
    /// One key (the full key bytes).
    Key(Bytes),
    /// Every entry carrying this tag.
    Tag(Arc<str>),
    /// The whole namespace (its version was bumped to the given value).
    Namespace(u64),
    /// Everything in the hierarchy.
    Clear,
}

impl Invalidation {
    /// The `kind` label of `cache_invalidations_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Key(_) => "key",
            Self::Tag(_) => "tag",
            Self::Namespace(_) => "namespace",
            Self::Clear => "clear",
        }
    }
}

/// What a backplane delivers to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneEvent {
    /// Another instance invalidated something in hierarchy `cache`.
    Invalidate {
        /// The hierarchy's name.
        cache: String,
        /// What.
        what: Invalidation,
    },
    /// The subscription was lost and is back: messages may have been missed.
    Reconnected,
}

/// What the hierarchy does with its local tiers after a backplane reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReconnectPolicy {
    /// Clear the local tiers (like Redisson's `CLEAR`). Default.
    #[default]
    Clear,
    /// Keep local entries but treat every entry written before the reconnect as stale:
    /// it is served only as a fallback, and a fresh value is looked up below or loaded.
    MarkStale,
}

/// A channel shared by every instance of a service.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Publish an invalidation of hierarchy `cache` to every other instance.
    async fn publish(&self, cache: &str, what: &Invalidation) -> Result<(), TierError>;

    /// Receive what other instances publish (never this instance's own messages) and reconnect
    /// notices.
    fn subscribe(&self) -> broadcast::Receiver<BackplaneEvent>;
}
