//! What a tier stores and returns: an [`Entry`] (meta + value) and a [`Lookup`].

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;

use crate::envelope::{self, Meta};
use crate::error::TierError;

/// A value as a tier holds it.
#[derive(Clone)]
pub enum Value {
    /// A decoded value (`Arc<V>` behind `Any`), for in-process tiers: no decode, no copy on a hit.
    Object(Arc<dyn Any + Send + Sync>),
    /// The encoded envelope (header + payload), for byte tiers (disk, Redis).
    Envelope(Bytes),
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Object(_) => f.write_str("Object(..)"),
            Self::Envelope(b) => write!(f, "Envelope({} bytes)", b.len()),
        }
    }
}

/// Which [`Value`] form a tier stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Decoded objects ([`Value::Object`]).
    Objects,
    /// Encoded envelopes ([`Value::Envelope`]).
    Envelopes,
}

/// An entry: meta (times, flags, tags) and the value.
///
/// Invariant: for [`Value::Envelope`], `meta` is what the envelope's header says
/// (build it with [`Entry::from_envelope`]).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Times, flags and tags.
    pub meta: Meta,
    /// The value.
    pub value: Value,
    /// Approximate size in bytes (the envelope's length, or the encoded size for objects); used for
    /// admission and weighing.
    pub size: u32,
}

impl Entry {
    /// An entry from envelope bytes read from a byte tier; its meta is parsed from the header.
    pub fn from_envelope(bytes: Bytes) -> Result<Self, TierError> {
        let (meta, _) = envelope::decode_meta(&bytes)?;
        let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        Ok(Self { meta, value: Value::Envelope(bytes), size })
    }

    /// The envelope bytes, when this entry is in envelope form.
    pub fn envelope(&self) -> Option<&Bytes> {
        match &self.value {
            Value::Envelope(b) => Some(b),
            Value::Object(_) => None,
        }
    }

    /// Classify this entry at `now` (Unix ms).
    pub fn lookup_at(self, now: u64) -> Lookup {
        if self.meta.is_fresh(now) {
            Lookup::Hit(self)
        } else if self.meta.is_alive(now) {
            Lookup::Stale(self)
        } else {
            Lookup::Miss
        }
    }
}

/// The answer of a tier to a lookup. An error is the `Err` side of the tier's result.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Found and fresh.
    Hit(Entry),
    /// Found, past `fresh_until` but before `stale_until`: servable as stale.
    Stale(Entry),
    /// Not there (or expired).
    Miss,
}

impl Lookup {
    /// The entry, if any.
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Self::Hit(e) | Self::Stale(e) => Some(e),
            Self::Miss => None,
        }
    }

    /// The entry, if any, by value.
    pub fn into_entry(self) -> Option<Entry> {
        match self {
            Self::Hit(e) | Self::Stale(e) => Some(e),
            Self::Miss => None,
        }
    }

    /// Is it a fresh hit?
    pub fn is_hit(&self) -> bool {
        matches!(self, Self::Hit(_))
    }
}
