//! Client-side caching (`RedisBackplaneBuilder::track`) against a real server: a write by
//! another client drops the L1 copy; own writes keep theirs; a lost tracking connection holds
//! the lease back (local entries not fresh), then a gap and proofs again; a server that refuses
//! tracking falls back to the stream alone, once; the latency beside the stream's. In a Cluster:
//! a write to a key of any master drops the copy; one master's lost tracking connection holds
//! the lease back, then a gap; a master that takes over by failover is tracked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use tier_core::spi::{Backplane, BackplaneEvent, Invalidation, Lookup, Tier};
use tier_core::{Cache, ReconnectPolicy, TierPolicy};
use tier_memory::MemoryTier;
use tier_redis::{
    RedisBackplane, RedisConnection, RedisConnectionBuilder, RedisGenerations, RedisTier,
};
use tokio::sync::broadcast;

const HOUR: Duration = Duration::from_secs(3600);

/// One instance: L1 memory + L3 Redis (`data_url`), a backplane on the test run's server,
/// tracking the L3's keys when `track`.
struct Instance {
    cache: Cache<String>,
    l1: Arc<MemoryTier>,
    l3: RedisTier,
    backplane: RedisBackplane,
}

async fn instance(data_url: &str, prefix: &str, track: bool) -> Instance {
    instance_on(RedisConnection::standalone(data_url), prefix, track).await
}

/// [`instance`] with its L3 on what `data` connects to (a standalone server or a Cluster).
async fn instance_on(data: RedisConnectionBuilder, prefix: &str, track: bool) -> Instance {
    let conn = data
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(1000))
        .connect()
        .await
        .unwrap();
    let bp_conn = RedisConnection::standalone(standalone_url()).connect().await.unwrap();
    let l3 = data_tier(&conn, prefix).await;
    let mut backplane = RedisBackplane::builder(bp_conn).stream(format!("{prefix}log"));
    if track {
        backplane = backplane.track("users", &l3);
    }
    let backplane = backplane.build().await.unwrap();
    // The namespace version shared through Redis, as a fleet's instances share it (with local
    // generations each instance would count its own, and build other keys than its peers).
    let generations =
        RedisGenerations::new(conn.clone()).prefix(format!("{prefix}gen:")).cached_with(&backplane);
    let l1 = Arc::new(MemoryTier::builder().max_bytes(16 << 20).build());
    let cache: Cache<String> = Cache::builder("users")
        .tier(l1.clone(), TierPolicy::fresh(HOUR).no_breaker())
        .tier(l3.clone(), TierPolicy::fresh(HOUR).timeout(Duration::from_millis(500)))
        .generations(Arc::new(generations))
        .backplane(Arc::new(backplane.clone()), ReconnectPolicy::CatchUp)
        .fleet_state_timeout(Duration::from_secs(2))
        .synchronous_backfill(true)
        .build()
        .unwrap();
    // As a service does: keys built before the namespace version is read are checked against
    // the store's.
    cache.sync_namespace().await.unwrap();
    Instance { cache, l1, l3, backplane }
}

async fn in_l1(i: &Instance, key: &[u8]) -> bool {
    !matches!(i.l1.get(key).await.unwrap(), Lookup::Miss)
}

/// Wait for a proof of delivery sent after `after_ms`: every push Redis sent before it has been
/// applied.
async fn proof_after(
    rx: &mut broadcast::Receiver<BackplaneEvent>,
    after_ms: u64,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(BackplaneEvent::Confirmed { sent_at_ms })) if sent_at_ms > after_ms => return,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("backplane channel: {e}"),
            Err(_) => panic!("no proof of delivery after {after_ms} within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_another_client_drops_the_l1_copy_within_the_bound() {
    let url = standalone_url();
    let prefix = unique_prefix("csc-other");
    let tracked = instance(&url, &prefix, true).await;
    // The control: the same keys, no tracking (its backplane hears nothing of a raw SET).
    let untracked = instance(&url, &prefix, false).await;
    let mut raw = raw(&url).await;
    let (mut t_rx, mut u_rx) = (tracked.backplane.subscribe(), untracked.backplane.subscribe());
    let mut took = Vec::new();
    for n in 0..20 {
        let k = tracked.cache.key(format!("user:{n}"));
        tracked.cache.insert(&k, "v1".to_string()).await.unwrap();
        // The insert's notice reached the other instance, the own push was applied: from now
        // on a copy read into the untracked L1 stays, and the tracked one kept its own.
        let now = tier_core::spi::now_ms();
        proof_after(&mut u_rx, now, Duration::from_secs(2)).await;
        proof_after(&mut t_rx, now, Duration::from_secs(2)).await;
        // (A read racing with the listener applying the notice may answer nothing: read on.)
        eventually(
            Duration::from_secs(1),
            "the untracked instance reads v1 into its L1",
            || async {
                untracked.cache.get(&k).await.as_deref().map(String::as_str) == Some("v1")
                    && in_l1(&untracked, &k).await
            },
        )
        .await;
        assert!(in_l1(&tracked, &k).await, "the own write's copy stays");
        // Another application writes the key (not an envelope), or removes it.
        let redis_key = tracked.l3.redis_key(&k);
        if n % 2 == 0 {
            let () = raw.set(&redis_key, "written by someone else").await.unwrap();
        } else {
            let _: i64 = raw.del(&redis_key).await.unwrap();
        }
        took.push(
            eventually(Duration::from_millis(100), "the tracked L1 copy dropped", || async {
                !in_l1(&tracked, &k).await
            })
            .await,
        );
        assert!(in_l1(&untracked, &k).await, "without tracking the copy stays (the control)");
    }
    took.sort();
    eprintln!("foreign write → L1 copy dropped: median {:?}, max {:?}", took[10], took[19]);
}

/// Memory → disk → Redis: another client's write drops the copy from both local tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_another_client_drops_the_disk_copy_too() {
    let url = standalone_url();
    let prefix = unique_prefix("csc-disk");
    let dir = tempfile::tempdir().unwrap();
    let conn = RedisConnection::standalone(&url).connect().await.unwrap();
    let l3 = data_tier(&conn, &prefix).await;
    let backplane = RedisBackplane::builder(conn)
        .stream(format!("{prefix}log"))
        .track("users", &l3)
        .build()
        .await
        .unwrap();
    let l1 = Arc::new(MemoryTier::builder().max_bytes(16 << 20).build());
    let l2 = Arc::new(
        tier_disk::DiskTier::builder(dir.path())
            .capacity_bytes(8 << 20)
            .segment_size(256 << 10)
            .build()
            .unwrap(),
    );
    let cache: Cache<String> = Cache::builder("users")
        .tier(l1.clone(), TierPolicy::fresh(HOUR).no_breaker())
        .tier(l2.clone(), TierPolicy::fresh(HOUR))
        .tier(l3.clone(), TierPolicy::fresh(HOUR).timeout(Duration::from_millis(500)))
        .backplane(Arc::new(backplane.clone()), ReconnectPolicy::CatchUp)
        .build()
        .unwrap();
    cache.sync_namespace().await.unwrap();
    let mut rx = backplane.subscribe();
    let k = cache.key("user:1");
    cache.insert(&k, "v1".to_string()).await.unwrap();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
    let held = |t: Arc<dyn Tier>| {
        let k = k.clone();
        async move { !matches!(t.get(&k).await.unwrap(), Lookup::Miss) }
    };
    assert!(held(l1.clone()).await && held(l2.clone()).await, "the own write's copies stay");
    let mut raw = raw(&url).await;
    let () = raw.set(l3.redis_key(&k), "someone else's").await.unwrap();
    eventually(Duration::from_millis(100), "both local copies dropped", || async {
        !held(l1.clone()).await && !held(l2.clone()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_keep_their_l1_copy() {
    let url = standalone_url();
    let prefix = unique_prefix("csc-own");
    let a = instance(&url, &prefix, true).await;
    let mut rx = a.backplane.subscribe();
    for n in 0..50 {
        let k = a.cache.key(format!("user:{n}"));
        a.cache.insert(&k, format!("v{n}")).await.unwrap();
        // The push of this very write has been applied once a later proof came.
        proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
        assert!(in_l1(&a, &k).await, "an own write's L1 copy stays (key {n})");
        // Written again: still kept (the read-back sees the newer write).
        a.cache.insert(&k, format!("w{n}")).await.unwrap();
        proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
        assert!(in_l1(&a, &k).await, "the second own write's L1 copy stays (key {n})");
        assert_eq!(a.cache.get(&k).await.as_deref().cloned(), Some(format!("w{n}")));
    }
}

/// A batch of own writes (5 000 keys, one pipeline): every L1 copy stays, and the proofs go on
/// (the read-backs of pushes that came together are one pipeline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_own_writes_keeps_every_l1_copy() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let url = standalone_url();
    let prefix = unique_prefix("csc-batch");
    let a = instance(&url, &prefix, true).await;
    let mut rx = a.backplane.subscribe();
    let keys: Vec<_> = (0..5_000).map(|n| a.cache.key(format!("user:{n}"))).collect();
    let start = Instant::now();
    a.cache.insert_many(keys.iter().map(|k| (k.clone(), "v".to_string()))).await.unwrap();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(5)).await;
    eprintln!("5000 own writes: applied and proven {:?} after the batch began", start.elapsed());
    let mut kept = 0;
    for k in &keys {
        kept += usize::from(in_l1(&a, k).await);
    }
    assert_eq!(kept, keys.len(), "every own write's L1 copy stays");
}

/// The data connection (and so the tracking connection, made to the same server) goes through
/// a proxy; the stream reader does not. Cut: the stream reads on, but no proof is given any
/// more (the lease lapses: the L1 copy is not fresh); restored: a gap, then proofs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracking_connection_holds_the_lease_back_then_comes_back() {
    let proxy = Proxy::to_standalone().await;
    let prefix = unique_prefix("csc-lost");
    let b = instance(&proxy.url(), &prefix, true).await;
    let mut rx = b.backplane.subscribe();
    let k = b.cache.key("user:1");
    b.cache.insert(&k, "v1".to_string()).await.unwrap();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
    assert_eq!(b.cache.get(&k).await.as_deref().map(String::as_str), Some("v1"));

    proxy.cut();
    let cut_at = tier_core::spi::now_ms();
    // Within the bound (100 ms) and a loaded machine's slack, the L1 copy stops being fresh
    // (and L3 is cut off too: nothing fresh to answer).
    let took = eventually(Duration::from_millis(300), "the L1 copy not fresh", || async {
        b.cache.get(&k).await.is_none()
    })
    .await;
    eprintln!("tracking cut → L1 copy not fresh: a read saw it {took:?} after the cut (an L3 attempt included)");
    assert!(in_l1(&b, &k).await, "kept (stale-servable), only not fresh");
    // The stream keeps proving, but no proof covers an instant after the cut.
    let watch_until = Instant::now() + Duration::from_millis(300);
    let mut gap = false;
    while let Ok(ev) = tokio::time::timeout_at(watch_until.into(), rx.recv()).await {
        match ev.unwrap() {
            BackplaneEvent::Confirmed { sent_at_ms } => {
                assert!(sent_at_ms <= cut_at, "a proof after the cut: {sent_at_ms} > {cut_at}")
            }
            BackplaneEvent::Gap => gap = true,
            _ => {}
        }
    }
    assert!(!gap, "no gap while the connection is down");

    proxy.restore();
    let restored_at = tier_core::spi::now_ms();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_gap = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await.expect("back within 5 s").unwrap() {
            BackplaneEvent::Gap => saw_gap = true,
            BackplaneEvent::Confirmed { sent_at_ms } if sent_at_ms > restored_at => break,
            _ => {}
        }
    }
    assert!(saw_gap, "tracking back: a gap before the proofs (it cannot replay)");
    // Fresh again: a new write is served from the L1, the proofs flow.
    b.cache.insert(&k, "v2".to_string()).await.unwrap();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
    assert!(in_l1(&b, &k).await);
    assert_eq!(b.cache.get(&k).await.as_deref().map(String::as_str), Some("v2"));
}

/// A user whose ACL lacks `client|tracking`: the backplane builds, the stream alone proves
/// delivery and carries invalidations, and the refusal is met once (the server's ACL log
/// counts one denial), not in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_tracking_falls_back_to_the_stream_once() {
    let url = standalone_url();
    let prefix = unique_prefix("csc-acl");
    let user = format!("csc{}", rand::random::<u32>());
    let mut admin = raw(&url).await;
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-client|tracking")
        .query_async(&mut admin)
        .await
        .unwrap();
    let limited = url.replacen("redis://", &format!("redis://{user}:pw@"), 1);
    let b = instance(&limited, &prefix, true).await;
    let a = instance(&url, &prefix, false).await;
    let mut rx = b.backplane.subscribe();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
    // Invalidations still come over the stream.
    let k = a.cache.key("user:1");
    a.cache.insert(&k, "v1".to_string()).await.unwrap();
    // The insert's notice reached B: a copy read into its L1 from now on stays.
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
    // (A read racing with the listener applying that notice may answer nothing: read on.)
    eventually(Duration::from_secs(1), "B reads v1 into its L1", || async {
        b.cache.get(&k).await.as_deref().map(String::as_str) == Some("v1") && in_l1(&b, &k).await
    })
    .await;
    a.cache.insert(&k, "v2".to_string()).await.unwrap();
    eventually(Duration::from_millis(100), "B serving v2", || async {
        b.cache.get(&k).await.as_deref().map(String::as_str) == Some("v2")
    })
    .await;
    // Some time for a retry loop to show itself.
    proof_after(&mut rx, tier_core::spi::now_ms() + 300, Duration::from_secs(2)).await;
    let log: Vec<redis::Value> =
        redis::cmd("ACL").arg("LOG").query_async(&mut admin).await.unwrap();
    let denials = acl_denials(&log, &user);
    let _: redis::Value =
        redis::cmd("ACL").arg("DELUSER").arg(&user).query_async(&mut admin).await.unwrap();
    assert_eq!(denials, 1, "the refusal met once, not in a loop");
}

/// The `count` of the ACL log entries of `user`.
fn acl_denials(log: &[redis::Value], user: &str) -> i64 {
    let mut total = 0;
    for entry in log {
        let fields: Vec<(String, redis::Value)> = match redis::from_redis_value(entry.clone()) {
            Ok(map) => {
                let map: std::collections::HashMap<String, redis::Value> = map;
                map.into_iter().collect()
            }
            Err(_) => continue,
        };
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let who: Option<String> = get("username").and_then(|v| redis::from_redis_value(v).ok());
        if who.as_deref() == Some(user) {
            total += get("count").and_then(|v| redis::from_redis_value::<i64>(v).ok()).unwrap_or(0);
        }
    }
    total
}

/// The masters of the Cluster `urls[0]` belongs to, by slot range: `(first, last, url)`.
async fn masters_of(urls: &[String]) -> Vec<(i64, i64, String)> {
    let mut c = raw(&urls[0]).await;
    let slots: Vec<redis::Value> =
        redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await.unwrap();
    let mut out = Vec::new();
    for range in slots {
        let redis::Value::Array(range) = range else { panic!("not a slot range: {range:?}") };
        let int = |v: &redis::Value| redis::from_redis_value::<i64>(v.clone()).unwrap();
        let redis::Value::Array(master) = &range[2] else { panic!("no master: {range:?}") };
        let host: String = redis::from_redis_value(master[0].clone()).unwrap();
        out.push((int(&range[0]), int(&range[1]), format!("redis://{host}:{}/", int(&master[1]))));
    }
    out
}

/// A cache key of `cache` whose Redis key in `l3` lives in each master's slots, by master URL.
async fn a_key_on_each_master(
    i: &Instance,
    masters: &[(i64, i64, String)],
) -> Vec<(String, Vec<u8>)> {
    let mut c = raw(&masters[0].2).await;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for n in 0.. {
        let k = i.cache.key(format!("user:{n}"));
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(i.l3.redis_key(&k))
            .query_async(&mut c)
            .await
            .unwrap();
        let (_, _, url) = masters.iter().find(|m| (m.0..=m.1).contains(&slot)).unwrap();
        if !out.iter().any(|(u, _)| u == url) {
            out.push((url.clone(), k.to_vec()));
        }
        if out.len() == masters.len() {
            break;
        }
    }
    out
}

/// In the Cluster of the test run: a plain client's write to a key of each master (sent to
/// that master) drops the tracked instance's L1 copy, and only with tracking (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_write_to_a_key_of_any_master_drops_the_l1_copy() {
    let urls = cluster_urls();
    let prefix = unique_prefix("csc-cluster");
    let tracked = instance_on(RedisConnection::cluster(urls.clone()), &prefix, true).await;
    let untracked = instance_on(RedisConnection::cluster(urls.clone()), &prefix, false).await;
    let masters = masters_of(&urls).await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let (mut t_rx, mut u_rx) = (tracked.backplane.subscribe(), untracked.backplane.subscribe());
    for (master, k) in a_key_on_each_master(&tracked, &masters).await {
        tracked.cache.insert(&k, "v1".to_string()).await.unwrap();
        let now = tier_core::spi::now_ms();
        proof_after(&mut u_rx, now, Duration::from_secs(2)).await;
        proof_after(&mut t_rx, now, Duration::from_secs(2)).await;
        eventually(Duration::from_secs(1), "the untracked instance reads v1", || async {
            untracked.cache.get(&k).await.as_deref().map(String::as_str) == Some("v1")
                && in_l1(&untracked, &k).await
        })
        .await;
        assert!(in_l1(&tracked, &k).await, "the own write's copy stays ({master})");
        let mut node = raw(&master).await;
        let () = node.set(tracked.l3.redis_key(&k), "written by someone else").await.unwrap();
        let took =
            eventually(Duration::from_millis(200), "the tracked L1 copy dropped", || async {
                !in_l1(&tracked, &k).await
            })
            .await;
        eprintln!("master {master}: foreign write → L1 copy dropped in {took:?}");
        assert!(in_l1(&untracked, &k).await, "without tracking the copy stays (the control)");
    }
}

/// The tracking connections of the clients of the node at `url` (`flags` with `t`) killed;
/// how many.
async fn kill_tracking_clients(url: &str) -> usize {
    let mut admin = raw(url).await;
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut admin).await.unwrap();
    let ids: Vec<String> = list
        .lines()
        .filter(|l| {
            l.split(' ').any(|f| f.strip_prefix("flags=").is_some_and(|fl| fl.contains('t')))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(String::from))
        .collect();
    for id in &ids {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    ids.len()
}

/// A Cluster of the test's own: `CLIENT KILL` of the tracking connection on one master holds
/// the lease back (no proof covers an instant after the kill while it is down), then it is
/// made again with a gap, and that master's keys are followed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_one_masters_lost_tracking_connection_is_a_gap() {
    let nodes = own_cluster(3).await;
    let urls: Vec<String> = nodes.iter().map(OwnRedis::url).collect();
    let prefix = unique_prefix("csc-cluster-kill");
    let b = instance_on(RedisConnection::cluster(urls.clone()), &prefix, true).await;
    let mut rx = b.backplane.subscribe();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(5)).await;
    for (i, url) in urls.iter().enumerate() {
        assert_eq!(kill_tracking_clients(url).await, 1, "one tracking connection on master {i}");
        let killed_at = tier_core::spi::now_ms();
        loop {
            match next_any(&mut rx, Duration::from_secs(5)).await {
                BackplaneEvent::Gap => break,
                BackplaneEvent::Confirmed { sent_at_ms } => assert!(
                    sent_at_ms <= killed_at,
                    "a proof of {sent_at_ms} while master {i}'s tracking is down (killed at {killed_at})"
                ),
                _ => {}
            }
        }
        proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(5)).await;
    }
    // Followed again on every master: a raw write to each one's key drops the L1 copy.
    let masters = masters_of(&urls).await;
    for (master, k) in a_key_on_each_master(&b, &masters).await {
        b.cache.insert(&k, "v1".to_string()).await.unwrap();
        proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
        assert!(in_l1(&b, &k).await);
        let () = raw(&master).await.set(b.l3.redis_key(&k), "x").await.unwrap();
        eventually(Duration::from_millis(200), "the L1 copy dropped", || async {
            !in_l1(&b, &k).await
        })
        .await;
    }
}

/// Invalidation latency to another instance, tracking beside the stream, in one run: a raw
/// `SET` of a tracked key until the tracker's `Written`, and a publish until the other
/// instance's reader delivers it; interleaved, 500 of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_of_tracking_beside_the_stream() {
    let url = standalone_url();
    let raw = raw(&url).await;
    latency_beside_the_stream(RedisConnection::standalone(&url), raw, "standalone").await;
}

/// [`latency_of_tracking_beside_the_stream`] on the Cluster of the test run: the keys spread
/// over the masters (each one's tracking connection tells of its own), the stream on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_of_tracking_beside_the_stream_in_a_cluster() {
    let urls = cluster_urls();
    let raw = raw_cluster(&urls).await;
    latency_beside_the_stream(RedisConnection::cluster(urls), raw, "cluster").await;
}

async fn latency_beside_the_stream(
    data: RedisConnectionBuilder,
    mut raw: impl redis::aio::ConnectionLike + Send,
    shape: &str,
) {
    let prefix = unique_prefix("csc-latency");
    let conn = data.connect().await.unwrap();
    let tier = data_tier(&conn, &prefix).await;
    let stream = format!("{prefix}log");
    let b = RedisBackplane::builder(conn.clone())
        .stream(&stream)
        .track("users", &tier)
        .build()
        .await
        .unwrap();
    let a = RedisBackplane::builder(conn).stream(&stream).build().await.unwrap();
    let mut rx = b.subscribe();
    let (mut tracking, mut streamed) = (Vec::new(), Vec::new());
    for i in 0..500u64 {
        let k = format!("k{i}");
        let start = Instant::now();
        let () = redis::cmd("SET")
            .arg(tier.redis_key(k.as_bytes()))
            .arg("x")
            .query_async(&mut raw)
            .await
            .unwrap();
        loop {
            let ev =
                tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
            if let BackplaneEvent::Invalidate {
                what: Invalidation::Written { key, .. },
                position: None,
                ..
            } = ev
            {
                if key == k.as_bytes() {
                    break;
                }
            }
        }
        tracking.push(start.elapsed());
        let start = Instant::now();
        a.publish("users", &Invalidation::Namespace(i)).await.unwrap();
        loop {
            let ev =
                tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
            if matches!(ev, BackplaneEvent::Invalidate { what: Invalidation::Namespace(n), .. } if n == i)
            {
                break;
            }
        }
        streamed.push(start.elapsed());
        // Spread over time, so that reads block between messages as in service.
        tokio::time::sleep(Duration::from_millis(i % 7)).await;
    }
    let report = |label: &str, took: &mut Vec<Duration>| {
        took.sort();
        let p = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
        eprintln!(
            "{shape} {label}: invalidation latency over {} messages: p50 {:?}, p99 {:?}, max {:?}",
            took.len(),
            p(0.5),
            p(0.99),
            took[took.len() - 1]
        );
        p(0.99)
    };
    let t99 = report("tracking (raw SET → Written)", &mut tracking);
    let s99 = report("stream (publish → delivered)", &mut streamed);
    assert!(t99 <= Duration::from_millis(100) && s99 <= Duration::from_millis(100));
}

/// The next event, whatever it is.
async fn next_any(
    rx: &mut broadcast::Receiver<BackplaneEvent>,
    within: Duration,
) -> BackplaneEvent {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await.expect("an event in time") {
            Ok(ev) => return ev,
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("backplane channel: {e}"),
        }
    }
}

/// The next event that is not a proof of delivery.
async fn next_event(
    rx: &mut broadcast::Receiver<BackplaneEvent>,
    within: Duration,
) -> BackplaneEvent {
    let deadline = Instant::now() + within;
    loop {
        match next_any(rx, deadline.saturating_duration_since(Instant::now())).await {
            BackplaneEvent::Confirmed { .. } => {}
            other => return other,
        }
    }
}

/// `CLIENT KILL` of every connection (the tracking one among them, on a server of the test's
/// own): tracking is made again, with a gap, and follows the keys again; `FLUSHALL` is a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_comes_back_with_a_gap_and_a_flush_is_a_gap() {
    let server = OwnRedis::start();
    let prefix = unique_prefix("csc-kill");
    let conn = RedisConnection::standalone(server.url()).connect().await.unwrap();
    let tier = data_tier(&conn, &prefix).await;
    let b = RedisBackplane::builder(conn).stream(format!("{prefix}log")).track("users", &tier);
    let b = b.build().await.unwrap();
    let mut rx = b.subscribe();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
    assert!(kill_normal_clients(&server.url()).await >= 2);
    assert_eq!(next_event(&mut rx, Duration::from_secs(5)).await, BackplaneEvent::Gap);
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(5)).await;
    // Tracking again: a raw write is told.
    let mut raw = raw(&server.url()).await;
    let () = raw.set(tier.redis_key(b"k"), "x").await.unwrap();
    match next_event(&mut rx, Duration::from_secs(2)).await {
        BackplaneEvent::Invalidate { what: Invalidation::Written { key, created_at }, .. } => {
            assert_eq!(&key[..], b"k");
            assert_eq!(created_at, u64::MAX, "another client's write drops every local copy");
        }
        other => panic!("expected the write, got {other:?}"),
    }
    let () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    assert_eq!(next_event(&mut rx, Duration::from_secs(2)).await, BackplaneEvent::Gap);
}

/// A server without `CLIENT` (`rename-command CLIENT ""`): the backplane builds and proves
/// delivery by the stream alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_client_tracking_falls_back() {
    let server = OwnRedis::start_with(&["--rename-command", "CLIENT", ""]);
    let prefix = unique_prefix("csc-renamed");
    let conn = RedisConnection::standalone(server.url()).connect().await.unwrap();
    let tier = data_tier(&conn, &prefix).await;
    let b = RedisBackplane::builder(conn).stream(format!("{prefix}log")).track("users", &tier);
    let b = b.build().await.unwrap();
    let mut rx = b.subscribe();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(2)).await;
    let mut raw = raw(&server.url()).await;
    let () = raw.set(tier.redis_key(b"k"), "x").await.unwrap();
    // Proofs flow, and nothing comes of the write (no tracking).
    let until = tier_core::spi::now_ms() + 100;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap() {
            BackplaneEvent::Confirmed { sent_at_ms } if sent_at_ms > until => break,
            BackplaneEvent::Confirmed { .. } => {}
            other => panic!("no tracking, yet {other:?}"),
        }
    }
}

/// A Cluster of the test's own whose first master gets a replica, which then takes over
/// (`CLUSTER FAILOVER`): the new master is tracked (a write to a key of its slots drops the L1
/// copy); the master that stepped down stops proving within about 100 ms, then a gap; proofs go
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_master_that_takes_over_by_failover_is_tracked() {
    let nodes = own_cluster(3).await;
    let urls: Vec<String> = nodes.iter().map(OwnRedis::url).collect();
    let replica = OwnRedis::start_with(tier_redis::testing::CLUSTER_NODE_ARGS);
    let mut r = raw(&replica.url()).await;
    let () = redis::cmd("CLUSTER")
        .arg("MEET")
        .arg("127.0.0.1")
        .arg(nodes[0].port)
        .query_async(&mut r)
        .await
        .unwrap();
    let master_id: String =
        redis::cmd("CLUSTER").arg("MYID").query_async(&mut raw(&urls[0]).await).await.unwrap();
    // The replica must know the master before it can follow it.
    eventually(Duration::from_secs(10), "the new node replicates the first master", || {
        let mut r = r.clone();
        let master_id = master_id.clone();
        async move {
            let ok: redis::RedisResult<()> =
                redis::cmd("CLUSTER").arg("REPLICATE").arg(&master_id).query_async(&mut r).await;
            ok.is_ok()
        }
    })
    .await;

    let prefix = unique_prefix("csc-cluster-failover");
    let b = instance_on(RedisConnection::cluster(urls.clone()), &prefix, true).await;
    let mut rx = b.backplane.subscribe();
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(5)).await;
    // FORCE: without the handshake with the master (whose replication link may not be up
    // yet); the other masters vote.
    let () = redis::cmd("CLUSTER").arg("FAILOVER").arg("FORCE").query_async(&mut r).await.unwrap();
    eventually(Duration::from_secs(10), "the replica is a master", || {
        let mut r = r.clone();
        async move {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut r).await.unwrap();
            role.first() == Some(&redis::Value::BulkString(b"master".to_vec()))
        }
    })
    .await;
    // The master that stepped down stays up, and its tracking connection with it; it tells
    // nothing of the writes to its former slots: it must stop proving at once (its role is
    // asked every 5th proof, 100 ms), not at the next topology read (every second), and what
    // follows is a gap.
    let promoted_by = tier_core::spi::now_ms();
    loop {
        match next_any(&mut rx, Duration::from_secs(5)).await {
            BackplaneEvent::Gap => break,
            BackplaneEvent::Confirmed { sent_at_ms } => assert!(
                sent_at_ms <= promoted_by + 400,
                "a proof of {sent_at_ms}, the replica a master by {promoted_by}"
            ),
            _ => {}
        }
    }
    // A forced failover may lose what the replica had not received yet — the namespace
    // version among it (the new master then creates a new one): keys are built once the
    // instance has read it (a write while it is uncertain reads it first and goes to the key
    // of the current version, so a key built before would not be the one written).
    eventually(Duration::from_secs(10), "the namespace version is read", || async {
        b.cache.sync_namespace().await.is_ok()
    })
    .await;
    // A key of the first master's slots, which the new master serves now.
    let masters = masters_of(&[replica.url()]).await;
    let (_, k) = a_key_on_each_master(&b, &masters)
        .await
        .into_iter()
        .find(|(m, _)| *m == replica.url())
        .expect("the new master serves slots");
    let took = eventually(Duration::from_secs(10), "a write on the new master is told", || async {
        b.cache.insert(&k, "v1".to_string()).await.is_ok()
            && {
                proof_after(
                    &mut b.backplane.subscribe(),
                    tier_core::spi::now_ms(),
                    Duration::from_secs(5),
                )
                .await;
                in_l1(&b, &k).await
            }
            && {
                let () = raw(&replica.url()).await.set(b.l3.redis_key(&k), "x").await.unwrap();
                tokio::time::timeout(Duration::from_millis(300), async {
                    while in_l1(&b, &k).await {
                        tokio::time::sleep(Duration::from_millis(5)).await; // a poll's period
                    }
                })
                .await
                .is_ok()
            }
    })
    .await;
    eprintln!("failover → the new master's writes told within {took:?}");
    // Proofs go on, every master tracked.
    proof_after(&mut rx, tier_core::spi::now_ms(), Duration::from_secs(5)).await;
}

/// A Cluster tier whose masters are not known yet (a lazy connection to a Cluster that is not
/// there): the stream proves delivery, but no proof reaches the lease — tracking is not on
/// anywhere, so nothing written meanwhile would be told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_no_proof_before_the_masters_are_tracked() {
    let prefix = unique_prefix("csc-cluster-unknown");
    let nowhere = format!("redis://127.0.0.1:{}/", free_port());
    let conn = RedisConnection::cluster([nowhere]).lazy(true).connect().await.unwrap();
    let tier = data_tier(&conn, &prefix).await;
    let bp_conn = RedisConnection::standalone(standalone_url()).connect().await.unwrap();
    let b = RedisBackplane::builder(bp_conn)
        .stream(format!("{prefix}log"))
        .track("users", &tier)
        .build()
        .await
        .unwrap();
    let mut rx = b.subscribe();
    // The stream alone proves every 10 ms: 300 ms would see many proofs.
    let until = Instant::now() + Duration::from_millis(300);
    while let Ok(ev) = tokio::time::timeout_at(until.into(), rx.recv()).await {
        assert!(!matches!(ev, Ok(BackplaneEvent::Confirmed { .. })), "a proof without tracking");
    }
}
