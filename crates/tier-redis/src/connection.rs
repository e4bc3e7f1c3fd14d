//! [`RedisConnection`]: one handle to a standalone server or a Redis Cluster, shared by the tier,
//! the generations, the lock and the backplane.
//!
//! Standalone goes through redis-rs's `ConnectionManager` (one multiplexed connection, reconnected
//! automatically); Cluster through the cluster-async client (a multiplexed connection per node,
//! slot map refreshed on `MOVED`). Every operation is bounded by the *operation timeout*
//! (connect timeout + response timeout), so a call never hangs on a reconnect.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use tier_core::TierError;

use crate::error::{redact, tier_error, timeout_error, SetupError};

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default response timeout.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
enum Target {
    Standalone(String),
    Cluster(Vec<String>),
}

/// Builds a [`RedisConnection`]. Obtained from [`RedisConnection::standalone`] or
/// [`RedisConnection::cluster`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisConnectionBuilder {
    target: Target,
    connect_timeout: Duration,
    response_timeout: Duration,
    reconnect_retries: usize,
}

impl RedisConnectionBuilder {
    /// How long one connection attempt may take. Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server may take to answer one command. Default: 500 ms.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many times a lost connection is retried (with exponential backoff from 50 ms up to
    /// 500 ms) before the waiting commands fail; the next command starts a new attempt.
    /// Default: 2.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// Connect. Fails when a URL is invalid or the server (for Cluster: the cluster) cannot be
    /// reached within the connect timeout.
    pub async fn connect(self) -> Result<RedisConnection, SetupError> {
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(SetupError::Config("timeouts must be positive".into()));
        }
        let op_timeout = self.connect_timeout + self.response_timeout;
        match &self.target {
            Target::Standalone(url) => {
                let client = open_client(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(self.reconnect_retries)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                let target = redact(url);
                let connecting = ConnectionManager::new_with_config(client.clone(), config);
                let manager = tokio::time::timeout(op_timeout, connecting)
                    .await
                    .map_err(|_| connect_timed_out(&target, op_timeout))?
                    .map_err(|source| SetupError::Connect { target, source })?;
                Ok(RedisConnection {
                    inner: Arc::new(Inner {
                        conn: Conn::Standalone(manager),
                        nodes: vec![client],
                        op_timeout,
                    }),
                })
            }
            Target::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(SetupError::Config("a cluster needs at least one node URL".into()));
                }
                let mut infos = Vec::with_capacity(urls.len());
                let mut nodes = Vec::with_capacity(urls.len());
                for url in urls {
                    let info = url
                        .as_str()
                        .into_connection_info()
                        .map_err(|source| SetupError::Url { url: redact(url), source })?;
                    nodes.push(open_client(url)?);
                    infos.push(info);
                }
                let client = ClusterClientBuilder::new(infos)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .retries(u32::try_from(self.reconnect_retries).unwrap_or(u32::MAX))
                    .min_retry_wait(50)
                    .max_retry_wait(500)
                    .build()
                    .map_err(|source| SetupError::Url { url: redact(&urls[0]), source })?;
                let target = format!("cluster of {} node URLs", urls.len());
                let conn = tokio::time::timeout(op_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| connect_timed_out(&target, op_timeout))?
                    .map_err(|source| SetupError::Connect { target, source })?;
                Ok(RedisConnection {
                    inner: Arc::new(Inner { conn: Conn::Cluster(conn), nodes, op_timeout }),
                })
            }
        }
    }
}

fn short_reply(got: usize, want: usize) -> TierError {
    TierError::new(
        tier_core::TierErrorKind::Other,
        format!("MGET answered {got} values for {want} keys"),
    )
}

fn open_client(url: &str) -> Result<redis::Client, SetupError> {
    redis::Client::open(url).map_err(|source| SetupError::Url { url: redact(url), source })
}

fn connect_timed_out(target: &str, after: Duration) -> SetupError {
    SetupError::Connect {
        target: target.to_string(),
        source: redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {after:?}"),
        )),
    }
}

/// A connection to a standalone Redis or a Redis Cluster. Cheap to clone (an `Arc`); clones share
/// the underlying connections.
///
/// URLs are redis-rs URLs: `redis://[user][:password@]host[:port][/db]`, `rediss://` for TLS
/// (cargo feature `tls`).
///
/// ```no_run
/// # async fn demo() -> Result<(), tier_redis::SetupError> {
/// use std::time::Duration;
/// use tier_redis::RedisConnection;
/// let standalone = RedisConnection::standalone("redis://:secret@127.0.0.1:6379/")
///     .connect_timeout(Duration::from_millis(500))
///     .connect()
///     .await?;
/// let cluster = RedisConnection::cluster(["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"])
///     .connect()
///     .await?;
/// assert!(cluster.is_cluster() && !standalone.is_cluster());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    /// One client per configured node URL: the backplane's dedicated pub/sub connections.
    nodes: Vec<redis::Client>,
    op_timeout: Duration,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("cluster", &self.is_cluster())
            .field("nodes", &self.inner.nodes.len())
            .field("op_timeout", &self.inner.op_timeout)
            .finish()
    }
}

impl RedisConnection {
    /// A standalone server at `url`.
    pub fn standalone(url: impl Into<String>) -> RedisConnectionBuilder {
        RedisConnectionBuilder::new(Target::Standalone(url.into()))
    }

    /// A Redis Cluster reached through any of `urls` (the rest of the topology is discovered).
    pub fn cluster<I, S>(urls: I) -> RedisConnectionBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisConnectionBuilder::new(Target::Cluster(urls.into_iter().map(Into::into).collect()))
    }

    /// Is this a Redis Cluster?
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.conn, Conn::Cluster(_))
    }

    /// The bound of every operation: connect timeout + response timeout.
    pub fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    /// Clients of the configured node URLs (for dedicated pub/sub connections).
    pub(crate) fn node_clients(&self) -> &[redis::Client] {
        &self.inner.nodes
    }

    /// A handle for one operation (clones of the multiplexed connection).
    pub(crate) fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// Run `fut` under the operation timeout, mapping errors.
    pub(crate) async fn bounded<T>(
        &self,
        op: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TierError> {
        match tokio::time::timeout(self.inner.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(tier_error(op, e)),
            Err(_) => Err(timeout_error(op, self.inner.op_timeout)),
        }
    }

    /// Run one command.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        op: &str,
        cmd: &Cmd,
    ) -> Result<T, TierError> {
        let mut conn = self.conn();
        self.bounded(op, cmd.query_async(&mut conn)).await
    }

    /// Run a pipeline (standalone: any keys; Cluster: keys of one slot).
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        op: &str,
        pipe: &Pipeline,
    ) -> Result<T, TierError> {
        let mut conn = self.conn();
        self.bounded(op, pipe.query_async(&mut conn)).await
    }

    /// `MGET` of `keys`, in order: one command on a standalone server, one per hash slot (sent
    /// concurrently) on a Cluster.
    pub(crate) async fn mget<T>(&self, op: &str, keys: &[Vec<u8>]) -> Result<Vec<T>, TierError>
    where
        T: redis::FromRedisValue + Default + Clone,
    {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<T> = if self.is_cluster() {
            let mut by_slot: std::collections::HashMap<u16, Vec<usize>> =
                std::collections::HashMap::new();
            for (i, k) in keys.iter().enumerate() {
                by_slot.entry(slot(k)).or_default().push(i);
            }
            let replies = futures::future::try_join_all(by_slot.into_values().map(|idx| {
                let mut cmd = redis::cmd("MGET");
                for &i in &idx {
                    cmd.arg(&keys[i]);
                }
                async move {
                    let got: Vec<T> = self.query(op, &cmd).await?;
                    if got.len() != idx.len() {
                        return Err(short_reply(got.len(), idx.len()));
                    }
                    Ok((idx, got))
                }
            }))
            .await?;
            let mut values = vec![T::default(); keys.len()];
            for (idx, got) in replies {
                for (i, v) in idx.into_iter().zip(got) {
                    values[i] = v;
                }
            }
            values
        } else {
            let mut cmd = redis::cmd("MGET");
            for k in keys {
                cmd.arg(k);
            }
            self.query(op, &cmd).await?
        };
        if values.len() != keys.len() {
            return Err(short_reply(values.len(), keys.len()));
        }
        Ok(values)
    }

    /// The masters of the cluster as `(host, port)`; empty for a standalone server.
    pub(crate) async fn masters(&self) -> Result<Vec<(String, u16)>, TierError> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let slots: Value = self.query("cluster slots", redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let mut masters: Vec<(String, u16)> = Vec::new();
        if let Value::Array(ranges) = slots {
            for range in ranges {
                let Value::Array(parts) = range else { continue };
                let Some(Value::Array(master)) = parts.get(2) else { continue };
                let host = match master.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::SimpleString(s)) => s.clone(),
                    _ => continue,
                };
                let Some(Value::Int(port)) = master.get(1) else { continue };
                let Ok(port) = u16::try_from(*port) else { continue };
                if !masters.iter().any(|(h, p)| *h == host && *p == port) {
                    masters.push((host, port));
                }
            }
        }
        Ok(masters)
    }

    /// Run `pipe` on one node of the cluster (by address); on a standalone server, on it.
    pub(crate) async fn query_pipe_node(
        &self,
        op: &str,
        host: &str,
        port: u16,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>, TierError> {
        use redis::cluster_routing::SingleNodeRoutingInfo;
        match self.conn() {
            Conn::Cluster(mut c) => {
                let route = SingleNodeRoutingInfo::ByAddress { host: host.to_string(), port };
                let count = pipe.cmd_iter().count();
                self.bounded(op, c.route_pipeline(pipe.clone(), 0, count, route)).await
            }
            Conn::Standalone(_) => self.query_pipe(op, pipe).await,
        }
    }

    /// Run `cmd` on one node of the cluster (by address).
    pub(crate) async fn query_node(
        &self,
        op: &str,
        host: &str,
        port: u16,
        cmd: Cmd,
    ) -> Result<Value, TierError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        match self.conn() {
            Conn::Cluster(mut c) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_string(),
                    port,
                });
                self.bounded(op, c.route_command(cmd, routing)).await
            }
            Conn::Standalone(_) => self.query(op, &cmd).await,
        }
    }
}

impl RedisConnectionBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            reconnect_retries: 2,
        }
    }
}

/// A standalone or cluster connection; implements redis-rs's `ConnectionLike` so that commands,
/// pipelines and scripts run the same on both.
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of the key or of its `{hash tag}`, mod 16384).
pub(crate) fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % 16384
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` (and the Redis Cluster spec's CRC16 test vector).
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), None);
        assert_eq!(hash_tag(b"foo{{bar}}zap"), Some(&b"{bar"[..]));
    }
}
