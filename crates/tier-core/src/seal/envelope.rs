//! Sealed envelopes: the envelope of a value with its payload encrypted (flag
//! `FLAG_ENCRYPTED`, extension item `0x01` = [`Sealing`]), and the value of one.
//!
//! The associated data is the scheme, the key id, the entry's place (cache, key) and the
//! envelope's bytes in clear **except the times** (`fresh_until`, `stale_until`: offsets
//! 16..32, which backfill rewrites in place): magic, flags, format byte, tag count,
//! `created_at`, load cost, payload length, the tags and the extension block (with the
//! sealing). Any other byte altered, or the entry read under another key or cache, and it
//! does not open.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::aead::{associated_data, Place, Sealing, TAG_LEN};
use super::keyring::Keyring;
use crate::envelope::{
    assemble, decode_meta, decode_payload, payload_of, Codec, Meta, Payload, FLAG_ENCRYPTED,
    HEADER_LEN,
};
use crate::error::TierError;

/// The bytes of the times, outside the associated data.
const TIMES: std::ops::Range<usize> = 16..32;

/// The associated data of the envelope `bytes` whose payload starts at `payload_at`.
fn aad_of(bytes: &[u8], payload_at: usize, key_id: u32, place: Place<'_>) -> Vec<u8> {
    associated_data(key_id, place, &[&bytes[..TIMES.start], &bytes[TIMES.end..payload_at]])
}

/// The envelope of `value` (a negative entry when `None` or `meta.negative`) with `meta`,
/// serialized and compressed by `codec`, then sealed under `keyring`'s current key for
/// `place`.
pub fn encode_sealed<V: Serialize>(
    codec: &Codec,
    keyring: &Keyring,
    place: Place<'_>,
    meta: &Meta,
    value: Option<&V>,
) -> Result<Bytes, String> {
    let Payload { serializer, compression, bytes: mut plain } =
        codec.serialize(value.filter(|_| !meta.negative))?;
    let sealing = keyring.fresh_sealing()?;
    let meta = Meta { sealing: Some(Bytes::copy_from_slice(&sealing.to_bytes())), ..meta.clone() };
    // The envelope is assembled around a payload of the ciphertext's length (the tag's place
    // zeroed), so that the associated data holds the final header; then sealed in place.
    let plain_len = plain.len();
    plain.resize(plain_len + TAG_LEN, 0);
    let assembled = assemble(&meta, &Payload { serializer, compression, bytes: &plain[..] })?;
    drop(plain);
    let mut out = Vec::from(assembled);
    let payload_at = out.len() - plain_len - TAG_LEN;
    let aad = aad_of(&out, payload_at, sealing.key_id, place);
    let tag =
        keyring.seal_detached(&sealing, &aad, &mut out[payload_at..payload_at + plain_len])?;
    out[payload_at + plain_len..].copy_from_slice(&tag);
    Ok(Bytes::from(out))
}

/// The value of the sealed envelope `bytes` for `place` (`None`: a negative entry). An
/// envelope in clear, one sealed with a key `keyring` lacks, or one that does not
/// authenticate is a [`Decode`](crate::TierErrorKind::Decode) error.
pub fn decode_sealed<V: DeserializeOwned>(
    bytes: &[u8],
    keyring: &Keyring,
    place: Place<'_>,
) -> Result<Option<V>, TierError> {
    let (meta, plain, at) = open_envelope(bytes, keyring, place)?;
    if meta.negative {
        return Ok(None);
    }
    let payload = payload_of(bytes, at)?;
    decode_payload(&Payload { bytes: &plain[..], ..payload }).map(Some)
}

/// Open the sealed envelope `bytes` for `place`: its meta, its payload in clear (still
/// compressed as the format byte says) and the offset of the sealed payload in `bytes`.
pub fn open_envelope(
    bytes: &[u8],
    keyring: &Keyring,
    place: Place<'_>,
) -> Result<(Meta, Vec<u8>, usize), TierError> {
    let (meta, at) = decode_meta(bytes)?;
    let Some(sealing) = &meta.sealing else {
        return Err(TierError::decode("entry in clear, the cache seals its entries"));
    };
    debug_assert!(bytes[4] & FLAG_ENCRYPTED != 0 && at >= HEADER_LEN);
    let sealing = Sealing::parse(sealing)?;
    let aad = aad_of(bytes, at, sealing.key_id, place);
    let plain = keyring.open(&sealing, &aad, &bytes[at..])?;
    Ok((meta, plain, at))
}
