//! Sealed write-behind queue records: the value of a queued origin write encrypted under the
//! cache's keyring, so that a queue on disk holds no value in clear.
//!
//! The associated data binds the key id, the cache's name, the entry's key, the record's
//! purpose (`tier write-behind queue\0`, so that a queue record never opens as a cache entry,
//! nor an entry as a queue record) and the write's sequence number (so that a record copied
//! under another key, into another cache's queue, or replayed under another number does not
//! open). The tags of a write are not queued (the origin writer gets key and value only), so
//! there is nothing else to seal.

use bytes::Bytes;

use super::aead::{associated_data, Place, Sealing};
use super::keyring::Keyring;
use crate::error::TierError;
use crate::queue::QueuedWrite;

/// The purpose bound into a queue record's associated data.
const PURPOSE: &[u8] = b"tier write-behind queue\0";

fn aad(key_id: u32, cache: &str, key: &[u8], seq: u64) -> Vec<u8> {
    associated_data(key_id, Place { cache, key }, &[PURPOSE, &seq.to_le_bytes()])
}

/// Seal `plain` (a queued write's MessagePack value) as write `seq` of `key` in cache `cache`,
/// under `keyring`'s current key: the sealed value (ciphertext, tag last) and the sealing item's
/// bytes. An error only when the operating system's random generator fails.
///
/// ```
/// use tier_core::seal::{open_queued, seal_queued, Keyring};
/// use tier_core::spi::QueuedWrite;
///
/// let keyring = Keyring::new(1, &[7; 32]);
/// let (value, sealing) = seal_queued(&keyring, "users", b"users:1", 42, b"\xa3Ada")?;
/// let write = QueuedWrite {
///     seq: 42,
///     key: "users:1".into(),
///     value,
///     queued_at_ms: 0,
///     sealing: Some(sealing),
/// };
/// assert_eq!(write.key_id(), Some(1));
/// assert_eq!(open_queued(&keyring, "users", &write)?, b"\xa3Ada");
/// // Under another number (or key, or cache) it does not open.
/// let moved = QueuedWrite { seq: 43, ..write };
/// assert!(open_queued(&keyring, "users", &moved).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn seal_queued(
    keyring: &Keyring,
    cache: &str,
    key: &[u8],
    seq: u64,
    plain: &[u8],
) -> Result<(Bytes, Bytes), String> {
    let sealing = keyring.fresh_sealing()?;
    let aad = aad(sealing.key_id, cache, key, seq);
    let mut buf = Vec::with_capacity(plain.len() + super::aead::TAG_LEN);
    buf.extend_from_slice(plain);
    let tag = keyring.seal_detached(&sealing, &aad, &mut buf)?;
    buf.extend_from_slice(&tag);
    Ok((Bytes::from(buf), Bytes::copy_from_slice(&sealing.to_bytes())))
}

/// The MessagePack value of the sealed queued write `write` of cache `cache`. A write in clear,
/// one sealed with a key `keyring` lacks, or one that does not authenticate (altered, or moved
/// under another key, number or cache) is a [`Decode`](crate::TierErrorKind::Decode) error.
pub fn open_queued(
    keyring: &Keyring,
    cache: &str,
    write: &QueuedWrite,
) -> Result<Vec<u8>, TierError> {
    let Some(sealing) = &write.sealing else {
        return Err(TierError::decode("queued write in clear, the cache seals its queue"));
    };
    let sealing = Sealing::parse(sealing)?;
    let aad = aad(sealing.key_id, cache, &write.key, write.seq);
    keyring.open(&sealing, &aad, &write.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(keyring: &Keyring, plain: &[u8]) -> QueuedWrite {
        let (value, sealing) = seal_queued(keyring, "users", b"users:1", 7, plain).expect("seal");
        QueuedWrite {
            seq: 7,
            key: Bytes::from_static(b"users:1"),
            value,
            queued_at_ms: 1,
            sealing: Some(sealing),
        }
    }

    #[test]
    fn a_queue_record_opens_in_its_place_only_and_never_as_an_entry() {
        let keyring = Keyring::new(1, &[5; 32]);
        let plain = b"a secret value, long enough to look for".to_vec();
        let w = write(&keyring, &plain);
        assert!(!w.value.windows(8).any(|x| x == b"a secret"));
        assert_eq!(open_queued(&keyring, "users", &w).expect("opens"), plain);
        for moved in [
            QueuedWrite { key: Bytes::from_static(b"users:2"), ..w.clone() },
            QueuedWrite { seq: 8, ..w.clone() },
            QueuedWrite { sealing: None, ..w.clone() },
        ] {
            assert!(open_queued(&keyring, "users", &moved).expect_err("moved").is_decode());
        }
        assert!(open_queued(&keyring, "orders", &w).is_err());
        // As a cache entry's payload (same key, cache and sealing): it does not open.
        let sealing = Sealing::parse(w.sealing.as_ref().expect("sealed")).expect("parses");
        let entry_aad = associated_data(1, Place { cache: "users", key: b"users:1" }, &[b"TIE1"]);
        assert!(keyring.open(&sealing, &entry_aad, &w.value).is_err());
        // Any flipped byte of the value: it does not open.
        for at in 0..w.value.len() {
            let mut v = w.value.to_vec();
            v[at] ^= 0x01;
            let bad = QueuedWrite { value: Bytes::from(v), ..w.clone() };
            assert!(open_queued(&keyring, "users", &bad).is_err(), "byte {at}");
        }
    }

    #[test]
    fn rotation_opens_older_records_and_an_unknown_key_is_named() {
        let old = Keyring::new(1, &[5; 32]);
        let w = write(&old, b"v1");
        let rotated = Keyring::new(2, &[6; 32]).with_old_key(1, &[5; 32]).expect("new id");
        assert_eq!(open_queued(&rotated, "users", &w).expect("opens"), b"v1");
        assert_eq!(write(&rotated, b"v2").key_id(), Some(2));
        let e = open_queued(&Keyring::new(2, &[6; 32]), "users", &w).expect_err("unknown key");
        assert!(e.to_string().contains("key 1"), "{e}");
    }
}
