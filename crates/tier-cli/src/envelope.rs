//! Decoding a stored envelope for display (`tier disk get`, `tier redis get`): its times, tags,
//! flags and value. The value's Rust type is unknown here, so a payload of a self-describing
//! serializer (every built-in one: MessagePack, JSON, CBOR) is shown as JSON when it maps to
//! JSON, whatever compressed it; anything that does not decode (a serializer of another version,
//! bytes JSON cannot hold) is shown as a hex preview with the reason. A sealed entry (a cache with a
//! keyring) is said to be one, with the id of its key; its value is shown only when a keyring
//! that holds the key opens it for the entry's cache and key.

use serde::Serialize;
use tier_core::seal::{decode_sealed, Keyring, Place, Sealing};
use tier_core::spi::envelope::{decode_meta, decode_value, payload_of, FLAG_COMPRESSED};
use tier_core::spi::now_ms;

use crate::duration::short;

/// What an envelope says.
#[derive(Debug, Serialize)]
pub struct EnvelopeView {
    /// Bytes of the envelope.
    pub size: usize,
    /// `fresh`, `stale` or `expired` (now).
    pub state: &'static str,
    /// When the value was loaded (Unix ms).
    pub created_at: u64,
    /// Fresh until (Unix ms).
    pub fresh_until: u64,
    /// Servable as stale until (Unix ms).
    pub stale_until: u64,
    /// How long the load that produced it took, in µs.
    pub load_cost_us: u32,
    /// The origin said "no such value".
    pub negative: bool,
    /// The payload is compressed.
    pub compressed: bool,
    /// The serializer that wrote the value (`msgpack`, `json`, `cbor`), when known.
    pub serializer: Option<&'static str>,
    /// The compression of the payload (`lz4`, `zstd`), when compressed.
    pub compression: Option<&'static str>,
    /// The origin's validator (ETag, Last-Modified, version): as text when UTF-8, else hex.
    pub validator: Option<String>,
    /// The payload is sealed (encrypted at rest); its value is shown only when opened.
    pub encrypted: bool,
    /// The id of the key it is sealed with, when sealed.
    pub key_id: Option<u32>,
    /// Tags and the generation each had when written.
    pub tags: Vec<TagView>,
    /// The value as JSON, when the payload maps to JSON.
    pub value: Option<serde_json::Value>,
    /// Why the value is not shown, when it is not.
    pub value_error: Option<String>,
}

/// A tag stamp.
#[derive(Debug, Serialize)]
pub struct TagView {
    /// Tag name.
    pub tag: String,
    /// Generation at write time.
    pub generation: u64,
}

/// What opens a sealed entry: a keyring, and the entry's place (its cache and key).
#[derive(Debug, Clone, Copy)]
pub struct Opener<'a> {
    /// The keyring, when one was supplied.
    pub keyring: Option<&'a Keyring>,
    /// The entry's place, bound into its seal.
    pub place: Place<'a>,
}

/// Decode `bytes` (opening a sealed entry with `opener`'s keyring); an error says why they are
/// not a valid envelope.
pub fn view(bytes: &[u8], opener: Opener<'_>) -> Result<EnvelopeView, String> {
    let (meta, at) = decode_meta(bytes).map_err(|e| e.to_string())?;
    let now = now_ms();
    let state = if now < meta.fresh_until {
        "fresh"
    } else if now < meta.stale_until {
        "stale"
    } else {
        "expired"
    };
    let sealing =
        meta.sealing.as_deref().map(Sealing::parse).transpose().map_err(|e| e.to_string())?;
    let payload = payload_of(bytes, at);
    let decoded = match (&payload, &sealing, opener.keyring) {
        (_, None, _) => {
            decode_value::<serde_json::Value>(bytes, &meta, at).map_err(|e| e.to_string())
        }
        (_, Some(_), Some(keyring)) => {
            decode_sealed(bytes, keyring, opener.place).map_err(|e| e.to_string())
        }
        (_, Some(s), None) => Err(format!(
            "sealed with key {}: supply the keyring (--keyring-file or TIER_KEYRING) to decrypt",
            s.key_id
        )),
    };
    let (value, value_error) = match decoded {
        Ok(v) => (v, None),
        Err(e) if sealing.is_some() => (None, Some(e)),
        Err(e) => (None, Some(format!("{e}; payload starts {}", hex_preview(&bytes[at..], 32)))),
    };
    let (serializer, compression) = match &payload {
        Ok(p) => (Some(p.serializer.name()), p.compression.map(|c| c.name())),
        Err(_) => (None, None),
    };
    let validator = meta.validator.as_ref().map(|v| match std::str::from_utf8(v) {
        Ok(text) => text.to_string(),
        Err(_) => format!("0x{}", hex_preview(v, v.len())),
    });
    Ok(EnvelopeView {
        size: bytes.len(),
        state,
        created_at: meta.created_at,
        fresh_until: meta.fresh_until,
        stale_until: meta.stale_until,
        load_cost_us: meta.load_cost_us,
        negative: meta.negative,
        compressed: bytes.get(4).is_some_and(|f| f & FLAG_COMPRESSED != 0),
        serializer,
        compression,
        validator,
        encrypted: sealing.is_some(),
        key_id: sealing.map(|s| s.key_id),
        tags: meta
            .tags()
            .iter()
            .map(|t| TagView { tag: t.tag.to_string(), generation: t.generation })
            .collect(),
        value,
        value_error,
    })
}

/// Up to `n` bytes as hex.
pub fn hex_preview(bytes: &[u8], n: usize) -> String {
    let mut s: String = bytes.iter().take(n).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > n {
        s.push('…');
    }
    s
}

/// A Unix-ms instant relative to now: `in 4.20s`, `12.00s ago`.
pub fn relative(at_ms: u64) -> String {
    let now = now_ms();
    if at_ms >= now {
        format!("in {}", short(std::time::Duration::from_millis(at_ms - now)))
    } else {
        format!("{} ago", short(std::time::Duration::from_millis(now - at_ms)))
    }
}

impl EnvelopeView {
    /// Lines for a terminal.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "state        {}", self.state);
        let _ = writeln!(
            out,
            "created      {} ({} Unix ms)",
            relative(self.created_at),
            self.created_at
        );
        let _ = writeln!(out, "fresh until  {} ({})", relative(self.fresh_until), self.fresh_until);
        let _ = writeln!(out, "stale until  {} ({})", relative(self.stale_until), self.stale_until);
        let _ = writeln!(
            out,
            "load cost    {}",
            short(std::time::Duration::from_micros(u64::from(self.load_cost_us)))
        );
        let _ = writeln!(
            out,
            "envelope     {} bytes, {}{}{}{}",
            self.size,
            self.serializer.unwrap_or("unknown serializer"),
            self.compression.map(|c| format!(", {c}-compressed")).unwrap_or_default(),
            if self.encrypted { ", encrypted" } else { "" },
            if self.negative { ", negative (the origin had no value)" } else { "" }
        );
        if let Some(v) = &self.validator {
            let _ = writeln!(out, "validator    {v}");
        }
        if let Some(id) = self.key_id {
            let opened =
                if self.value.is_some() { "opened with the keyring" } else { "not opened" };
            let _ = writeln!(out, "encrypted    yes, XChaCha20-Poly1305, key {id} ({opened})");
        }
        if !self.tags.is_empty() {
            let tags: Vec<String> = self
                .tags
                .iter()
                .map(|t| format!("{} (generation {})", t.tag, t.generation))
                .collect();
            let _ = writeln!(out, "tags         {}", tags.join(", "));
        }
        match (&self.value, &self.value_error) {
            (Some(v), _) => {
                let mut text = v.to_string();
                if text.len() > 2000 {
                    let mut cut = 2000;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                }
                let _ = writeln!(out, "value        {text}");
            }
            (None, Some(e)) => {
                let _ = writeln!(out, "value        not shown: {e}");
            }
            (None, None) => {}
        }
        out
    }
}
