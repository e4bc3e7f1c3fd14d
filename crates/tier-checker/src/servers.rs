//! The Redis servers of a run: the origin (never faulted) and the cache Redis — one standalone
//! server or a Cluster of masters, each behind a [`FaultProxy`] of its own — and the faults done
//! to them. Every server is `tier_redis::testing::OwnRedis`: killed by PID when dropped.
//!
//! **Proxies in a Cluster.** Each master announces its proxy's port (`cluster-announce-port`,
//! set at run time, again after every restart; the bus port stays the real one), so `CLUSTER
//! SLOTS` and every `MOVED` send the nodes' clients through the proxies. The orchestrator's own
//! connections go to the real ports.
//!
//! **Restarts.** Every cache server runs with `appendonly yes`, `appendfsync no`: Redis writes
//! the AOF before it replies, so a restart (`kill -9`, start again on the same port and
//! directory) keeps every acknowledged write — what a process crash needs; `fsync` (`always`)
//! guards against a machine crash, which a run does not do, and made every write ~5 ms on a
//! shared disk. A restart *without persistence* is the same after a `FLUSHALL` (logged in the
//! AOF): the server comes back empty, as one without persistence would.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tier_redis::testing::{own_cluster_with, OwnRedis};

use crate::error::{Context, HarnessError};
use crate::proxy::FaultProxy;

/// The server arguments of every cache server.
const PERSISTENT: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "no"];

/// Start the origin server.
pub fn origin() -> Result<OwnRedis, HarnessError> {
    unpanic("start the origin server", OwnRedis::start)
}

/// `f`, with a panic (the test helpers panic when a server does not start) as an error.
fn unpanic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, HarnessError> {
    tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|_| HarnessError::new(format!("{what}: failed (see the message above)")))
}

/// The cache Redis of a run and its proxies.
pub struct CacheRedis {
    servers: Vec<OwnRedis>,
    proxies: Vec<FaultProxy>,
    cluster: bool,
}

impl CacheRedis {
    /// One standalone server behind a proxy.
    pub async fn standalone() -> Result<Self, HarnessError> {
        let server = unpanic("start the cache Redis", || OwnRedis::start_with(&PERSISTENT))?;
        let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into()).await?;
        Ok(Self { servers: vec![server], proxies: vec![proxy], cluster: false })
    }

    /// A Cluster of `masters` masters, each behind a proxy it announces.
    pub async fn cluster(masters: usize) -> Result<Self, HarnessError> {
        let servers = tokio::spawn(own_cluster_with(masters, &PERSISTENT))
            .await
            .map_err(|_| HarnessError::new("start the cache Redis Cluster: failed (see above)"))?;
        let mut proxies = Vec::new();
        for s in &servers {
            proxies.push(FaultProxy::start(([127, 0, 0, 1], s.port).into()).await?);
        }
        let me = Self { servers, proxies, cluster: true };
        for i in 0..me.servers.len() {
            me.announce_proxy(i).await?;
        }
        me.wait_announced().await?;
        Ok(me)
    }

    /// Whether it is a Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// How many servers (masters).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there is no server (never, once started).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The URLs the nodes use: the proxies'.
    pub fn node_urls(&self) -> Vec<String> {
        self.proxies.iter().map(|p| format!("redis://127.0.0.1:{}/", p.port())).collect()
    }

    /// The real port of server `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.servers[i % self.servers.len()].port
    }

    async fn admin(&self, i: usize) -> Result<MultiplexedConnection, HarnessError> {
        admin(self.port(i)).await
    }

    /// Master `i` announces its proxy's port.
    async fn announce_proxy(&self, i: usize) -> Result<(), HarnessError> {
        let mut c = self.admin(i).await?;
        let real = self.servers[i].port;
        for (name, port) in [
            ("cluster-announce-port", self.proxies[i].port()),
            ("cluster-announce-bus-port", real + 10_000),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(port)
                .query_async(&mut c)
                .await
                .context(|| format!("CONFIG SET {name} on port {real}"))?;
        }
        Ok(())
    }

    /// Wait until every master's `CLUSTER SLOTS` names only proxy ports and the cluster is ok.
    async fn wait_announced(&self) -> Result<(), HarnessError> {
        let proxies: Vec<u16> = self.proxies.iter().map(FaultProxy::port).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 0..self.servers.len() {
            loop {
                let mut c = self.admin(i).await?;
                let ports = tier_redis::testing::announced_ports(&mut c).await.unwrap_or_default();
                let info: redis::RedisResult<String> =
                    redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await;
                let ok = info.is_ok_and(|i| i.contains("cluster_state:ok"));
                if ok && !ports.is_empty() && ports.iter().all(|p| proxies.contains(p)) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(HarnessError::new(format!(
                        "the Cluster did not announce its proxies within 20 s (port {} sees {ports:?})",
                        self.servers[i].port
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// `CLIENT KILL TYPE pubsub` and `TYPE normal` on every server; returns how many were killed.
    pub async fn client_kill(&self) -> Result<i64, HarnessError> {
        let mut killed = 0;
        for i in 0..self.servers.len() {
            let mut c = self.admin(i).await?;
            for kind in ["pubsub", "normal"] {
                let n: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg(kind)
                    .query_async(&mut c)
                    .await
                    .context(|| format!("CLIENT KILL TYPE {kind}"))?;
                killed += n;
            }
        }
        Ok(killed)
    }

    /// Kill server `i` (`kill -9`) and start it again, with its data or (after a `FLUSHALL`)
    /// without; returns once it answers (a Cluster: once the cluster is ok again).
    pub async fn restart(&mut self, i: usize, keep_data: bool) -> Result<(), HarnessError> {
        let i = i % self.servers.len();
        if !keep_data {
            let mut c = self.admin(i).await?;
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut c)
                .await
                .context(|| "FLUSHALL before a restart without data".into())?;
        }
        let server = &mut self.servers[i];
        unpanic("restart a cache Redis server", || server.restart())?;
        if self.cluster {
            self.announce_proxy(i).await?;
            self.wait_announced().await?;
        }
        Ok(())
    }

    /// Delete every generation key (`tier-gen:*`) on every server; returns how many.
    pub async fn delete_generations(&self) -> Result<usize, HarnessError> {
        let mut deleted = 0;
        for i in 0..self.servers.len() {
            let mut c = self.admin(i).await?;
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("tier-gen:*")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await
                    .context(|| "SCAN the generation keys".into())?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            // One DEL a key: in a Cluster, keys of different slots cannot share one.
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.del(k).ignore();
            }
            if !keys.is_empty() {
                let _: () =
                    pipe.query_async(&mut c).await.context(|| "DEL generation keys".into())?;
            }
            deleted += keys.len();
        }
        Ok(deleted)
    }

    /// Delay every reply through the proxies by `delay` (zero: none).
    pub fn set_latency(&self, delay: Duration) {
        self.proxies.iter().for_each(|p| p.set_delay(delay));
    }

    /// Drop every connection through the proxies and refuse new ones until [`Self::accept`].
    pub fn drop_connections(&self) {
        self.proxies.iter().for_each(|p| p.drop_all(true));
    }

    /// Let the proxies accept connections again.
    pub fn accept(&self) {
        self.proxies.iter().for_each(FaultProxy::accept);
    }
}

/// A connection of the orchestrator's own to the server on `port` (not through a proxy).
pub async fn admin(port: u16) -> Result<MultiplexedConnection, HarnessError> {
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).context(|| format!("URL {url}"))?;
    tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
        .await
        .map_err(|_| HarnessError::new(format!("connect to {url}: no answer within 5 s")))?
        .context(|| format!("connect to {url}"))
}
