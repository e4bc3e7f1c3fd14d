//! The HTTP caching rules the layer keeps (RFC 9111 for a shared cache): which responses are
//! stored and for how long, and whether a stored one may answer a request — the one place
//! that decides either.

use std::time::Duration;

use http::header::SET_COOKIE;
use http::{HeaderMap, StatusCode};

use crate::directives::{RequestDirectives, ResponseDirectives};
use crate::entry::{CachedResponse, Lifetimes};
use crate::key::{self, Vary};

/// Why a response was not stored (the `detail` of its `Cache-Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    /// Its status is not one the layer stores.
    Status,
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: private`.
    Private,
    /// `Cache-Control: no-cache`.
    NoCache,
    /// It sets a cookie.
    SetCookie,
    /// `Vary: *`.
    VaryAny,
    /// No lifetime: no `max-age`/`s-maxage` and no default, or every window zero.
    NoLifetime,
    /// Its body is over the size limit (or has trailers): passed through as it streams.
    Body,
}

impl NotStored {
    pub fn detail(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::NoCache => "no-cache",
            Self::SetCookie => "set-cookie",
            Self::VaryAny => "vary-star",
            Self::NoLifetime => "no-lifetime",
            Self::Body => "body-too-large",
        }
    }
}

/// What the layer was configured to store.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub statuses: Vec<StatusCode>,
    /// The fresh lifetime of a storable response that gives none.
    pub default_fresh: Option<Duration>,
}

/// How long a response may be stored for, and the request headers it varies on; or why not.
pub(crate) fn storable(
    rules: &Rules,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(Lifetimes, Vary), NotStored> {
    if !rules.statuses.contains(&status) {
        return Err(NotStored::Status);
    }
    let cc = ResponseDirectives::parse(headers);
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if cc.no_cache {
        return Err(NotStored::NoCache);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    let vary = key::vary(headers);
    if vary == Vary::Any {
        return Err(NotStored::VaryAny);
    }
    let fresh = cc.fresh().or(rules.default_fresh).ok_or(NotStored::NoLifetime)?;
    let (while_revalidate, if_error) = if cc.must_revalidate {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (cc.stale_while_revalidate.unwrap_or_default(), cc.stale_if_error.unwrap_or_default())
    };
    let lifetimes = Lifetimes::new(fresh, while_revalidate, if_error);
    if lifetimes == Lifetimes::default() {
        return Err(NotStored::NoLifetime);
    }
    Ok((lifetimes, vary))
}

/// What a stored response is to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Answer with it.
    Fresh,
    /// Answer with it and refresh it in the background (`stale-while-revalidate`).
    WhileRevalidate,
    /// Ask the origin first (it may still answer an origin failure: [`servable_on_error`]).
    Stale,
}

/// Whether `stored` may answer a request with directives `req` at `now_ms`.
pub(crate) fn judge(stored: &CachedResponse, now_ms: u64, req: &RequestDirectives) -> Verdict {
    let age = stored.age(now_ms);
    let life = stored.lifetimes();
    let too_old_for_request = req.max_age.is_some_and(|max| age > max);
    if req.no_cache || too_old_for_request {
        return Verdict::Stale;
    }
    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    if age_ms < life.fresh_ms {
        Verdict::Fresh
    } else if age_ms < life.fresh_ms.saturating_add(life.while_revalidate_ms) {
        Verdict::WhileRevalidate
    } else {
        Verdict::Stale
    }
}

/// Whether `stored` may answer in place of an origin failure at `now_ms` (`stale-if-error`).
pub(crate) fn servable_on_error(stored: &CachedResponse, now_ms: u64) -> bool {
    let age_ms = u64::try_from(stored.age(now_ms).as_millis()).unwrap_or(u64::MAX);
    let life = stored.lifetimes();
    age_ms < life.fresh_ms.saturating_add(life.if_error_ms)
}

/// Whether an origin answer counts as a failure for `stale-if-error` (RFC 5861 §4: 500, 502,
/// 503, 504).
pub(crate) fn is_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Seconds of freshness left at `now_ms` (negative once stale): the `ttl` of `Cache-Status`.
pub(crate) fn ttl_seconds(stored: &CachedResponse, now_ms: u64) -> i64 {
    let age_ms = i64::try_from(stored.age(now_ms).as_millis()).unwrap_or(i64::MAX);
    let fresh_ms = i64::try_from(stored.lifetimes().fresh_ms).unwrap_or(i64::MAX);
    fresh_ms.saturating_sub(age_ms).div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderValue;

    fn rules() -> Rules {
        Rules { statuses: vec![StatusCode::OK, StatusCode::NOT_FOUND], default_fresh: None }
    }

    fn with_cc(cc: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static(cc));
        h
    }

    #[test]
    fn what_is_not_stored_and_why() {
        let r = rules();
        let ok = StatusCode::OK;
        assert_eq!(
            storable(&r, StatusCode::CREATED, &with_cc("max-age=9")).err(),
            Some(NotStored::Status)
        );
        assert_eq!(
            storable(&r, ok, &with_cc("no-store, max-age=9")).err(),
            Some(NotStored::NoStore)
        );
        assert_eq!(
            storable(&r, ok, &with_cc("private, max-age=9")).err(),
            Some(NotStored::Private)
        );
        assert_eq!(storable(&r, ok, &HeaderMap::new()).err(), Some(NotStored::NoLifetime));
        assert_eq!(storable(&r, ok, &with_cc("max-age=0")).err(), Some(NotStored::NoLifetime));
        let mut h = with_cc("max-age=9");
        h.insert(http::header::VARY, HeaderValue::from_static("*"));
        assert_eq!(storable(&r, ok, &h).err(), Some(NotStored::VaryAny));
        let defaulted = Rules { default_fresh: Some(Duration::from_secs(5)), ..rules() };
        assert!(storable(&defaulted, ok, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn windows_and_must_revalidate() {
        let (life, _) =
            storable(&rules(), StatusCode::OK, &with_cc("max-age=0, stale-if-error=60"))
                .expect("storable: a stale-if-error window");
        assert_eq!(life, Lifetimes::new(Duration::ZERO, Duration::ZERO, Duration::from_secs(60)));
        let (life, _) = storable(
            &rules(),
            StatusCode::OK,
            &with_cc("max-age=10, stale-while-revalidate=5, stale-if-error=60, must-revalidate"),
        )
        .expect("storable");
        assert_eq!(life, Lifetimes::new(Duration::from_secs(10), Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn verdicts_by_age_and_request() {
        let life = Lifetimes::new(
            Duration::from_secs(10),
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        let stored =
            CachedResponse::new(StatusCode::OK, &HeaderMap::new(), Bytes::new(), 1_000_000, life);
        let plain = RequestDirectives::default();
        let at = |s: u64| 1_000_000 + s * 1000;
        assert_eq!(judge(&stored, at(9), &plain), Verdict::Fresh);
        assert_eq!(ttl_seconds(&stored, at(9)), 1);
        assert_eq!(judge(&stored, at(12), &plain), Verdict::WhileRevalidate);
        assert_eq!(judge(&stored, at(15), &plain), Verdict::Stale);
        assert_eq!(ttl_seconds(&stored, at(15)), -5);
        assert!(servable_on_error(&stored, at(69)) && !servable_on_error(&stored, at(70)));
        let no_cache = RequestDirectives { no_cache: true, ..plain.clone() };
        assert_eq!(judge(&stored, at(1), &no_cache), Verdict::Stale);
        let max_age = RequestDirectives { max_age: Some(Duration::from_secs(2)), ..plain };
        assert_eq!(judge(&stored, at(3), &max_age), Verdict::Stale);
        assert_eq!(judge(&stored, at(1), &max_age), Verdict::Fresh);
    }
}
