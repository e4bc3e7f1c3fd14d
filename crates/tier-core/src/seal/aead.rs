//! The AEAD layer: sealing a payload with the keyring's current key under a fresh random nonce,
//! opening it with the key its sealing names, and the associated data an entry is bound to.
//!
//! XChaCha20-Poly1305: a 24-byte nonce drawn from the operating system's generator for every
//! entry (random nonces of that size do not collide in any number of entries a cache writes),
//! a 16-byte tag after the ciphertext.

use chacha20poly1305::aead::{AeadInOut, Generate};
use chacha20poly1305::XNonce;

use super::keyring::{KeyId, Keyring};
use crate::error::TierError;

/// The length of a nonce.
pub const NONCE_LEN: usize = 24;
/// The length of the authentication tag that follows the ciphertext.
pub const TAG_LEN: usize = 16;

/// What opening an entry needs besides the key: the id of the key it was sealed with and its
/// nonce (the envelope's sealing item, in clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealing {
    /// The key the entry was sealed with.
    pub key_id: KeyId,
    /// The entry's nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl Sealing {
    /// Its length in bytes: key id (u32, little endian), then the nonce.
    pub const LEN: usize = 4 + NONCE_LEN;

    /// Its bytes.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.key_id.to_le_bytes());
        out[4..].copy_from_slice(&self.nonce);
        out
    }

    /// Parse a sealing item's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TierError> {
        if bytes.len() != Self::LEN {
            return Err(TierError::decode(format!(
                "sealing item of {} bytes, {} expected",
                bytes.len(),
                Self::LEN
            )));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&bytes[..4]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[4..]);
        Ok(Self { key_id: KeyId::from_le_bytes(id), nonce })
    }
}

/// Where an entry lives: the associated data binds these, so that an entry copied under
/// another key, or into another cache's keyspace, does not open.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The cache's name.
    pub cache: &'a str,
    /// The entry's key (as the cache stores it).
    pub key: &'a [u8],
}

/// Domain separation: associated data of this scheme and version only.
const AAD_DOMAIN: &[u8] = b"tier-seal-v1\0";

/// The associated data of an entry: the scheme, the key id, the cache name and the entry's key
/// (each length-prefixed, so that no two places share a byte string), then `clear` — the
/// envelope's bytes in clear that the seal covers (everything but the times and the payload).
pub fn associated_data(key_id: KeyId, place: Place<'_>, clear: &[&[u8]]) -> Vec<u8> {
    let clear_len: usize = clear.iter().map(|c| c.len()).sum();
    let mut aad =
        Vec::with_capacity(AAD_DOMAIN.len() + 12 + place.cache.len() + place.key.len() + clear_len);
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(&key_id.to_le_bytes());
    for part in [place.cache.as_bytes(), place.key] {
        aad.extend_from_slice(&(part.len() as u32).to_le_bytes());
        aad.extend_from_slice(part);
    }
    for part in clear {
        aad.extend_from_slice(part);
    }
    aad
}

impl Keyring {
    /// A new sealing with the current key and a fresh random nonce; an error only when the
    /// operating system's generator fails.
    pub fn fresh_sealing(&self) -> Result<Sealing, String> {
        let nonce = XNonce::try_generate().map_err(|e| format!("no random nonce: {e}"))?;
        let mut bytes = [0u8; NONCE_LEN];
        bytes.copy_from_slice(&nonce);
        Ok(Sealing { key_id: self.current_id(), nonce: bytes })
    }

    /// Encrypt `buf` in place under `sealing` (whose key must be the current one); the tag.
    pub fn seal_detached(
        &self,
        sealing: &Sealing,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], String> {
        let (id, cipher) = self.current_cipher();
        if id != sealing.key_id {
            return Err(format!("sealing names key {}, the current key is {id}", sealing.key_id));
        }
        let tag = cipher
            .encrypt_inout_detached(&XNonce::from(sealing.nonce), aad, buf.into())
            .map_err(|_| "the payload is too long to seal".to_string())?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        Ok(out)
    }

    /// Decrypt and authenticate `ciphertext` (tag last) sealed under `sealing`: the plaintext,
    /// or a [`Decode`](crate::TierErrorKind::Decode) error when the keyring lacks the key or
    /// the entry does not authenticate (tampered with, or read under another key or cache).
    pub fn open(
        &self,
        sealing: &Sealing,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, TierError> {
        let Some(cipher) = self.cipher(sealing.key_id) else {
            return Err(TierError::decode(format!(
                "entry sealed with key {}, which the keyring does not hold",
                sealing.key_id
            )));
        };
        if ciphertext.len() < TAG_LEN {
            return Err(TierError::decode("sealed payload shorter than its tag"));
        }
        let mut buf = ciphertext.to_vec();
        cipher.decrypt_in_place(&XNonce::from(sealing.nonce), aad, &mut buf).map_err(|_| {
            TierError::decode(
                "sealed entry does not authenticate (altered, or read under another key or cache)",
            )
        })?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACE: Place<'static> = Place { cache: "users", key: b"user:1" };

    fn sealed(keyring: &Keyring, plain: &[u8], place: Place<'_>) -> (Sealing, Vec<u8>) {
        let sealing = keyring.fresh_sealing().expect("nonce");
        let aad = associated_data(sealing.key_id, place, &[b"header"]);
        let mut buf = plain.to_vec();
        let tag = keyring.seal_detached(&sealing, &aad, &mut buf).expect("seal");
        buf.extend_from_slice(&tag);
        (sealing, buf)
    }

    #[test]
    fn seal_then_open_roundtrips_and_hides_the_plaintext() {
        let keyring = Keyring::new(1, &[3; 32]);
        let plain = b"the quick brown fox jumps over the lazy dog".repeat(4);
        let (sealing, buf) = sealed(&keyring, &plain, PLACE);
        assert_eq!(buf.len(), plain.len() + TAG_LEN);
        assert!(!buf.windows(9).any(|w| w == b"quick bro"));
        let aad = associated_data(1, PLACE, &[b"header"]);
        assert_eq!(keyring.open(&sealing, &aad, &buf).expect("opens"), plain);
        assert_eq!(Sealing::parse(&sealing.to_bytes()).expect("parses"), sealing);
    }

    #[test]
    fn nonces_differ_per_seal() {
        let keyring = Keyring::new(1, &[3; 32]);
        let a = keyring.fresh_sealing().expect("nonce");
        let b = keyring.fresh_sealing().expect("nonce");
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn another_place_key_or_header_does_not_open() {
        let keyring = Keyring::new(1, &[3; 32]);
        let (sealing, buf) = sealed(&keyring, b"secret", PLACE);
        let other_cache = Place { cache: "orders", ..PLACE };
        let other_key = Place { key: b"user:2", ..PLACE };
        // Length prefixes: moving a byte from the cache name into the key changes the data.
        let shifted = Place { cache: "user", key: b"suser:1" };
        for (place, header) in [
            (other_cache, &b"header"[..]),
            (other_key, b"header"),
            (shifted, b"header"),
            (PLACE, b"headex"),
        ] {
            let aad = associated_data(1, place, &[header]);
            let e = keyring.open(&sealing, &aad, &buf).expect_err("must not open");
            assert!(e.is_decode(), "{e}");
        }
        let other = Keyring::new(1, &[4; 32]);
        assert!(other.open(&sealing, &associated_data(1, PLACE, &[b"header"]), &buf).is_err());
        let unknown = Keyring::new(2, &[3; 32]);
        let e = unknown.open(&sealing, &associated_data(1, PLACE, &[b"header"]), &buf);
        assert!(e.expect_err("unknown key").to_string().contains("key 1"));
    }
}
