//! What `Cache-Control` says, of a request and of a response (RFC 9111 §5.2), as far as a shared
//! cache acts on it. Unknown directives are ignored; a directive given twice counts once (the
//! first value of a number wins, as RFC 9111 §4.2.1 asks for `max-age`); a number that does not
//! parse makes the directive absent, but for `max-age` and `s-maxage` of a response, where it
//! means "stale at once" (RFC 9111 §4.2.1: an invalid freshness lifetime is treated as stale).

use std::time::Duration;

use http::header::{CACHE_CONTROL, PRAGMA};
use http::HeaderMap;

/// One `name` or `name=value` of a `Cache-Control` header (the value unquoted).
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers.get_all(CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).flat_map(split_list).map(
        |item| match item.split_once('=') {
            Some((name, value)) => {
                (name.trim().to_ascii_lowercase(), Some(value.trim().trim_matches('"').to_owned()))
            }
            None => (item.trim().to_ascii_lowercase(), None),
        },
    )
}

/// The members of a comma-separated list, commas inside quoted strings kept.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// A delta-seconds value; `None` when it does not parse. Values beyond `u32` saturate there
/// (RFC 9111 §1.2.2 asks for 2^31 at least).
fn seconds(value: Option<&str>) -> Option<Duration> {
    let digits = value?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.parse::<u64>().unwrap_or(u64::MAX).min(u64::from(u32::MAX));
    Some(Duration::from_secs(n))
}

/// The directives of a request that the layer acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestDirectives {
    /// `no-store`: nothing of this exchange is stored (the layer forwards it untouched).
    pub no_store: bool,
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): a stored response is not
    /// used without asking the origin.
    pub no_cache: bool,
    /// `max-age`: a stored response older than this is not used without asking the origin.
    pub max_age: Option<Duration>,
}

impl RequestDirectives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut out = Self::default();
        for (name, value) in directives(headers) {
            match name.as_str() {
                "no-store" => out.no_store = true,
                "no-cache" => out.no_cache = true,
                "max-age" if out.max_age.is_none() => out.max_age = seconds(value.as_deref()),
                _ => {}
            }
        }
        let pragma_no_cache = || {
            headers.get_all(PRAGMA).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|s| split_list(s).iter().any(|d| d.eq_ignore_ascii_case("no-cache")))
            })
        };
        if !headers.contains_key(CACHE_CONTROL) && pragma_no_cache() {
            out.no_cache = true;
        }
        out
    }
}

/// The directives of a response that the layer acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ResponseDirectives {
    pub no_store: bool,
    /// `private` (with or without field names): not for a shared cache.
    pub private: bool,
    /// `no-cache` (with or without field names): the layer does not store it (a stored copy
    /// could only be used after asking the origin each time).
    pub no_cache: bool,
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub must_revalidate: bool,
    pub max_age: Option<Duration>,
    pub s_maxage: Option<Duration>,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
}

impl ResponseDirectives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut out = Self::default();
        let mut seen_max_age = false;
        let mut seen_s_maxage = false;
        for (name, value) in directives(headers) {
            let value = value.as_deref();
            match name.as_str() {
                "no-store" => out.no_store = true,
                "private" => out.private = true,
                "no-cache" => out.no_cache = true,
                "public" => out.public = true,
                "must-revalidate" | "proxy-revalidate" => out.must_revalidate = true,
                // An invalid lifetime counts as zero: stale at once.
                "max-age" if !seen_max_age => {
                    seen_max_age = true;
                    out.max_age = Some(seconds(value).unwrap_or(Duration::ZERO));
                }
                "s-maxage" if !seen_s_maxage => {
                    seen_s_maxage = true;
                    out.s_maxage = Some(seconds(value).unwrap_or(Duration::ZERO));
                }
                "stale-while-revalidate" if out.stale_while_revalidate.is_none() => {
                    out.stale_while_revalidate = seconds(value);
                }
                "stale-if-error" if out.stale_if_error.is_none() => {
                    out.stale_if_error = seconds(value);
                }
                _ => {}
            }
        }
        out
    }

    /// The freshness lifetime a shared cache gives the response: `s-maxage`, else `max-age`.
    pub fn fresh(&self) -> Option<Duration> {
        self.s_maxage.or(self.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, HeaderValue::from_str(v).expect("a valid header value"));
        }
        h
    }

    #[test]
    fn response_directives_across_lines_with_quotes_and_case() {
        let d = ResponseDirectives::parse(&headers(&[
            "Public, MAX-AGE=60, private=\"set-cookie, x\"",
            "stale-while-revalidate=5,stale-if-error=\"30\", s-maxage=10, max-age=99",
        ]));
        assert!(d.public && d.private && !d.no_store);
        assert_eq!(d.max_age, Some(Duration::from_secs(60)), "the first max-age wins");
        assert_eq!(d.fresh(), Some(Duration::from_secs(10)), "s-maxage before max-age");
        assert_eq!(d.stale_while_revalidate, Some(Duration::from_secs(5)));
        assert_eq!(d.stale_if_error, Some(Duration::from_secs(30)));
    }

    #[test]
    fn an_invalid_lifetime_is_stale_at_once_and_huge_ones_saturate() {
        let d = ResponseDirectives::parse(&headers(&["max-age=-1, stale-if-error=x"]));
        assert_eq!(d.fresh(), Some(Duration::ZERO));
        assert_eq!(d.stale_if_error, None);
        let d = ResponseDirectives::parse(&headers(&["max-age=99999999999999999999999"]));
        assert_eq!(d.fresh(), Some(Duration::from_secs(u64::from(u32::MAX))));
    }

    #[test]
    fn request_directives_and_pragma() {
        let r = RequestDirectives::parse(&headers(&["no-cache, max-age=3"]));
        assert!(r.no_cache && !r.no_store);
        assert_eq!(r.max_age, Some(Duration::from_secs(3)));
        let mut h = HeaderMap::new();
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(RequestDirectives::parse(&h).no_cache);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert!(!RequestDirectives::parse(&h).no_cache, "Cache-Control wins over Pragma");
    }
}
