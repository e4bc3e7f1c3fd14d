//! The envelope: how an entry is stored in byte tiers (disk, Redis).
//!
//! ```text
//! offset size field
//!      0    4 magic  b"TIE1" (the last byte is the format version)
//!      4    1 flags  bit 0 compressed, bit 1 negative, bit 2 written by an insert,
//!                    bit 3 tombstone (a removal marker), bit 4 extended (an extension block
//!                    follows the tags), bit 5 encrypted (the payload is sealed)
//!      5    1 format: low nibble serializer id, high nibble compression id (see below)
//!      6    2 tag count (u16, little endian)
//!      8    8 created_at   (Unix ms)
//!     16    8 fresh_until  (Unix ms)
//!     24    8 stale_until  (Unix ms)
//!     32    4 load_cost    (µs, saturating)
//!     36    4 payload length (bytes of the payload only)
//!     40    … tags: u16 length, UTF-8 name, u64 generation — `tag count` times
//!      …    … extension block, when flagged: u16 length, then items u8 type, u16 length, bytes
//!      …    … payload: serialized (MessagePack by default), compressed when flagged
//! ```
//!
//! **Format byte** (byte 5, 0 in envelopes written before it existed, which is what they are):
//! serializer 0 MessagePack (named fields), 1 JSON, 3 CBOR (feature `cbor`; 2 was postcard, retired);
//! compression, when `FLAG_COMPRESSED`: 0 lz4 block with the uncompressed length prefixed, 1
//! zstd (feature `zstd`). The table and the reasons are in [`Serializer`] / [`Compression`]'s
//! module.
//!
//! **Extension block** (`FLAG_EXTENDED`): items of types `0x00..=0x7F` are critical (a reader
//! that does not know one fails to decode the entry), `0x80..=0xFF` optional (skipped). Known:
//! `0x01` sealing ([`Meta::sealing`], with `FLAG_ENCRYPTED`) and `0x80` validator
//! ([`Meta::validator`], ≤ [`MAX_VALIDATOR_LEN`] bytes).
//!
//! **Encryption** (`FLAG_ENCRYPTED`): the payload is AEAD ciphertext of the (compressed)
//! serialized bytes; the sealing item holds what opens it. This module only carries it:
//! [`decode_value`] of an encrypted envelope is a `Decode` error ("encrypted entry, no
//! keyring"); the encryption layer builds sealed envelopes with [`Codec::serialize`] +
//! [`assemble`] and opens them with [`payload_of`] + [`decode_payload`].
//!
//! Invariant: [`decode_meta`] accepts a buffer only when every length in it is consistent with
//! the buffer's size, so a truncated write, another service's JSON or an old format is an error
//! ([`TierErrorKind::Decode`](crate::TierErrorKind::Decode)), never a panic or a wrong value.
//! Times can be rewritten in place ([`with_times`]) without touching the payload: that is how
//! backfill gives a copy a shorter life without re-encoding.

mod extension;
mod format;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::TierError;
use extension::Extensions;
pub use extension::{ITEM_SEALING, ITEM_VALIDATOR, MAX_VALIDATOR_LEN};
pub use format::{
    decode_payload, parse_format, Compression, Payload, Serializer, MAX_DECOMPRESSED,
};

/// Magic bytes and format version.
pub const MAGIC: [u8; 4] = *b"TIE1";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Flag: the payload is compressed (with the compression the format byte names).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag: a negative entry (the origin said "no such value"); the payload is empty.
pub const FLAG_NEGATIVE: u8 = 0x02;
/// Flag: written by an insert (wins a `created_at` tie in a compare-and-set write).
pub const FLAG_INSERT: u8 = 0x04;
/// Flag: a removal marker, created at the removal instant; a lookup of it is a miss, never a
/// value.
pub const FLAG_TOMBSTONE: u8 = 0x08;
/// Flag: an extension block follows the tags.
pub const FLAG_EXTENDED: u8 = 0x10;
/// Flag: the payload is sealed (AEAD ciphertext); the sealing item (`0x01`) opens it.
pub const FLAG_ENCRYPTED: u8 = 0x20;
const KNOWN_FLAGS: u8 =
    FLAG_COMPRESSED | FLAG_NEGATIVE | FLAG_INSERT | FLAG_TOMBSTONE | FLAG_EXTENDED | FLAG_ENCRYPTED;
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
    /// The origin's validator for the value (an ETag, a Last-Modified, a version): opaque
    /// bytes, at most [`MAX_VALIDATOR_LEN`]; extension item `0x80`.
    pub validator: Option<Bytes>,
    /// What opens an encrypted payload (key id, nonce), written and read by the encryption
    /// layer, opaque here; extension item `0x01`. Set exactly when the envelope is flagged
    /// `FLAG_ENCRYPTED`.
    pub sealing: Option<Bytes>,
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

/// How values are turned into payloads: the serializer, the compression and when it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// The serializer values are written with. Default: [`Serializer::MessagePack`]. Entries
    /// written by any built-in serializer are read whatever this says.
    pub serializer: Serializer,
    /// The compression for payloads of at least `compress_threshold` bytes (kept only when it
    /// saves space); `None` turns compression off. Default: [`Compression::Lz4`].
    pub compression: Option<Compression>,
    /// Payloads of at least this many bytes are compressed when that saves space.
    /// Default: 1024. `usize::MAX` turns compression off.
    pub compress_threshold: usize,
    /// The zstd level (1 fastest … 22 smallest; 0 is zstd's default, 3). Default: 3.
    pub zstd_level: i32,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    /// The defaults (as [`Default`], usable in a `const`): MessagePack, lz4 from 1024 bytes.
    pub const fn new() -> Self {
        Self {
            serializer: Serializer::MessagePack,
            compression: Some(Compression::Lz4),
            compress_threshold: 1024,
            zstd_level: 3,
        }
    }

    /// Why this codec cannot write, if it cannot: a serializer or compression whose feature
    /// is not built in, a zstd level outside 1..=22.
    pub fn check(&self) -> Result<(), String> {
        let feature = |name: &str| format!("{name} needs the feature `{name}` of tier (tier-core)");
        if !self.serializer.is_built_in() {
            return Err(feature(self.serializer.name()));
        }
        match self.compression {
            Some(c) if !c.is_built_in() => Err(feature(c.name())),
            Some(Compression::Zstd) if !(1..=22).contains(&self.zstd_level) => {
                Err(format!("zstd level {} outside 1..=22", self.zstd_level))
            }
            _ => Ok(()),
        }
    }

    /// Encode `value` (or a negative entry when `None` or `meta.negative`) with `meta` into an
    /// envelope. A `meta` carrying a sealing is refused: sealed envelopes are made by the
    /// encryption layer ([`Codec::serialize`], then [`assemble`]).
    pub fn encode<V: Serialize>(&self, meta: &Meta, value: Option<&V>) -> Result<Bytes, String> {
        if meta.sealing.is_some() {
            return Err("a sealed entry is encoded by the encryption layer".to_string());
        }
        let payload = self.serialize(value.filter(|_| !meta.negative))?;
        assemble(meta, &payload)
    }

    /// The payload of `value` (empty for `None`): serialized, then compressed when it is at
    /// least `compress_threshold` bytes and compressing saves space.
    pub fn serialize<V: Serialize>(&self, value: Option<&V>) -> Result<Payload<Vec<u8>>, String> {
        let Some(value) = value else {
            return Ok(Payload {
                serializer: self.serializer,
                compression: None,
                bytes: Vec::new(),
            });
        };
        let raw = format::serialize(self.serializer, value)?;
        if let Some(compression) = self.compression.filter(|_| raw.len() >= self.compress_threshold)
        {
            let compressed = format::compress(compression, self.zstd_level, &raw)?;
            if compressed.len() < raw.len() {
                return Ok(Payload {
                    serializer: self.serializer,
                    compression: Some(compression),
                    bytes: compressed,
                });
            }
        }
        Ok(Payload { serializer: self.serializer, compression: None, bytes: raw })
    }
}

/// An envelope of `meta` and an already made `payload` (its bytes taken as they are: sealed
/// ones too). `FLAG_ENCRYPTED` is set exactly when `meta.sealing` is; the negative, insert and
/// tombstone flags, tags and validator come from `meta`.
pub fn assemble<B: AsRef<[u8]>>(meta: &Meta, payload: &Payload<B>) -> Result<Bytes, String> {
    let payload_bytes = payload.bytes.as_ref();
    let mut flags = 0;
    for (set, flag) in [
        (meta.negative, FLAG_NEGATIVE),
        (meta.insert, FLAG_INSERT),
        (meta.tombstone, FLAG_TOMBSTONE),
        (payload.compression.is_some(), FLAG_COMPRESSED),
        (meta.sealing.is_some(), FLAG_ENCRYPTED),
    ] {
        if set {
            flags |= flag;
        }
    }
    let extensions =
        Extensions { sealing: meta.sealing.clone(), validator: meta.validator.clone() };
    if !extensions.is_empty() {
        flags |= FLAG_EXTENDED;
    }
    let tags = meta.tags();
    if tags.len() > MAX_TAGS {
        return Err(format!("{} tags, at most {MAX_TAGS} allowed", tags.len()));
    }
    let tags_len: usize = tags.iter().map(|t| 10 + t.tag.len()).sum();
    let ext_len = if extensions.is_empty() { 0 } else { extensions.encoded_len() };
    let payload_len =
        u32::try_from(payload_bytes.len()).map_err(|_| "payload over 4 GiB".to_string())?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + tags_len + ext_len + payload_bytes.len());
    out.put_slice(&MAGIC);
    out.put_u8(flags);
    out.put_u8(format::format_byte(payload.serializer, payload.compression));
    // Fits: at most MAX_TAGS (checked above).
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
        // Fits: at most MAX_TAG_LEN (checked above).
        out.put_u16_le(t.tag.len() as u16);
        out.put_slice(t.tag.as_bytes());
        out.put_u64_le(t.generation);
    }
    if !extensions.is_empty() {
        extensions.write(&mut out)?;
    }
    out.put_slice(payload_bytes);
    Ok(out.freeze())
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
        validator: None,
        sealing: None,
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
    if flags & FLAG_EXTENDED != 0 {
        let (items, len) = Extensions::read(&bytes[at..])?;
        if items.is_empty() {
            return Err(TierError::decode("envelope flagged extended has no extension item"));
        }
        meta.validator = items.validator;
        meta.sealing = items.sealing;
        at += len;
    }
    if meta.sealing.is_some() != (flags & FLAG_ENCRYPTED != 0) {
        return Err(TierError::decode(
            "envelope's encrypted flag and sealing item disagree (one without the other)",
        ));
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

/// The payload of an envelope whose meta was parsed by [`decode_meta`] (`payload_at` is the
/// offset it returned): its bytes and what wrote them. An unknown serializer or compression id
/// is a `Decode` error. The bytes are ciphertext when the envelope is encrypted
/// (`meta.sealing` is set).
pub fn payload_of(bytes: &[u8], payload_at: usize) -> Result<Payload<&[u8]>, TierError> {
    let (Some(flags), Some(format), Some(payload)) =
        (bytes.get(4), bytes.get(5), bytes.get(payload_at..))
    else {
        return Err(TierError::decode(describe_foreign(bytes)));
    };
    let (serializer, compression) = parse_format(*format, flags & FLAG_COMPRESSED != 0)?;
    Ok(Payload { serializer, compression, bytes: payload })
}

/// Decode the payload of an envelope whose meta was parsed by [`decode_meta`], whichever
/// built-in serializer and compression wrote it. Returns `None` for a negative entry. An
/// encrypted envelope is a `Decode` error here ("encrypted entry, no keyring"): the encryption
/// layer opens it.
pub fn decode_value<V: DeserializeOwned>(
    bytes: &[u8],
    meta: &Meta,
    payload_at: usize,
) -> Result<Option<V>, TierError> {
    if meta.negative {
        return Ok(None);
    }
    if meta.sealing.is_some() {
        return Err(TierError::decode("encrypted entry, no keyring"));
    }
    decode_payload(&payload_of(bytes, payload_at)?).map(Some)
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
mod tests;
