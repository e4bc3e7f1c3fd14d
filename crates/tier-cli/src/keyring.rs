//! The keyring `tier disk get` / `tier redis get` open sealed entries with: read from the file
//! `--keyring-file` names, or from the `TIER_KEYRING` environment variable — never from a
//! command-line value, which other users of the host can read in the process list.

use std::path::Path;

use tier_core::seal::Keyring;
use zeroize::Zeroizing;

use crate::cli::Unseal;
use crate::error::{CliError, Result};

/// The environment variable that may hold a keyring (`ID:HEX`, entries separated by commas).
pub const KEYRING_ENV: &str = "TIER_KEYRING";

/// The keyring the flags point at: the file when named, else the environment variable when
/// set, else none. A keyring that does not parse is a usage error naming where it came from
/// (never quoting it).
pub fn load(unseal: &Unseal) -> Result<Option<Keyring>> {
    if let Some(path) = &unseal.keyring_file {
        return from_file(path).map(Some);
    }
    match std::env::var(KEYRING_ENV) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            Keyring::parse(&text)
                .map(Some)
                .map_err(|e| CliError::usage(format!("{KEYRING_ENV}: {e}")))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(CliError::usage(format!("{KEYRING_ENV} is not UTF-8")))
        }
    }
}

fn from_file(path: &Path) -> Result<Keyring> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::runtime(format!("read keyring file {}: {e}", path.display())))?;
    let text = Zeroizing::new(text);
    Keyring::parse(&text)
        .map_err(|e| CliError::usage(format!("keyring file {}: {e}", path.display())))
}

/// The cache an entry of `key` belongs to: `--cache` when given, else the key's namespace (what
/// comes before its first `:`, as `Cache::key` builds keys).
pub fn cache_of<'a>(unseal: &'a Unseal, key: &'a str) -> &'a str {
    unseal.cache.as_deref().unwrap_or_else(|| key.split(':').next().unwrap_or(key))
}
