//! The Redis tier, generations and backplane inside real `Cache` hierarchies: two instances
//! (separate connections and node ids) sharing one Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tier_core::spi::{GenerationStore, Lookup, Tier};
use tier_core::{Cache, ReconnectPolicy, TierPolicy};
use tier_memory::MemoryTier;
use tier_redis::{RedisBackplane, RedisConnection, RedisGenerations, RedisTier};

const HOUR: Duration = Duration::from_secs(3600);

/// One instance of a service: L1 memory + L3 Redis, shared generations, a backplane of its own
/// (own connections, own node id).
struct Instance {
    cache: Cache<String>,
    l1: Arc<MemoryTier>,
    l3: RedisTier,
    backplane: RedisBackplane,
    generations: RedisGenerations,
}

async fn instance(
    data_url: &str,
    backplane_url: &str,
    prefix: &str,
    channel: &str,
    policy: ReconnectPolicy,
) -> Instance {
    let conn = RedisConnection::standalone(data_url).connect().await.unwrap();
    // A cut proxy closes the connections (the reader sees it at once): the timeouts only need
    // to bear a loaded machine.
    let bp_conn = RedisConnection::standalone(backplane_url)
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(1000))
        .connect()
        .await
        .unwrap();
    let i = instance_on(conn, bp_conn, prefix, channel, policy).await;
    // Keys built before the namespace version is read carry 0, and entries under them are
    // checked against the store's version: wait for it, as a service does.
    i.cache.sync_namespace().await.unwrap();
    i
}

async fn instance_on(
    conn: RedisConnection,
    bp_conn: RedisConnection,
    prefix: &str,
    channel: &str,
    policy: ReconnectPolicy,
) -> Instance {
    let l3 = data_tier(&conn, prefix).await;
    let backplane = RedisBackplane::builder(bp_conn).stream(channel).build().await.unwrap();
    let generations =
        RedisGenerations::new(conn).prefix(format!("{prefix}gen:")).cached_with(&backplane);
    let l1 = Arc::new(MemoryTier::builder().max_bytes(16 << 20).build());
    let cache: Cache<String> = Cache::builder("users")
        .tier(l1.clone(), TierPolicy::fresh(HOUR).no_breaker())
        .tier(l3.clone(), TierPolicy::fresh(HOUR).timeout(Duration::from_millis(500)))
        .generations(Arc::new(generations.clone()))
        .backplane(Arc::new(backplane.clone()), policy)
        // The shared machine's load, not Redis, can take 100 ms: these tests are about
        // propagation, not about degrading.
        .fleet_state_timeout(Duration::from_secs(2))
        .synchronous_backfill(true)
        .build()
        .unwrap();
    Instance { cache, l1, l3, backplane, generations }
}

async fn pair(policy: ReconnectPolicy) -> (Instance, Instance) {
    let url = standalone_url();
    let prefix = unique_prefix("pair");
    let channel = format!("{prefix}chan");
    let a = instance(&url, &url, &prefix, &channel, policy).await;
    let b = instance(&url, &url, &prefix, &channel, policy).await;
    (a, b)
}

async fn in_l1(i: &Instance, key: &[u8]) -> bool {
    !matches!(i.l1.get(key).await.unwrap(), Lookup::Miss)
}

/// Read `key` on `i` until its L1 holds a copy (a read whose backfill raced with the notice of
/// the write it read skips the backfill: the notice orders background writes after it).
async fn read_into_l1(i: &Instance, key: &[u8]) {
    eventually(Duration::from_secs(1), "a copy in the L1", || async {
        i.cache.get(key).await.is_some() && in_l1(i, key).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_on_one_instance_is_gone_from_the_others_l1_within_100ms() {
    let (a, b) = pair(ReconnectPolicy::Clear).await;
    assert_ne!(a.backplane.node_id(), b.backplane.node_id());
    let k = a.cache.key("user:1");
    a.cache.insert(&k, "ada".to_string()).await.unwrap();
    // B reads it from L3 and keeps it in its L1.
    assert_eq!(b.cache.get(&k).await.as_deref().map(String::as_str), Some("ada"));
    read_into_l1(&b, &k).await;

    let start = Instant::now();
    a.cache.invalidate(&k).await.unwrap();
    let took = eventually(Duration::from_millis(100), "key gone from B's L1", || async {
        !in_l1(&b, &k).await
    })
    .await;
    assert!(b.cache.get(&k).await.is_none());
    println!(
        "invalidate reached the other L1 in {took:?} ({:?} including the call)",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_on_one_instance_is_gone_from_the_others_l1_within_100ms() {
    let (a, b) = pair(ReconnectPolicy::Clear).await;
    let k1 = a.cache.key("user:1");
    let k2 = a.cache.key("user:2");
    a.cache.insert_with_tags(&k1, "ada".to_string(), &["team:7"]).await.unwrap();
    a.cache.insert_with_tags(&k2, "bob".to_string(), &["team:8"]).await.unwrap();
    assert!(b.cache.get(&k1).await.is_some());
    assert!(b.cache.get(&k2).await.is_some());
    read_into_l1(&b, &k1).await;

    a.cache.invalidate_tag("team:7").await.unwrap();
    eventually(Duration::from_millis(100), "tagged entry gone for B", || async {
        b.cache.get(&k1).await.is_none()
    })
    .await;
    // Other tags are untouched, and A sees its own invalidation at once.
    assert_eq!(b.cache.get(&k2).await.as_deref().map(String::as_str), Some("bob"));
    assert!(a.cache.get(&k1).await.is_none());
    // A new value written after the bump is served again.
    a.cache.insert_with_tags(&k1, "ada2".to_string(), &["team:7"]).await.unwrap();
    assert_eq!(b.cache.get(&k1).await.as_deref().map(String::as_str), Some("ada2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_on_one_instance_clears_the_others_local_tier() {
    let (a, b) = pair(ReconnectPolicy::Clear).await;
    let k = a.cache.key("user:1");
    a.cache.insert(&k, "ada".to_string()).await.unwrap();
    assert!(b.cache.get(&k).await.is_some());
    a.cache.clear().await.unwrap();
    eventually(Duration::from_millis(100), "B's L1 cleared", || async { !in_l1(&b, &k).await })
        .await;
    assert!(matches!(a.l3.get(&k).await.unwrap(), Lookup::Miss), "L3 cleared by A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backplane_connection_resumes_and_keeps_local_tiers() {
    // Finding 5: one reconnect of the backplane used to wipe the local tiers. The stream reader
    // resumes from its last delivered entry: nothing was missed, nothing is thrown away (even
    // with the explicit `Clear` policy, which acts on gaps only). A server of our own: CLIENT
    // KILL must not disturb other tests.
    let server = OwnRedis::start();
    let prefix = unique_prefix("kill");
    let channel = format!("{prefix}chan");
    let b = instance(&server.url(), &server.url(), &prefix, &channel, ReconnectPolicy::Clear).await;
    let k = b.cache.key("user:1");
    b.cache.insert(&k, "ada".to_string()).await.unwrap();
    assert!(in_l1(&b, &k).await);

    let _ = kill_normal_clients(&server.url()).await;
    eventually(Duration::from_secs(5), "the reader resumed", || async {
        b.backplane.reconnects() == 1
    })
    .await;
    assert_eq!(b.backplane.gaps(), 0);
    assert!(in_l1(&b, &k).await, "the local tier is kept");
    assert_eq!(b.cache.get(&k).await.as_deref().map(String::as_str), Some("ada"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_log_is_a_gap_and_the_clear_policy_clears_local_tiers() {
    let mut server = OwnRedis::start();
    let prefix = unique_prefix("lost-log");
    let channel = format!("{prefix}chan");
    let b = instance(&server.url(), &server.url(), &prefix, &channel, ReconnectPolicy::Clear).await;
    let k = b.cache.key("user:1");
    b.cache.insert(&k, "ada".to_string()).await.unwrap();
    assert!(in_l1(&b, &k).await);
    // A restart without persistence: the stream and its epoch are gone.
    server.restart();
    eventually(Duration::from_secs(10), "local tier cleared after the gap", || async {
        !in_l1(&b, &k).await
    })
    .await;
    assert_eq!(b.backplane.gaps(), 1);
}

/// B's backplane goes through a proxy; while it is cut, A invalidates a key B holds in L1
/// (B's reader gets the message only once it is back: the stream keeps it). After the
/// reconnect B must not serve its old L1 copy, whatever the policy (no gap happened: the
/// reader resumes and delivers what it missed).
async fn missed_invalidation_is_recovered(policy: ReconnectPolicy) {
    let url = standalone_url();
    let upstream: SocketAddr =
        url.trim_start_matches("redis://").trim_end_matches('/').parse().unwrap();
    let proxy = Proxy::start(upstream).await;
    let prefix = unique_prefix("missed");
    let channel = format!("{prefix}chan");
    let a = instance(&url, &url, &prefix, &channel, policy).await;
    let b = instance(&url, &proxy.url(), &prefix, &channel, policy).await;
    let k = a.cache.key("user:1");
    a.cache.insert(&k, "v1".to_string()).await.unwrap();
    assert_eq!(b.cache.get(&k).await.as_deref().map(String::as_str), Some("v1"));
    read_into_l1(&b, &k).await;

    proxy.cut();
    a.cache.invalidate(&k).await.unwrap();
    a.cache.invalidate_tag("unrelated").await.unwrap();
    proxy.restore();
    eventually(Duration::from_secs(5), "B reconnected", || async { b.backplane.reconnects() >= 1 })
        .await;
    eventually(Duration::from_secs(2), "B dropped its old copy", || async {
        !in_l1(&b, &k).await && b.cache.get(&k).await.is_none()
    })
    .await;
    assert_eq!(b.backplane.gaps(), 0, "caught up, not a gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_invalidation_is_recovered_by_catching_up() {
    missed_invalidation_is_recovered(ReconnectPolicy::CatchUp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_invalidation_is_recovered_by_clearing() {
    missed_invalidation_is_recovered(ReconnectPolicy::Clear).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_invalidation_is_recovered_by_marking_stale() {
    missed_invalidation_is_recovered(ReconnectPolicy::MarkStale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_cluster_see_each_others_invalidations_within_100ms() {
    let prefix = unique_prefix("cluster-pair");
    let channel = format!("{prefix}chan");
    let connect = || RedisConnection::cluster(cluster_urls()).connect();
    let a = instance_on(
        connect().await.unwrap(),
        connect().await.unwrap(),
        &prefix,
        &channel,
        ReconnectPolicy::Clear,
    )
    .await;
    let b = instance_on(
        connect().await.unwrap(),
        connect().await.unwrap(),
        &prefix,
        &channel,
        ReconnectPolicy::Clear,
    )
    .await;
    let keys: Vec<_> = (0..20).map(|i| a.cache.key(format!("user:{i}"))).collect();
    for k in &keys {
        a.cache.insert_with_tags(k, "v".to_string(), &["team"]).await.unwrap();
        assert!(b.cache.get(k).await.is_some());
        read_into_l1(&b, k).await;
    }
    a.cache.invalidate(&keys[0]).await.unwrap();
    eventually(Duration::from_millis(100), "key gone from B's L1", || async {
        !in_l1(&b, &keys[0]).await
    })
    .await;
    a.cache.invalidate_tag("team").await.unwrap();
    eventually(Duration::from_millis(100), "tag gone for B", || async {
        futures::future::join_all(keys.iter().map(|k| b.cache.get(k)))
            .await
            .iter()
            .all(Option::is_none)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_versions_live_in_redis_and_reach_every_instance() {
    let url = standalone_url();
    let prefix = unique_prefix("ns");
    let channel = format!("{prefix}chan");
    let a = instance(&url, &url, &prefix, &channel, ReconnectPolicy::Clear).await;
    let b = instance(&url, &url, &prefix, &channel, ReconnectPolicy::Clear).await;
    let old = b.cache.key("user:1");
    a.cache.insert(&old, "ada".to_string()).await.unwrap();
    assert!(b.cache.get(&old).await.is_some());

    a.cache.invalidate_namespace().await.unwrap();
    let v = a.cache.keys().version();
    assert!(v >= 1);
    eventually(Duration::from_millis(100), "B's namespace moved on", || async {
        b.cache.keys().version() == v
    })
    .await;
    let new = b.cache.key("user:1");
    assert_ne!(new, old);
    assert!(b.cache.get(&new).await.is_none(), "the whole namespace is dropped");
    // An instance started later reads the version from Redis.
    let c = instance(&url, &url, &prefix, &channel, ReconnectPolicy::Clear).await;
    assert_eq!(c.cache.sync_namespace().await.unwrap(), v);
}

/// A namespace version lost in Redis after it was moved on (an eviction, a flush, a restart
/// without persistence) was read as 0 again: an instance started then built the keys of the
/// namespace's first life, and their entries (still in Redis) were served fresh. Now a missing
/// version gets a fresh start: a key of an earlier life is never built again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_namespace_version_never_revives_an_earlier_namespace() {
    let url = standalone_url();
    let prefix = unique_prefix("ns-lost");
    let channel = format!("{prefix}chan");
    let a = instance(&url, &url, &prefix, &channel, ReconnectPolicy::CatchUp).await;
    let first = a.cache.sync_namespace().await.unwrap();
    let old = a.cache.key("user:1");
    a.cache.insert(&old, "old".to_string()).await.unwrap();
    a.cache.invalidate_namespace().await.unwrap();
    lose_generations(&url, &prefix).await;

    let b = instance(&url, &url, &prefix, &channel, ReconnectPolicy::CatchUp).await;
    let version = b.cache.sync_namespace().await.unwrap();
    assert_ne!(version, first);
    let k = b.cache.key("user:1");
    assert_ne!(k, old, "a key of the namespace's first life is built again");
    assert_eq!(load_on(&b, &k).await, ("loaded".to_string(), true));
}

/// The coherence checker's namespace violations: the namespace version was lost in Redis
/// (`gen_delete`, a restart without persistence) while A kept building keys with it; B, started
/// then, began the namespace again with a fresh version and wrote under its keys, which A never
/// built — A served its old copy for as long as it lived. Now an instance whose read of the
/// version moves it on tells the others, and they follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_starts_a_lost_namespace_again_takes_the_others_along() {
    let url = standalone_url();
    let prefix = unique_prefix("ns-again");
    let channel = format!("{prefix}chan");
    let a = instance(&url, &url, &prefix, &channel, ReconnectPolicy::CatchUp).await;
    a.cache.sync_namespace().await.unwrap();
    a.cache.insert(a.cache.key("user:1"), "old".to_string()).await.unwrap();
    lose_generations(&url, &prefix).await;

    let b = instance(&url, &url, &prefix, &channel, ReconnectPolicy::CatchUp).await;
    b.cache.sync_namespace().await.unwrap();
    b.cache.insert(b.cache.key("user:1"), "new".to_string()).await.unwrap();
    eventually(Duration::from_secs(2), "A serves B's insert", || async {
        a.cache.get(a.cache.key("user:1")).await.as_deref().map(String::as_str) == Some("new")
    })
    .await;
    assert_eq!(a.cache.key("user:1"), b.cache.key("user:1"), "one namespace version again");
}

/// Delete every generation key under `prefix` (the namespace version among them), as an
/// eviction, a flush or a restart without persistence would.
async fn lose_generations(url: &str, prefix: &str) {
    let mut raw = raw(url).await;
    let lost: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}gen:*")).query_async(&mut raw).await.unwrap();
    assert!(!lost.is_empty(), "the namespace version lived under {prefix}gen:");
    let _: () = redis::cmd("DEL").arg(&lost).query_async(&mut raw).await.unwrap();
}

/// B's `get_or_load` of `k`: the value, and whether the loader ran.
async fn load_on(i: &Instance, k: &[u8]) -> (String, bool) {
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let got = i
        .cache
        .get_or_load(k, move || async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some("loaded".to_string()))
        })
        .await
        .unwrap()
        .expect("a value");
    (got.as_ref().clone(), ran.load(std::sync::atomic::Ordering::SeqCst))
}

/// Finding 2: a lost generation key (an eviction, `FLUSHALL`, a restart without persistence)
/// made the other instance serve the pre-invalidation value again (the counter fell back to 0,
/// which old stamps matched). Now a lost generation is unknown: the old entry is not fresh,
/// and a new stamp never matches old ones.
async fn a_lost_generation_never_revives_an_invalidated_value(url: &str, flush: bool) {
    let prefix = unique_prefix("gen-lost");
    let channel = format!("{prefix}chan");
    let a = instance(url, url, &prefix, &channel, ReconnectPolicy::CatchUp).await;
    let b = instance(url, url, &prefix, &channel, ReconnectPolicy::CatchUp).await;
    let k = a.cache.key("user:1");
    a.cache.insert_with_tags(&k, "old".to_string(), &["team"]).await.unwrap();
    assert_eq!(b.cache.get(&k).await.as_deref().map(String::as_str), Some("old"));
    a.cache.invalidate_tag("team").await.unwrap();
    eventually(Duration::from_secs(1), "B sees the invalidation", || async {
        b.cache.get(&k).await.is_none()
    })
    .await;
    let mut raw = raw(url).await;
    if flush {
        let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    } else {
        let gen_key = format!("{prefix}gen:team");
        let deleted: i64 = redis::cmd("DEL").arg(&gen_key).query_async(&mut raw).await.unwrap();
        assert_eq!(deleted, 1, "the generation lived under {gen_key}");
    }
    // B's cached generations are dropped (as after any gap): it reads what Redis holds now.
    b.generations.forget_cached();
    let (value, loaded) = load_on(&b, &k).await;
    assert_eq!(value, "loaded", "the invalidated value is not served as fresh again");
    assert!(loaded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_generation_key_never_revives_an_invalidated_value() {
    a_lost_generation_never_revives_an_invalidated_value(&standalone_url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_never_revives_an_invalidated_value() {
    let server = OwnRedis::start();
    a_lost_generation_never_revives_an_invalidated_value(&server.url(), true).await;
}

/// Finding 8 (the Redis half): a cache whose Redis is down at start-up builds and answers from
/// the origin; once Redis is up, its L3 fills. With the default connection settings (it took
/// `lazy(true)` before: `connect` failed while the server could not be reached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_builds_and_answers_while_redis_is_down() {
    let port = free_port();
    let conn = RedisConnection::standalone(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_millis(100))
        .connect()
        .await
        .expect("a server that cannot be reached is connected to in the background");
    let prefix = unique_prefix("down");
    let started = Instant::now();
    let b = instance_on(
        conn.clone(),
        conn.clone(),
        &prefix,
        &format!("{prefix}chan"),
        ReconnectPolicy::CatchUp,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(1), "built at once: {:?}", started.elapsed());
    let loads = Loads::default();
    let asked = Instant::now();
    assert_eq!(get(&b.cache, &loads, "1").await, "v:1");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "answered from the origin: {:?}",
        asked.elapsed()
    );
    assert_eq!(loads.get(), 1);

    let _server = OwnRedis::start_on(port, &[]);
    tokio::time::timeout(Duration::from_secs(10), conn.connected()).await.expect("connected");
    // The key as the cache builds it now: once the namespace version is read from Redis, a
    // key built before (of version 0) is one the cache no longer reads or writes.
    eventually(Duration::from_secs(5), "L3 written once Redis is up", || async {
        let _ = get(&b.cache, &loads, "2").await;
        b.l3.get(&b.cache.key("2")).await.is_ok_and(|l| l.is_hit())
    })
    .await;
}

/// The lease (invariant 5) on the Redis Stream: B's backplane is cut off (no proofs of
/// delivery come); within the propagation bound its L1 copy stops being fresh and B reads the
/// shared tier, where A's newer value is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_backplane_stops_local_copies_being_fresh_within_the_bound() {
    let url = standalone_url();
    let proxy = Proxy::to_standalone().await;
    let prefix = unique_prefix("lease");
    let channel = format!("{prefix}chan");
    let a = instance(&url, &url, &prefix, &channel, ReconnectPolicy::CatchUp).await;
    let b = instance(&url, &proxy.url(), &prefix, &channel, ReconnectPolicy::CatchUp).await;
    let k = a.cache.key("user:1");
    a.cache.insert(&k, "v1".to_string()).await.unwrap();
    read_into_l1(&b, &k).await;
    proxy.cut();
    let cut = Instant::now();
    a.cache.insert(&k, "v2".to_string()).await.unwrap();
    let took = eventually(Duration::from_secs(1), "B reads the newer value", || async {
        b.cache.get(&k).await.as_deref().map(String::as_str) == Some("v2")
    })
    .await;
    eprintln!(
        "B served the newer value {took:?} after the write ({:?} after the cut)",
        cut.elapsed()
    );
    assert!(took <= Duration::from_millis(250), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_on_one_instance_drops_the_others_l1_copy_within_100ms() {
    let (a, b) = pair(ReconnectPolicy::default()).await;
    let k = a.cache.key("user:1");
    a.cache.insert(&k, "v1".to_string()).await.unwrap();
    read_into_l1(&b, &k).await;
    let start = Instant::now();
    a.cache.insert(&k, "v2".to_string()).await.unwrap();
    let took = eventually(Duration::from_millis(100), "B serving v2", || async {
        b.cache.get(&k).await.as_deref().map(String::as_str) == Some("v2")
    })
    .await;
    eprintln!(
        "insert on A → B serves the new value: {took:?} after A's insert ({:?} in all)",
        start.elapsed()
    );
}
