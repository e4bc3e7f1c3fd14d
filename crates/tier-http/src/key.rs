//! The cache ids of a request: the URL's (method, authority, path and query, the headers the
//! layer was told to key on) and, when its responses vary, the variant's (the URL's id plus the
//! values of the request headers named by `Vary`). The cache's `Cache::key` turns an id into a
//! key of its namespace (long ids are hashed there).

use http::header::{HeaderName, HOST, VARY};
use http::{HeaderMap, Request};

use crate::entry::Variants;

/// The URL's id: `METHOD authority path?query`, then `\n name: value` for each keyed header
/// present (values of a repeated header joined by `,`).
pub(crate) fn url_id<B>(req: &Request<B>, key_headers: &[HeaderName]) -> Vec<u8> {
    let uri = req.uri();
    let authority = uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers().get(HOST).map(|h| h.as_bytes()))
        .unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut id = Vec::with_capacity(req.method().as_str().len() + authority.len() + path.len() + 2);
    id.extend_from_slice(req.method().as_str().as_bytes());
    id.push(b' ');
    id.extend_from_slice(authority);
    id.push(b' ');
    id.extend_from_slice(path.as_bytes());
    for name in key_headers {
        append_header(&mut id, req.headers(), name.as_str());
    }
    id
}

/// The variant's id: the URL's, `\n\0vary `, the variants' epoch, then each named header as in
/// [`url_id`] (a header the request lacks is keyed as absent, so "absent" and "empty" differ).
pub(crate) fn variant_id(url_id: &[u8], headers: &HeaderMap, variants: &Variants) -> Vec<u8> {
    let mut id = url_id.to_vec();
    id.extend_from_slice(b"\n\0vary ");
    id.extend_from_slice(variants.epoch().to_string().as_bytes());
    for name in variants.names() {
        append_header(&mut id, headers, name);
    }
    id
}

fn append_header(id: &mut Vec<u8>, headers: &HeaderMap, name: &str) {
    let mut values = headers.get_all(name).iter().peekable();
    id.push(b'\n');
    id.extend_from_slice(name.as_bytes());
    if values.peek().is_none() {
        return;
    }
    id.extend_from_slice(b": ");
    for (i, value) in values.enumerate() {
        if i > 0 {
            id.push(b',');
        }
        id.extend_from_slice(value.as_bytes());
    }
}

/// What a response's `Vary` says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Vary {
    /// No `Vary` (or only empty ones).
    None,
    /// `Vary: *`: it varies on more than request headers; never reused.
    Any,
    /// The request header names (lower-case).
    Names(Vec<String>),
}

pub(crate) fn vary(headers: &HeaderMap) -> Vary {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let Ok(value) = value.to_str() else { return Vary::Any };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Vary::Any;
            }
            names.push(name.to_ascii_lowercase());
        }
    }
    if names.is_empty() {
        Vary::None
    } else {
        names.sort();
        names.dedup();
        Vary::Names(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn url_id_has_method_authority_path_query_and_keyed_headers() {
        let req = Request::get("/a?b=1")
            .header("host", "example.test")
            .header("x-tenant", "t1")
            .header("x-tenant", "t2")
            .body(())
            .expect("a valid request");
        let id =
            url_id(&req, &[HeaderName::from_static("x-tenant"), HeaderName::from_static("x-no")]);
        assert_eq!(id, b"GET example.test /a?b=1\nx-tenant: t1,t2\nx-no");
    }

    #[test]
    fn variants_differ_by_value_and_by_absence() {
        let mut h = HeaderMap::new();
        let names = Variants::new(vec!["accept-language".to_owned()], 7);
        let absent = variant_id(b"u", &h, &names);
        h.insert("accept-language", HeaderValue::from_static(""));
        let empty = variant_id(b"u", &h, &names);
        h.insert("accept-language", HeaderValue::from_static("de"));
        let de = variant_id(b"u", &h, &names);
        assert!(absent != empty && empty != de && absent != de);
        let later = Variants::new(vec!["accept-language".to_owned()], 8);
        assert_ne!(variant_id(b"u", &h, &later), de, "another epoch, another key");
    }

    #[test]
    fn vary_names_star_and_none() {
        let mut h = HeaderMap::new();
        assert_eq!(vary(&h), Vary::None);
        h.append(VARY, HeaderValue::from_static("Accept-Encoding, x-b"));
        h.append(VARY, HeaderValue::from_static("accept-encoding"));
        assert_eq!(vary(&h), Vary::Names(vec!["accept-encoding".into(), "x-b".into()]));
        h.append(VARY, HeaderValue::from_static("*"));
        assert_eq!(vary(&h), Vary::Any);
    }
}
