//! The `Cache-Status` member the layer adds to each response (RFC 9211): `tier; hit; ttl=42`,
//! `tier; fwd=miss; stored`, `tier; fwd=stale; fwd-status=500; ttl=-3; detail=stale-if-error`.

use std::fmt::Write;

use http::HeaderValue;

/// The header's name.
pub(crate) const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// The parameters of one member, written in RFC 9211's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheStatus {
    pub hit: bool,
    /// Why the request went to the origin: `bypass`, `method`, `request`, `miss`, `vary-miss`,
    /// `stale`.
    pub fwd: Option<&'static str>,
    pub fwd_status: Option<u16>,
    /// Seconds of freshness left (negative: stale by that much).
    pub ttl: Option<i64>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> Self {
        Self { hit: true, ttl: Some(ttl), ..Self::default() }
    }

    pub fn fwd(reason: &'static str) -> Self {
        Self { fwd: Some(reason), ..Self::default() }
    }

    #[must_use]
    pub fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The member, after the cache's identifier (already an sf-token or sf-string).
    pub fn render(&self, cache: &str) -> HeaderValue {
        let mut out = String::from(cache);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(out, "; fwd={fwd}");
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(out, "; fwd-status={status}");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            let _ = write!(out, "; detail={detail}");
        }
        // Every part is printable ASCII (the identifier is made so by `identifier`).
        HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("tier"))
    }
}

/// `name` as an RFC 8941 token when it is one, else as a string (quotes and backslashes
/// escaped, characters outside printable ASCII left out).
pub(crate) fn identifier(name: &str) -> String {
    let first_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*');
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c);
    if first_ok && name.chars().all(token_char) {
        return name.to_owned();
    }
    let mut out = String::from("\"");
    for c in name.chars().filter(|c| matches!(c, ' '..='~')) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_in_rfc_order() {
        let s = CacheStatus { fwd_status: Some(500), ttl: Some(-3), ..CacheStatus::fwd("stale") }
            .detail("stale-if-error");
        assert_eq!(
            s.render("tier"),
            "tier; fwd=stale; fwd-status=500; ttl=-3; detail=stale-if-error"
        );
        let s = CacheStatus { stored: true, ..CacheStatus::fwd("miss") };
        assert_eq!(s.render("tier"), "tier; fwd=miss; stored");
        assert_eq!(CacheStatus::hit(7).render("tier"), "tier; hit; ttl=7");
    }

    #[test]
    fn identifiers_are_tokens_or_strings() {
        assert_eq!(identifier("edge-1"), "edge-1");
        assert_eq!(identifier("my cache \"eu\"\u{e9}"), "\"my cache \\\"eu\\\"\"");
        assert_eq!(identifier("1st"), "\"1st\"");
    }
}
