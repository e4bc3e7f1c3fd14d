//! The backplane's message format (MessagePack through rmp-serde, named fields): the one field
//! of each entry of the Redis Stream.
//!
//! Changing it is a protocol change between instances of different versions: add fields with
//! `#[serde(default)]`, bump `v` for anything else. Version 2: the stream (version 1 was pub/sub,
//! without `Written` and the clear's instant).

use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tier_core::spi::Invalidation;

/// The format version this crate writes.
pub(crate) const VERSION: u8 = 2;

/// One backplane message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireMessage {
    /// Format version ([`VERSION`]).
    pub(crate) v: u8,
    /// The sender's node id.
    pub(crate) node: String,
    /// The sender's sequence number: 1, 2, … per sender.
    pub(crate) seq: u64,
    /// The hierarchy's name.
    pub(crate) cache: String,
    /// What to invalidate.
    pub(crate) what: WireWhat,
}

/// [`Invalidation`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireWhat {
    Key(WireBytes),
    Written {
        key: WireBytes,
        created_at: u64,
    },
    Tag(String),
    Namespace(u64),
    Clear {
        at: u64,
    },
    /// Added after version 2 without a version bump: a reader that does not know it fails to
    /// decode the message and skips it (an expiry is an optimisation of freshness, never needed
    /// for coherence by an instance that cannot apply it).
    Expire {
        key: Option<WireBytes>,
        at: u64,
    },
}

impl WireWhat {
    /// What this says, when this crate knows it (`None`: an invalidation kind of a newer
    /// version, which tier-core's `Invalidation` cannot hold).
    pub(crate) fn from_invalidation(what: &Invalidation) -> Option<Self> {
        Some(match what {
            Invalidation::Key(k) => Self::Key(WireBytes(k.to_vec())),
            Invalidation::Written { key, created_at } => {
                Self::Written { key: WireBytes(key.to_vec()), created_at: *created_at }
            }
            Invalidation::Tag(t) => Self::Tag(t.to_string()),
            Invalidation::Namespace(v) => Self::Namespace(*v),
            Invalidation::Clear { at } => Self::Clear { at: *at },
            Invalidation::Expire { key, at } => {
                Self::Expire { key: key.as_ref().map(|k| WireBytes(k.to_vec())), at: *at }
            }
            _ => return None,
        })
    }

    /// The invalidation this message carries.
    pub(crate) fn into_invalidation(self) -> Invalidation {
        match self {
            Self::Key(k) => Invalidation::Key(Bytes::from(k.0)),
            Self::Written { key, created_at } => {
                Invalidation::Written { key: Bytes::from(key.0), created_at }
            }
            Self::Tag(t) => Invalidation::Tag(Arc::from(t)),
            Self::Namespace(v) => Invalidation::Namespace(v),
            Self::Clear { at } => Invalidation::Clear { at },
            Self::Expire { key, at } => {
                Invalidation::Expire { key: key.map(|k| Bytes::from(k.0)), at }
            }
        }
    }
}

/// Bytes serialized as a MessagePack `bin` (not an array of integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireBytes(pub(crate) Vec<u8>);

impl Serialize for WireBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for WireBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<WireBytes, E> {
                Ok(WireBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<WireBytes, E> {
                Ok(WireBytes(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireBytes, E> {
                Ok(WireBytes(v.as_bytes().to_vec()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireBytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(WireBytes(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_kind() {
        for what in [
            WireWhat::Key(WireBytes(vec![0, 159, 255, b'k'])),
            WireWhat::Tag("user:1".into()),
            WireWhat::Namespace(7),
            WireWhat::Clear { at: 9 },
            WireWhat::Written { key: WireBytes(b"k".to_vec()), created_at: 3 },
            WireWhat::Expire { key: Some(WireBytes(b"k".to_vec())), at: 5 },
            WireWhat::Expire { key: None, at: 6 },
        ] {
            assert_eq!(
                WireWhat::from_invalidation(&what.clone().into_invalidation()),
                Some(what.clone())
            );
            let msg =
                WireMessage { v: VERSION, node: "n1".into(), seq: 42, cache: "users".into(), what };
            let bytes = rmp_serde::to_vec_named(&msg).expect("encode");
            let back: WireMessage = rmp_serde::from_slice(&bytes).expect("decode");
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn keys_are_binary_not_arrays() {
        let msg = WireWhat::Key(WireBytes(vec![7; 100]));
        let bytes = rmp_serde::to_vec_named(&msg).expect("encode");
        assert!(bytes.len() < 120, "{} bytes", bytes.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [&b""[..], b"\xc1", b"{\"json\":1}", &[0x92, 0x01][..]] {
            assert!(rmp_serde::from_slice::<WireMessage>(junk).is_err());
        }
    }
}
