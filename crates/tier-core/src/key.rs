//! Keys: `namespace:version:id`, with long ids hashed and an O(1) namespace drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

/// Ids longer than this are replaced by a 128-bit hash (xxh3) so keys stay short.
pub const MAX_ID_LEN: usize = 200;

/// Builds keys `namespace:version:id`. Bumping the version drops the whole namespace in O(1):
/// every old key becomes unreachable and ages out of the tiers on its own.
///
/// ```
/// use tier_core::KeyBuilder;
/// let keys = KeyBuilder::new("users");
/// assert_eq!(&keys.key("42")[..], b"users:0:42");
/// keys.set_version(3);
/// assert_eq!(&keys.key("42")[..], b"users:3:42");
/// assert_eq!(keys.key("x".repeat(1000)).len(), "users:3:#".len() + 32);
/// ```
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    namespace: Arc<str>,
    version: Arc<AtomicU64>,
}

impl KeyBuilder {
    /// Keys in `namespace`, version 0.
    pub fn new(namespace: impl Into<Arc<str>>) -> Self {
        Self { namespace: namespace.into(), version: Arc::new(AtomicU64::new(0)) }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The current namespace version.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Move to version `v` if it is newer than the current one (versions never go back).
    pub fn set_version(&self, v: u64) {
        self.version.fetch_max(v, Ordering::AcqRel);
    }

    /// The namespace version a key built by [`key`](Self::key) carries; `None` for a key this
    /// builder did not build (another form, another namespace).
    /// One pass over the version's digits: the L1 fast path asks it on every hit.
    pub(crate) fn version_of(&self, key: &[u8]) -> Option<u64> {
        let rest = key.strip_prefix(self.namespace.as_bytes())?.strip_prefix(b":")?;
        let mut version: u64 = 0;
        for (i, b) in rest.iter().enumerate() {
            match b {
                b'0'..=b'9' => {
                    version = version.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                }
                b':' if i > 0 => return Some(version),
                _ => return None,
            }
        }
        None
    }

    /// Was `key` built with a version this builder has moved past (of a dropped namespace)?
    /// `false` for a key it did not build.
    #[inline]
    pub(crate) fn is_passed(&self, key: &[u8]) -> bool {
        let current = self.version();
        current != 0 && self.version_of(key).is_some_and(|built| built < current)
    }

    /// `key` as a write of it goes now: a key built with a version this builder has moved
    /// past is built again under the current one (the same id, the id's hash for a long one);
    /// any other key as it is.
    pub(crate) fn rebase(&self, key: Bytes) -> Bytes {
        if !self.is_passed(&key) {
            return key;
        }
        // `namespace:version:id`: `is_passed` read the version, so both separators are there.
        let after_ns = self.namespace.len() + 1;
        let Some(sep) = key[after_ns..].iter().position(|b| *b == b':') else { return key };
        self.compose(self.version(), &key[after_ns + sep + 1..])
    }

    /// `namespace:version:id_part` (`id_part`: the id, or its hash for a long one).
    fn compose(&self, version: u64, id_part: &[u8]) -> Bytes {
        let version = version.to_string();
        let mut out =
            BytesMut::with_capacity(self.namespace.len() + version.len() + 2 + id_part.len());
        out.put_slice(self.namespace.as_bytes());
        out.put_u8(b':');
        out.put_slice(version.as_bytes());
        out.put_u8(b':');
        out.put_slice(id_part);
        out.freeze()
    }

    /// The key of `id`. Ids longer than [`MAX_ID_LEN`] bytes are hashed (`#` + 32 hex digits).
    pub fn key(&self, id: impl AsRef<[u8]>) -> Bytes {
        let id = id.as_ref();
        let version = self.version();
        if id.len() > MAX_ID_LEN {
            let h = xxhash_rust::xxh3::xxh3_128(id);
            self.compose(version, format!("#{h:032x}").as_bytes())
        } else {
            self.compose(version, id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_of_a_key_is_read_back_only_from_keys_of_its_form() {
        let keys = KeyBuilder::new("users");
        keys.set_version(1_883_437_513_580_415_662);
        assert_eq!(keys.version_of(&keys.key("a:b")), Some(1_883_437_513_580_415_662));
        assert_eq!(keys.version_of(b"users:0:x"), Some(0));
        let too_big = b"users:18446744073709551616:x"; // u64::MAX + 1
        for other in [
            &b"users:x:1"[..],
            b"users:12",
            b"users::1",
            b"user:1:x",
            b"usersx:1:x",
            b"users:1a:x",
            too_big,
            b"",
        ] {
            assert_eq!(keys.version_of(other), None, "{:?}", String::from_utf8_lossy(other));
        }
        assert_eq!(keys.version_of(b"users:18446744073709551615:x"), Some(u64::MAX));
    }

    #[test]
    fn a_passed_key_is_rebased_on_the_current_version_and_any_other_left_alone() {
        let keys = KeyBuilder::new("users");
        keys.set_version(7);
        let old = keys.key("a:b");
        let long = keys.key("x".repeat(1000));
        keys.set_version(1_883_437_513_580_415_662);
        assert_eq!(keys.rebase(old), keys.key("a:b"), "the id kept, colons and all");
        assert_eq!(keys.rebase(long), keys.key("x".repeat(1000)), "a long id's hash kept");
        let current = keys.key("c");
        assert_eq!(keys.rebase(current.clone()), current);
        for other in [&b"raw key"[..], b"users:x:1", b"other:1:x"] {
            assert_eq!(&keys.rebase(Bytes::copy_from_slice(other))[..], other);
        }
    }

    #[test]
    fn a_key_is_passed_once_the_version_moved_beyond_the_one_it_was_built_with() {
        let keys = KeyBuilder::new("users");
        let first = keys.key("k");
        assert!(!keys.is_passed(&first), "nothing passed at version 0");
        keys.set_version(7);
        let seventh = keys.key("k");
        assert!(keys.is_passed(&first));
        assert!(!keys.is_passed(&seventh));
        assert!(!keys.is_passed(b"raw key"), "a key of another form is never passed");
        keys.set_version(8);
        assert!(keys.is_passed(&seventh));
    }
}
