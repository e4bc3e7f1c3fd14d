//! The fleet-shared parts against real servers: tag generations (with their backplane-kept
//! cache) and the lock. The backplane has tests of its own (`backplane.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tier_core::spi::{Backplane, BackplaneEvent, DistributedLock, GenerationStore, Invalidation};
use tier_redis::{RedisBackplane, RedisConnection, RedisGenerations, RedisLock};
use tokio::sync::broadcast;

async fn standalone() -> RedisConnection {
    RedisConnection::standalone(standalone_url())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test Redis: {e}"))
}

async fn cluster() -> RedisConnection {
    RedisConnection::cluster(cluster_urls())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test Redis Cluster: {e}"))
}

async fn next_event(
    rx: &mut broadcast::Receiver<BackplaneEvent>,
    within: Duration,
) -> BackplaneEvent {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no backplane event within {within:?}"))
        .expect("backplane channel open")
}

async fn generations_are_shared(a_conn: RedisConnection, b_conn: RedisConnection) {
    let prefix = unique_prefix("gen");
    let channel = unique_prefix("genchan");
    let a_bp = RedisBackplane::builder(a_conn.clone()).channel(&channel).build().await.unwrap();
    let b_bp = RedisBackplane::builder(b_conn.clone()).channel(&channel).build().await.unwrap();
    let a = RedisGenerations::new(a_conn).prefix(&prefix).cached_with(&a_bp);
    let b = RedisGenerations::new(b_conn)
        .prefix(&prefix)
        .cached_with_max_age(&b_bp, Duration::from_secs(3600));
    let tags: Vec<Arc<str>> = (0..20).map(|i| Arc::from(format!("tag{i}"))).collect();

    assert_eq!(b.current(&tags).await.unwrap(), vec![None; 20]);
    let g3 = a.stamp(&tags[3..4]).await.unwrap()[0];
    assert_eq!(b.current(&tags).await.unwrap()[3], Some(g3), "unknown ones are not cached");
    assert_eq!(a.bump("tag3").await.unwrap(), g3 + 1);
    assert_eq!(a.bump("tag3").await.unwrap(), g3 + 2);
    assert_eq!(a.current(&tags[3..4]).await.unwrap(), vec![Some(g3 + 2)]);
    // B cached g3 for tag3: the backplane message drops it (the hierarchy publishes after a bump).
    let mut b_rx = b_bp.subscribe();
    a_bp.publish("users", &Invalidation::Tag(Arc::from("tag3"))).await.unwrap();
    loop {
        if let BackplaneEvent::Invalidate { .. } =
            next_event(&mut b_rx, Duration::from_secs(1)).await
        {
            break;
        }
    }
    let got = b.current(&tags).await.unwrap();
    assert_eq!(got[3], Some(g3 + 2));
    assert_eq!(got.iter().filter(|g| g.is_none()).count(), 19);
    assert!(got[19].is_none(), "tag19 is created below");

    // forget_cached drops everything (after a gap).
    let g4 = a.bump("tag4").await.unwrap();
    let _ = b.current(&tags[4..5]).await.unwrap();
    let g4b = a.bump("tag4").await.unwrap();
    // (B's cache holds g4 — no message was sent — while the backplane proves delivery; not
    // asserted: a loaded machine can delay a proof past the cache's lease.)
    assert_ne!(g4, g4b);
    // `stamp_uncached` reads Redis whatever is cached (what a write asks after it landed), and
    // drops a cached copy it finds older; a missing tag is created, as by `stamp`.
    assert_eq!(b.stamp_uncached(&tags[4..5]).await.unwrap(), vec![g4b]);
    assert_eq!(b.current(&tags[4..5]).await.unwrap(), vec![Some(g4b)], "the older copy dropped");
    let g4c = a.bump("tag4").await.unwrap();
    assert_eq!(b.stamp_uncached(&tags[4..5]).await.unwrap(), vec![g4c]);
    let created = b.stamp_uncached(&tags[19..20]).await.unwrap()[0];
    assert_eq!(a.current(&tags[19..20]).await.unwrap(), vec![Some(created)]);
    b.forget_cached();
    assert_eq!(b.current(&tags[4..5]).await.unwrap(), vec![Some(g4c)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_standalone() {
    generations_are_shared(standalone().await, standalone().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_cluster() {
    generations_are_shared(cluster().await, cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_generations_are_not_trusted_while_the_backplane_is_cut_off() {
    let prefix = unique_prefix("gen-lease");
    let stream = unique_prefix("gen-lease-log");
    let proxy = Proxy::to_standalone().await;
    let via_proxy = RedisConnection::standalone(proxy.url())
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(1000))
        .connect()
        .await
        .unwrap();
    let b_bp = RedisBackplane::builder(via_proxy).stream(&stream).build().await.unwrap();
    let a = RedisGenerations::new(standalone().await).prefix(&prefix);
    let b = RedisGenerations::new(standalone().await)
        .prefix(&prefix)
        .cached_with_max_age(&b_bp, Duration::from_secs(3600));
    let tags: Vec<Arc<str>> = vec![Arc::from("t")];
    let g = a.stamp(&tags).await.unwrap()[0];
    // Cached while the backplane proves delivery: a bump that sends no message is not seen.
    let mut b_rx = b_bp.subscribe();
    while !matches!(
        next_event(&mut b_rx, Duration::from_secs(1)).await,
        BackplaneEvent::Confirmed { .. }
    ) {}
    assert_eq!(b.current(&tags).await.unwrap(), vec![Some(g)]);
    // A bump that sends no message: B's cache holds g (used while proofs are recent; not
    // asserted, a loaded machine can delay a proof past the lease).
    let g1 = a.bump("t").await.unwrap();
    // Cut off: within the lease the cache is no longer used.
    proxy.cut();
    let took = eventually(Duration::from_secs(1), "B reads Redis", || async {
        b.current(&tags).await.unwrap() == vec![Some(g1)]
    })
    .await;
    assert!(took <= tier_redis::CACHE_LEASE * 3, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_uncached_read_redis_every_time() {
    let prefix = unique_prefix("gen-plain");
    let a = RedisGenerations::new(cluster().await).prefix(&prefix);
    let b = RedisGenerations::new(cluster().await).prefix(&prefix);
    let tags: Vec<Arc<str>> = vec![Arc::from("x"), Arc::from("y"), Arc::from("{z}")];
    assert_eq!(b.current(&tags).await.unwrap(), vec![None, None, None]);
    let y = a.bump("y").await.unwrap();
    assert_eq!(b.current(&tags).await.unwrap(), vec![None, Some(y), None]);
    assert!(b.current(&[]).await.unwrap().is_empty());
}

async fn lock_is_exclusive(conn: RedisConnection, other: RedisConnection) {
    let prefix = unique_prefix("lock");
    let a = RedisLock::new(conn).prefix(&prefix);
    let b = RedisLock::new(other).prefix(&prefix);
    let ttl = Duration::from_secs(10);
    let token = a.try_acquire(b"k", ttl).await.unwrap().expect("free lock");
    assert!(b.try_acquire(b"k", ttl).await.unwrap().is_none(), "held by a");
    assert!(a.try_acquire(b"k", ttl).await.unwrap().is_none(), "not reentrant");
    // A wrong token does not release it.
    b.release(b"k", &tier_core::spi::LockToken("not-the-token".into())).await.unwrap();
    assert!(b.try_acquire(b"k", ttl).await.unwrap().is_none());
    a.release(b"k", &token).await.unwrap();
    let tb = b.try_acquire(b"k", ttl).await.unwrap().expect("released");
    // A stale release (a's old token) leaves b's lock alone.
    a.release(b"k", &token).await.unwrap();
    assert!(a.try_acquire(b"k", ttl).await.unwrap().is_none());
    b.release(b"k", &tb).await.unwrap();

    // Locks expire with their TTL.
    let _t = a.try_acquire(b"short", Duration::from_millis(50)).await.unwrap().expect("free");
    eventually(Duration::from_secs(2), "lock expired", || async {
        b.try_acquire(b"short", Duration::from_secs(1)).await.unwrap().is_some()
    })
    .await;

    // Exactly one of many concurrent contenders wins.
    let winners = futures::future::join_all((0..50).map(|_| {
        let b = b.clone();
        async move { b.try_acquire(b"race", ttl).await.unwrap().is_some() }
    }))
    .await;
    assert_eq!(winners.iter().filter(|w| **w).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_standalone() {
    lock_is_exclusive(standalone().await, standalone().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_cluster() {
    lock_is_exclusive(cluster().await, cluster().await).await;
}
