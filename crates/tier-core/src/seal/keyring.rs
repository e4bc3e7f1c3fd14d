//! The keyring: the keys a cache seals with (one current) and opens with (the current and
//! older ones), and the one text form keys are read from (a file, an environment variable).

use std::fmt;
use std::sync::Arc;

use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::{Key, XChaCha20Poly1305};
use zeroize::{Zeroize, Zeroizing};

/// The id of a key: written in clear into every entry sealed with it, so that a reader knows
/// which key opens it (and bound into the entry's associated data).
pub type KeyId = u32;

/// The length of a key in bytes (XChaCha20-Poly1305: 256 bits).
pub const KEY_LEN: usize = 32;

/// A keyring is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// Two keys with one id.
    #[error("key id {0} appears twice in the keyring")]
    DuplicateId(KeyId),
    /// A keyring in text form holds no key.
    #[error("the keyring holds no key")]
    Empty,
    /// An entry of a keyring in text form is malformed (the message never quotes key material).
    #[error("keyring entry {entry}: {reason}")]
    Malformed {
        /// The entry's position, from 1.
        entry: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// One key: its id and the cipher holding its material (zeroed on drop by the cipher).
struct Slot {
    id: KeyId,
    cipher: XChaCha20Poly1305,
}

/// The keys of a cache: one **current** key that every new entry is sealed with, and older
/// keys that only open entries sealed before a rotation (until those expire).
///
/// Key material is never logged and never shown: `Debug` lists the ids only, and the material
/// is zeroed when the last clone of the keyring is dropped (clones share one copy). The bytes a
/// constructor is handed are the caller's: zero them after (or pass a
/// [`Zeroizing`](zeroize::Zeroizing) buffer).
///
/// ```
/// use tier_core::seal::Keyring;
///
/// let old = [7u8; 32];
/// let new = [9u8; 32];
/// let keyring = Keyring::new(2, &new).with_old_key(1, &old)?;
/// assert_eq!(keyring.current_id(), 2);
/// assert_eq!(format!("{keyring:?}"), "Keyring { current: 2, ids: [2, 1] }");
/// # Ok::<(), tier_core::seal::KeyringError>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    /// The current key first, then the older ones in the order they were added.
    slots: Arc<[Slot]>,
}

impl Keyring {
    /// A keyring whose current key is `key`, with id `id`.
    pub fn new(id: KeyId, key: &[u8; KEY_LEN]) -> Self {
        Self { slots: Arc::from(vec![slot(id, key)]) }
    }

    /// This keyring with `key` as an older key: it opens entries sealed with `id`, and seals
    /// nothing. Fails when `id` is already in the keyring.
    pub fn with_old_key(self, id: KeyId, key: &[u8; KEY_LEN]) -> Result<Self, KeyringError> {
        if self.slots.iter().any(|s| s.id == id) {
            return Err(KeyringError::DuplicateId(id));
        }
        let mut slots: Vec<Slot> =
            self.slots.iter().map(|s| Slot { id: s.id, cipher: s.cipher.clone() }).collect();
        slots.push(slot(id, key));
        Ok(Self { slots: Arc::from(slots) })
    }

    /// A keyring from its text form: entries `ID:HEX` (a decimal id, a colon, the key as 64
    /// hexadecimal digits), separated by white space, commas or semicolons; `#` starts a
    /// comment to the end of the line. The **first entry is the current key**, the others are
    /// older keys.
    ///
    /// ```text
    /// # current
    /// 2:5b0c…(64 hex digits)
    /// # before the rotation of March
    /// 1:9f21…(64 hex digits)
    /// ```
    ///
    /// This is the form `tier disk get` / `tier redis get` read from a file or from the
    /// `TIER_KEYRING` environment variable. Errors name the entry and never quote its material.
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let mut keyring: Option<Keyring> = None;
        let entries = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or(""))
            .flat_map(|line| line.split(|c: char| c.is_whitespace() || c == ',' || c == ';'))
            .filter(|e| !e.is_empty());
        for (n, entry) in entries.enumerate() {
            let (id, key) = parse_entry(n + 1, entry)?;
            keyring = Some(match keyring {
                None => Keyring::new(id, &key),
                Some(k) => k.with_old_key(id, &key)?,
            });
        }
        keyring.ok_or(KeyringError::Empty)
    }

    /// The id of the current key (the one new entries are sealed with).
    pub fn current_id(&self) -> KeyId {
        self.current().id
    }

    /// Every key id, the current one first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.slots.iter().map(|s| s.id).collect()
    }

    /// The current key's id and cipher.
    pub(super) fn current_cipher(&self) -> (KeyId, &XChaCha20Poly1305) {
        let s = self.current();
        (s.id, &s.cipher)
    }

    /// The cipher of key `id`, when the keyring holds it.
    pub(super) fn cipher(&self, id: KeyId) -> Option<&XChaCha20Poly1305> {
        self.slots.iter().find(|s| s.id == id).map(|s| &s.cipher)
    }

    fn current(&self) -> &Slot {
        // Invariant: every constructor makes at least one slot (`new` one, `with_old_key` adds
        // to an existing keyring, `parse` fails on an empty text), and slots are never removed.
        &self.slots[0]
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current_id())
            .field("ids", &self.ids())
            .finish()
    }
}

fn slot(id: KeyId, key: &[u8; KEY_LEN]) -> Slot {
    let mut material = Key::from(*key);
    let cipher = XChaCha20Poly1305::new(&material);
    material.as_mut_slice().zeroize();
    Slot { id, cipher }
}

fn parse_entry(n: usize, entry: &str) -> Result<(KeyId, Zeroizing<[u8; KEY_LEN]>), KeyringError> {
    let malformed = |reason: String| KeyringError::Malformed { entry: n, reason };
    let Some((id, hex)) = entry.split_once(':') else {
        return Err(malformed("not ID:HEX (no colon)".into()));
    };
    let id: KeyId =
        id.parse().map_err(|_| malformed("the id is not a decimal number below 2^32".into()))?;
    if hex.len() != 2 * KEY_LEN {
        return Err(malformed(format!(
            "the key is {} characters, {} hexadecimal digits needed",
            hex.len(),
            2 * KEY_LEN
        )));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => key[i] = hi << 4 | lo,
            _ => return Err(malformed("the key holds a character that is not hexadecimal".into())),
        }
    }
    Ok((id, key))
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn parse_reads_current_first_and_old_keys_after() {
        let text = format!("# current\n2:{A}\n# old\n1:{}, 7:{A};", A.to_uppercase());
        let keyring = Keyring::parse(&text).expect("parses");
        assert_eq!(keyring.current_id(), 2);
        assert_eq!(keyring.ids(), vec![2, 1, 7]);
    }

    #[test]
    fn parse_errors_name_the_entry_and_never_the_material() {
        let secret = &A[..63];
        for (text, want) in [
            (String::new(), KeyringError::Empty),
            ("# nothing\n".to_string(), KeyringError::Empty),
            (format!("1:{A} 1:{A}"), KeyringError::DuplicateId(1)),
        ] {
            assert_eq!(Keyring::parse(&text).expect_err("refused"), want);
        }
        for text in [format!("1:{A} 2:{secret}"), format!("1:{A} 2{A}"), format!("x:{A}")] {
            let e = Keyring::parse(&text).expect_err("refused").to_string();
            assert!(!e.contains(secret) && !e.contains(&A[..16]), "{e}");
        }
        let bad = format!("1:{}zz", &A[..62]);
        assert!(matches!(Keyring::parse(&bad), Err(KeyringError::Malformed { entry: 1, .. })));
    }

    #[test]
    fn debug_shows_ids_only() {
        let keyring =
            Keyring::new(3, &[0xab; KEY_LEN]).with_old_key(1, &[0xcd; KEY_LEN]).expect("new id");
        let shown = format!("{keyring:?} {keyring:#?}");
        assert!(!shown.to_lowercase().contains("ab, ab") && !shown.contains("171"), "{shown}");
        assert_eq!(format!("{keyring:?}"), "Keyring { current: 3, ids: [3, 1] }");
        assert!(keyring.clone().with_old_key(3, &[0; KEY_LEN]).is_err());
    }
}
