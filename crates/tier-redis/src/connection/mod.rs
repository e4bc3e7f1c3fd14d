//! [`RedisConnection`]: one handle to a standalone server or a Redis Cluster, shared by the tier,
//! the generations, the lock and the backplane.
//!
//! Standalone goes through redis-rs's `ConnectionManager` (one multiplexed connection, reconnected
//! automatically); Cluster through the cluster-async client (a multiplexed connection per node,
//! slot map refreshed on `MOVED`). Every operation is bounded by the *operation timeout*
//! (connect timeout + response timeout), so a call never hangs on a reconnect. A call whose
//! connection was dropped under it (`CLIENT KILL`, a restart, a proxy) goes once more, over the
//! reconnected one, within the same bound.
//!
//! The Cluster's topology (hash slots, masters, per-node routing) is in `cluster`; building a
//! connection in `builder`; rebuilding a Cluster connection that stays broken in `repair`; the
//! `tracing` span of each call (OpenTelemetry's database conventions) in `span`; the events
//! of a lost and recovered link in `link`.

mod builder;
mod cluster;
mod link;
mod node;
mod repair;
mod span;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tier_core::{TierError, TierErrorKind};

pub use builder::{
    ConnectionSource, RedisConnectionBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT,
};
pub(crate) use cluster::{by_slot, slot, Route, SLOTS};

use crate::commands;
use crate::error::{reply_error, tier_error, timeout_error};
use builder::Target;

/// A connection to a standalone Redis or a Redis Cluster. Cheap to clone (an `Arc`); clones share
/// the underlying connections.
///
/// URLs are redis-rs URLs: `redis://[user][:password@]host[:port][/db]`, `rediss://` for TLS
/// (cargo feature `tls`). A password with characters that end a part of a URL (`/`, `@`, `:`,
/// `?`, `#`) is percent-encoded in it (`%2F`, ...). Whatever the URL holds, this crate prints it
/// only redacted ([`redact_url`](crate::redact_url)): in errors, logs and `Debug`.
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
    /// The connection once made (at once, or in the background when lazy).
    slot: Arc<Slot>,
    /// A Cluster (known before connecting: the target says so).
    cluster: bool,
    /// How the connection is made: again for a dedicated connection (the backplane's reader).
    factory: Factory,
    /// The background connect of a lazy connection; stopped with the last clone.
    _connecting: Option<AbortOnDrop>,
    /// The repair of a Cluster connection that stays broken (see `repair`).
    _repairing: Option<AbortOnDrop>,
    /// Made with [`lazy`](RedisConnectionBuilder::lazy): its users must not fail at start-up
    /// because Redis is down.
    lazy: bool,
    /// One client per configured node URL (the first tells a lone Cluster node's address).
    nodes: Vec<redis::Client>,
    /// The configured URLs, redacted (for `Debug` and reports).
    targets: Vec<String>,
    op_timeout: Duration,
    /// Connections of our own to single Cluster nodes (see `node`).
    node_conns: node::NodeConns,
    /// Lost and back events of the link (see `link`).
    link: link::Link,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("cluster", &self.is_cluster())
            .field("urls", &self.inner.targets)
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

    /// A standalone server or a Cluster, whichever it is: several URLs are nodes of one
    /// Cluster; one URL is asked (`INFO cluster`) whether it is a Cluster node. For tools
    /// that take "a Redis URL" from an operator; a service knows what it connects to.
    pub fn detect<I, S>(urls: I) -> RedisConnectionBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisConnectionBuilder::new(Target::Detect(urls.into_iter().map(Into::into).collect()))
    }

    /// Is this a Redis Cluster?
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// Is the connection made? Always true for one that [`connect`](RedisConnectionBuilder::connect)
    /// made at once; a [`lazy`](RedisConnectionBuilder::lazy) one answers false (and its calls
    /// fail at once, `Unavailable`) until it is made in the background.
    pub fn is_connected(&self) -> bool {
        self.inner.slot.current().is_some()
    }

    /// Was it made [`lazy`](RedisConnectionBuilder::lazy)?
    pub(crate) fn is_lazy(&self) -> bool {
        self.inner.lazy
    }

    /// Wait until the connection is made (at once when it is).
    pub async fn connected(&self) {
        let mut rx = self.inner.slot.connected.subscribe();
        // The sender lives in `slot`, which `self` holds: the wait ends only with a value.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The bound of every operation: connect timeout + response timeout.
    pub fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    /// The URLs this connection was made with, redacted.
    pub fn urls(&self) -> &[String] {
        &self.inner.targets
    }

    /// A handle for one operation (clones of the multiplexed connection); `Unavailable` while
    /// a lazy connection is not made yet.
    pub(crate) fn conn(&self) -> Result<Conn, TierError> {
        self.inner.slot.current().ok_or_else(|| {
            TierError::new(
                TierErrorKind::Unavailable,
                "not connected to Redis yet (connecting in the background)",
            )
        })
    }

    /// A connection of its own (not shared with the other calls), made like this one, within
    /// the operation timeout: for the backplane's reader.
    pub(crate) async fn dedicated(&self) -> Result<Conn, TierError> {
        self.bounded("connect", self.inner.factory.connect()).await
    }

    /// A RESP3 connection of its own (not shared) to one node — the standalone server
    /// ([`Route::Server`]) or a Cluster master ([`Route::Master`]) — with the same credentials
    /// and TLS, whose push messages (client-side caching's invalidations) go to `pushes`;
    /// connecting sends `HELLO 3`. Bounded by the operation timeout (its replies too). `None`
    /// when `route` is not a node of this connection's kind. The error is redis-rs's, so that
    /// the caller can tell a server that refuses (`HELLO 3` unknown, an ACL) from one not
    /// reached.
    pub(crate) async fn resp3_dedicated(
        &self,
        route: &Route,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Option<redis::RedisResult<redis::aio::MultiplexedConnection>> {
        let info = match (&self.inner.factory, route) {
            (Factory::Standalone(client, _), Route::Server) => client.get_connection_info().clone(),
            (Factory::Cluster(_), Route::Master { .. }) => self.inner.node_conns.info(route)?,
            _ => return None,
        };
        let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        let client = match redis::Client::open(info.set_redis_settings(settings)) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let op = self.inner.op_timeout;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op))
            .set_response_timeout(Some(op))
            .set_push_sender(pushes);
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        Some(match tokio::time::timeout(op, connect).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting the tracking connection timed out",
            ))),
        })
    }

    /// Run `fut` under the operation timeout, mapping errors.
    pub(crate) async fn bounded<T>(
        &self,
        op: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TierError> {
        self.bounded_by(Some(self.inner.op_timeout), op, fut).await
    }

    /// Run `fut` within `bound` (at most the operation timeout; `None`: no timer of ours),
    /// mapping errors.
    pub(crate) async fn bounded_by<T>(
        &self,
        bound: Option<Duration>,
        op: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TierError> {
        let link = &self.inner.link;
        let answered = |r: redis::RedisResult<T>| match r {
            Ok(v) => {
                link.answered();
                Ok(v)
            }
            Err(e) => {
                link.failed(op, &e);
                Err(tier_error(op, e))
            }
        };
        let Some(bound) = bound.map(|b| b.min(self.inner.op_timeout)) else {
            return answered(fut.await);
        };
        match tokio::time::timeout(bound, fut).await {
            Ok(r) => answered(r),
            Err(_) => Err(timeout_error(op, bound)),
        }
    }

    /// Run one command.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        op: &str,
        cmd: &Cmd,
    ) -> Result<T, TierError> {
        self.query_within(Some(self.inner.op_timeout), op, cmd).await
    }

    /// Run one command within `bound` (at most the operation timeout); `None`: no bound of ours
    /// (the caller's bounds it; redis-rs's response timeout still applies).
    pub(crate) async fn query_within<T: redis::FromRedisValue>(
        &self,
        bound: Option<Duration>,
        op: &str,
        cmd: &Cmd,
    ) -> Result<T, TierError> {
        let conn = self.conn()?;
        let run = once_more_if_dropped(|| {
            let mut conn = conn.clone();
            async move { cmd.query_async(&mut conn).await }
        });
        self.bounded_by(bound, op, run).await
    }

    /// Run a pipeline (standalone: any keys; Cluster: keys of one slot).
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        op: &str,
        pipe: &Pipeline,
    ) -> Result<T, TierError> {
        self.query_pipe_within(Some(self.inner.op_timeout), op, pipe).await
    }

    /// Run a pipeline within `bound` (as [`query_within`](Self::query_within)).
    pub(crate) async fn query_pipe_within<T: redis::FromRedisValue>(
        &self,
        bound: Option<Duration>,
        op: &str,
        pipe: &Pipeline,
    ) -> Result<T, TierError> {
        let conn = self.conn()?;
        let run = once_more_if_dropped(|| {
            let mut conn = conn.clone();
            async move { pipe.query_async(&mut conn).await }
        });
        self.bounded_by(bound, op, run).await
    }

    /// Run a script command (or a pipeline of them) built by `build` — first by SHA1
    /// (`EVALSHA`), again with the sources (`EVAL`) when the server does not know a script
    /// (`NOSCRIPT`: it restarted, failed over or flushed its scripts; a pipeline is resent whole,
    /// so the scripts of this crate may run twice) — within `bound` (both attempts).
    pub(crate) async fn script_within<T, Q>(
        &self,
        bound: Option<Duration>,
        op: &str,
        build: impl Fn(commands::ScriptForm) -> Q,
    ) -> Result<T, TierError>
    where
        T: redis::FromRedisValue + Send,
        Q: Query,
    {
        let conn = self.conn()?;
        let build = &build;
        let run = once_more_if_dropped(|| {
            let mut conn = conn.clone();
            async move {
                match build(commands::ScriptForm::Sha).run(&mut conn).await {
                    Err(e) if is_noscript(&e) => {
                        build(commands::ScriptForm::Source).run(&mut conn).await
                    }
                    r => r,
                }
            }
        });
        self.bounded_by(bound, op, run).await
    }

    /// `MGET` of `keys` (Cluster: one per slot), each command within `bound` (as
    /// [`query_within`](Self::query_within)).
    pub(crate) async fn mget_within<T>(
        &self,
        bound: Option<Duration>,
        op: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<T>, TierError>
    where
        T: redis::FromRedisValue + Default + Clone,
    {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<T> = if self.is_cluster() {
            let groups = by_slot((0..keys.len()).collect(), |&i| slot(&keys[i]));
            let replies = futures::future::try_join_all(groups.into_iter().map(|idx| {
                let cmd = commands::mget(idx.iter().map(|&i| &keys[i][..]));
                async move {
                    let got: Vec<T> = self.query_within(bound, op, &cmd).await?;
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
            self.query_within(bound, op, &commands::mget(keys.iter().map(|k| &k[..]))).await?
        };
        if values.len() != keys.len() {
            return Err(short_reply(values.len(), keys.len()));
        }
        Ok(values)
    }

    /// The Cluster's slot ranges with the master serving each (`CLUSTER SLOTS`, asked of any
    /// node); empty for a standalone server.
    pub(crate) async fn slot_ranges(&self) -> Result<Vec<(u16, u16, Route)>, TierError> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let slots: Value = self.query("cluster slots", &commands::cluster_slots()).await?;
        // A node that met no other does not know its own address: it is the one we were given.
        let asked = self.inner.nodes.first().map_or("", |c| match c.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
                host.as_str()
            }
            _ => "",
        });
        Ok(cluster::slot_ranges(slots, asked))
    }

    /// Where per-node work goes: the server, or every master of the Cluster (sorted by address).
    pub(crate) async fn routes(&self) -> Result<Vec<Route>, TierError> {
        if !self.is_cluster() {
            return Ok(vec![Route::Server]);
        }
        let masters = cluster::masters(self.slot_ranges().await?);
        if masters.is_empty() {
            return Err(TierError::new(TierErrorKind::Unavailable, "no cluster masters known"));
        }
        Ok(masters)
    }

    /// Run `cmd` on one node (a Cluster node through a connection of our own: see `node`).
    pub(crate) async fn query_on(
        &self,
        op: &str,
        route: &Route,
        cmd: Cmd,
    ) -> Result<Value, TierError> {
        match route {
            Route::Master { .. } if self.is_cluster() => {
                let on_node = self
                    .inner
                    .node_conns
                    .run(route, |mut c| async move { cmd.query_async(&mut c).await });
                self.bounded(op, on_node).await
            }
            _ => self.query(op, &cmd).await,
        }
    }

    /// Run `pipe` on one node (its keys must live there; a Cluster node through a connection
    /// of our own: see `node`).
    pub(crate) async fn pipe_on(
        &self,
        op: &str,
        route: &Route,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>, TierError> {
        match route {
            Route::Master { .. } if self.is_cluster() => {
                let on_node = self
                    .inner
                    .node_conns
                    .run(route, |mut c| async move { pipe.query_async(&mut c).await });
                self.bounded(op, on_node).await
            }
            _ => self.query_pipe(op, pipe).await,
        }
    }

    /// `SCAN` (never `KEYS`) the keys of one node matching `pattern`, a batch at a time.
    pub(crate) fn scan<'a>(&'a self, route: &'a Route, pattern: &'a [u8]) -> Scan<'a> {
        Scan { conn: self, route, pattern, cursor: Some(0) }
    }

    /// Remove every key matching `pattern` (`SCAN` + `UNLINK`), on every master of a Cluster
    /// (concurrently). Returns how many keys were removed.
    pub(crate) async fn unlink_matching(&self, pattern: &[u8]) -> Result<u64, TierError> {
        let routes = self.routes().await?;
        let removed = futures::future::try_join_all(routes.iter().map(|route| async move {
            let mut removed = 0u64;
            let mut scan = self.scan(route, pattern);
            while let Some(keys) = scan.next().await? {
                for count in self.pipe_on("unlink", route, &commands::unlink(&keys)).await? {
                    removed += redis::from_redis_value::<u64>(count)
                        .map_err(|e| reply_error("UNLINK", e))?;
                }
            }
            Ok::<u64, TierError>(removed)
        }))
        .await?;
        Ok(removed.into_iter().sum())
    }
}

/// A `SCAN` of one node in progress; see [`RedisConnection::scan`].
pub(crate) struct Scan<'a> {
    conn: &'a RedisConnection,
    route: &'a Route,
    pattern: &'a [u8],
    /// The next cursor; `None` once the scan is complete.
    cursor: Option<u64>,
}

impl Scan<'_> {
    /// The next non-empty batch of keys; `None` when the scan is complete.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<Vec<u8>>>, TierError> {
        while let Some(cursor) = self.cursor {
            let cmd = commands::scan(cursor, self.pattern);
            let reply = self.conn.query_on("scan", self.route, cmd).await?;
            let (next, keys): (u64, Vec<Vec<u8>>) =
                redis::from_redis_value(reply).map_err(|e| reply_error("SCAN", e))?;
            self.cursor = (next != 0).then_some(next);
            if !keys.is_empty() {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }
}

/// A command or a pipeline, run the same way (boxed: one allocation beside a round trip).
pub(crate) trait Query: Send + Sync {
    fn run<'a, T: redis::FromRedisValue + Send + 'a>(
        &'a self,
        conn: &'a mut Conn,
    ) -> futures::future::BoxFuture<'a, redis::RedisResult<T>>;
}

impl Query for Cmd {
    fn run<'a, T: redis::FromRedisValue + Send + 'a>(
        &'a self,
        conn: &'a mut Conn,
    ) -> futures::future::BoxFuture<'a, redis::RedisResult<T>> {
        Box::pin(self.query_async(conn))
    }
}

impl Query for Pipeline {
    fn run<'a, T: redis::FromRedisValue + Send + 'a>(
        &'a self,
        conn: &'a mut Conn,
    ) -> futures::future::BoxFuture<'a, redis::RedisResult<T>> {
        Box::pin(self.query_async(conn))
    }
}

/// The server does not know the script (`NOSCRIPT`), also as the first error of a pipeline.
fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

pub(crate) fn short_reply(got: usize, want: usize) -> TierError {
    TierError::new(TierErrorKind::Other, format!("MGET answered {got} values for {want} keys"))
}

/// Where the connection lives once made (a Cluster's is replaced when it stays broken: see
/// `repair`), and who waits for it.
struct Slot {
    conn: RwLock<Option<Conn>>,
    connected: tokio::sync::watch::Sender<bool>,
    /// What the calls on the Cluster connection in use saw lately.
    health: Arc<repair::Health>,
}

impl Slot {
    fn new(conn: Option<Conn>) -> Arc<Self> {
        let made = conn.is_some();
        let slot = Self {
            conn: RwLock::new(None),
            connected: tokio::sync::watch::Sender::new(made),
            health: Arc::default(),
        };
        if let Some(c) = conn {
            slot.replace(c);
        }
        Arc::new(slot)
    }

    /// A clone of the connection in use, if made.
    fn current(&self) -> Option<Conn> {
        // A poisoned lock still holds a connection (its writers only assign).
        self.conn.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Put `conn` in use (watched by `health` when it is a Cluster's).
    fn replace(&self, conn: Conn) {
        let conn = match conn {
            Conn::Cluster(c, _) => Conn::Cluster(c, Some(self.health.clone())),
            other => other,
        };
        *self.conn.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
    }

    fn fill(&self, conn: Conn) {
        self.replace(conn);
        self.connected.send_replace(true);
    }
}

/// Makes a connection: the standalone manager or the cluster client, as configured.
#[derive(Clone)]
pub(crate) enum Factory {
    Standalone(redis::Client, redis::aio::ConnectionManagerConfig),
    Cluster(redis::cluster::ClusterClient),
}

impl Factory {
    async fn connect(&self) -> redis::RedisResult<Conn> {
        match self {
            Self::Standalone(client, config) => {
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map(Conn::Standalone)
            }
            Self::Cluster(client) => {
                client.get_async_connection().await.map(|c| Conn::Cluster(c, None))
            }
        }
    }
}

/// Watch the Cluster connection of `slot` and rebuild it with `factory` (each attempt within
/// `bound`) when it stays broken (see `repair`); stopped when dropped (with the last clone).
fn repair_when_broken(factory: Factory, slot: &Arc<Slot>, bound: Duration) -> AbortOnDrop {
    let weak = Arc::downgrade(slot);
    let rebuild = move || {
        let (factory, weak) = (factory.clone(), weak.clone());
        async move {
            match tokio::time::timeout(bound, factory.connect()).await {
                Ok(Ok(conn)) => match weak.upgrade() {
                    Some(slot) => {
                        slot.replace(conn);
                        repair::Attempt::Done
                    }
                    None => repair::Attempt::Gone,
                },
                _ if weak.strong_count() == 0 => repair::Attempt::Gone,
                Ok(Err(e)) => {
                    tracing::debug!(error = %crate::error::RedisCause::new(e), "Redis Cluster not reachable");
                    repair::Attempt::Failed
                }
                Err(_) => repair::Attempt::Failed,
            }
        }
    };
    AbortOnDrop(tokio::spawn(repair::watch(slot.health.clone(), rebuild)))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connect in the background, with backoff (50 ms up to 2 s, each attempt within `bound`),
/// until it succeeds or the connection is dropped.
fn connect_in_background(factory: Factory, slot: &Arc<Slot>, bound: Duration) -> AbortOnDrop {
    let weak = Arc::downgrade(slot);
    AbortOnDrop(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            match tokio::time::timeout(bound, factory.connect()).await {
                Ok(Ok(conn)) => {
                    if let Some(slot) = weak.upgrade() {
                        tracing::info!("connected to Redis");
                        slot.fill(conn);
                    }
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %crate::error::RedisCause::new(e), "Redis not reachable yet; retrying in {backoff:?}")
                }
                Err(_) => {
                    tracing::debug!("Redis not reachable within {bound:?}; retrying in {backoff:?}")
                }
            }
            if weak.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }))
}

/// Run `attempt`, and once more when the connection was dropped under it (a `CLIENT KILL`, a
/// proxy or a server that closed it: the handle reconnects, and the second attempt goes over the
/// new connection — without it, every call in flight when a connection drops fails, and the
/// breakers of the tier and of the fleet state open for nothing). A refused connection is not
/// tried again (the server is down). Every command of this crate may run twice: writes are
/// compare-and-set scripts, a removal is a tombstone, a bump run twice moves a generation on
/// twice, a stream entry added twice is applied twice (harmless), a lock attempt run twice
/// fails the second time (the load runs without the lock).
async fn once_more_if_dropped<T, F>(mut attempt: impl FnMut() -> F) -> redis::RedisResult<T>
where
    F: Future<Output = redis::RedisResult<T>>,
{
    match attempt().await {
        Err(e) if e.is_connection_dropped() && !e.is_connection_refusal() => {
            tracing::debug!(error = %crate::error::RedisCause::new(e), "connection dropped under a call: once more");
            attempt().await
        }
        r => r,
    }
}

/// A standalone or cluster connection; implements redis-rs's `ConnectionLike` so that commands,
/// pipelines and scripts run the same on both. A Cluster connection in use tells its `Health`
/// what its calls saw.
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection, Option<Arc<repair::Health>>),
}

/// Tell `health` (if watched) what a call on the Cluster connection saw.
async fn watched<T>(
    health: Option<&repair::Health>,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    let result = call.await;
    if let Some(health) = health {
        match &result {
            Ok(_) => health.answered(),
            Err(e) => match e.kind() {
                redis::ErrorKind::ClusterConnectionNotFound => health.not_found(),
                // A node answered (an error reply is an answer).
                redis::ErrorKind::Server(_) => health.answered(),
                _ => {}
            },
        }
    }
    result
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let span = span::command(cmd, self.get_db());
        let call = match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c, health) => {
                Box::pin(watched(health.as_deref(), c.req_packed_command(cmd)))
            }
        };
        span::traced(span, call)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let span = span::pipeline(pipeline, self.get_db());
        let call = match self {
            Self::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c, health) => {
                Box::pin(watched(health.as_deref(), c.req_packed_commands(pipeline, offset, count)))
            }
        };
        span::traced(span, call)
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c, _) => c.get_db(),
        }
    }
}
