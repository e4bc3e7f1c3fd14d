//! What every clone of the service shares: the cache and the layer's configuration.

use http::HeaderName;
use tier_core::{Cache, CallOptions};

use crate::entry::HttpEntry;
use crate::policy::Rules;

/// The cache and what the layer was configured with.
#[derive(Clone)]
pub(crate) struct Shared {
    pub cache: Cache<HttpEntry>,
    pub rules: Rules,
    pub key_headers: Vec<HeaderName>,
    pub max_body_bytes: usize,
    /// The `Cache-Status` identifier, ready to print.
    pub name: String,
    /// A call that reads and writes no tier: a refresh's single flight (its value is written
    /// with `Cache::insert`).
    pub no_tiers: CallOptions,
}
