//! Rewriting an entry's times where it is stored, without its value: a logical expiry
//! (`Cache::expire`) and the renewal of a value the origin answered "not modified" for. A tier
//! applies a [`Retime`] only to the entry it is meant for, so that a late one never changes a
//! newer write.

use bytes::{Bytes, BytesMut};

use crate::entry::{Entry, Value};
use crate::envelope::{self, Meta};
use crate::error::TierError;

/// A rewrite of the times of the entry a tier holds for a key ([`Tier::retime`]).
///
/// [`Tier::retime`]: crate::spi::Tier::retime
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retime {
    /// A logical expiry at `at` (Unix ms): an entry created after `floor` and at or before `at`
    /// stops being fresh at `cut` (`fresh_until = min(fresh_until, cut)`, `stale_until` kept: it
    /// stays servable as stale) and is marked created at `at` — like a tombstone, so that a
    /// write that started before the expiry (older `created_at`) cannot replace it. An entry
    /// created after `at` (a newer write) and a tombstone are left alone. A *shared* tier that
    /// holds nothing usable for the key (nothing, a tombstone, an entry at or below the clear
    /// `floor`) stores a tombstone created at `at` instead, so that a late older write is refused
    /// there too.
    Expire {
        /// The expiry instant (Unix ms): after every write of the key it expires (it may be a
        /// few ms ahead of the clock, as an insert's `created_at` may).
        at: u64,
        /// When the entry stops being fresh (Unix ms): the clock when the expiry was called.
        cut: u64,
        /// The clear floor the hierarchy knows (entries created at or before it are gone).
        floor: u64,
    },
    /// The origin said "not modified" for the value created at `created_at`: that entry (only
    /// it: the same `created_at`, not a tombstone) gets the new times and is marked created at
    /// `renewed_at` (the instant the revalidating load started).
    Renew {
        /// The `created_at` of the entry that was revalidated.
        created_at: u64,
        /// The new `created_at`.
        renewed_at: u64,
        /// The new `fresh_until` (Unix ms).
        fresh_until: u64,
        /// The new `stale_until` (Unix ms).
        stale_until: u64,
    },
}

impl Retime {
    /// The meta `meta` becomes, or `None` when this retime leaves it alone.
    pub fn apply(&self, meta: &Meta) -> Option<Meta> {
        if meta.tombstone {
            return None;
        }
        match *self {
            Self::Expire { at, cut, floor } => {
                if meta.created_at <= floor || meta.created_at > at {
                    return None;
                }
                let fresh_until = meta.fresh_until.min(cut);
                let stale_until = meta.stale_until.max(fresh_until);
                Some(Meta { created_at: at, fresh_until, stale_until, ..meta.clone() })
            }
            Self::Renew { created_at, renewed_at, fresh_until, stale_until } => {
                if meta.created_at != created_at {
                    return None;
                }
                let stale_until = stale_until.max(fresh_until);
                Some(Meta { created_at: renewed_at, fresh_until, stale_until, ..meta.clone() })
            }
        }
    }

    /// `entry` retimed, or `None` when this retime leaves it alone. An envelope's header is
    /// rewritten in place ([`retimed_envelope`]); an object is shared, not copied.
    pub fn apply_to(&self, entry: &Entry) -> Result<Option<Entry>, TierError> {
        let Some(meta) = self.apply(&entry.meta) else { return Ok(None) };
        let value = match &entry.value {
            Value::Envelope(bytes) => Value::Envelope(retimed_envelope(bytes, &meta)?),
            Value::Object(o) => Value::Object(o.clone()),
        };
        Ok(Some(Entry { meta, value, size: entry.size }))
    }
}

/// A copy of the envelope `bytes` with `created_at`, `fresh_until` and `stale_until` taken from
/// `meta` (header offsets 8, 16, 24); everything else — flags, tags, payload — untouched.
pub fn retimed_envelope(bytes: &Bytes, meta: &Meta) -> Result<Bytes, TierError> {
    envelope::peek_times(bytes)?;
    let mut out = BytesMut::from(&bytes[..]);
    out[8..16].copy_from_slice(&meta.created_at.to_le_bytes());
    out[16..24].copy_from_slice(&meta.fresh_until.to_le_bytes());
    out[24..32].copy_from_slice(&meta.stale_until.max(meta.fresh_until).to_le_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(created_at: u64, fresh_until: u64, stale_until: u64) -> Meta {
        Meta { created_at, fresh_until, stale_until, ..Meta::default() }
    }

    #[test]
    fn expire_touches_only_entries_created_between_the_floor_and_the_instant() {
        let e = Retime::Expire { at: 100, cut: 100, floor: 10 };
        let m = e.apply(&meta(50, 500, 900)).expect("expired");
        assert_eq!((m.created_at, m.fresh_until, m.stale_until), (100, 100, 900));
        assert_eq!(e.apply(&meta(101, 500, 900)), None, "a newer write is kept");
        assert_eq!(e.apply(&meta(10, 500, 900)), None, "a cleared entry is not revived");
        let stale = e.apply(&meta(50, 60, 900)).expect("already stale");
        assert_eq!(stale.fresh_until, 60, "expiry never lengthens freshness");
        let tomb = Meta { tombstone: true, ..meta(50, 50, 900) };
        assert_eq!(e.apply(&tomb), None);
    }

    #[test]
    fn renew_touches_only_the_revalidated_entry() {
        let r =
            Retime::Renew { created_at: 50, renewed_at: 70, fresh_until: 1000, stale_until: 2000 };
        let m = r.apply(&meta(50, 60, 90)).expect("renewed");
        assert_eq!((m.created_at, m.fresh_until, m.stale_until), (70, 1000, 2000));
        assert_eq!(r.apply(&meta(51, 60, 90)), None, "another write is kept");
    }

    #[test]
    fn an_envelope_is_retimed_in_its_header_only() {
        let bytes = envelope::Codec::default()
            .encode(&meta(50, 60, 90), Some(&"v".to_string()))
            .expect("encode");
        let m = meta(70, 1000, 2000);
        let out = retimed_envelope(&bytes, &m).expect("retimed");
        let (back, _) = envelope::decode_meta(&out).expect("decodes");
        assert_eq!((back.created_at, back.fresh_until, back.stale_until), (70, 1000, 2000));
        assert_eq!(&bytes[32..], &out[32..]);
    }
}
