//! The extension block of an envelope (flag `FLAG_EXTENDED`): between the tags and the payload,
//! a `u16` length (of the items that follow, not counting itself), then items `u8 type, u16
//! length, bytes` (little endian). Types `0x00..=0x7F` are *critical*: a reader that does not
//! know one cannot read the entry (a `Decode` error). Types `0x80..=0xFF` are *optional*: a
//! reader that does not know one skips it. An item type appears at most once.
//!
//! | type | name | what |
//! |---|---|---|
//! | `0x01` | sealing | critical: what opens the encrypted payload (key id, nonce); with `FLAG_ENCRYPTED` |
//! | `0x80` | validator | optional: the origin's validator (ETag, Last-Modified, version), ≤ 1024 bytes |

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::TierError;

/// Item type: what opens an encrypted payload (critical; with `FLAG_ENCRYPTED`).
pub const ITEM_SEALING: u8 = 0x01;
/// Item type: the origin's validator — ETag, Last-Modified, a version (optional).
pub const ITEM_VALIDATOR: u8 = 0x80;
/// The longest validator in bytes.
pub const MAX_VALIDATOR_LEN: usize = 1024;

/// The items this version knows, as parsed from (or to be written to) an extension block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    pub sealing: Option<Bytes>,
    pub validator: Option<Bytes>,
}

impl Extensions {
    /// Nothing to write: the envelope needs no extension block.
    pub fn is_empty(&self) -> bool {
        self.sealing.is_none() && self.validator.is_none()
    }

    /// Bytes the block takes (its length field included).
    pub fn encoded_len(&self) -> usize {
        let item = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| 3 + b.len());
        2 + item(&self.sealing) + item(&self.validator)
    }

    /// Append the block to `out`; an item or a block over the limits is an error.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), String> {
        if let Some(v) = &self.validator {
            if v.len() > MAX_VALIDATOR_LEN {
                return Err(format!("validator of {} bytes, at most {MAX_VALIDATOR_LEN}", v.len()));
            }
        }
        let total = u16::try_from(self.encoded_len() - 2)
            .map_err(|_| "envelope extension block over 64 KiB".to_string())?;
        out.put_u16_le(total);
        for (kind, bytes) in [(ITEM_SEALING, &self.sealing), (ITEM_VALIDATOR, &self.validator)] {
            if let Some(b) = bytes {
                out.put_u8(kind);
                // Fits: the whole block's length fit a u16 above.
                out.put_u16_le(b.len() as u16);
                out.put_slice(b);
            }
        }
        Ok(())
    }

    /// Parse the block at the start of `bytes`; returns the items and the bytes it took.
    pub fn read(bytes: &[u8]) -> Result<(Self, usize), TierError> {
        let truncated = || TierError::decode("envelope truncated in its extension block");
        let total = bytes.get(..2).ok_or_else(truncated)?;
        let total = usize::from(u16::from_le_bytes([total[0], total[1]]));
        let mut items = bytes.get(2..2 + total).ok_or_else(truncated)?;
        let mut out = Self::default();
        while !items.is_empty() {
            let head = items.get(..3).ok_or_else(truncated)?;
            let (kind, len) = (head[0], usize::from(u16::from_le_bytes([head[1], head[2]])));
            let body = items.get(3..3 + len).ok_or_else(truncated)?;
            items = &items[3 + len..];
            let slot = match kind {
                ITEM_SEALING => &mut out.sealing,
                ITEM_VALIDATOR => {
                    if len > MAX_VALIDATOR_LEN {
                        return Err(TierError::decode(format!(
                            "envelope validator of {len} bytes, at most {MAX_VALIDATOR_LEN}"
                        )));
                    }
                    &mut out.validator
                }
                0x00..=0x7F => {
                    return Err(TierError::decode(format!(
                    "envelope has critical extension item {kind:#04x} this version does not know"
                )))
                }
                _ => continue,
            };
            if slot.is_some() {
                return Err(TierError::decode(format!(
                    "envelope repeats extension item {kind:#04x}"
                )));
            }
            *slot = Some(Bytes::copy_from_slice(body));
        }
        Ok((out, 2 + total))
    }
}
