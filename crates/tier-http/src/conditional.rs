//! Conditional requests (RFC 9110 §13): the validators a client sends are kept from the requests
//! the layer sends for the cache (their answer is stored and shared, so it must be whole, not a
//! `304` meant for one client), and the layer answers `If-None-Match` itself: a `200` whose
//! `ETag` matches becomes a `304 Not Modified`. `If-Modified-Since` is only kept from the
//! origin (dates are not compared: the client gets the whole response).

use http::header::{CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;

use crate::body::CacheBody;

/// The validators of a request, taken out of it.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    if_none_match: Vec<HeaderValue>,
}

impl Conditions {
    /// Take the validators out of `headers`.
    pub fn take(headers: &mut HeaderMap) -> Self {
        headers.remove(IF_MODIFIED_SINCE);
        let if_none_match = match headers.entry(IF_NONE_MATCH) {
            http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
            http::header::Entry::Vacant(_) => Vec::new(),
        };
        Self { if_none_match }
    }

    /// `response`, or a `304` in its place when it is a `200` whose `ETag` the request named.
    pub fn apply<B: Body>(&self, response: Response<CacheBody<B>>) -> Response<CacheBody<B>> {
        if response.status() != StatusCode::OK || !self.matches(response.headers().get(ETAG)) {
            return response;
        }
        let (mut parts, _) = response.into_parts();
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(CONTENT_LENGTH);
        Response::from_parts(parts, CacheBody::full(bytes::Bytes::new()))
    }

    /// Whether `If-None-Match` names `etag` (weak comparison) or is `*`.
    fn matches(&self, etag: Option<&HeaderValue>) -> bool {
        let Some(etag) = etag.and_then(|e| e.to_str().ok()) else { return false };
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
        let etag = opaque(etag);
        self.if_none_match
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim() == "*" || opaque(tag) == etag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(
        status: StatusCode,
        etag: &'static str,
    ) -> Response<CacheBody<http_body_util::Empty<bytes::Bytes>>> {
        let mut r = Response::new(CacheBody::full(bytes::Bytes::from_static(b"body")));
        *r.status_mut() = status;
        r.headers_mut().insert(ETAG, HeaderValue::from_static(etag));
        r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("4"));
        r
    }

    fn conditions(values: &[&'static str]) -> Conditions {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(IF_NONE_MATCH, HeaderValue::from_static(v));
        }
        h.insert(IF_MODIFIED_SINCE, HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"));
        let c = Conditions::take(&mut h);
        assert!(h.is_empty(), "the validators are taken out of the request");
        c
    }

    #[test]
    fn a_matching_etag_is_not_modified_weakly_compared() {
        let c = conditions(&["\"a\", W/\"b\""]);
        let r = c.apply(response(StatusCode::OK, "\"b\""));
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(r.headers().get(CONTENT_LENGTH).is_none() && r.headers().get(ETAG).is_some());
        assert!(r.body().is_end_stream());
        assert_eq!(c.apply(response(StatusCode::OK, "\"c\"")).status(), StatusCode::OK);
        assert_eq!(
            c.apply(response(StatusCode::NOT_FOUND, "\"b\"")).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            conditions(&["*"]).apply(response(StatusCode::OK, "\"x\"")).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            conditions(&[]).apply(response(StatusCode::OK, "\"x\"")).status(),
            StatusCode::OK
        );
    }
}
