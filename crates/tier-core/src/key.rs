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

    /// The key of `id`. Ids longer than [`MAX_ID_LEN`] bytes are hashed (`#` + 32 hex digits).
    pub fn key(&self, id: impl AsRef<[u8]>) -> Bytes {
        let id = id.as_ref();
        let version = self.version();
        let mut out = BytesMut::with_capacity(self.namespace.len() + 24 + id.len().min(MAX_ID_LEN));
        out.put_slice(self.namespace.as_bytes());
        out.put_u8(b':');
        out.put_slice(version.to_string().as_bytes());
        out.put_u8(b':');
        if id.len() > MAX_ID_LEN {
            let h = xxhash_rust::xxh3::xxh3_128(id);
            out.put_slice(format!("#{h:032x}").as_bytes());
        } else {
            out.put_slice(id);
        }
        out.freeze()
    }
}
