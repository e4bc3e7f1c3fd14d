//! Tier-level faults: a killed server, a slow or cut network, background retry of failed writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use tier_core::spi::{Lookup, Tier};
use tier_core::TierErrorKind;
use tier_redis::{RedisConnection, RedisTier};

async fn tier_at(url: &str, response: Duration) -> RedisTier {
    let conn = RedisConnection::standalone(url)
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(response)
        .connect()
        .await
        .unwrap();
    RedisTier::builder(conn).prefix(unique_prefix("faults")).build().await.unwrap()
}

fn addr(server: &OwnRedis) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_unavailable_then_reconnects() {
    let mut server = OwnRedis::start();
    let t = tier_at(&server.url(), Duration::from_millis(200)).await;
    t.insert(key("k"), entry("v", 60_000, 60_000)).await.unwrap();

    server.kill();
    let start = Instant::now();
    let err = t.get(b"k").await.expect_err("server is down");
    assert_eq!(err.kind(), TierErrorKind::Unavailable, "{err}");
    assert!(err.is_tier_failure());
    assert!(start.elapsed() < t.connection().op_timeout() + Duration::from_millis(50));

    server.restart();
    // Reconnects by itself; the restarted server is empty (no persistence).
    eventually(Duration::from_secs(5), "tier answers again", || async {
        matches!(t.get(b"k").await, Ok(Lookup::Miss))
    })
    .await;
    t.insert(key("k"), entry("v2", 60_000, 60_000)).await.unwrap();
    assert!(t.get(b"k").await.unwrap().is_hit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_network_is_a_timeout() {
    let server = OwnRedis::start();
    let proxy = Proxy::start(addr(&server)).await;
    let t = tier_at(&proxy.url(), Duration::from_millis(50)).await;
    t.insert(key("k"), entry("v", 60_000, 60_000)).await.unwrap();
    proxy.set_delay(Duration::from_millis(200));
    let start = Instant::now();
    let err = t.get(b"k").await.expect_err("slow");
    let took = start.elapsed();
    assert_eq!(err.kind(), TierErrorKind::Timeout, "{err}");
    assert!(took < Duration::from_millis(150), "gave up after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_retried_in_the_background() {
    let server = OwnRedis::start();
    let proxy = Proxy::start(addr(&server)).await;
    let t = tier_at(&proxy.url(), Duration::from_millis(100)).await;
    let mut raw = raw(&server.url()).await;
    let _: () = raw.set(t.redis_key(b"gone"), b"old value").await.unwrap();

    proxy.cut();
    let err = t.insert(key("a"), entry("v1", 60_000, 60_000)).await.expect_err("cut");
    assert!(err.is_tier_failure(), "{err}");
    // Deduplicated per key: the latest write wins.
    t.insert(key("a"), entry("v2", 60_000, 60_000)).await.expect_err("cut");
    t.insert_many(vec![(key("b"), entry("vb", 60_000, 60_000))]).await.expect_err("cut");
    t.remove(b"gone").await.expect_err("cut");
    assert_eq!(t.pending_retries(), 3);

    proxy.restore();
    eventually(Duration::from_secs(10), "retries drained", || async { t.pending_retries() == 0 })
        .await;
    eventually(Duration::from_secs(2), "retried writes visible", || async {
        matches!(t.get(b"a").await, Ok(Lookup::Hit(ref e)) if value_of(e) == "v2")
    })
    .await;
    assert!(t.get(b"b").await.unwrap().is_hit());
    let stored: Vec<u8> = raw.get(t.redis_key(b"gone")).await.unwrap();
    let (meta, _) = tier_core::spi::envelope::decode_meta(&stored).expect("a tombstone");
    assert!(meta.tombstone, "the failed remove was retried: a tombstone replaced the old value");
    assert!(matches!(t.get(b"gone").await.unwrap(), Lookup::Miss));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_queue_is_bounded_and_drops_expired_writes() {
    let server = OwnRedis::start();
    let proxy = Proxy::start(addr(&server)).await;
    let conn = RedisConnection::standalone(proxy.url())
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let t = RedisTier::builder(conn)
        .prefix(unique_prefix("bounded"))
        .retry_capacity(3)
        .build()
        .await
        .unwrap();
    proxy.cut();
    for i in 0..5 {
        t.insert(key(&format!("k{i}")), entry("v", 60_000, 60_000)).await.expect_err("cut");
    }
    assert_eq!(t.pending_retries(), 3, "bounded: two writes dropped");
    // A queued write that has expired meanwhile is never written.
    t.insert(key("k0"), entry("short", 10, 50)).await.expect_err("cut");
    tokio::time::sleep(Duration::from_millis(60)).await; // let k0's entry expire
    proxy.restore();
    eventually(Duration::from_secs(10), "retries drained", || async { t.pending_retries() == 0 })
        .await;
    assert!(matches!(t.get(b"k0").await.unwrap(), Lookup::Miss), "expired write not stored");
    assert!(t.get(b"k1").await.unwrap().is_hit());
    assert!(t.get(b"k2").await.unwrap().is_hit());
    assert!(matches!(t.get(b"k3").await.unwrap(), Lookup::Miss), "dropped when full");
}

/// The checker's failed writes after `CLIENT KILL` ("redis write: broken pipe"): a call on a
/// connection the server had just closed failed, though the handle reconnects at once. Now it
/// goes once more over the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_killed_connection_goes_once_more_over_a_new_one() {
    let server = OwnRedis::start();
    let t = tier_at(&server.url(), Duration::from_millis(500)).await;
    t.insert(key("k"), entry("v", 60_000, 60_000)).await.unwrap();
    let mut raw = raw(&server.url()).await;
    for round in 0..5 {
        let killed: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(killed >= 1, "the tier's connection was killed");
        let value = format!("v{round}");
        t.insert(key("k"), entry(&value, 60_000, 60_000)).await.unwrap();
        t.remove(b"k").await.unwrap();
    }
}
