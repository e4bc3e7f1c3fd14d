//! The key layout in Redis: which prefix each part of the crate writes under, and how a prefix
//! becomes a key or a `SCAN MATCH` pattern.
//!
//! | what | Redis key / channel | default |
//! |---|---|---|
//! | entries of a [`RedisTier`](crate::RedisTier) | tier prefix + cache key | [`DEFAULT_PREFIX`] |
//! | tag generations ([`RedisGenerations`](crate::RedisGenerations)) | generation prefix + tag | [`DEFAULT_GENERATION_PREFIX`] |
//! | fleet locks ([`RedisLock`](crate::RedisLock)) | lock prefix + cache key | [`DEFAULT_LOCK_PREFIX`] |
//! | the backplane ([`RedisBackplane`](crate::RedisBackplane)): a Stream and its epoch key | stream key, stream key + `"{"` + stream key + `"}:epoch"` (one hash slot; `+ ":epoch"` when the key has a hash tag) | [`DEFAULT_STREAM`] |
//!
//! Keep the prefixes apart (none a prefix of another): a tier's `clear` removes every key under
//! its own prefix.

use bytes::Bytes;

/// Default key prefix of a [`RedisTier`](crate::RedisTier)'s entries.
pub const DEFAULT_PREFIX: &str = "tier:";
/// Default prefix of generation keys.
pub const DEFAULT_GENERATION_PREFIX: &str = "tier-gen:";
/// Default prefix of lock keys.
pub const DEFAULT_LOCK_PREFIX: &str = "tier-lock:";
/// Default key of the backplane's stream (outside [`DEFAULT_PREFIX`]: the tier's `clear` must
/// not remove it).
pub const DEFAULT_STREAM: &str = "tier-log:invalidations";

/// The prefix one part of the crate stores its keys under.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KeyPrefix(Bytes);

impl std::fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&String::from_utf8_lossy(&self.0), f)
    }
}

impl KeyPrefix {
    pub(crate) fn new(prefix: impl AsRef<[u8]>) -> Self {
        Self(Bytes::copy_from_slice(prefix.as_ref()))
    }

    pub(crate) const fn from_static(prefix: &'static str) -> Self {
        Self(Bytes::from_static(prefix.as_bytes()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The Redis key of `key`: prefix + key.
    pub(crate) fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + key.len());
        k.extend_from_slice(&self.0);
        k.extend_from_slice(key);
        k
    }

    /// The key under the prefix, of a Redis key found by `SCAN`.
    pub(crate) fn strip<'a>(&self, redis_key: &'a [u8]) -> &'a [u8] {
        redis_key.strip_prefix(&self.0[..]).unwrap_or(redis_key)
    }

    /// The `SCAN MATCH` pattern of every key under this prefix whose own key starts with
    /// `under` (empty: every key under the prefix).
    pub(crate) fn pattern(&self, under: &[u8]) -> Vec<u8> {
        scan_pattern(&self.key(under))
    }
}

/// The `SCAN MATCH` pattern matching every key that starts with `prefix`: its glob characters
/// (`*`, `?`, `[`, `]`, `\`) escaped, then `*`.
pub fn scan_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 2);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p.push(b'*');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(scan_pattern(b"app:users:"), b"app:users:*".to_vec());
        assert_eq!(scan_pattern(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\*".to_vec());
        assert_eq!(KeyPrefix::new("p[1]:").pattern(b"c*:"), b"p\\[1\\]:c\\*:*".to_vec());
    }

    #[test]
    fn keys_and_back() {
        let p = KeyPrefix::from_static(DEFAULT_PREFIX);
        assert_eq!(p.key(b"users:0:1"), b"tier:users:0:1".to_vec());
        assert_eq!(p.strip(b"tier:users:0:1"), b"users:0:1");
        assert_eq!(format!("{p:?}"), "\"tier:\"");
    }
}
