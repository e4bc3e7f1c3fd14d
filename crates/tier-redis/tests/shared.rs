//! The fleet-shared parts against real servers: backplane, tag generations, lock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
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

async fn backplane_delivers_to_others_only(a_conn: RedisConnection, b_conn: RedisConnection) {
    let channel = unique_prefix("chan");
    let a = RedisBackplane::builder(a_conn).channel(&channel).node_id("a").build().await.unwrap();
    let b = RedisBackplane::builder(b_conn).channel(&channel).node_id("b").build().await.unwrap();
    let mut a_rx = a.subscribe();
    let mut b_rx = b.subscribe();

    let sent = [
        Invalidation::Key(Bytes::from_static(b"user:\x00\xff1")),
        Invalidation::Tag(Arc::from("team:7")),
        Invalidation::Namespace(3),
        Invalidation::Clear { at: 17 },
        Invalidation::Written { key: Bytes::from_static(b"k"), created_at: 5 },
    ];
    for what in &sent {
        let start = Instant::now();
        a.publish("users", what).await.unwrap();
        let got = next_event(&mut b_rx, Duration::from_millis(100)).await;
        let expected = BackplaneEvent::Invalidate {
            cache: "users".into(),
            what: what.clone(),
            position: None,
        };
        assert_eq!(got, expected);
        assert!(start.elapsed() < Duration::from_millis(100));
    }
    // A ignores its own messages: B's message is the first thing A hears.
    b.publish("orders", &Invalidation::Clear { at: 1 }).await.unwrap();
    let got = next_event(&mut a_rx, Duration::from_millis(500)).await;
    assert_eq!(
        got,
        BackplaneEvent::Invalidate {
            cache: "orders".into(),
            what: Invalidation::Clear { at: 1 },
            position: None
        }
    );
    assert!(a_rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_standalone() {
    backplane_delivers_to_others_only(standalone().await, standalone().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_cluster() {
    backplane_delivers_to_others_only(cluster().await, cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_reconnects_after_client_kill() {
    // A server of our own: CLIENT KILL TYPE pubsub must not disturb other tests' backplanes.
    let server = OwnRedis::start();
    let connect = || RedisConnection::standalone(server.url()).connect();
    let channel = unique_prefix("kill");
    let a = RedisBackplane::builder(connect().await.unwrap())
        .channel(&channel)
        .node_id("a")
        .build()
        .await
        .unwrap();
    let b = RedisBackplane::builder(connect().await.unwrap())
        .channel(&channel)
        .node_id("b")
        .build()
        .await
        .unwrap();
    let mut b_rx = b.subscribe();
    assert_eq!(b.reconnects(), 0);

    // Kill every pub/sub connection on the server (both backplanes' subscriptions).
    let killed = kill_pubsub(&server.url()).await;
    assert!(killed >= 2, "killed {killed}");

    assert_eq!(next_event(&mut b_rx, Duration::from_secs(5)).await, BackplaneEvent::Gap);
    assert_eq!(b.reconnects(), 1);
    // Messages flow again after the reconnect.
    eventually(Duration::from_secs(5), "a reconnected too", || async { a.reconnects() == 1 }).await;
    a.publish("users", &Invalidation::Tag(Arc::from("t"))).await.unwrap();
    assert_eq!(
        next_event(&mut b_rx, Duration::from_millis(500)).await,
        BackplaneEvent::Invalidate {
            cache: "users".into(),
            what: Invalidation::Tag(Arc::from("t")),
            position: None,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_survives_a_proxy_cut_and_reconnects_when_restored() {
    let upstream =
        standalone_url().trim_start_matches("redis://").trim_end_matches('/').parse().unwrap();
    let proxy = Proxy::start(upstream).await;
    let channel = unique_prefix("proxy");
    let via_proxy = RedisConnection::standalone(proxy.url())
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let b = RedisBackplane::builder(via_proxy)
        .channel(&channel)
        .ping_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let a = RedisBackplane::builder(standalone().await).channel(&channel).build().await.unwrap();
    let mut b_rx = b.subscribe();

    proxy.cut();
    // While cut, nothing arrives and no reconnect is announced.
    a.publish("users", &Invalidation::Clear { at: 1 }).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), b_rx.recv()).await.is_err());
    proxy.restore();
    assert_eq!(next_event(&mut b_rx, Duration::from_secs(5)).await, BackplaneEvent::Gap);
    a.publish("users", &Invalidation::Namespace(9)).await.unwrap();
    assert_eq!(
        next_event(&mut b_rx, Duration::from_millis(500)).await,
        BackplaneEvent::Invalidate {
            cache: "users".into(),
            what: Invalidation::Namespace(9),
            position: None
        }
    );
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

    assert_eq!(b.current(&tags).await.unwrap(), vec![None; 20], "unknown until stamped");
    let stamped = b.stamp(&tags).await.unwrap();
    assert!(stamped.iter().all(|g| *g > 1 << 20), "fresh starts: {stamped:?}");
    let known: Vec<Option<u64>> = stamped.iter().copied().map(Some).collect();
    assert_eq!(a.current(&tags).await.unwrap(), known);
    assert_eq!(b.current(&tags).await.unwrap(), known, "and b caches them");
    assert_eq!(a.bump("tag3").await.unwrap(), stamped[3] + 1);
    assert_eq!(a.bump("tag3").await.unwrap(), stamped[3] + 2);
    assert_eq!(a.current(&tags[3..4]).await.unwrap(), vec![Some(stamped[3] + 2)]);
    // B cached tag3's start: the backplane message drops it (the hierarchy publishes after a
    // bump).
    let mut b_rx = b_bp.subscribe();
    a_bp.publish("users", &Invalidation::Tag(Arc::from("tag3"))).await.unwrap();
    next_event(&mut b_rx, Duration::from_millis(100)).await;
    let got = b.current(&tags).await.unwrap();
    assert_eq!(got[3], Some(stamped[3] + 2));
    assert_eq!(got.iter().zip(&stamped).filter(|(g, s)| **g == Some(**s)).count(), 19);

    // forget_cached drops everything (after a reconnect).
    a.bump("tag4").await.unwrap();
    let cached = b.current(&tags[4..5]).await.unwrap();
    assert_eq!(cached, vec![Some(stamped[4])], "cached, no message was sent");
    b.forget_cached();
    assert_eq!(b.current(&tags[4..5]).await.unwrap(), vec![Some(stamped[4] + 1)]);
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
async fn generations_uncached_read_redis_every_time() {
    let prefix = unique_prefix("gen-plain");
    let a = RedisGenerations::new(cluster().await).prefix(&prefix);
    let b = RedisGenerations::new(cluster().await).prefix(&prefix);
    let tags: Vec<Arc<str>> = vec![Arc::from("x"), Arc::from("y"), Arc::from("{z}")];
    assert_eq!(b.current(&tags).await.unwrap(), vec![None, None, None]);
    let y = a.bump("y").await.unwrap();
    assert!(y > 1 << 20, "a bump of a missing generation starts it fresh: {y}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_arrive_in_order_without_false_gaps() {
    concurrent_publishes(standalone().await, standalone().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_arrive_in_order_without_false_gaps_on_a_cluster() {
    concurrent_publishes(cluster().await, cluster().await).await;
}

async fn concurrent_publishes(a_conn: RedisConnection, b_conn: RedisConnection) {
    let channel = unique_prefix("order");
    let a = RedisBackplane::builder(a_conn).channel(&channel).build().await.unwrap();
    let b = RedisBackplane::builder(b_conn).channel(&channel).build().await.unwrap();
    let mut b_rx = b.subscribe();
    futures::future::try_join_all((0..300u64).map(|i| {
        let a = a.clone();
        async move { a.publish("users", &Invalidation::Namespace(i)).await }
    }))
    .await
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..300 {
        match next_event(&mut b_rx, Duration::from_secs(2)).await {
            BackplaneEvent::Invalidate { what: Invalidation::Namespace(i), .. } => {
                assert!(seen.insert(i))
            }
            other => panic!("unexpected {other:?} (a false gap?)"),
        }
    }
    assert_eq!(seen.len(), 300);
}

/// The wire format, as another instance (of this or a later version) sends it.
#[derive(serde::Serialize)]
struct Wire<'a> {
    v: u8,
    node: &'a str,
    seq: u64,
    cache: &'a str,
    what: WireWhat,
}

#[derive(serde::Serialize)]
enum WireWhat {
    #[allow(dead_code)]
    Key(serde_bytes_like::Bin),
    Tag(String),
}

mod serde_bytes_like {
    pub struct Bin(pub Vec<u8>);
    impl serde::Serialize for Bin {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_messages_are_a_gap_and_junk_is_ignored() {
    let channel = unique_prefix("gap");
    let b = RedisBackplane::builder(standalone().await).channel(&channel).build().await.unwrap();
    let mut b_rx = b.subscribe();
    let mut raw = raw(&standalone_url()).await;
    let send = |seq: u64, tag: &str| {
        rmp_serde::to_vec_named(&Wire {
            v: 1,
            node: "other",
            seq,
            cache: "users",
            what: WireWhat::Tag(tag.into()),
        })
        .unwrap()
    };
    let tag = |t: &str| BackplaneEvent::Invalidate {
        cache: "users".into(),
        what: Invalidation::Tag(Arc::from(t)),
        position: None,
    };
    let _: i64 =
        redis::cmd("PUBLISH").arg(&channel).arg(send(1, "a")).query_async(&mut raw).await.unwrap();
    assert_eq!(next_event(&mut b_rx, Duration::from_secs(1)).await, tag("a"));
    // Junk on the channel is counted and ignored.
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(&b"{not msgpack"[..])
        .query_async(&mut raw)
        .await
        .unwrap();
    // Sequence 2 never arrives: a gap, announced like a reconnect, then the message itself.
    let _: i64 =
        redis::cmd("PUBLISH").arg(&channel).arg(send(3, "c")).query_async(&mut raw).await.unwrap();
    assert_eq!(next_event(&mut b_rx, Duration::from_secs(1)).await, BackplaneEvent::Gap);
    assert_eq!(next_event(&mut b_rx, Duration::from_secs(1)).await, tag("c"));
    let _: i64 =
        redis::cmd("PUBLISH").arg(&channel).arg(send(4, "d")).query_async(&mut raw).await.unwrap();
    assert_eq!(next_event(&mut b_rx, Duration::from_secs(1)).await, tag("d"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_subscribes_on_a_live_node_when_a_seed_is_down() {
    // Nothing listens on port 1: the first seed is dead, the others are the test cluster.
    let mut urls = vec!["redis://127.0.0.1:1/".to_string()];
    urls.extend(cluster_urls());
    let conn = RedisConnection::cluster(urls).connect().await.unwrap();
    let channel = unique_prefix("dead-seed");
    let b = RedisBackplane::builder(conn).channel(&channel).build().await.unwrap();
    let a = RedisBackplane::builder(cluster().await).channel(&channel).build().await.unwrap();
    let mut b_rx = b.subscribe();
    a.publish("users", &Invalidation::Clear { at: 1 }).await.unwrap();
    assert_eq!(
        next_event(&mut b_rx, Duration::from_millis(500)).await,
        BackplaneEvent::Invalidate {
            cache: "users".into(),
            what: Invalidation::Clear { at: 1 },
            position: None
        }
    );
}
