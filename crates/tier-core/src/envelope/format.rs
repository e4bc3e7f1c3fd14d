//! The format byte (byte 5 of the header) and the payload codecs it names: which serializer
//! wrote the value (low nibble) and, when the payload is flagged compressed, which compression
//! (high nibble).
//!
//! | id | serializer (low nibble) | compression (high nibble, with `FLAG_COMPRESSED`) |
//! |---|---|---|
//! | 0 | MessagePack, named fields (rmp-serde) — the default | lz4 block, uncompressed length prefixed (`u32` LE) — the default |
//! | 1 | JSON (serde_json), for debugging | zstd frame, uncompressed length prefixed (`u32` LE); feature `zstd` |
//! | 2 | retired (postcard, positional: not readable without its type — no longer written or read) | — |
//! | 3 | CBOR (RFC 8949, ciborium): self-describing binary; feature `cbor` | — |
//!
//! Envelopes written before the format byte existed have 0 there: MessagePack, lz4 — what they
//! are. An id this version does not know, or one whose feature is not built in, is a `Decode`
//! error when the value is read (a miss plus `tier_decode_errors_total` for the hierarchy).
//!
//! The built-ins are a closed enum, not a trait: a serde codec trait (`fn encode<V:
//! Serialize>`) is not object-safe, and the id in the envelope must mean the same to every
//! reader of the fleet, which a codec plugged in by one service cannot promise.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::TierError;

/// The largest uncompressed payload a reader accepts (a corrupt length prefix must not make it
/// allocate gigabytes).
pub const MAX_DECOMPRESSED: usize = 1 << 30;

/// Which serializer turned the value into the payload's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Serializer {
    /// MessagePack with named fields (rmp-serde): compact, tolerant of added fields. Default.
    #[default]
    MessagePack,
    /// JSON (serde_json): readable in `redis-cli`, larger and slower; for debugging.
    Json,
    /// CBOR (RFC 8949, through ciborium): binary and self-describing like MessagePack — the
    /// CLI shows it without knowing `V` — and a standard many other languages read. Needs the
    /// feature `cbor` to write or read.
    Cbor,
}

impl Serializer {
    /// The id in the format byte's low nibble.
    pub const fn id(self) -> u8 {
        match self {
            Self::MessagePack => 0,
            Self::Json => 1,
            Self::Cbor => 3,
        }
    }

    /// The serializer of an id; an unknown id is a `Decode` error.
    pub fn from_id(id: u8) -> Result<Self, TierError> {
        match id {
            0 => Ok(Self::MessagePack),
            1 => Ok(Self::Json),
            2 => Err(TierError::decode(
                "envelope payload written by serializer id 2 (postcard), which this version no \
                 longer reads (it is not self-describing)",
            )),
            3 => Ok(Self::Cbor),
            _ => Err(TierError::decode(format!(
                "envelope payload written by serializer id {id}, unknown to this version"
            ))),
        }
    }

    /// Its name, for messages and tools.
    pub const fn name(self) -> &'static str {
        match self {
            Self::MessagePack => "msgpack",
            Self::Json => "json",
            Self::Cbor => "cbor",
        }
    }

    /// Is it built into this binary (its feature enabled)?
    pub const fn is_built_in(self) -> bool {
        match self {
            Self::MessagePack | Self::Json => true,
            Self::Cbor => cfg!(feature = "cbor"),
        }
    }
}

/// How a compressed payload was compressed (only meaningful with `FLAG_COMPRESSED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// lz4 block (lz4_flex), uncompressed length prefixed: fast. Default.
    Lz4,
    /// zstd frame (the `zstd` crate), uncompressed length prefixed: smaller, slower. Needs the
    /// feature `zstd` to write or read.
    Zstd,
}

impl Compression {
    /// The id in the format byte's high nibble.
    pub const fn id(self) -> u8 {
        match self {
            Self::Lz4 => 0,
            Self::Zstd => 1,
        }
    }

    /// The compression of an id; an unknown id is a `Decode` error.
    pub fn from_id(id: u8) -> Result<Self, TierError> {
        match id {
            0 => Ok(Self::Lz4),
            1 => Ok(Self::Zstd),
            _ => Err(TierError::decode(format!(
                "envelope payload compressed with compression id {id}, unknown to this version"
            ))),
        }
    }

    /// Its name, for messages and tools.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }

    /// Is it built into this binary (its feature enabled)?
    pub const fn is_built_in(self) -> bool {
        match self {
            Self::Lz4 => true,
            Self::Zstd => cfg!(feature = "zstd"),
        }
    }
}

/// An envelope's payload: its bytes and what wrote them. `B` is `Vec<u8>` when encoding and
/// `&[u8]` (borrowed from the envelope) when decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload<B> {
    /// The serializer that wrote the value.
    pub serializer: Serializer,
    /// The compression applied after serializing, if any.
    pub compression: Option<Compression>,
    /// The bytes: serialized, then compressed when `compression` is set (then, in an encrypted
    /// envelope, sealed — see `FLAG_ENCRYPTED`).
    pub bytes: B,
}

/// The format byte for a serializer and an optional compression.
pub(crate) fn format_byte(serializer: Serializer, compression: Option<Compression>) -> u8 {
    serializer.id() | (compression.map_or(0, Compression::id) << 4)
}

/// The serializer and compression a format byte names; `compressed` is the envelope's
/// `FLAG_COMPRESSED`. Without it the high nibble must be 0.
pub fn parse_format(
    format: u8,
    compressed: bool,
) -> Result<(Serializer, Option<Compression>), TierError> {
    let serializer = Serializer::from_id(format & 0x0F)?;
    let compression = match (compressed, format >> 4) {
        (true, id) => Some(Compression::from_id(id)?),
        (false, 0) => None,
        (false, id) => {
            return Err(TierError::decode(format!(
                "envelope names compression id {id} but is not flagged compressed"
            )))
        }
    };
    Ok((serializer, compression))
}

#[cfg(not(all(feature = "zstd", feature = "cbor")))]
fn not_built(what: &str, feature: &str) -> String {
    format!("{what} is not built into this binary (feature `{feature}`)")
}

/// Serialize `value` with `serializer`.
pub(crate) fn serialize<V: Serialize + ?Sized>(
    serializer: Serializer,
    value: &V,
) -> Result<Vec<u8>, String> {
    match serializer {
        Serializer::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        Serializer::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        #[cfg(feature = "cbor")]
        Serializer::Cbor => {
            let mut out = Vec::new();
            ciborium::into_writer(value, &mut out).map_err(|e| e.to_string())?;
            Ok(out)
        }
        #[cfg(not(feature = "cbor"))]
        Serializer::Cbor => Err(not_built("the CBOR serializer", "cbor")),
    }
}

/// Compress `raw`, its length prefixed (`u32` LE). `zstd_level` is used by zstd only.
pub(crate) fn compress(
    compression: Compression,
    zstd_level: i32,
    raw: &[u8],
) -> Result<Vec<u8>, String> {
    if raw.len() > MAX_DECOMPRESSED {
        return Err(format!("payload of {} bytes, at most {MAX_DECOMPRESSED}", raw.len()));
    }
    match compression {
        Compression::Lz4 => Ok(lz4_flex::block::compress_prepend_size(raw)),
        #[cfg(feature = "zstd")]
        Compression::Zstd => {
            let mut out = Vec::with_capacity(4 + raw.len() / 2);
            // Fits: at most MAX_DECOMPRESSED (checked above).
            out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            let frame = zstd_context::compress(raw, zstd_level)?;
            out.extend_from_slice(&frame);
            Ok(out)
        }
        #[cfg(not(feature = "zstd"))]
        Compression::Zstd => {
            let _ = zstd_level;
            Err(not_built("zstd compression", "zstd"))
        }
    }
}

/// Undo [`compress`]: the length prefix is checked against [`MAX_DECOMPRESSED`] first.
fn decompress(compression: Compression, bytes: &[u8]) -> Result<Vec<u8>, TierError> {
    let bad = |e: String| TierError::decode(format!("{} payload: {e}", compression.name()));
    let prefix: [u8; 4] = bytes
        .get(..4)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| bad("shorter than its length prefix".into()))?;
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_DECOMPRESSED {
        return Err(bad(format!("claims {len} bytes uncompressed, at most {MAX_DECOMPRESSED}")));
    }
    match compression {
        Compression::Lz4 => {
            lz4_flex::block::decompress_size_prepended(bytes).map_err(|e| bad(e.to_string()))
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd => {
            let raw = zstd_context::decompress(&bytes[4..], len).map_err(bad)?;
            if raw.len() != len {
                return Err(bad(format!("{} bytes, its prefix says {len}", raw.len())));
            }
            Ok(raw)
        }
        #[cfg(not(feature = "zstd"))]
        Compression::Zstd => Err(TierError::decode(not_built("zstd compression", "zstd"))),
    }
}

/// Decode a payload (decompress, deserialize) as a `V`. Anything that does not decode — a
/// codec not built in, corrupt bytes, another type — is a `Decode` error.
pub fn decode_payload<V: DeserializeOwned>(payload: &Payload<&[u8]>) -> Result<V, TierError> {
    let raw;
    let bytes = match payload.compression {
        Some(c) => {
            raw = decompress(c, payload.bytes)?;
            &raw[..]
        }
        None => payload.bytes,
    };
    let bad = |e: String| TierError::decode(format!("{} payload: {e}", payload.serializer.name()));
    match payload.serializer {
        Serializer::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| bad(e.to_string())),
        Serializer::Json => serde_json::from_slice(bytes).map_err(|e| bad(e.to_string())),
        #[cfg(feature = "cbor")]
        Serializer::Cbor => ciborium::from_reader(bytes).map_err(|e| bad(e.to_string())),
        #[cfg(not(feature = "cbor"))]
        Serializer::Cbor => Err(TierError::decode(not_built("the CBOR serializer", "cbor"))),
    }
}

/// zstd contexts kept per thread: creating one costs more than compressing a small value (a
/// context is a few hundred KiB to allocate and initialise), so each thread reuses its own.
#[cfg(feature = "zstd")]
mod zstd_context {
    use std::cell::RefCell;

    thread_local! {
        static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }

    /// One zstd frame of `raw` at `level`.
    pub fn compress(raw: &[u8], level: i32) -> Result<Vec<u8>, String> {
        COMPRESSOR.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                let c = zstd::bulk::Compressor::new(level).map_err(|e| e.to_string())?;
                *slot = Some((level, c));
            }
            match slot.as_mut() {
                Some((_, c)) => c.compress(raw).map_err(|e| e.to_string()),
                None => Err("zstd compressor missing".to_string()),
            }
        })
    }

    /// The content of one zstd frame of at most `capacity` bytes.
    pub fn decompress(frame: &[u8], capacity: usize) -> Result<Vec<u8>, String> {
        DECOMPRESSOR.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
            }
            match slot.as_mut() {
                Some(d) => d.decompress(frame, capacity).map_err(|e| e.to_string()),
                None => Err("zstd decompressor missing".to_string()),
            }
        })
    }
}
