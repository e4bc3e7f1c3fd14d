//! Redis: URL checks and connections shared by `demo` and `invalidate`, and `tier redis
//! stats|ls|get` (SCAN of every master, never KEYS; TTLs, sizes, decoded envelopes).

use std::time::Duration;

use redis::IntoConnectionInfo;
use tier_redis::RedisConnection;

use crate::error::{chain, CliError, Result};

/// How long connecting may take before the command gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Check that `url` is a Redis URL (without connecting).
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        return Err(format!("invalid Redis URL {url:?}: expected redis://host:port/"));
    }
    url.into_connection_info().map(|_| ()).map_err(|e| format!("invalid Redis URL {url:?}: {e}"))
}

/// Is the server at `url` a Redis Cluster node?
async fn is_cluster(url: &str) -> Result<bool> {
    let client = redis::Client::open(url)
        .map_err(|e| CliError::usage(format!("invalid Redis URL {url:?}: {e}")))?;
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| CliError::runtime(format!("cannot connect to Redis at {url}: timed out")))?
        .map_err(|e| {
            CliError::runtime(format!("cannot connect to Redis at {url}: {}", chain(&e)))
        })?;
    let info: String = tokio::time::timeout(
        CONNECT_TIMEOUT,
        redis::cmd("INFO").arg("cluster").query_async(&mut conn),
    )
    .await
    .map_err(|_| CliError::runtime(format!("Redis at {url}: INFO timed out")))?
    .map_err(|e| CliError::runtime(format!("Redis at {url}: INFO: {}", chain(&e))))?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

/// A [`RedisConnection`] to `urls`: several URLs are Cluster nodes; one URL is a standalone
/// server or, when it says so, a Cluster node.
pub async fn connection(urls: &[String]) -> Result<RedisConnection> {
    let first = urls.first().ok_or_else(|| CliError::usage("no Redis URL"))?;
    let cluster = urls.len() > 1 || is_cluster(first).await?;
    let builder = if cluster {
        RedisConnection::cluster(urls.iter().cloned())
    } else {
        RedisConnection::standalone(first.clone())
    };
    builder
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| CliError::runtime(format!("Redis: {}", chain(&e))))
}
