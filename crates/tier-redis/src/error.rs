//! The crate's setup error, and how redis errors become [`TierError`]s.
//!
//! Every error of this crate is one line: redis-rs's own messages can span lines (a reply from a
//! server that is not Redis is quoted line by line), so they reach our errors as a
//! [`RedisCause`], which says the same on one line and keeps the original.

use std::fmt;

use tier_core::{TierError, TierErrorKind};

/// What can go wrong while configuring or connecting (builders, `connect`).
///
/// Errors of the running tier are [`TierError`]s (the hierarchy's currency); this type is only for
/// the set-up steps a service performs at start. Its `Display` is one line, with the cause's
/// own line after a colon; the cause is also [`source()`](std::error::Error::source). URLs in
/// it are redacted ([`redact_url`](crate::redact_url)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The configuration is not valid (no URL, empty stream name, zero timeout, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A URL could not be parsed.
    #[error("invalid Redis URL {url}: {source}")]
    Url {
        /// The URL as given, redacted.
        url: String,
        /// What redis-rs said.
        source: RedisCause,
    },
    /// The first connection could not be made (refused, timed out, authentication failed, not
    /// a Redis server).
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// What we tried to reach (the redacted URL, or `cluster of N node URLs`).
        target: String,
        /// What redis-rs said.
        source: RedisCause,
    },
    /// The backplane could not read its stream's head (where this instance starts reading)
    /// with a connection that is made.
    #[error("cannot read the backplane stream {stream:?}: {source}")]
    Stream {
        /// The stream's key.
        stream: String,
        /// What failed.
        source: TierError,
    },
}

/// A redis-rs error, shown on one line: line breaks and other control characters of its
/// message become spaces, and a message longer than 300 characters is cut. It ends the chain of
/// [`source()`](std::error::Error::source)s (redis-rs's own causes can span lines); the error
/// itself, with its kind and causes, is [`redis_error`](Self::redis_error).
#[derive(Debug, Clone)]
pub struct RedisCause {
    line: String,
    error: redis::RedisError,
}

/// The longest message a [`RedisCause`] shows (characters).
const MAX_CAUSE_CHARS: usize = 300;

impl RedisCause {
    /// Wrap `error`.
    pub fn new(error: redis::RedisError) -> Self {
        Self { line: one_line(&error.to_string(), MAX_CAUSE_CHARS), error }
    }

    /// The error redis-rs returned (for [`redis::RedisError::kind`] and its predicates).
    pub fn redis_error(&self) -> &redis::RedisError {
        &self.error
    }
}

impl From<redis::RedisError> for RedisCause {
    fn from(error: redis::RedisError) -> Self {
        Self::new(error)
    }
}

impl fmt::Display for RedisCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

impl std::error::Error for RedisCause {}

/// `text` on one line: every run of whitespace or control characters becomes one space, the
/// ends are trimmed, and at most `max` characters are kept (then `…`).
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 3));
    let mut gap = false;
    let mut kept = 0usize;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            gap = !out.is_empty();
            continue;
        }
        if kept >= max {
            out.push('…');
            return out;
        }
        if gap {
            out.push(' ');
            gap = false;
        }
        out.push(c);
        kept += 1;
    }
    out
}

/// Map a redis-rs error to the tier error kind the breaker understands.
///
/// - timeouts → [`TierErrorKind::Timeout`];
/// - I/O, dropped or refused connections, cluster down / master down / loading / read-only
///   (a failover), no connection to a node → [`TierErrorKind::Unavailable`];
/// - client-side misuse (bad arguments) → [`TierErrorKind::Rejected`];
/// - anything else (authentication, permissions, unexpected replies, OOM) →
///   [`TierErrorKind::Other`], which also counts against the breaker. A refusal by the user's
///   ACL (`NOPERM`) says so and points to [`crate::acl`].
pub(crate) fn tier_error(op: &str, err: redis::RedisError) -> TierError {
    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) {
        return TierError::with_source(
            TierErrorKind::Other,
            format!("redis {op}: refused by the Redis user's ACL (tier_redis::acl lists what this crate needs)"),
            RedisCause::new(err),
        );
    }
    use redis::{ErrorKind, ServerErrorKind};
    let kind = if err.is_timeout() {
        TierErrorKind::Timeout
    } else if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
    {
        TierErrorKind::Unavailable
    } else {
        match err.kind() {
            // redis-rs follows MOVED and ASK itself: one that surfaces means the slot's owner
            // could not be reached within its retries (a lost master), not a bad request.
            ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            ) => TierErrorKind::Unavailable,
            ErrorKind::Client | ErrorKind::InvalidClientConfig => TierErrorKind::Rejected,
            _ => TierErrorKind::Other,
        }
    };
    TierError::with_source(kind, format!("redis {op}"), RedisCause::new(err))
}

/// `e` refused by the user's ACL, said with what the tier needs (`needs`, e.g. its key
/// pattern); any other error as it is.
pub(crate) fn with_acl_needs(e: TierError, needs: impl FnOnce() -> String) -> TierError {
    let Some(cause) = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<RedisCause>())
    else {
        return e;
    };
    let err = cause.redis_error();
    // A command a script calls is refused with a plain error (Redis 7: "The user executing the
    // script can't run this command…", Valkey: "ACL failure in script: …").
    let in_script = err.detail().is_some_and(|d| {
        d.contains("user executing the script can't run this command")
            || d.contains("ACL failure in script")
    });
    if err.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) && !in_script {
        return e;
    }
    let op = e.message().split(':').next().unwrap_or("redis");
    TierError::with_source(
        e.kind(),
        format!("{op}: refused by the Redis user's ACL, which must allow {}", needs()),
        cause.clone(),
    )
}

/// Did the server answer that it does not know the command (`ERR unknown command ...`)?
pub(crate) fn is_unknown_command(e: &TierError) -> bool {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<RedisCause>()).is_some_and(|c| {
        let err = c.redis_error();
        err.code() == Some("ERR")
            && err.detail().is_some_and(|d| d.to_ascii_lowercase().contains("unknown command"))
    })
}

/// The error of an operation that did not finish within the connection's operation timeout.
pub(crate) fn timeout_error(op: &str, after: std::time::Duration) -> TierError {
    TierError::new(TierErrorKind::Timeout, format!("redis {op} took longer than {after:?}"))
}

/// A reply that is not what the command returns.
pub(crate) fn reply_error(what: &str, err: impl fmt::Display) -> TierError {
    TierError::new(
        TierErrorKind::Other,
        format!("{what} reply: {}", one_line(&err.to_string(), MAX_CAUSE_CHARS)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_one_line() {
        let multi = redis::RedisError::from((
            redis::ErrorKind::Parse,
            "Parse error at 1",
            "Unexpected `84`\r\nUnexpected `72`\n\t".to_string(),
        ));
        let cause = RedisCause::new(multi);
        assert_eq!(cause.to_string(), "Parse error at 1 - Parse: Unexpected `84` Unexpected `72`");
        assert_eq!(one_line(" a \u{7}\u{1b}b\n", 10), "a b");
        assert_eq!(one_line(&"x".repeat(400), 300).chars().count(), 301);
        let err = tier_error("get", redis::RedisError::from((redis::ErrorKind::Parse, "a\nb")));
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn kinds() {
        let io = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(tier_error("get", io).kind(), TierErrorKind::Unavailable);
        let to = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(tier_error("get", to).kind(), TierErrorKind::Timeout);
        let client = redis::RedisError::from((redis::ErrorKind::Client, "bad"));
        assert_eq!(tier_error("get", client).kind(), TierErrorKind::Rejected);
        assert!(timeout_error("get", std::time::Duration::from_millis(5)).is_timeout());
    }
}
