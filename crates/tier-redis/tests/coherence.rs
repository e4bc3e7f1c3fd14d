//! The Redis side of coherence against real servers: compare-and-set writes and tombstones,
//! generations that never go back, retries that yield to newer invalidations, a tier that
//! builds while Redis is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use redis::AsyncCommands;
use tier_core::spi::{Codec, Entry, GenerationStore, Invalidation, Lookup, Meta, TagStamp, Tier};
use tier_core::TierErrorKind;
use tier_redis::{RedisConnection, RedisGenerations, RedisTier};

async fn standalone() -> RedisConnection {
    RedisConnection::standalone(standalone_url()).connect().await.unwrap()
}

async fn cluster() -> RedisConnection {
    RedisConnection::cluster(cluster_urls()).connect().await.unwrap()
}

/// An envelope entry of `value` created at `created_at`, alive for a minute; `insert`: written
/// by an insert (wins a tie).
fn made(value: &str, created_at: u64, insert: bool) -> Entry {
    let now = tier_core::spi::now_ms();
    let meta = Meta {
        created_at,
        fresh_until: now + 60_000,
        stale_until: now + 60_000,
        insert,
        ..Meta::default()
    };
    Entry::from_envelope(Codec::default().encode(&meta, Some(&value.to_string())).unwrap()).unwrap()
}

fn tagged(value: &str, tag: &str) -> Entry {
    let now = tier_core::spi::now_ms();
    let meta = Meta {
        created_at: now,
        fresh_until: now + 60_000,
        stale_until: now + 60_000,
        tags: Some(Arc::from(vec![TagStamp { tag: Arc::from(tag), generation: 1 }])),
        ..Meta::default()
    };
    Entry::from_envelope(Codec::default().encode(&meta, Some(&value.to_string())).unwrap()).unwrap()
}

fn is_miss(l: &Lookup) -> bool {
    matches!(l, Lookup::Miss)
}

async fn value(tier: &RedisTier, k: &str) -> Option<String> {
    tier.get(k.as_bytes()).await.unwrap().entry().map(value_of)
}

async fn an_old_write_never_replaces_a_newer_one(conn: RedisConnection) {
    let tier = data_tier(&conn, &unique_prefix("cas")).await;
    let t = tier_core::spi::now_ms();
    tier.insert(key("k"), made("new", t, false)).await.unwrap();
    // A load that started earlier and lands later is refused; so is one of the same instant.
    tier.insert(key("k"), made("old", t - 10, false)).await.unwrap();
    assert_eq!(value(&tier, "k").await.as_deref(), Some("new"));
    tier.insert(key("k"), made("tie-load", t, false)).await.unwrap();
    assert_eq!(value(&tier, "k").await.as_deref(), Some("new"), "a load loses a tie");
    tier.insert(key("k"), made("tie-insert", t, true)).await.unwrap();
    assert_eq!(value(&tier, "k").await.as_deref(), Some("tie-insert"), "an insert wins a tie");
    tier.insert(key("k"), made("newer", t + 1, false)).await.unwrap();
    assert_eq!(value(&tier, "k").await.as_deref(), Some("newer"));

    // A batch is compared key by key (one pipeline per slot in a Cluster).
    let keys: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    let first: Vec<(Bytes, Entry)> = keys.iter().map(|k| (key(k), made("v2", t, false))).collect();
    tier.insert_many(first).await.unwrap();
    let second: Vec<(Bytes, Entry)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (key(k), made(if i % 2 == 0 { "v1" } else { "v3" }, t - 1 + 2 * (i as u64 % 2), false))
        })
        .collect();
    tier.insert_many(second).await.unwrap();
    for (i, k) in keys.iter().enumerate() {
        let want = if i % 2 == 0 { "v2" } else { "v3" };
        assert_eq!(value(&tier, k).await.as_deref(), Some(want), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_an_old_write_never_replaces_a_newer_one() {
    an_old_write_never_replaces_a_newer_one(standalone().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_an_old_write_never_replaces_a_newer_one() {
    an_old_write_never_replaces_a_newer_one(cluster().await).await;
}

async fn a_load_that_started_before_a_remove_cannot_land_after_it(conn: RedisConnection) {
    let prefix = unique_prefix("tomb");
    let tier = data_tier(&conn, &prefix).await;
    let load_started = tier_core::spi::now_ms();
    tier.insert(key("k"), made("before", load_started - 5, false)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await; // the removal is a later instant
    tier.remove(b"k").await.unwrap();
    assert!(is_miss(&tier.get(b"k").await.unwrap()), "a tombstone reads as a miss");
    assert!(is_miss(&tier.get_many(&[key("k")]).await.unwrap()[0]));
    // The load's write-through arrives after the remove: refused.
    tier.insert(key("k"), made("loaded-before-remove", load_started, false)).await.unwrap();
    assert!(is_miss(&tier.get(b"k").await.unwrap()), "the slow load did not land");
    // The tombstone lives about a minute.
    let redis_key = tier.redis_key(b"k");
    let pttl: i64 = if conn.is_cluster() {
        raw_cluster(&cluster_urls()).await.pttl(&redis_key).await.unwrap()
    } else {
        raw(&standalone_url()).await.pttl(&redis_key).await.unwrap()
    };
    assert!((50_000..=60_000).contains(&pttl), "tombstone PTTL {pttl}");
    // A write that started after the remove lands.
    tokio::time::sleep(Duration::from_millis(2)).await;
    tier.insert(key("k"), made("after", tier_core::spi::now_ms(), false)).await.unwrap();
    assert_eq!(value(&tier, "k").await.as_deref(), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_a_load_that_started_before_a_remove_cannot_land_after_it() {
    a_load_that_started_before_a_remove_cannot_land_after_it(standalone().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_load_that_started_before_a_remove_cannot_land_after_it() {
    a_load_that_started_before_a_remove_cannot_land_after_it(cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fall_back_on_eval_when_the_server_forgot_the_script() {
    let server = OwnRedis::start();
    let conn = RedisConnection::standalone(server.url()).connect().await.unwrap();
    let tier = data_tier(&conn, "p:").await;
    let mut admin = raw(&server.url()).await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    let t = tier_core::spi::now_ms();
    tier.insert(key("a"), made("one", t, false)).await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    tier.insert_many(vec![
        (key("a"), made("old", t - 1, false)),
        (key("b"), made("two", t, false)),
    ])
    .await
    .unwrap();
    assert_eq!(value(&tier, "a").await.as_deref(), Some("one"));
    assert_eq!(value(&tier, "b").await.as_deref(), Some("two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_yield_to_newer_invalidations() {
    let proxy = Proxy::to_standalone().await;
    let conn = connect_quick(RedisConnection::standalone(proxy.url())).await;
    let tier = data_tier(&conn, &unique_prefix("observe")).await;
    proxy.cut();
    let t = tier_core::spi::now_ms();
    for k in ["a", "b", "c", "d"] {
        assert!(tier.insert(key(k), made(k, t, false)).await.is_err());
    }
    assert!(tier.insert(key("tagged"), tagged("x", "team")).await.is_err());
    assert_eq!(tier.pending_retries(), 5);
    tier.observe(&Invalidation::Key(key("a")));
    assert_eq!(tier.pending_retries(), 4, "a removal of the key drops its retry");
    tier.observe(&Invalidation::Written { key: key("b"), created_at: t });
    assert_eq!(tier.pending_retries(), 4, "its own notice (or one as old) does not");
    tier.observe(&Invalidation::Written { key: key("b"), created_at: t + 1 });
    assert_eq!(tier.pending_retries(), 3, "a newer write does");
    tier.observe(&Invalidation::Tag(Arc::from("other")));
    assert_eq!(tier.pending_retries(), 3);
    tier.observe(&Invalidation::Tag(Arc::from("team")));
    assert_eq!(tier.pending_retries(), 2, "the tagged value is dropped");
    tier.observe(&Invalidation::Clear { at: tier_core::spi::now_ms() });
    assert_eq!(tier.pending_retries(), 0, "a clear drops what it covers");
}

async fn lost_generations_never_match_old_stamps(conn: RedisConnection) {
    let prefix = unique_prefix("gen-lost");
    let a = RedisGenerations::new(conn.clone()).prefix(&prefix);
    let b = RedisGenerations::new(conn.clone()).prefix(&prefix);
    let tags: Vec<Arc<str>> = vec![Arc::from("t")];
    assert_eq!(b.current(&tags).await.unwrap(), vec![None], "never stamped: unknown");
    let stamped = a.stamp(&tags).await.unwrap()[0];
    assert!(stamped > 1 << 40, "a fresh start from the clock, not 0 or 1: {stamped}");
    assert_eq!(b.stamp(&tags).await.unwrap(), vec![stamped], "stamping agrees");
    assert_eq!(b.current(&tags).await.unwrap(), vec![Some(stamped)]);

    // The key is lost (an eviction, FLUSHALL, a restart without persistence).
    let gen_key = a.redis_key("t");
    if conn.is_cluster() {
        let _: i64 = raw_cluster(&cluster_urls()).await.del(&gen_key).await.unwrap();
    } else {
        let _: i64 = raw(&standalone_url()).await.del(&gen_key).await.unwrap();
    }
    assert_eq!(b.current(&tags).await.unwrap(), vec![None], "lost: unknown, not 0");
    let again = b.stamp(&tags).await.unwrap()[0];
    assert_ne!(again, stamped, "a new life of the tag never matches old stamps");
    // A bump of a lost generation starts fresh too.
    let _: i64 = raw_del(&conn, &gen_key).await;
    let bumped = a.bump("t").await.unwrap();
    assert!(bumped != stamped + 1 && bumped != again + 1 && bumped > 1 << 40, "{bumped}");
    assert_eq!(b.current(&tags).await.unwrap(), vec![Some(bumped)]);
    // The clear floor only goes up.
    assert_eq!(a.floor("users").await.unwrap(), 0);
    assert_eq!(a.raise_floor("users", 1_700_000_000_123).await.unwrap(), 1_700_000_000_123);
    assert_eq!(b.raise_floor("users", 1_600_000_000_000).await.unwrap(), 1_700_000_000_123);
    assert_eq!(b.floor("users").await.unwrap(), 1_700_000_000_123);
    assert_eq!(b.floor("orders").await.unwrap(), 0, "a floor per cache");
}

async fn raw_del(conn: &RedisConnection, k: &[u8]) -> i64 {
    if conn.is_cluster() {
        raw_cluster(&cluster_urls()).await.del(k).await.unwrap()
    } else {
        raw(&standalone_url()).await.del(k).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_lost_generations_never_match_old_stamps() {
    lost_generations_never_match_old_stamps(standalone().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lost_generations_never_match_old_stamps() {
    lost_generations_never_match_old_stamps(cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_makes_every_generation_unknown() {
    let server = OwnRedis::start();
    let conn = RedisConnection::standalone(server.url()).connect().await.unwrap();
    let g = RedisGenerations::new(conn);
    let tags: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("t{i}"))).collect();
    let before = g.stamp(&tags).await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw(&server.url()).await).await.unwrap();
    assert_eq!(g.current(&tags).await.unwrap(), vec![None; 5]);
    let after = g.stamp(&tags).await.unwrap();
    assert!(before.iter().zip(&after).all(|(b, a)| b != a), "{before:?} {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_builds_while_redis_is_down_and_answers_once_it_is_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let started = Instant::now();
    let conn = RedisConnection::standalone(&url)
        .connect_timeout(Duration::from_millis(100))
        .lazy(true)
        .connect()
        .await
        .expect("a lazy connection builds without a server");
    let tier = RedisTier::builder(conn.clone()).prefix("lazy:").build().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "built at once: {:?}", started.elapsed());
    assert!(!conn.is_connected());
    let call = Instant::now();
    let e = tier.get(b"k").await.unwrap_err();
    assert_eq!(e.kind(), TierErrorKind::Unavailable, "{e}");
    assert!(call.elapsed() < Duration::from_millis(50), "fails fast: {:?}", call.elapsed());

    let _server = OwnRedis::start_on(port, &[]);
    tokio::time::timeout(Duration::from_secs(10), conn.connected()).await.expect("connected");
    tier.insert(key("k"), made("v", tier_core::spi::now_ms(), true)).await.unwrap();
    assert_eq!(value(&tier, "k").await.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_tier_builds_while_the_cluster_is_down() {
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect();
    let conn = RedisConnection::cluster(urls)
        .connect_timeout(Duration::from_millis(100))
        .lazy(true)
        .connect()
        .await
        .unwrap();
    let tier = RedisTier::builder(conn.clone()).prefix("lazy:").build().await.unwrap();
    let e = tier.get(b"k").await.unwrap_err();
    assert_eq!(e.kind(), TierErrorKind::Unavailable, "{e}");
    assert!(conn.is_cluster() && !conn.is_connected());
}

/// Two inserts of a stripe within one tick of the coarse clock gave the second a `created_at`
/// moved ahead of the clock (to tell them apart). Another instance's invalidation (or insert)
/// in that tick carried the clock's instant — older than the stored entry — so Redis' compare-
/// and-set refused it: acknowledged, and the old value stayed in Redis for every instance
/// (the checker's "a copy in Redis served after another instance's acknowledged invalidate").
/// Now no `created_at` is moved ahead of the clock (ties are what the rules already settle: an
/// insert and a tombstone win them, a load loses them, a notice drops a copy of its instant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_right_after_another_instances_inserts_leaves_no_old_value_in_redis() {
    let conn = standalone().await;
    let prefix = unique_prefix("lead");
    let build = |tier: RedisTier| {
        tier_core::Cache::<String>::builder("users")
            .tier(Arc::new(tier), tier_core::TierPolicy::fresh(Duration::from_secs(60)))
            .build()
            .unwrap()
    };
    let a = build(data_tier(&conn, &prefix).await);
    let b = build(data_tier(&conn, &prefix).await);
    for round in 0..30 {
        let k = format!("k{round}");
        b.insert(&k, "first".into()).await.unwrap();
        b.insert(&k, "old".into()).await.unwrap();
        a.invalidate(&k).await.unwrap();
        assert_eq!(a.get(&k).await, None, "round {round}: B's old value survived A's invalidate");
        b.insert(&k, "older".into()).await.unwrap();
        b.insert(&k, "old".into()).await.unwrap();
        a.insert(&k, "new".into()).await.unwrap();
        let got = b.get(&k).await.map(|v| v.as_ref().clone());
        assert_eq!(got.as_deref(), Some("new"), "round {round}: A's insert was refused");
    }
}
