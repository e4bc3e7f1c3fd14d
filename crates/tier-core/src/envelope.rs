//! The envelope: how an entry is stored in byte tiers (disk, Redis).
//!
//! ```text
//! offset size field
//!      0    4 magic  b"TIE1" (the last byte is the format version)
//!      4    1 flags  bit 0 compressed (lz4 block, uncompressed length prefixed), bit 1 negative,
//!                    bit 2 written by an insert, bit 3 tombstone (a removal marker)
//!      5    1 reserved (0)
//!      6    2 tag count (u16, little endian)
//!      8    8 created_at   (Unix ms)
//!     16    8 fresh_until  (Unix ms)
//!     24    8 stale_until  (Unix ms)
//!     32    4 load_cost    (µs, saturating)
//!     36    4 payload length (bytes that follow the tags)
//!     40    … tags: u16 length, UTF-8 name, u64 generation — `tag count` times
//!      …    … payload: MessagePack (rmp-serde, named fields), lz4-compressed when flagged
//! ```
//!
//! Invariant: [`decode_meta`] accepts a buffer only when every length in it is consistent with
//! the buffer's size, so a truncated write, another service's JSON or an old format is an error
//! ([`TierErrorKind::Decode`](crate::TierErrorKind::Decode)), never a panic or a wrong value.
//! Times can be rewritten in place ([`with_times`]) without touching the payload: that is how
//! backfill gives a copy a shorter life without re-encoding.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::TierError;

/// Magic bytes and format version.
pub const MAGIC: [u8; 4] = *b"TIE1";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Flag: the payload is lz4-compressed.
pub const FLAG_COMPRESSED: u8 = 0b01;
/// Flag: a negative entry (the origin said "no such value"); the payload is empty.
pub const FLAG_NEGATIVE: u8 = 0b10;
/// Flag: written by an insert (wins a `created_at` tie in a compare-and-set write).
pub const FLAG_INSERT: u8 = 0b100;
/// Flag: a removal marker, created at the removal instant; a lookup of it is a miss, never a
/// value.
pub const FLAG_TOMBSTONE: u8 = 0b1000;
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_NEGATIVE | FLAG_INSERT | FLAG_TOMBSTONE;
/// The most tags one entry may carry.
pub const MAX_TAGS: usize = 64;
/// The longest tag name in bytes.
pub const MAX_TAG_LEN: usize = 1024;

/// A tag with the generation it had when the entry was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagStamp {
    /// The tag's name.
    pub tag: Arc<str>,
    /// Its generation at write time; the entry is invalid once the tag's generation moved on.
    pub generation: u64,
}

/// Everything about an entry except its value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// When the value was loaded (Unix ms).
    pub created_at: u64,
    /// Served as fresh until then (Unix ms).
    pub fresh_until: u64,
    /// Served as stale until then; gone after (Unix ms).
    pub stale_until: u64,
    /// How long the load that produced the value took, in microseconds (for XFetch).
    pub load_cost_us: u32,
    /// The origin said the value does not exist.
    pub negative: bool,
    /// Written by an insert (not a load or a backfill): wins a `created_at` tie.
    pub insert: bool,
    /// A removal marker (its `created_at` is the removal instant): a lookup of it is a miss.
    pub tombstone: bool,
    /// Tags with their generations; `None` when untagged (no allocation).
    pub tags: Option<Arc<[TagStamp]>>,
}

impl Meta {
    /// Fresh at `now`?
    #[inline]
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    /// Still servable (fresh or stale) at `now`?
    #[inline]
    pub fn is_alive(&self, now: u64) -> bool {
        now < self.stale_until
    }

    /// The tags, empty when none.
    pub fn tags(&self) -> &[TagStamp] {
        self.tags.as_deref().unwrap_or(&[])
    }
}

/// Codec settings.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    /// Payloads of at least this many bytes are lz4-compressed when that saves space.
    /// Default: 1024. `usize::MAX` turns compression off.
    pub compress_threshold: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self { compress_threshold: 1024 }
    }
}

impl Codec {
    /// Encode `value` (or a negative entry when `None`) with `meta` into an envelope.
    pub fn encode<V: Serialize>(&self, meta: &Meta, value: Option<&V>) -> Result<Bytes, String> {
        let raw = match value {
            Some(v) if !meta.negative => rmp_serde::to_vec_named(v).map_err(|e| e.to_string())?,
            _ => Vec::new(),
        };
        let mut flags = if meta.negative { FLAG_NEGATIVE } else { 0 };
        if meta.insert {
            flags |= FLAG_INSERT;
        }
        if meta.tombstone {
            flags |= FLAG_TOMBSTONE;
        }
        let payload = if raw.len() >= self.compress_threshold {
            let compressed = lz4_flex::block::compress_prepend_size(&raw);
            if compressed.len() < raw.len() {
                flags |= FLAG_COMPRESSED;
                compressed
            } else {
                raw
            }
        } else {
            raw
        };
        let tags = meta.tags();
        if tags.len() > MAX_TAGS {
            return Err(format!("{} tags, at most {MAX_TAGS} allowed", tags.len()));
        }
        let tags_len: usize = tags.iter().map(|t| 10 + t.tag.len()).sum();
        let payload_len =
            u32::try_from(payload.len()).map_err(|_| "payload over 4 GiB".to_string())?;
        let mut out = BytesMut::with_capacity(HEADER_LEN + tags_len + payload.len());
        out.put_slice(&MAGIC);
        out.put_u8(flags);
        out.put_u8(0);
        out.put_u16_le(tags.len() as u16);
        out.put_u64_le(meta.created_at);
        out.put_u64_le(meta.fresh_until);
        out.put_u64_le(meta.stale_until);
        out.put_u32_le(meta.load_cost_us);
        out.put_u32_le(payload_len);
        for t in tags {
            if t.tag.len() > MAX_TAG_LEN {
                return Err(format!("tag of {} bytes, at most {MAX_TAG_LEN}", t.tag.len()));
            }
            out.put_u16_le(t.tag.len() as u16);
            out.put_slice(t.tag.as_bytes());
            out.put_u64_le(t.generation);
        }
        out.put_slice(&payload);
        Ok(out.freeze())
    }
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Only the fixed header's times, without parsing tags: for tiers that need `stale_until` (a
/// record header, a Redis `PX`) or to classify fresh/stale cheaply.
pub fn peek_times(bytes: &[u8]) -> Result<(u64, u64), TierError> {
    if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
        return Err(TierError::decode(describe_foreign(bytes)));
    }
    Ok((read_u64(bytes, 16), read_u64(bytes, 24)))
}

fn describe_foreign(bytes: &[u8]) -> String {
    if bytes.len() >= 3 && &bytes[..3] == b"TIE" {
        format!("envelope of unsupported format version {:?}", bytes.get(3).map(|b| *b as char))
    } else if bytes.len() < HEADER_LEN && bytes.starts_with(&MAGIC[..bytes.len().min(4)]) {
        format!("truncated envelope ({} bytes, header is {HEADER_LEN})", bytes.len())
    } else {
        format!(
            "not a tier envelope ({} bytes, starts {:02x?})",
            bytes.len(),
            &bytes[..bytes.len().min(4)]
        )
    }
}

/// Parse the header and tags; check that the payload length matches the buffer.
/// Returns the meta and the offset of the payload.
pub fn decode_meta(bytes: &[u8]) -> Result<(Meta, usize), TierError> {
    if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
        return Err(TierError::decode(describe_foreign(bytes)));
    }
    let flags = bytes[4];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(TierError::decode(format!("unknown envelope flags {flags:#04x}")));
    }
    let tag_count = read_u16(bytes, 6) as usize;
    if tag_count > MAX_TAGS {
        return Err(TierError::decode(format!("envelope claims {tag_count} tags")));
    }
    let mut meta = Meta {
        created_at: read_u64(bytes, 8),
        fresh_until: read_u64(bytes, 16),
        stale_until: read_u64(bytes, 24),
        load_cost_us: read_u32(bytes, 32),
        negative: flags & FLAG_NEGATIVE != 0,
        insert: flags & FLAG_INSERT != 0,
        tombstone: flags & FLAG_TOMBSTONE != 0,
        tags: None,
    };
    let payload_len = read_u32(bytes, 36) as usize;
    let mut at = HEADER_LEN;
    if tag_count > 0 {
        let mut tags = Vec::with_capacity(tag_count);
        for _ in 0..tag_count {
            if bytes.len() < at + 2 {
                return Err(TierError::decode("envelope truncated in its tags"));
            }
            let len = read_u16(bytes, at) as usize;
            at += 2;
            if bytes.len() < at + len + 8 {
                return Err(TierError::decode("envelope truncated in its tags"));
            }
            let name = std::str::from_utf8(&bytes[at..at + len])
                .map_err(|_| TierError::decode("envelope tag is not UTF-8"))?;
            at += len;
            tags.push(TagStamp { tag: Arc::from(name), generation: read_u64(bytes, at) });
            at += 8;
        }
        meta.tags = Some(Arc::from(tags));
    }
    if bytes.len() - at != payload_len {
        return Err(TierError::decode(format!(
            "envelope payload is {} bytes, header says {payload_len}",
            bytes.len() - at
        )));
    }
    if meta.fresh_until > meta.stale_until {
        return Err(TierError::decode("envelope fresh_until is after stale_until"));
    }
    Ok((meta, at))
}

/// Decode the payload of an envelope whose meta was parsed by [`decode_meta`].
/// Returns `None` for a negative entry.
pub fn decode_value<V: DeserializeOwned>(
    bytes: &[u8],
    meta: &Meta,
    payload_at: usize,
) -> Result<Option<V>, TierError> {
    if meta.negative {
        return Ok(None);
    }
    let payload = &bytes[payload_at..];
    let compressed = bytes.get(4).is_some_and(|f| f & FLAG_COMPRESSED != 0);
    let value = if compressed {
        let raw = lz4_flex::block::decompress_size_prepended(payload)
            .map_err(|e| TierError::decode(format!("lz4 payload: {e}")))?;
        rmp_serde::from_slice(&raw)
    } else {
        rmp_serde::from_slice(payload)
    };
    value.map(Some).map_err(|e| TierError::decode(format!("payload: {e}")))
}

/// A copy of `bytes` with `fresh_until` / `stale_until` replaced (the payload is untouched).
pub fn with_times(bytes: &Bytes, fresh_until: u64, stale_until: u64) -> Result<Bytes, TierError> {
    peek_times(bytes)?;
    let mut out = BytesMut::from(&bytes[..]);
    out[16..24].copy_from_slice(&fresh_until.to_le_bytes());
    out[24..32].copy_from_slice(&stale_until.max(fresh_until).to_le_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            created_at: 1,
            fresh_until: 1000,
            stale_until: 2000,
            load_cost_us: 7,
            negative: false,
            insert: false,
            tombstone: false,
            tags: Some(Arc::from(vec![TagStamp { tag: Arc::from("user:1"), generation: 3 }])),
        }
    }

    #[test]
    fn insert_and_tombstone_flags_roundtrip() {
        for (insert, tombstone) in [(true, false), (false, true), (true, true)] {
            let m = Meta { insert, tombstone, ..meta() };
            let bytes = Codec::default().encode(&m, Some(&"v".to_string())).expect("encode");
            let (back, _) = decode_meta(&bytes).expect("meta");
            assert_eq!((back.insert, back.tombstone), (insert, tombstone));
        }
    }

    #[test]
    fn roundtrip_small_and_compressed() {
        let codec = Codec::default();
        for value in ["x".to_string(), "abc".repeat(2000)] {
            let bytes = codec.encode(&meta(), Some(&value)).expect("encode");
            let (m, at) = decode_meta(&bytes).expect("meta");
            assert_eq!(m, meta());
            let back: Option<String> = decode_value(&bytes, &m, at).expect("value");
            assert_eq!(back.as_deref(), Some(value.as_str()));
            if value.len() > 1024 {
                assert!(bytes.len() < value.len() / 10, "compressed to {}", bytes.len());
                assert_ne!(bytes[4] & FLAG_COMPRESSED, 0);
            }
        }
    }

    #[test]
    fn incompressible_payload_is_stored_raw() {
        let codec = Codec { compress_threshold: 16 };
        let value: Vec<u64> = (0..300u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let bytes = codec.encode(&meta(), Some(&value)).expect("encode");
        assert_eq!(bytes[4] & FLAG_COMPRESSED, 0);
        let (m, at) = decode_meta(&bytes).expect("meta");
        assert_eq!(decode_value::<Vec<u64>>(&bytes, &m, at).expect("value"), Some(value));
    }

    #[test]
    fn negative_entry_has_no_payload() {
        let m = Meta { negative: true, ..meta() };
        let bytes = Codec::default().encode::<String>(&m, None).expect("encode");
        let (back, at) = decode_meta(&bytes).expect("meta");
        assert!(back.negative);
        assert_eq!(decode_value::<String>(&bytes, &back, at).expect("value"), None);
    }

    #[test]
    fn foreign_and_truncated_bytes_are_decode_errors() {
        let bytes = Codec::default().encode(&meta(), Some(&"hello".to_string())).expect("encode");
        for cut in 0..bytes.len() {
            let err = decode_meta(&bytes[..cut]).expect_err("truncated must fail");
            assert!(err.is_decode());
        }
        for foreign in
            [&b"{\"name\":\"json\"}"[..], b"", b"TIE9 and more bytes than a header needs......"]
        {
            assert!(decode_meta(foreign).expect_err("foreign").is_decode());
        }
        // A wrong payload type is a decode error too, not a panic.
        let (m, at) = decode_meta(&bytes).expect("meta");
        assert!(decode_value::<Vec<u64>>(&bytes, &m, at).expect_err("type").is_decode());
    }

    #[test]
    fn with_times_rewrites_only_times() {
        let bytes = Codec::default().encode(&meta(), Some(&"v".to_string())).expect("encode");
        let moved = with_times(&bytes, 10, 20).expect("rewrite");
        let (m, at) = decode_meta(&moved).expect("meta");
        assert_eq!((m.fresh_until, m.stale_until), (10, 20));
        assert_eq!(decode_value::<String>(&moved, &m, at).expect("v").as_deref(), Some("v"));
        assert_eq!(&bytes[HEADER_LEN..], &moved[HEADER_LEN..]);
    }
}
