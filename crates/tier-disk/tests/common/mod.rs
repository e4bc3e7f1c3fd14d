//! Helpers shared by the integration tests: self-verifying values, envelopes, directory sizes.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use bytes::Bytes;
use tier_core::spi::envelope::{decode_meta, decode_value};
use tier_core::spi::{now_ms, Codec, Entry, Lookup, Meta};

/// Never compress: values stay as large on disk as they look.
pub const CODEC: Codec = Codec { compress_threshold: usize::MAX, ..Codec::new() };

/// The value written for `key` at `seq`, `len` bytes: key, seq, then filler derived from both,
/// so any value read back can be checked against what was written.
pub fn value_for(key: &str, seq: u64, len: usize) -> String {
    let mut s = format!("{key}|{seq}|");
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ key.len() as u64;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push((b'a' + (x % 26) as u8) as char);
    }
    s
}

/// If `value` is a well-formed value of `key`, its seq (checks every byte).
pub fn check_value(key: &str, value: &str) -> Option<u64> {
    let mut parts = value.splitn(3, '|');
    if parts.next()? != key {
        return None;
    }
    let seq: u64 = parts.next()?.parse().ok()?;
    (value_for(key, seq, value.len()) == value).then_some(seq)
}

/// An envelope entry holding `value`, alive for `ttl_ms`.
pub fn entry(value: &str, ttl_ms: u64) -> Entry {
    let now = now_ms();
    let meta = Meta {
        created_at: now,
        fresh_until: now + ttl_ms,
        stale_until: now + ttl_ms,
        ..Meta::default()
    };
    Entry::from_envelope(CODEC.encode(&meta, Some(&value.to_string())).expect("encode"))
        .expect("valid envelope")
}

/// The string inside a lookup's envelope.
pub fn decoded(lookup: &Lookup) -> Option<String> {
    let env = lookup.entry()?.envelope()?;
    decode_string(env)
}

/// Decode an envelope holding a string.
pub fn decode_string(env: &Bytes) -> Option<String> {
    let (meta, at) = decode_meta(env).expect("a served envelope decodes");
    decode_value::<String>(env, &meta, at).expect("a served payload decodes")
}

/// Total length of the segment files in `dir`.
pub fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Segment file paths in `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// A multi-thread runtime for tests that need `block_on` outside `#[tokio::test]`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}
