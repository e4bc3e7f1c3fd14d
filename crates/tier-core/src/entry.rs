//! What a tier stores and returns: an [`Entry`] (meta + value) and a [`Lookup`].

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

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

    /// The value as a `V`, whatever the form: an object downcast, an envelope decoded; `None`
    /// for a negative entry. An object of another type, or bytes that do not decode as a `V`,
    /// are a [`Decode`](crate::TierErrorKind::Decode) error.
    pub fn decode<V: DeserializeOwned + Send + Sync + 'static>(
        &self,
    ) -> Result<Option<Arc<V>>, TierError> {
        if self.meta.negative {
            return Ok(None);
        }
        match &self.value {
            Value::Object(any) => any
                .clone()
                .downcast::<V>()
                .map(Some)
                .map_err(|_| TierError::decode("the object tier holds a value of another type")),
            Value::Envelope(bytes) => {
                let (meta, at) = envelope::decode_meta(bytes)?;
                Ok(envelope::decode_value::<V>(bytes, &meta, at)?.map(Arc::new))
            }
        }
    }

    /// Classify this entry at `now` (Unix ms). A tombstone is a miss.
    pub fn lookup_at(self, now: u64) -> Lookup {
        if self.meta.tombstone {
            Lookup::Miss
        } else if self.meta.is_fresh(now) {
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

/// An entry holding a decoded object, in the form an in-process tier keeps it (behind an `Arc`,
/// so that a hit clones one pointer) and hands it out from [`Tier::get_ready`]: an [`Entry`] of
/// [`Value::Object`] without the enum (72 bytes instead of 88 on a 64-bit target).
///
/// [`Tier::get_ready`]: crate::spi::Tier::get_ready
#[derive(Clone)]
pub struct ObjectEntry {
    /// Times, flags and tags.
    pub meta: Meta,
    /// The decoded value (`Arc<V>` behind `Any`); `()` for a negative entry.
    pub value: Arc<dyn Any + Send + Sync>,
    /// Approximate size in bytes (see [`Entry::size`]).
    pub size: u32,
}

impl ObjectEntry {
    /// The object entry of `entry`; `None` when it holds an envelope.
    pub fn from_entry(entry: Entry) -> Option<Self> {
        let Entry { meta, value, size } = entry;
        let Value::Object(value) = value else { return None };
        Some(Self { meta, value, size })
    }

    /// The [`Entry`] this is (its value shared, not copied).
    pub fn to_entry(&self) -> Entry {
        Entry { meta: self.meta.clone(), value: Value::Object(self.value.clone()), size: self.size }
    }

    /// What [`Tier::get_ready`](crate::spi::Tier::get_ready) answers for this entry at `now`
    /// (Unix ms): `Fresh` when fresh and untagged, `Miss` past `stale_until`, else `Ask`.
    #[inline]
    pub fn ready_at(self: Arc<Self>, now: u64) -> ReadyLookup {
        if self.meta.is_fresh(now) && self.meta.tags.is_none() {
            ReadyLookup::Fresh(self)
        } else if self.meta.is_alive(now) {
            ReadyLookup::Ask
        } else {
            ReadyLookup::Miss
        }
    }
}

impl std::fmt::Debug for ObjectEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectEntry")
            .field("meta", &self.meta)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What a tier answers without waiting ([`Tier::get_ready`]).
///
/// [`Tier::get_ready`]: crate::spi::Tier::get_ready
#[derive(Debug, Clone)]
pub enum ReadyLookup {
    /// A fresh entry without tags, holding a decoded object (the `Arc` the tier holds: a hit
    /// copies no entry).
    Fresh(Arc<ObjectEntry>),
    /// Nothing servable under this key (absent, or past its `stale_until`).
    Miss,
    /// Anything else (stale, tagged, an envelope, an error, a tier that cannot answer at once):
    /// ask [`Tier::get`](crate::spi::Tier::get).
    Ask,
}
