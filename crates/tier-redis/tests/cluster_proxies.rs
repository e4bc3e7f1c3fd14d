//! A Redis Cluster whose every master is behind a fault proxy (the masters announce the
//! proxies' ports, so `CLUSTER SLOTS` and every `MOVED` send the client through them): all
//! connections dropped and new ones refused for 300 ms, in bursts, again and again, while
//! callers keep asking. After every burst the tier must answer again soon after the proxies accept again —
//! the cluster client must never stay broken (`ClusterConnectionNotFound` on every call until
//! the process restarts, as the coherence checker once saw).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tier_core::spi::Tier;
use tier_redis::{RedisConnection, RedisTier};

/// How long each fault refuses connections.
const REFUSED: Duration = Duration::from_millis(300);
/// How soon after the proxies accept again every key must be answered again.
const BACK_WITHIN: Duration = Duration::from_secs(5);
/// The hierarchy's bound around one call of the tier (as the checker's nodes have it).
const CALL: Duration = Duration::from_millis(250);

/// Three masters, each behind a proxy it announces.
struct ProxiedCluster {
    nodes: Vec<OwnRedis>,
    proxies: Vec<Proxy>,
}

impl ProxiedCluster {
    async fn start() -> Self {
        let nodes = own_cluster(3).await;
        let mut proxies = Vec::new();
        for n in &nodes {
            proxies.push(Proxy::start(SocketAddr::from(([127, 0, 0, 1], n.port))).await);
        }
        for (n, p) in nodes.iter().zip(&proxies) {
            let mut c = raw(&n.url()).await;
            for (name, port) in [
                ("cluster-announce-port", p.addr.port()),
                ("cluster-announce-bus-port", n.port + 10_000),
            ] {
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(name)
                    .arg(port)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
        let me = Self { nodes, proxies };
        me.wait_announced().await;
        me
    }

    /// Until every master's `CLUSTER SLOTS` names only proxy ports and the cluster is ok.
    async fn wait_announced(&self) {
        let ports: Vec<u16> = self.proxies.iter().map(|p| p.addr.port()).collect();
        for n in &self.nodes {
            let url = n.url();
            eventually(Duration::from_secs(20), "the masters announce their proxies", || {
                let (url, ports) = (url.clone(), ports.clone());
                async move {
                    let mut c = raw(&url).await;
                    let info: String =
                        redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap();
                    let seen = tier_redis::testing::announced_ports(&mut c).await.unwrap();
                    info.contains("cluster_state:ok")
                        && !seen.is_empty()
                        && seen.iter().all(|p| ports.contains(p))
                }
            })
            .await;
        }
    }

    fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(Proxy::url).collect()
    }

    fn cut(&self) {
        self.proxies.iter().for_each(Proxy::cut);
    }

    fn restore(&self) {
        self.proxies.iter().for_each(Proxy::restore);
    }

    fn set_delay(&self, d: Duration) {
        self.proxies.iter().for_each(|p| p.set_delay(d));
    }

    /// Move the (empty) slot of `redis_key` to another master, telling every master, so that
    /// a client's slot map is stale there: its next command on it gets a `MOVED`.
    async fn move_slot_of(&self, redis_key: &[u8]) {
        let mut admins = Vec::new();
        for n in &self.nodes {
            admins.push(raw(&n.url()).await);
        }
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(redis_key)
            .query_async(&mut admins[0])
            .await
            .unwrap();
        let n = self.nodes.len();
        let owner = (0..n).find(|&i| (slot_range(i, n).0..=slot_range(i, n).1).contains(&slot));
        let to = (owner.unwrap() + 1) % n;
        let id: String =
            redis::cmd("CLUSTER").arg("MYID").query_async(&mut admins[to]).await.unwrap();
        for i in std::iter::once(to).chain((0..n).filter(|&i| i != to)) {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&id)
                .query_async(&mut admins[i])
                .await
                .unwrap();
        }
    }
}

/// Does every key answer (a hit or a miss, within [`CALL`])?
async fn all_answer(t: &RedisTier, keys: &[String]) -> bool {
    for k in keys {
        match tokio::time::timeout(CALL, t.get(k.as_bytes())).await {
            Ok(Ok(_)) => {}
            _ => return false,
        }
    }
    true
}

/// How soon every key is answered again (from now, the proxies accepting again); panics
/// (`what` first) when not within [`BACK_WITHIN`].
async fn answers_again(t: &RedisTier, keys: &[String], what: &str) -> Duration {
    let back = Instant::now();
    while !all_answer(t, keys).await {
        let last = tokio::time::timeout(CALL, t.get(keys[0].as_bytes())).await;
        assert!(
            back.elapsed() < BACK_WITHIN,
            "{what}the tier does not answer {BACK_WITHIN:?} after the proxies accept again \
             (last: {last:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    back.elapsed()
}

/// The connection to the cluster, with the checker's nodes' connect timeout and `response`.
async fn connect(cluster: &ProxiedCluster, response: Duration) -> RedisConnection {
    RedisConnection::cluster(cluster.urls())
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(response)
        .connect()
        .await
        .unwrap()
}

/// The wedge, made likely (7 of 9 runs wedged before the fix): a `MOVED` makes the client
/// refresh its slot map; the masters' replies are slow (the proxies delay them by `D`), and
/// every connection is dropped (new ones refused for 300 ms) after the client read the slots (at 2 D) and before the masters
/// answered its check of each node connection (at 3 D). The refresh then leaves the client
/// with no node connection at all, and a second command's `MOVED`, taken up after it, asks for
/// another refresh — which, with no connection to ask, fails at once, forever: redis-rs
/// never goes back to the configured nodes from there, and every call answers
/// `ClusterConnectionNotFound` although the masters are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_left_without_node_connections_is_repaired() {
    const D: Duration = Duration::from_millis(200);
    let cluster = ProxiedCluster::start().await;
    // Long enough for the commands on the moved slot to outlive the refresh.
    let conn = connect(&cluster, Duration::from_secs(2)).await;
    let t = data_tier(&conn, &unique_prefix("cluster-wedge")).await;
    let keys: Vec<String> = (0..24).map(|i| format!("k{i}")).collect();
    for k in &keys {
        t.insert(key(k), entry("v", 600_000, 600_000)).await.unwrap();
    }
    assert!(all_answer(&t, &keys).await);

    cluster.move_slot_of(&t.redis_key(b"probe")).await;
    cluster.set_delay(D);
    // Two commands on the moved slot: the first one's MOVED (at D) starts the refresh; the
    // second one's (at D + 20 ms) is taken up after it.
    let mut probes = Vec::new();
    for _ in 0..2 {
        let t = t.clone();
        probes.push(tokio::spawn(async move { t.get(b"probe").await }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slots arrive at 2 D; the checks of the connections would at 3 D.
    tokio::time::sleep(D * 5 / 2 - Duration::from_millis(40)).await;
    cluster.cut();
    tokio::time::sleep(REFUSED).await;
    cluster.set_delay(Duration::ZERO);
    cluster.restore();
    for p in probes {
        let _ = p.await.unwrap();
    }

    let back = answers_again(&t, &keys, "").await;
    eprintln!("answered again {back:?} after the proxies accept again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_connection_recovers_after_every_refused_moment() {
    let cluster = ProxiedCluster::start().await;
    let conn = connect(&cluster, Duration::from_millis(500)).await;
    let t = data_tier(&conn, &unique_prefix("cluster-proxies")).await;
    // Keys on every master.
    let keys: Vec<String> = (0..24).map(|i| format!("k{i}")).collect();
    for k in &keys {
        t.insert(key(k), entry("v", 600_000, 600_000)).await.unwrap();
    }

    // Callers that never stop asking, each call bounded as the hierarchy bounds it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..8 {
        let (t, keys, stop) = (t.clone(), keys.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::SeqCst) {
                let k = &keys[i % keys.len()];
                let _ = tokio::time::timeout(CALL, t.get(k.as_bytes())).await;
                let _ = tokio::time::timeout(CALL, t.insert(key(k), entry("v", 600_000, 600_000)))
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    let rounds: usize =
        std::env::var("TIER_CLUSTER_FAULT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(6);
    let mut worst = Duration::ZERO;
    for round in 0..rounds {
        // A burst of faults: the later ones come while the client is still recovering from
        // the one before (gaps of 0 to 280 ms, varying from round to round).
        for f in 0..3 {
            if f > 0 {
                let gap = (round as u64 * 37 + f * 53) % 300;
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            cluster.cut();
            tokio::time::sleep(REFUSED).await; // the fault itself: refused for this long
            cluster.restore();
        }
        worst = worst.max(answers_again(&t, &keys, &format!("round {round}: ")).await);
        // Healthy for a moment between faults (callers keep going).
        tokio::time::sleep(Duration::from_millis(200 + 50 * (round as u64 % 5))).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.await.unwrap();
    }
    eprintln!("{rounds} bursts of 3 faults; the slowest recovery took {worst:?}");
}
