//! What the layer keeps in its [`Cache`](tier_core::Cache): a response (status, headers, body,
//! the instant it was generated and its lifetimes), or — under a URL whose responses vary — the
//! names of the request headers they vary on.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

/// A value of the layer's cache: build the cache as `Cache<HttpEntry>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HttpEntry {
    /// A stored response.
    Response(CachedResponse),
    /// The URL's responses vary on these request headers (the response's `Vary`): each variant
    /// is stored under a key of its own that includes their values.
    Variants(Variants),
}

/// The request headers a URL's responses vary on (lower-case, sorted, each once), and the
/// epoch of its variants: an id new with each such entry, part of every variant's key, so that
/// when the URL's entry goes (an invalidation, its lifetime, a `Vary` that changed) the
/// variants stored under the old one are never found again (they age out of the tiers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variants {
    names: Vec<String>,
    epoch: u64,
}

impl Variants {
    /// The names, as parsed from `Vary` values (`*` is not a name: such a response is not
    /// stored at all), with the epoch `epoch` ([`fresh_epoch`] for a new entry).
    pub(crate) fn new(mut names: Vec<String>, epoch: u64) -> Self {
        names.sort();
        names.dedup();
        Self { names, epoch }
    }

    /// The header names, lower-case and sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The epoch of the variants: an id made with this entry, found in its variants' keys.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// A new epoch for a URL's variants: never one made before, by this process or (but for a
/// 2^-64 chance) by another — a process-wide counter hashed with SipHash keys drawn once per
/// process. It was the instant the entry was made, on the coarse clock: a purge of the URL and
/// its reload within one tick made the same epoch again, and the purged variant, still stored
/// under it, was served again.
pub(crate) fn fresh_epoch() -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static MADE: AtomicU64 = AtomicU64::new(0);
    KEYS.get_or_init(RandomState::new).hash_one(MADE.fetch_add(1, Ordering::Relaxed))
}

/// How long a stored response is fresh and, after that, servable stale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lifetimes {
    pub fresh_ms: u64,
    /// `stale-while-revalidate`: served stale while one background request refreshes it.
    pub while_revalidate_ms: u64,
    /// `stale-if-error`: served stale when the origin fails (an error or a 5xx answer).
    pub if_error_ms: u64,
}

impl Lifetimes {
    pub fn new(fresh: Duration, while_revalidate: Duration, if_error: Duration) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            fresh_ms: ms(fresh),
            while_revalidate_ms: ms(while_revalidate),
            if_error_ms: ms(if_error),
        }
    }
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedResponse {
    status: u16,
    /// End-to-end headers as the origin sent them (hop-by-hop ones, `Age` and `Cache-Status`
    /// left out), in order.
    headers: Vec<(String, Bytes)>,
    body: Bytes,
    /// When the origin generated it (Unix ms): received, less the `Age` it arrived with.
    generated_at_ms: u64,
    lifetimes: Lifetimes,
}

/// Headers that describe one connection, not the response (RFC 9110 §7.6.1), and the two the
/// layer writes itself.
const NOT_STORED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "age",
    "cache-status",
];

impl CachedResponse {
    pub(crate) fn new(
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        generated_at_ms: u64,
        lifetimes: Lifetimes,
    ) -> Self {
        let headers = headers
            .iter()
            .filter(|(name, _)| !NOT_STORED.contains(&name.as_str()))
            .map(|(name, value)| {
                (name.as_str().to_owned(), Bytes::copy_from_slice(value.as_bytes()))
            })
            .collect();
        Self { status: status.as_u16(), headers, body, generated_at_ms, lifetimes }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The stored headers (names lower-case), in the origin's order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_ref()))
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Its age at `now_ms` (Unix ms): how long ago the origin generated it.
    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.generated_at_ms))
    }

    pub(crate) fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// The stored status and headers as an `http` response head. Stored bytes that are no
    /// longer a valid name or value (a cache shared with another program) are left out.
    pub(crate) fn head(&self) -> (StatusCode, HeaderMap) {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 2);
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) =
                (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value))
            {
                headers.append(n, v);
            }
        }
        (status, headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_age_and_cache_status_are_not_stored() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("age", HeaderValue::from_static("3"));
        h.insert("cache-status", HeaderValue::from_static("up; hit"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let r = CachedResponse::new(StatusCode::OK, &h, Bytes::new(), 0, Lifetimes::default());
        let names: Vec<_> = r.headers().map(|(n, v)| (n, v.to_vec())).collect();
        assert_eq!(
            names,
            [
                ("content-type", b"text/plain".to_vec()),
                ("x-a", b"1".to_vec()),
                ("x-a", b"2".to_vec())
            ]
        );
        let (status, head) = r.head();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(head.get_all("x-a").iter().count(), 2);
    }
}
