//! The one place where the hierarchy turns values into envelopes for byte tiers and envelopes
//! back into values: sealed under the cache's keyring when it has one (feature `encryption`,
//! [`crate::seal`]), in clear otherwise. An entry's place — the cache's name and its key — is
//! bound into a sealed envelope, so both directions take it.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entry::Entry;
#[cfg(feature = "encryption")]
use crate::entry::Value;
use crate::envelope::{Codec, Meta};
use crate::error::TierError;
#[cfg(feature = "encryption")]
use crate::seal::{self, Keyring, Place};

/// How the hierarchy writes and reads envelopes: the codec, and the keyring when values are
/// sealed at rest.
#[derive(Clone, Default)]
pub(super) struct Sealer {
    pub codec: Codec,
    #[cfg(feature = "encryption")]
    pub keyring: Option<Keyring>,
}

impl Sealer {
    /// The envelope of `value` (a negative entry when `None`) with `meta`, for `key` of `cache`.
    pub fn encode<V: Serialize>(
        &self,
        cache: &str,
        key: &[u8],
        meta: &Meta,
        value: Option<&V>,
    ) -> Result<Bytes, String> {
        #[cfg(feature = "encryption")]
        if let Some(keyring) = &self.keyring {
            return seal::encode_sealed(&self.codec, keyring, Place { cache, key }, meta, value);
        }
        let _ = (cache, key);
        self.codec.encode(meta, value)
    }

    /// The value `entry` holds for `key` of `cache` (`None`: a negative entry). With a keyring,
    /// an envelope must be sealed and open under it; an envelope in clear, one sealed with a
    /// key the keyring lacks, or one that does not authenticate is a
    /// [`Decode`](crate::TierErrorKind::Decode) error (a miss).
    pub fn decode<V: DeserializeOwned + Send + Sync + 'static>(
        &self,
        cache: &str,
        key: &[u8],
        entry: &Entry,
    ) -> Result<Option<Arc<V>>, TierError> {
        #[cfg(feature = "encryption")]
        if let (Some(keyring), Value::Envelope(bytes)) = (&self.keyring, &entry.value) {
            let value = seal::decode_sealed::<V>(bytes, keyring, Place { cache, key })?;
            return Ok(value.map(Arc::new));
        }
        let _ = (cache, key);
        entry.decode()
    }
}
