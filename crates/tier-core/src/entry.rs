//! What a tier stores and returns: an [`Entry`] (meta + value) and a [`Lookup`].

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::envelope::{self, Meta, TagStamp};
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
/// so that a hit clones one pointer) and hands it out from [`Tier::get_ready`].
///
/// Compact, since an in-process tier holds one per key: the times, the load cost, the size, the
/// flags and the value inline (what a hit reads), and the parts most entries lack — tags, the
/// origin's validator, the sealing — in one box of their own, allocated only when one of them
/// is present. 64 bytes on a 64-bit target, where a [`Meta`] and a value took 136. Read it
/// through its accessors; [`ObjectEntry::meta`] rebuilds the whole [`Meta`].
///
/// [`Tier::get_ready`]: crate::spi::Tier::get_ready
#[derive(Clone)]
pub struct ObjectEntry {
    created_at: u64,
    fresh_until: u64,
    stale_until: u64,
    value: Arc<dyn Any + Send + Sync>,
    /// Tags, validator, sealing: `None` when the entry has none of them.
    rare: Option<Box<Rare>>,
    size: u32,
    load_cost_us: u32,
    /// `NEGATIVE`, `INSERT`, `TOMBSTONE`.
    flags: u8,
}

/// The parts of a [`Meta`] most entries lack.
#[derive(Clone)]
struct Rare {
    tags: Option<Arc<[TagStamp]>>,
    validator: Option<Bytes>,
    sealing: Option<Bytes>,
}

const NEGATIVE: u8 = 1;
const INSERT: u8 = 2;
const TOMBSTONE: u8 = 4;

impl ObjectEntry {
    /// The entry of a decoded `value` (`Arc<V>` behind `Any`; `()` for a negative entry) with
    /// `meta`, weighing `size` bytes (see [`Entry::size`]).
    pub fn new(meta: Meta, value: Arc<dyn Any + Send + Sync>, size: u32) -> Self {
        let Meta {
            created_at,
            fresh_until,
            stale_until,
            load_cost_us,
            negative,
            insert,
            tombstone,
            tags,
            validator,
            sealing,
        } = meta;
        let rare = (tags.is_some() || validator.is_some() || sealing.is_some())
            .then(|| Box::new(Rare { tags, validator, sealing }));
        let flags = (u8::from(negative) * NEGATIVE)
            | (u8::from(insert) * INSERT)
            | (u8::from(tombstone) * TOMBSTONE);
        Self { created_at, fresh_until, stale_until, value, rare, size, load_cost_us, flags }
    }

    /// The object entry of `entry`; `None` when it holds an envelope.
    pub fn from_entry(entry: Entry) -> Option<Self> {
        let Entry { meta, value, size } = entry;
        let Value::Object(value) = value else { return None };
        Some(Self::new(meta, value, size))
    }

    /// The [`Entry`] this is (its value shared, not copied).
    pub fn to_entry(&self) -> Entry {
        Entry { meta: self.meta(), value: Value::Object(self.value.clone()), size: self.size }
    }

    /// The whole [`Meta`], rebuilt (its tags, validator and sealing shared, not copied).
    pub fn meta(&self) -> Meta {
        let rare = self.rare.as_deref();
        Meta {
            created_at: self.created_at,
            fresh_until: self.fresh_until,
            stale_until: self.stale_until,
            load_cost_us: self.load_cost_us,
            negative: self.is_negative(),
            insert: self.flags & INSERT != 0,
            tombstone: self.flags & TOMBSTONE != 0,
            tags: rare.and_then(|r| r.tags.clone()),
            validator: rare.and_then(|r| r.validator.clone()),
            sealing: rare.and_then(|r| r.sealing.clone()),
        }
    }

    /// The decoded value (`Arc<V>` behind `Any`); `()` for a negative entry.
    #[inline]
    pub fn value(&self) -> &Arc<dyn Any + Send + Sync> {
        &self.value
    }

    /// When the value was loaded (Unix ms); see [`Meta::created_at`].
    #[inline]
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// Served as fresh until then (Unix ms); see [`Meta::fresh_until`].
    #[inline]
    pub fn fresh_until(&self) -> u64 {
        self.fresh_until
    }

    /// Served as stale until then; gone after (Unix ms); see [`Meta::stale_until`].
    #[inline]
    pub fn stale_until(&self) -> u64 {
        self.stale_until
    }

    /// How long the load took, in microseconds; see [`Meta::load_cost_us`].
    #[inline]
    pub fn load_cost_us(&self) -> u32 {
        self.load_cost_us
    }

    /// Whether the origin said the value does not exist; see [`Meta::negative`].
    #[inline]
    pub fn is_negative(&self) -> bool {
        self.flags & NEGATIVE != 0
    }

    /// The tags, empty when none; see [`Meta::tags`].
    pub fn tags(&self) -> &[TagStamp] {
        self.rare.as_deref().and_then(|r| r.tags.as_deref()).unwrap_or(&[])
    }

    /// Approximate size in bytes (see [`Entry::size`]).
    #[inline]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Whether it carries tags.
    #[inline]
    fn is_tagged(&self) -> bool {
        self.rare.as_deref().is_some_and(|r| r.tags.is_some())
    }

    /// What [`Tier::get_ready`](crate::spi::Tier::get_ready) answers for this entry at `now`
    /// (Unix ms): `Fresh` when fresh and untagged, `Miss` past `stale_until`, else `Ask`.
    #[inline]
    pub fn ready_at(self: Arc<Self>, now: u64) -> ReadyLookup {
        if now < self.fresh_until && !self.is_tagged() {
            ReadyLookup::Fresh(self)
        } else if now < self.stale_until {
            ReadyLookup::Ask
        } else {
            ReadyLookup::Miss
        }
    }
}

impl std::fmt::Debug for ObjectEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectEntry")
            .field("meta", &self.meta())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            created_at: 5,
            fresh_until: 60_005,
            stale_until: 5_000_060_005,
            load_cost_us: 1234,
            ..Meta::default()
        }
    }

    #[test]
    fn an_object_entry_gives_back_the_meta_it_was_made_of() {
        let tags: Arc<[TagStamp]> =
            Arc::from(vec![TagStamp { tag: Arc::from("t"), generation: 7 }]);
        let metas = [
            meta(),
            Meta { negative: true, insert: true, ..meta() },
            Meta { tombstone: true, ..meta() },
            Meta { tags: Some(tags.clone()), ..meta() },
            Meta { validator: Some(Bytes::from_static(b"W/\"v7\"")), ..meta() },
            Meta { sealing: Some(Bytes::from_static(b"key-1")), ..meta() },
            Meta {
                tags: Some(tags),
                validator: Some(Bytes::from_static(b"v")),
                sealing: Some(Bytes::from_static(b"s")),
                negative: true,
                ..meta()
            },
        ];
        for m in metas {
            let e = ObjectEntry::new(m.clone(), Arc::new(7u64), 49);
            assert_eq!(e.meta(), m);
            assert_eq!(e.to_entry().meta, m);
            assert_eq!(e.tags(), m.tags());
            assert_eq!((e.is_negative(), e.size()), (m.negative, 49));
            assert_eq!(
                e.rare.is_some(),
                m.tags.is_some() || m.validator.is_some() || m.sealing.is_some()
            );
        }
    }

    #[test]
    fn an_untagged_fresh_object_entry_is_ready_and_a_tagged_one_asks() {
        let tags: Arc<[TagStamp]> =
            Arc::from(vec![TagStamp { tag: Arc::from("t"), generation: 1 }]);
        let plain = Arc::new(ObjectEntry::new(meta(), Arc::new(()), 1));
        assert!(matches!(plain.clone().ready_at(10), ReadyLookup::Fresh(_)));
        assert!(matches!(plain.clone().ready_at(60_005), ReadyLookup::Ask));
        assert!(matches!(plain.ready_at(5_000_060_005), ReadyLookup::Miss));
        // A validator alone does not make an entry ask.
        let validated = Meta { validator: Some(Bytes::from_static(b"v")), ..meta() };
        let validated = Arc::new(ObjectEntry::new(validated, Arc::new(()), 1));
        assert!(matches!(validated.ready_at(10), ReadyLookup::Fresh(_)));
        let tagged =
            Arc::new(ObjectEntry::new(Meta { tags: Some(tags), ..meta() }, Arc::new(()), 1));
        assert!(matches!(tagged.ready_at(10), ReadyLookup::Ask));
    }

    /// What an in-process tier holds per key (inside an `Arc`): 64 bytes.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_object_entry_takes_64_bytes() {
        assert_eq!(size_of::<ObjectEntry>(), 64);
    }
}
