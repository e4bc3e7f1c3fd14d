//! The crate's setup error, and how redis errors become [`TierError`]s.

use tier_core::{TierError, TierErrorKind};

/// What can go wrong while configuring or connecting (builders, `connect`).
///
/// Errors of the running tier are [`TierError`]s (the hierarchy's currency); this type is only for
/// the set-up steps a service performs at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The configuration is not valid (no URL, empty channel name, zero timeout, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A URL could not be parsed.
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL as given (password redacted).
        url: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
    /// The first connection could not be made (refused, timed out, authentication failed).
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// What we tried to reach (`redis://host:port/` or `cluster of N nodes`).
        target: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
    /// The backplane could not subscribe to its channel.
    #[error("cannot subscribe to channel {channel:?}: {source}")]
    Subscribe {
        /// The channel.
        channel: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
}

/// Strip the password from a URL for messages (`redis://user:secret@host` → `redis://user:***@host`).
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Map a redis-rs error to the tier error kind the breaker understands.
///
/// - timeouts → [`TierErrorKind::Timeout`];
/// - I/O, dropped or refused connections, cluster down / master down / loading / read-only
///   (a failover), no connection to a node → [`TierErrorKind::Unavailable`];
/// - client-side misuse (bad arguments) → [`TierErrorKind::Rejected`];
/// - anything else (authentication, permissions, unexpected replies, OOM) →
///   [`TierErrorKind::Other`], which also counts against the breaker.
pub(crate) fn tier_error(op: &str, err: redis::RedisError) -> TierError {
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
    TierError::with_source(kind, format!("redis {op}"), err)
}

/// The error of an operation that did not finish within the connection's operation timeout.
pub(crate) fn timeout_error(op: &str, after: std::time::Duration) -> TierError {
    TierError::new(TierErrorKind::Timeout, format!("redis {op} took longer than {after:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1/"), "redis://h:1/");
        assert_eq!(redact("rediss://u:p@ss@h/"), "rediss://u:***@h/");
        assert_eq!(redact("nonsense"), "nonsense");
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
