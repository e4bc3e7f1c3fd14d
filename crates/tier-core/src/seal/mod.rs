//! Encryption of values at rest in byte tiers (feature `encryption`).
//!
//! A cache built with a [`Keyring`] seals every envelope it writes to a byte tier (disk,
//! Redis): the payload — serialized, then compressed — is encrypted with XChaCha20-Poly1305
//! under the keyring's current key and a fresh random nonce; the key id and the nonce travel in
//! clear in the envelope's sealing item. The associated data binds the key id, the cache's name,
//! the entry's key and the envelope's bytes in clear except its times, so an entry copied under
//! another key or into another cache's keyspace, or altered, does not open: it is a miss plus
//! `tier_decode_errors_total`, never a value. The times stay outside: backfill rewrites them in
//! place. The L1 holds decoded objects, as without a keyring.
//!
//! The cache's write-behind queue is sealed alike ([`seal_queued`], [`open_queued`]): a queued
//! origin write's value never sits on disk in clear.

mod aead;
mod envelope;
mod keyring;
mod queue;

pub use aead::{associated_data, Place, Sealing, NONCE_LEN, TAG_LEN};
pub use envelope::{decode_sealed, encode_sealed, open_envelope};
pub use keyring::{KeyId, Keyring, KeyringError, KEY_LEN};
pub use queue::{open_queued, seal_queued};
