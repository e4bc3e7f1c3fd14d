//! [`redact_url`]: the one way a URL is shown in an error, a log line, a `Debug` or a report.

/// Query parameters whose value is a secret (redis-rs takes the password of a `unix://` URL
/// from `pass`).
const SECRET_PARAMETERS: [&str; 2] = ["pass", "password"];

/// `url` without its credentials, for anything printed: the userinfo is replaced by `***`
/// whatever it contains (`/`, `@`, `:`, `?` or `#` in a password that is not percent-encoded
/// included: everything up to the last `@` goes), and the value of a `pass` or `password`
/// query parameter too. A URL without credentials is returned unchanged; so is text that is
/// no URL at all, unless it holds an `@`.
///
/// ```
/// use tier_redis::redact_url;
/// assert_eq!(redact_url("redis://user:s3cret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
/// assert_eq!(redact_url("redis://:pa/ss@w:rd@host/"), "redis://***@host/");
/// assert_eq!(redact_url("unix:///run/redis.sock?db=1&pass=s3cret"), "unix:///run/redis.sock?db=1&pass=***");
/// assert_eq!(redact_url("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
/// ```
pub fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(start);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    let rest = match rest.rfind('@') {
        Some(at) => {
            out.push_str("***");
            &rest[at..]
        }
        None => rest,
    };
    match rest.split_once('?') {
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(rest),
    }
    out
}

fn redact_query(query: &str) -> String {
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SECRET_PARAMETERS.iter().any(|s| name.eq_ignore_ascii_case(s)) => {
                format!("{name}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    let mut out = pairs.join("&");
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_goes_whatever_it_holds() {
        for (url, shown) in [
            ("redis://u:secret@h:1/0", "redis://***@h:1/0"),
            ("redis://:secret@h:1", "redis://***@h:1"),
            ("rediss://u:p@ss@h/", "rediss://***@h/"),
            ("redis://:pa/ss@h:1/", "redis://***@h:1/"),
            ("redis://:a:b/c@d?e#f@h:1/2", "redis://***@h:1/2"),
            ("redis://user@h/", "redis://***@h/"),
            ("http://user:PW@127.0.0.1:9/metrics", "http://***@127.0.0.1:9/metrics"),
            (":secret@h:1", "***@h:1"),
            ("redis://h:1/", "redis://h:1/"),
            ("nonsense", "nonsense"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secret_query_parameters_go_too() {
        assert_eq!(
            redact_url("unix:///tmp/r.sock?user=me&pass=s3cret&db=2"),
            "unix:///tmp/r.sock?user=me&pass=***&db=2"
        );
        assert_eq!(redact_url("redis://h/?PASSWORD=x#frag"), "redis://h/?PASSWORD=***#frag");
        assert_eq!(redact_url("redis://h/?protocol=resp3"), "redis://h/?protocol=resp3");
    }
}
