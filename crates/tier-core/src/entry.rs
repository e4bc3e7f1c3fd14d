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
/// Compact, since an in-process tier holds one per key: 48 bytes on a 64-bit target, where a
/// [`Meta`] and a value took 136. Inline: the value, the creation time with the flags in its top
/// bits, the two expiry times as millisecond offsets from the creation time (32 bits each: up to
/// 49 days; "never" has its own code), the load cost and the size — what a hit reads. In one box
/// of their own, allocated only when one of them is present: tags, the origin's validator, the
/// sealing, and the exact times of an entry whose times do not fit inline (an expiry more than
/// 49 days after its creation, or before it). Lossless either way: [`ObjectEntry::meta`]
/// rebuilds the whole [`Meta`] it was made of. Read it through its accessors.
///
/// [`Tier::get_ready`]: crate::spi::Tier::get_ready
#[derive(Clone)]
pub struct ObjectEntry {
    value: Arc<dyn Any + Send + Sync>,
    /// Tags, validator, sealing, wide times: `None` when the entry has none of them.
    rare: Option<Box<Rare>>,
    /// `created_at` in the low [`CREATED_BITS`] bits (0 when [`WIDE`]), the flags above.
    created_flags: u64,
    /// `fresh_until - created_at`, or [`NEVER`] for `u64::MAX` (unused when [`WIDE`]).
    fresh_after: u32,
    /// `stale_until - created_at`, or [`NEVER`] for `u64::MAX` (unused when [`WIDE`]).
    stale_after: u32,
    size: u32,
    load_cost_us: u32,
}

/// The parts of a [`Meta`] most entries lack.
#[derive(Clone, Default)]
struct Rare {
    tags: Option<Arc<[TagStamp]>>,
    validator: Option<Bytes>,
    sealing: Option<Bytes>,
    /// `created_at`, `fresh_until`, `stale_until` exactly, when they do not fit inline.
    times: Option<[u64; 3]>,
}

/// Bits of `created_flags` that hold `created_at` (Unix ms up to the year 4_000_000 and more).
const CREATED_BITS: u32 = 56;
const CREATED_MASK: u64 = (1 << CREATED_BITS) - 1;
const NEGATIVE: u64 = 1 << CREATED_BITS;
const INSERT: u64 = 2 << CREATED_BITS;
const TOMBSTONE: u64 = 4 << CREATED_BITS;
/// The times are in [`Rare::times`], not inline.
const WIDE: u64 = 8 << CREATED_BITS;
/// The offset code of `u64::MAX` ("never").
const NEVER: u32 = u32::MAX;

/// `until` as an offset from `created_at`, if it has one that fits.
fn offset(created_at: u64, until: u64) -> Option<u32> {
    if until == u64::MAX {
        return Some(NEVER);
    }
    until.checked_sub(created_at).and_then(|d| u32::try_from(d).ok()).filter(|&d| d != NEVER)
}

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
        let (created_flags, fresh_after, stale_after, times) =
            match (offset(created_at, fresh_until), offset(created_at, stale_until)) {
                (Some(fresh), Some(stale)) if created_at <= CREATED_MASK => {
                    (created_at, fresh, stale, None)
                }
                _ => (WIDE, 0, 0, Some([created_at, fresh_until, stale_until])),
            };
        let rare = (tags.is_some() || validator.is_some() || sealing.is_some() || times.is_some())
            .then(|| Box::new(Rare { tags, validator, sealing, times }));
        let flags = (u64::from(negative) * NEGATIVE)
            | (u64::from(insert) * INSERT)
            | (u64::from(tombstone) * TOMBSTONE);
        Self {
            value,
            rare,
            created_flags: created_flags | flags,
            fresh_after,
            stale_after,
            size,
            load_cost_us,
        }
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
            created_at: self.created_at(),
            fresh_until: self.fresh_until(),
            stale_until: self.stale_until(),
            load_cost_us: self.load_cost_us,
            negative: self.is_negative(),
            insert: self.created_flags & INSERT != 0,
            tombstone: self.created_flags & TOMBSTONE != 0,
            tags: rare.and_then(|r| r.tags.clone()),
            validator: rare.and_then(|r| r.validator.clone()),
            sealing: rare.and_then(|r| r.sealing.clone()),
        }
    }

    /// Exact time `i` (0 created, 1 fresh, 2 stale) of an entry whose times are not inline.
    #[cold]
    #[inline(never)]
    fn wide(&self, i: usize) -> u64 {
        // `WIDE` is set only together with `Rare::times` (`new`); 0 is never reached.
        self.rare.as_deref().and_then(|r| r.times).map_or(0, |t| t[i])
    }

    /// The time `after` ms past the creation time (time `i` when not inline).
    #[inline]
    fn until(&self, after: u32, i: usize) -> u64 {
        if self.created_flags & WIDE != 0 {
            self.wide(i)
        } else if after == NEVER {
            u64::MAX
        } else {
            (self.created_flags & CREATED_MASK) + u64::from(after)
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
        if self.created_flags & WIDE != 0 {
            self.wide(0)
        } else {
            self.created_flags & CREATED_MASK
        }
    }

    /// Served as fresh until then (Unix ms); see [`Meta::fresh_until`].
    #[inline]
    pub fn fresh_until(&self) -> u64 {
        self.until(self.fresh_after, 1)
    }

    /// Served as stale until then; gone after (Unix ms); see [`Meta::stale_until`].
    #[inline]
    pub fn stale_until(&self) -> u64 {
        self.until(self.stale_after, 2)
    }

    /// How long the load took, in microseconds; see [`Meta::load_cost_us`].
    #[inline]
    pub fn load_cost_us(&self) -> u32 {
        self.load_cost_us
    }

    /// Whether the origin said the value does not exist; see [`Meta::negative`].
    #[inline]
    pub fn is_negative(&self) -> bool {
        self.created_flags & NEGATIVE != 0
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
        // The common case in one subtraction: inline times, `created_at <= now < fresh_until`
        // (a wide entry has 0 for both, and fails it). Anything else is decided exactly below.
        let since = now.wrapping_sub(self.created_flags & CREATED_MASK);
        if since < u64::from(self.fresh_after) && !self.is_tagged() {
            return ReadyLookup::Fresh(self);
        }
        if now < self.fresh_until() && !self.is_tagged() {
            ReadyLookup::Fresh(self)
        } else if now < self.stale_until() {
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
            let rare = e.rare.as_deref().cloned().unwrap_or_default();
            assert_eq!(
                (rare.tags.is_some(), rare.validator.is_some(), rare.sealing.is_some()),
                (m.tags.is_some(), m.validator.is_some(), m.sealing.is_some())
            );
        }
    }

    /// Times that do not fit as 32-bit offsets from the creation time are kept exactly (in the
    /// box), and those that fit need no box.
    #[test]
    fn an_object_entry_keeps_every_time_exactly() {
        let far = u64::from(u32::MAX);
        let cases = [
            // (created_at, fresh_until, stale_until, inline)
            (5, 60_005, 5_000_060_005, false),
            (5, 60_005, far + 4, true),
            (5, 60_005, far + 5, false),
            (0, 0, 0, true),
            (0, u64::MAX, u64::MAX, true),
            (1_700_000_000_000, u64::MAX, u64::MAX, true),
            (1_700_000_000_000, 1_700_000_000_000, 1_700_000_000_000 + far - 1, true),
            (1_700_000_000_000, 1_699_999_999_999, u64::MAX, false),
            (1_700_000_000_000, u64::MAX - 1, u64::MAX, false),
            (1 << 56, (1 << 56) + 1, (1 << 56) + 2, false),
            ((1 << 56) - 1, u64::MAX, u64::MAX, true),
            (u64::MAX, u64::MAX, u64::MAX, false),
            (u64::MAX, 3, 2, false),
        ];
        for (created_at, fresh_until, stale_until, inline) in cases {
            for (negative, insert, tombstone) in [(false, false, false), (true, true, true)] {
                let m = Meta {
                    created_at,
                    fresh_until,
                    stale_until,
                    negative,
                    insert,
                    tombstone,
                    load_cost_us: u32::MAX,
                    ..Meta::default()
                };
                let e = ObjectEntry::new(m.clone(), Arc::new(()), u32::MAX);
                assert_eq!(e.meta(), m, "{created_at} {fresh_until} {stale_until}");
                assert_eq!(
                    (e.created_at(), e.fresh_until(), e.stale_until()),
                    (created_at, fresh_until, stale_until)
                );
                assert_eq!(e.rare.is_none(), inline, "{created_at} {fresh_until} {stale_until}");
            }
        }
        // Wide times and tags share the box.
        let tags: Arc<[TagStamp]> =
            Arc::from(vec![TagStamp { tag: Arc::from("t"), generation: 2 }]);
        let m = Meta { tags: Some(tags), stale_until: u64::MAX - 1, ..meta() };
        let e = ObjectEntry::new(m.clone(), Arc::new(()), 1);
        assert_eq!(e.meta(), m);
        assert_eq!(e.tags().len(), 1);
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

    /// `ready_at` answers by the exact times whatever the layout: wide times, "never", a clock
    /// behind the creation time.
    #[test]
    fn ready_at_follows_the_exact_times() {
        let at = |created_at, fresh_until, stale_until, now| {
            let m = Meta { created_at, fresh_until, stale_until, ..Meta::default() };
            match Arc::new(ObjectEntry::new(m, Arc::new(()), 1)).ready_at(now) {
                ReadyLookup::Fresh(_) => "fresh",
                ReadyLookup::Ask => "ask",
                ReadyLookup::Miss => "miss",
            }
        };
        let far = u64::from(u32::MAX);
        // (created_at, fresh_until, stale_until, now, answer)
        let cases = [
            (100, 200, 300, 100, "fresh"),
            (100, 200, 300, 199, "fresh"),
            (100, 200, 300, 200, "ask"),
            (100, 200, 300, 300, "miss"),
            (100, 200, 300, 50, "fresh"), // the clock is behind the creation time
            (100, u64::MAX, u64::MAX, 100 + 2 * far, "fresh"),
            (100, 200, u64::MAX, 100 + 2 * far, "ask"),
            (100, 200 + 2 * far, 300 + 2 * far, 150 + 2 * far, "fresh"), // wide
            (100, 200 + 2 * far, 300 + 2 * far, 250 + 2 * far, "ask"),
            (100, 200 + 2 * far, 300 + 2 * far, 300 + 2 * far, "miss"),
            (100, 50, 300, 60, "ask"), // fresh until before it was made: wide, and stale
            (u64::MAX - 10, u64::MAX - 1, u64::MAX, u64::MAX - 2, "fresh"),
        ];
        for (c, f, s, now, answer) in cases {
            assert_eq!(at(c, f, s, now), answer, "{c} {f} {s} at {now}");
        }
    }

    /// What an in-process tier holds per key (inside an `Arc`): 48 bytes.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_object_entry_takes_48_bytes() {
        assert_eq!(size_of::<ObjectEntry>(), 48);
    }
}
