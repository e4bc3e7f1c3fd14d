//! Behavioural tests of `RedisTier`, the same against a standalone server and a Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use redis::AsyncCommands;
use tier_core::spi::{Entry, Lookup, Tier, Value};
use tier_core::{Storage, TierErrorKind};
use tier_redis::{RedisConnection, RedisTier};

#[derive(Clone, Copy, Debug)]
enum Mode {
    Standalone,
    Cluster,
}

async fn conn(mode: Mode) -> RedisConnection {
    match mode {
        Mode::Standalone => RedisConnection::standalone(standalone_url()).connect().await,
        Mode::Cluster => RedisConnection::cluster(cluster_urls()).connect().await,
    }
    .unwrap_or_else(|e| panic!("cannot connect to the test Redis ({mode:?}): {e}"))
}

async fn tier(mode: Mode, name: &str) -> RedisTier {
    RedisTier::builder(conn(mode).await).prefix(unique_prefix(name)).build().await.unwrap()
}

/// Write raw bytes under the tier's key, behind its back.
async fn raw_set(mode: Mode, key: &[u8], value: &[u8]) {
    match mode {
        Mode::Standalone => {
            let mut c = raw(&standalone_url()).await;
            let _: () = c.set(key, value).await.unwrap();
        }
        Mode::Cluster => {
            let mut c = raw_cluster(&cluster_urls()).await;
            let _: () = c.set(key, value).await.unwrap();
        }
    }
}

async fn raw_pttl(mode: Mode, key: &[u8]) -> i64 {
    match mode {
        Mode::Standalone => raw(&standalone_url()).await.pttl(key).await.unwrap(),
        Mode::Cluster => raw_cluster(&cluster_urls()).await.pttl(key).await.unwrap(),
    }
}

async fn raw_exists(mode: Mode, key: &[u8]) -> bool {
    match mode {
        Mode::Standalone => raw(&standalone_url()).await.exists(key).await.unwrap(),
        Mode::Cluster => raw_cluster(&cluster_urls()).await.exists(key).await.unwrap(),
    }
}

async fn hit_stale_miss(mode: Mode) {
    let t = tier(mode, "classify").await;
    assert_eq!(t.storage(), Storage::Envelopes);
    assert!(t.is_shared());
    assert!(matches!(t.get(b"absent").await.unwrap(), Lookup::Miss));

    t.insert(key("fresh"), entry("f", 60_000, 120_000)).await.unwrap();
    t.insert(key("stale"), entry("s", -1_000, 60_000)).await.unwrap();
    match t.get(b"fresh").await.unwrap() {
        Lookup::Hit(e) => assert_eq!(value_of(&e), "f"),
        other => panic!("expected a hit, got {other:?}"),
    }
    match t.get(b"stale").await.unwrap() {
        Lookup::Stale(e) => assert_eq!(value_of(&e), "s"),
        other => panic!("expected stale, got {other:?}"),
    }
    // Replacing a value.
    t.insert(key("fresh"), entry("f2", 60_000, 120_000)).await.unwrap();
    assert_eq!(value_of(t.get(b"fresh").await.unwrap().entry().unwrap()), "f2");
}

async fn px_expiry(mode: Mode) {
    let t = tier(mode, "px").await;
    t.insert(key("k"), entry("v", 100, 300)).await.unwrap();
    let pttl = raw_pttl(mode, &t.redis_key(b"k")).await;
    assert!(pttl > 0 && pttl <= 300, "PX follows stale_until: pttl {pttl}");
    // Redis drops it once gone.
    eventually(Duration::from_secs(3), "entry expired in Redis", || async {
        !raw_exists(mode, &t.redis_key(b"k")).await
    })
    .await;
    assert!(matches!(t.get(b"k").await.unwrap(), Lookup::Miss));

    // An entry already past stale_until is not stored, and removes what was there.
    t.insert(key("old"), entry("v", 60_000, 60_000)).await.unwrap();
    t.insert(key("old"), entry("dead", -2_000, -1_000)).await.unwrap();
    assert!(!raw_exists(mode, &t.redis_key(b"old")).await);
    assert!(matches!(t.get(b"old").await.unwrap(), Lookup::Miss));
}

async fn batches(mode: Mode) {
    let t = tier(mode, "batch").await;
    let keys: Vec<Bytes> = (0..100).map(|i| key(&format!("k{i}"))).collect();
    let entries: Vec<(Bytes, Entry)> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(i, k)| {
            let e = if i % 3 == 1 {
                entry(&format!("v{i}"), 60_000, 120_000)
            } else {
                entry(&format!("v{i}"), -1, 60_000)
            };
            (k.clone(), e)
        })
        .collect();
    t.insert_many(entries).await.unwrap();
    let got = t.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), 100);
    for (i, l) in got.iter().enumerate() {
        match (i % 3, l) {
            (0, Lookup::Miss) => {}
            (1, Lookup::Hit(e)) | (2, Lookup::Stale(e)) => assert_eq!(value_of(e), format!("v{i}")),
            (_, other) => panic!("key {i}: unexpected {other:?}"),
        }
    }
    assert!(t.get_many(&[]).await.unwrap().is_empty());
    t.insert_many(Vec::new()).await.unwrap();
}

async fn remove_and_clear(mode: Mode) {
    let t = tier(mode, "clear").await;
    let other = tier(mode, "clear-other").await;
    for i in 0..2500 {
        // More than one SCAN step, spread over every master of a Cluster.
        t.insert(key(&format!("k{i}")), entry("v", 60_000, 60_000)).await.unwrap();
    }
    other.insert(key("k0"), entry("keep", 60_000, 60_000)).await.unwrap();
    t.remove(b"k1").await.unwrap();
    t.remove(b"never-there").await.unwrap();
    assert!(matches!(t.get(b"k1").await.unwrap(), Lookup::Miss));
    assert!(t.get(b"k2").await.unwrap().is_hit());

    t.clear().await.unwrap();
    let keys: Vec<Bytes> = (0..2500).map(|i| key(&format!("k{i}"))).collect();
    assert!(t.get_many(&keys).await.unwrap().iter().all(|l| matches!(l, Lookup::Miss)));
    // Another prefix is untouched.
    assert_eq!(value_of(other.get(b"k0").await.unwrap().entry().unwrap()), "keep");
}

async fn foreign_bytes(mode: Mode) {
    let t = tier(mode, "foreign").await;
    raw_set(mode, &t.redis_key(b"json"), br#"{"name":"another service"}"#).await;
    raw_set(mode, &t.redis_key(b"short"), b"TIE1").await;
    for k in [&b"json"[..], b"short"] {
        let err = t.get(k).await.expect_err("foreign bytes must be an error");
        assert_eq!(err.kind(), TierErrorKind::Decode, "{err}");
        assert!(!err.is_tier_failure(), "a bad value says nothing of the tier's health");
    }
    let err = t.get_many(&[key("json")]).await.expect_err("foreign bytes in a batch");
    assert!(err.is_decode());
}

async fn objects_are_rejected(mode: Mode) {
    let t = tier(mode, "objects").await;
    let mut e = entry("v", 1000, 1000);
    e.value = Value::Object(std::sync::Arc::new(5u32));
    let err = t.insert(key("k"), e).await.expect_err("objects are not stored");
    assert_eq!(err.kind(), TierErrorKind::Rejected);
    assert_eq!(t.pending_retries(), 0, "a rejected value is not retried");
}

/// `stats()` reports the server's figures (every master's, summed in a Cluster): keys written
/// before the tier existed are counted at its first poll, and memory is never 0.
async fn server_stats(mode: Mode) {
    for i in 0..20 {
        raw_set(mode, format!("{}:stats:{i}", unique_prefix("stats")).as_bytes(), b"x").await;
    }
    let t = tier(mode, "stats").await;
    eventually(Duration::from_secs(10), "server figures polled", || async {
        let s = t.stats();
        s.entries >= 20 && s.bytes > 0
    })
    .await;
}

macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod standalone {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(Mode::Standalone).await })*
        }
        mod cluster {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(Mode::Cluster).await })*
        }
    };
}

both_modes!(
    hit_stale_miss,
    px_expiry,
    batches,
    remove_and_clear,
    foreign_bytes,
    objects_are_rejected,
    server_stats
);

#[tokio::test]
async fn cluster_urls_are_really_a_cluster() {
    assert!(conn(Mode::Cluster).await.is_cluster());
    assert!(!conn(Mode::Standalone).await.is_cluster());
}

#[tokio::test]
async fn auth_in_the_url() {
    let server = OwnRedis::start();
    let mut c = raw(&server.url()).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query_async(&mut c)
        .await
        .unwrap();
    let url = format!("redis://:s3cret@127.0.0.1:{}/", server.port);
    let t = RedisTier::builder(RedisConnection::standalone(&url)).build().await.unwrap();
    t.insert(key("k"), entry("v", 1000, 1000)).await.unwrap();
    assert!(t.get(b"k").await.unwrap().is_hit());
    let wrong = format!("redis://:nope@127.0.0.1:{}/", server.port);
    let err = RedisTier::builder(RedisConnection::standalone(&wrong))
        .build()
        .await
        .expect_err("wrong password");
    assert!(err.to_string().contains("redis://***@127.0.0.1"), "password redacted: {err}");
    assert!(!err.to_string().contains("nope"), "password redacted: {err}");
}

#[tokio::test]
async fn setup_errors_are_clear() {
    let no_urls = RedisConnection::cluster(Vec::<String>::new());
    let err = RedisTier::builder(no_urls).build().await.expect_err("no url");
    assert!(err.to_string().contains("URL"), "{err}");
    let err = RedisTier::builder(RedisConnection::standalone("not a url"))
        .build()
        .await
        .expect_err("bad url");
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");
    // Nothing listens on port 1 (by default that connects in the background: fail fast here).
    let err = RedisTier::builder(RedisConnection::standalone("redis://127.0.0.1:1/").lazy(false))
        .build()
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    // A per-master breaker that cannot run is refused before connecting.
    let busy_loop =
        tier_core::BreakerConfig { cooldown: Duration::ZERO, ..tier_redis::default_node_breaker() };
    let err = RedisTier::builder(RedisConnection::cluster(["redis://127.0.0.1:1/"]))
        .node_breaker(busy_loop)
        .build()
        .await
        .expect_err("zero cool-down");
    assert!(err.to_string().contains("cooldown"), "{err}");
}

#[tokio::test]
async fn a_cluster_of_one_node_that_does_not_know_its_address() {
    // A node that met no other announces its slots with an empty host ("the node you asked"):
    // per-node work (clear's SCAN + UNLINK, the per-master breakers) goes to the URL given.
    let nodes = own_cluster(1).await;
    let t = RedisTier::builder(RedisConnection::cluster([nodes[0].url()]))
        .prefix(unique_prefix("one-node"))
        .build()
        .await
        .unwrap();
    let master = format!("127.0.0.1:{}", nodes[0].port);
    assert_eq!(t.node_breakers(), [(master, tier_core::BreakerState::Closed)]);
    t.insert(key("k"), entry("v", 60_000, 60_000)).await.unwrap();
    t.clear().await.unwrap();
    assert!(matches!(t.get(b"k").await.unwrap(), Lookup::Miss));
}
