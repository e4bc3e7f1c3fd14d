//! [`HttpCacheLayer`]: what the layer is configured with, and the [`tower::Layer`] that wraps a
//! service in an [`HttpCache`].

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tier_core::{Cache, CallOptions};

use crate::shared::Shared;

use crate::entry::HttpEntry;
use crate::policy::Rules;
use crate::service::HttpCache;
use crate::status::identifier;

/// The statuses stored by default: those RFC 9110 §15.1 calls heuristically cacheable, less
/// 206 (ranges are not handled), 308, 405, 414 and 501.
pub const DEFAULT_STATUSES: [u16; 7] = [200, 203, 204, 300, 301, 404, 410];

/// Caches the HTTP responses of the service it wraps through a [`Cache<HttpEntry>`].
///
/// An axum router with the layer, called twice without a server (the second answer comes from
/// the cache):
///
/// ```
/// use std::time::Duration;
/// use axum::{body::Body, routing::get, Router};
/// use http::Request;
/// use tier::{Cache, MemoryTier, TierPolicy};
/// use tier_http::{HttpCacheLayer, HttpEntry};
/// use tower::ServiceExt;
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let cache: Cache<HttpEntry> = Cache::builder("http")
///         .tier(MemoryTier::builder().max_bytes(64 << 20).build(), TierPolicy::fresh(Duration::from_secs(3600)))
///         .build()?;
///     let layer = HttpCacheLayer::new(cache)
///         .max_body_bytes(256 << 10)
///         .key_headers([http::HeaderName::from_static("x-tenant")])
///         .default_fresh(Duration::from_secs(30));
///     let app = Router::new()
///         .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
///         .layer(layer);
///     let get = || Request::get("/").header("host", "example.test").body(Body::empty());
///     let first = app.clone().oneshot(get()?).await?;
///     assert_eq!(first.headers()["cache-status"], "tier; fwd=miss; fwd-status=200; stored");
///     let second = app.oneshot(get()?).await?;
///     assert!(second.headers()["cache-status"].to_str()?.starts_with("tier; hit; ttl="));
///     assert_eq!(second.headers()["age"], "0");
///     Ok(())
/// }
/// ```
#[derive(Clone)]
#[must_use]
pub struct HttpCacheLayer {
    shared: Arc<Shared>,
}

impl HttpCacheLayer {
    /// A layer storing responses in `cache`.
    ///
    /// The cache's tier lifetimes bound how long a response is *kept*; how long it is *fresh*
    /// and servable stale comes from the response (`max-age`, `s-maxage`,
    /// `stale-while-revalidate`, `stale-if-error`), judged by the layer. So give the tiers a
    /// fresh lifetime at least as long as the longest a response should be kept, fresh and
    /// stale windows together (their own stale windows and fail-safe are not used).
    pub fn new(cache: Cache<HttpEntry>) -> Self {
        let reload = CallOptions::new().reload(true);
        Self {
            shared: Arc::new(Shared {
                cache,
                rules: Rules {
                    statuses: DEFAULT_STATUSES
                        .iter()
                        .filter_map(|&s| StatusCode::from_u16(s).ok())
                        .collect(),
                    default_fresh: None,
                },
                key_headers: Vec::new(),
                max_body_bytes: 1 << 20,
                name: "tier".into(),
                reload,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// The response statuses that may be stored. Default: [`DEFAULT_STATUSES`].
    pub fn statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.with(|s| s.rules.statuses = statuses.into_iter().collect())
    }

    /// Request headers that are part of every key (besides method, authority, path and query,
    /// and what a response's `Vary` names). Default: none.
    pub fn key_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.with(|s| s.key_headers = names.into_iter().collect())
    }

    /// Bodies up to this many bytes are read whole and stored; a larger one (announced by
    /// `Content-Length`, or found while reading) is passed through as it streams, not stored.
    /// Default: 1 MiB.
    pub fn max_body_bytes(self, bytes: usize) -> Self {
        self.with(|s| s.max_body_bytes = bytes)
    }

    /// The fresh lifetime of a storable response that has neither `max-age` nor `s-maxage`.
    /// Default: none — such a response is not stored (`Expires` is not read).
    pub fn default_fresh(self, fresh: Duration) -> Self {
        self.with(|s| s.rules.default_fresh = Some(fresh))
    }

    /// The cache's name in `Cache-Status` (written as a token when it is one, else as a
    /// quoted string). Default: `tier`.
    pub fn cache_status_name(self, name: &str) -> Self {
        self.with(|s| s.name = identifier(name))
    }
}

impl HttpCacheLayer {
    /// The cache key of the URL `req` asks for (method, authority, path and query, the keyed
    /// headers): `Cache::invalidate` of it purges the URL's stored response — or, for a URL
    /// whose responses vary, every variant of it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tier::{Cache, MemoryTier, TierPolicy};
    /// # use tier_http::{HttpCacheLayer, HttpEntry};
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cache: Cache<HttpEntry> = Cache::builder("http")
    /// #     .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
    /// #     .build()?;
    /// let layer = HttpCacheLayer::new(cache.clone());
    /// let purge = http::Request::get("http://example.test/users/42").body(())?;
    /// cache.invalidate(layer.key_for(&purge)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn key_for<B>(&self, req: &http::Request<B>) -> bytes::Bytes {
        self.shared.cache.key(crate::key::url_id(req, &self.shared.key_headers))
    }
}

impl<S> tower::Layer<S> for HttpCacheLayer {
    type Service = HttpCache<S>;

    fn layer(&self, inner: S) -> HttpCache<S> {
        HttpCache::new(inner, self.shared.clone())
    }
}
