//! The Redis tier at fleet scale, each figure beside its peer in the same run:
//! - **throughput**: L3 hits per second with 1, 16 and 64 concurrent callers through the
//!   hierarchy (`Cache::get`, Redis as its only tier) vs raw redis-rs on one multiplexed
//!   connection of the same kind (`ConnectionManager`, or the cluster-async client) doing the
//!   same work (`GET` + decoding the value), on a standalone server and on a 3-master Cluster.
//!   Windows of each side alternate; the ratio is of their medians.
//! - **outage**: origin calls per second of the *healthy* masters' keys while one master of
//!   three is killed, 16 callers, the hierarchy's default breaker and a 50 ms timeout — with the
//!   tier's per-master breakers and without them (`no_node_breakers`).
//!
//! The servers are the bench's own (`tier_redis::testing`: the flavour's binary,
//! `TIER_TEST_REDIS_SERVER`, else `redis-server` on PATH), stopped by PID at the end.
//!
//! `cargo bench -p tier-benches --bench redis_fleet` (`-- throughput` or `-- outage` for one
//! part; `TIER_BENCH_WINDOW_MS` and `TIER_BENCH_ROUNDS` change the windows;
//! `TIER_BENCH_SIDE=hierarchy` or `raw` runs one side alone, for a profiler).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tier_benches::{user, User};
use tier_core::{BreakerState, Cache, TierPolicy};
use tier_redis::testing::{own_cluster, slot_range, OwnRedis};
use tier_redis::{RedisConnection, RedisTier};

const KEYS: u64 = 1000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A raw redis-rs connection of the kind the tier uses.
#[derive(Clone)]
enum Raw {
    Standalone(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Raw {
    async fn get_decoded(&mut self, key: &[u8]) -> User {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let bytes: Option<Bytes> = match self {
            Self::Standalone(c) => cmd.query_async(c).await.unwrap(),
            Self::Cluster(c) => cmd.query_async(c).await.unwrap(),
        };
        let bytes = bytes.expect("stored");
        let (meta, at) = tier_core::spi::envelope::decode_meta(&bytes).unwrap();
        tier_core::spi::envelope::decode_value::<User>(&bytes, &meta, at).unwrap().expect("a value")
    }
}

/// `callers` tasks doing `op(i)` on keys in turn for `window`; operations per second.
async fn window<F, Fut>(callers: usize, window: Duration, op: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = c as u64 * 7919;
                while !stop.load(Ordering::Relaxed) {
                    op(i % KEYS).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let ops = done.load(Ordering::Relaxed);
    let took = started.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    ops as f64 / took.as_secs_f64()
}

/// A cache with `tier` as its only tier: the hierarchy's default breaker, a 50 ms timeout.
fn l3_cache(name: &str, tier: &RedisTier) -> Arc<Cache<User>> {
    let policy = TierPolicy::fresh(Duration::from_secs(3600)).timeout(Duration::from_millis(50));
    Arc::new(Cache::builder(name).tier(tier.clone(), policy).build().unwrap())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn throughput(label: &str, conn: RedisConnection, raw: Raw) {
    let tier = RedisTier::builder(conn).prefix("bench:fleet:").build().await.unwrap();
    let cache = l3_cache("bench-fleet", &tier);
    let keys: Arc<Vec<Bytes>> =
        Arc::new((0..KEYS).map(|i| cache.key(format!("user:{i}"))).collect());
    let redis_keys: Arc<Vec<Vec<u8>>> = Arc::new(keys.iter().map(|k| tier.redis_key(k)).collect());
    for (i, k) in keys.iter().enumerate() {
        cache.insert(k, user(i as u64)).await.unwrap();
    }
    let win = Duration::from_millis(env_u64("TIER_BENCH_WINDOW_MS", 250));
    let rounds = env_u64("TIER_BENCH_ROUNDS", 11) as usize;
    let side = std::env::var("TIER_BENCH_SIDE").unwrap_or_default();
    for callers in [1, 16, 64] {
        let (mut hier, mut peer) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (c, k) = (cache.clone(), keys.clone());
            if side != "raw" {
                hier.push(
                    window(callers, win, move |i| {
                        let (c, k) = (c.clone(), k.clone());
                        async move { assert_eq!(c.get(&k[i as usize]).await.expect("a hit").id, i) }
                    })
                    .await,
                );
            }
            let (r, k) = (raw.clone(), redis_keys.clone());
            if side != "hierarchy" {
                peer.push(
                    window(callers, win, move |i| {
                        let (mut r, k) = (r.clone(), k.clone());
                        async move { assert_eq!(r.get_decoded(&k[i as usize]).await.id, i) }
                    })
                    .await,
                );
            }
        }
        if hier.is_empty() || peer.is_empty() {
            let (side, v) =
                if hier.is_empty() { ("raw redis-rs", peer) } else { ("hierarchy", hier) };
            let mut v = v;
            println!(
                "throughput {label:<10} {callers:>2} callers: {side} {:>8.0}/s alone",
                median(&mut v)
            );
            continue;
        }
        let (h, p) = (median(&mut hier), median(&mut peer));
        println!(
            "throughput {label:<10} {callers:>2} callers: hierarchy {h:>8.0}/s, raw redis-rs {p:>8.0}/s = {:.3}x ({rounds} windows of {win:?} each)",
            h / p
        );
    }
}

/// The outage figure: origin calls per second of healthy and lost keys over `for_` after
/// master 1 of 3 is killed; `node_breakers` on or off.
async fn outage(node_breakers: bool, for_: Duration) {
    let mut nodes = own_cluster(3).await;
    let urls: Vec<String> = nodes.iter().map(OwnRedis::url).collect();
    let conn = RedisConnection::cluster(urls.clone())
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let mut builder = RedisTier::builder(conn).prefix("bench:outage:");
    if !node_breakers {
        builder = builder.no_node_breakers();
    }
    let tier = builder.build().await.unwrap();
    let cache = l3_cache("bench-outage", &tier);
    let keys: Vec<Bytes> = (0..300).map(|i| cache.key(format!("user:{i}"))).collect();
    // The cluster says where each key lives.
    let (first, last) = slot_range(1, 3);
    let mut admin = redis::Client::open(urls[0].as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut lost = Vec::with_capacity(keys.len());
    for k in &keys {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(tier.redis_key(k))
            .query_async(&mut admin)
            .await
            .unwrap();
        lost.push((first..=last).contains(&slot));
    }
    let lost = Arc::new(lost);
    let keys = Arc::new(keys);
    for (i, k) in keys.iter().enumerate() {
        cache.insert(k, user(i as u64)).await.unwrap();
    }
    let origin_healthy = Arc::new(AtomicU64::new(0));
    let origin_lost = Arc::new(AtomicU64::new(0));
    let gets = Arc::new(AtomicU64::new(0));
    nodes[1].kill();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..16)
        .map(|c| {
            let (cache, keys, lost, stop) =
                (cache.clone(), keys.clone(), lost.clone(), stop.clone());
            let (oh, ol, gets) = (origin_healthy.clone(), origin_lost.clone(), gets.clone());
            tokio::spawn(async move {
                let mut i = c * 37;
                while !stop.load(Ordering::Relaxed) {
                    let j = i % keys.len();
                    i += 1;
                    let origin = if lost[j] { ol.clone() } else { oh.clone() };
                    let got = cache
                        .get_or_load(&keys[j], move || async move {
                            origin.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, std::io::Error>(Some(user(j as u64)))
                        })
                        .await
                        .unwrap();
                    assert_eq!(got.expect("a value").id, j as u64);
                    gets.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(for_).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let healthy_keys = lost.iter().filter(|l| !**l).count();
    println!(
        "outage {}: {:.0} gets/s; origin calls/s of the healthy masters' keys {:.1} ({} keys), of the lost master's keys {:.1}; breaker of the whole tier {:?}, of the masters {:?}",
        if node_breakers { "with per-master breakers   " } else { "without per-master breakers" },
        gets.load(Ordering::Relaxed) as f64 / secs,
        origin_healthy.load(Ordering::Relaxed) as f64 / secs,
        healthy_keys,
        origin_lost.load(Ordering::Relaxed) as f64 / secs,
        cache.tiers()[0].breaker.unwrap_or(BreakerState::Closed),
        tier.node_breakers().iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
    );
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        if wanted("throughput") {
            let server = OwnRedis::start();
            let conn = RedisConnection::standalone(server.url()).connect().await.unwrap();
            let raw =
                redis::Client::open(server.url()).unwrap().get_connection_manager().await.unwrap();
            throughput("standalone", conn, Raw::Standalone(raw)).await;
            drop(server);
            let nodes = own_cluster(3).await;
            let urls: Vec<String> = nodes.iter().map(OwnRedis::url).collect();
            let conn = RedisConnection::cluster(urls.clone()).connect().await.unwrap();
            let raw = redis::cluster::ClusterClient::new(urls)
                .unwrap()
                .get_async_connection()
                .await
                .unwrap();
            throughput("cluster", conn, Raw::Cluster(raw)).await;
        }
        if wanted("outage") {
            let for_ = Duration::from_secs(env_u64("TIER_BENCH_OUTAGE_S", 5));
            outage(true, for_).await;
            outage(false, for_).await;
        }
    });
}
