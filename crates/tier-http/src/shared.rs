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
    /// A call that loads whatever the tiers hold (`CallOptions::reload`): a refresh's single
    /// flight, whose write yields to a purge of the key made while the origin answered.
    pub reload: CallOptions,
}
