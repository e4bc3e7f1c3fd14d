//! What a loader of [`get_or_load_ctx`](crate::Cache::get_or_load_ctx) is given and answers: a
//! [`LoadContext`] (the key, and the value it replaces with its age, tier and validator) and a
//! [`Loaded`] (a value or none, or *not modified*, with the entry's lifetimes, its tags known
//! only after loading, its validator, or *don't cache*).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::options::tag_list;
use super::rule::Found;
use crate::time::now_ms;

/// The value a load replaces: what the tiers held for the key when the load started.
#[derive(Debug)]
#[non_exhaustive]
pub struct Previous<V> {
    /// The value; `None` for a negative entry (the origin had said there is none).
    pub value: Option<Arc<V>>,
    /// Still fresh (an early refresh revalidates a fresh value), or stale.
    pub fresh: bool,
    /// How long ago it was loaded, renewed or expired (its `created_at`).
    pub age: Duration,
    /// The tier it was found in (its name).
    pub tier: String,
    /// The validator it was stored with (an ETag, a Last-Modified, a version), if any.
    pub validator: Option<Bytes>,
}

impl<V> Clone for Previous<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            fresh: self.fresh,
            age: self.age,
            tier: self.tier.clone(),
            validator: self.validator.clone(),
        }
    }
}

impl<V> Previous<V> {
    /// What a loader sees of `found`, found in the tier named `tier`.
    pub(super) fn of(found: &Found<V>, tier: &str) -> Self {
        let meta = &found.entry.meta;
        let now = now_ms();
        Self {
            value: found.value.clone(),
            fresh: meta.is_fresh(now),
            age: Duration::from_millis(now.saturating_sub(meta.created_at)),
            tier: tier.to_string(),
            validator: meta.validator.clone(),
        }
    }
}

/// What the loader of [`get_or_load_ctx`](crate::Cache::get_or_load_ctx) is given.
#[derive(Debug)]
pub struct LoadContext<V> {
    key: Bytes,
    previous: Option<Previous<V>>,
}

impl<V> LoadContext<V> {
    pub(super) fn new(key: Bytes, previous: Option<Previous<V>>) -> Self {
        Self { key, previous }
    }

    /// The key being loaded.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The value this load replaces — stale, or fresh in an early refresh — if the tiers held
    /// one.
    pub fn previous(&self) -> Option<&Previous<V>> {
        self.previous.as_ref()
    }

    /// The previous value's validator, if it has one (to send as `If-None-Match` or
    /// `If-Modified-Since`).
    pub fn validator(&self) -> Option<&Bytes> {
        self.previous.as_ref().and_then(|p| p.validator.as_ref())
    }

    /// The answer "not modified": [`Loaded::not_modified`].
    pub fn not_modified(&self) -> Loaded<V> {
        Loaded::not_modified()
    }
}

/// What a load answered.
pub(super) enum Answer<V> {
    /// A value, or none (a negative entry).
    Value(Option<V>),
    /// The previous value is still current.
    NotModified,
}

/// What a loader of [`get_or_load_ctx`](crate::Cache::get_or_load_ctx) answers: a value (or
/// none), or *not modified*, and how the entry is kept.
///
/// Lifetimes set here override the tiers' policies (and the call's
/// [`CallOptions::fresh`](crate::CallOptions::fresh)) and are **graduated per tier**: the tier
/// with the longest fresh policy gets them as set, each other tier in proportion to its own
/// fresh policy (a tier whose policy is a tenth of the longest gets a tenth), jittered as its
/// policy says, and never longer than the tier's
/// [`max_lifetime`](crate::TierPolicy::max_lifetime). A fresh lifetime of zero stores the
/// entry as stale only (a fallback for fail-safe); zero fresh and zero stale store nothing;
/// `Duration::MAX` is "as long as the tier allows" (instants saturate).
#[must_use]
pub struct Loaded<V> {
    pub(super) answer: Answer<V>,
    pub(super) fresh: Option<Duration>,
    pub(super) stale: Option<Duration>,
    pub(super) tags: Vec<Arc<str>>,
    pub(super) validator: Option<Bytes>,
    pub(super) cache: bool,
}

impl<V> Loaded<V> {
    fn of(answer: Answer<V>) -> Self {
        Self { answer, fresh: None, stale: None, tags: Vec::new(), validator: None, cache: true }
    }

    /// The loaded value.
    pub fn value(value: V) -> Self {
        Self::of(Answer::Value(Some(value)))
    }

    /// The origin has no value for the key (cached as a negative entry).
    pub fn none() -> Self {
        Self::of(Answer::Value(None))
    }

    /// The previous value ([`LoadContext::previous`]) is still current: it is kept, and its life
    /// renewed in every tier that holds it, by rewriting its times where it is stored — the
    /// value is neither encoded nor sent again. Its tags and validator stay as they were;
    /// lifetimes set with [`fresh_for`](Self::fresh_for) / [`stale_for`](Self::stale_for)
    /// apply. Without a previous value this answer is a load error.
    pub fn not_modified() -> Self {
        Self::of(Answer::NotModified)
    }

    /// How long the entry is fresh (see the type's docs for how tiers graduate it).
    pub fn fresh_for(mut self, fresh: Duration) -> Self {
        self.fresh = Some(fresh);
        self
    }

    /// How long after its freshness the entry may still be served as stale.
    pub fn stale_for(mut self, stale: Duration) -> Self {
        self.stale = Some(stale);
        self
    }

    /// Tags of the value, known only now (in addition to the call's
    /// [`CallOptions::tags`](crate::CallOptions::tags)). At most
    /// [`MAX_TAGS`](crate::spi::envelope::MAX_TAGS) tags in all, each at most
    /// [`MAX_TAG_LEN`](crate::spi::envelope::MAX_TAG_LEN) bytes: more is an
    /// [`InvalidInput`](crate::CacheError::InvalidInput) error for every waiting caller, and
    /// nothing is cached.
    ///
    /// An [`invalidate_tag`](crate::Cache::invalidate_tag) is never undone by a tag learnt
    /// late: the cache's tag clock (moved by every `invalidate_tag`, before the tag itself) is
    /// read when the load starts and again with the tags' generations after it; when it moved
    /// in between, the value is answered but not cached.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.tags = tag_list(tags);
        self
    }

    /// The value's validator (an ETag, a Last-Modified, a version: opaque bytes, stored in the
    /// envelope), handed to the next load of the key in [`LoadContext::validator`]. At most
    /// [`MAX_VALIDATOR_LEN`](crate::spi::envelope::MAX_VALIDATOR_LEN) bytes: more is an
    /// [`InvalidInput`](crate::CacheError::InvalidInput) error for every waiting caller, and
    /// nothing is cached.
    pub fn validator(mut self, validator: impl Into<Bytes>) -> Self {
        self.validator = Some(validator.into());
        self
    }

    /// Answer the value but store nothing, in no tier (e.g. a partial result).
    pub fn dont_cache(mut self) -> Self {
        self.cache = false;
        self
    }
}

impl<V> From<Option<V>> for Loaded<V> {
    /// A value, or none.
    fn from(value: Option<V>) -> Self {
        Self::of(Answer::Value(value))
    }
}
