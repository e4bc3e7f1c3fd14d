//! The layer over byte tiers (disk, Redis): a response comes back whole from each.

mod support;

use support::{app, keep, memory, serve_cache};
use tier::spi::Tier;
use tier::{Cache, DiskTier, RedisConnection, RedisTier};
use tier_redis::testing::OwnRedis;

#[tokio::test]
async fn a_response_comes_back_whole_from_the_disk_tier() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let disk = DiskTier::builder(dir.path())
        .capacity_bytes(8 << 20)
        .segment_size(1 << 20)
        .build()
        .expect("a disk tier");
    from_the_lower_tier(disk).await;
}

/// The response the layer stored in Redis comes back whole from it (a server of the test's
/// own, killed by PID when dropped).
#[tokio::test]
async fn a_response_comes_back_whole_from_redis() {
    let redis = OwnRedis::start();
    let connection =
        RedisConnection::standalone(redis.url()).connect().await.expect("Redis connects");
    let tier = RedisTier::builder(connection).build().await.expect("a Redis tier");
    from_the_lower_tier(tier).await;
}

/// A GET stored through the memory tier and `lower` below it, answered again with the memory
/// tier off: a hit of the lower tier, the same response.
async fn from_the_lower_tier(lower: impl Tier) {
    let cache = Cache::builder("http")
        .tier(memory(), keep())
        .tier(lower, keep())
        .build()
        .expect("a valid cache");
    let s = serve_cache(cache, app).await;
    let first = s.get("/aged").await;
    s.memory_off_once_below("/aged").await;
    let second = s.get("/aged").await;
    assert!(
        second.header("cache-status").starts_with("tier; hit"),
        "{}",
        second.header("cache-status")
    );
    assert_eq!((second.status, &second.body), (first.status, &first.body));
    assert_eq!(second.header("content-type"), first.header("content-type"));
    assert!(second.age() >= 100);
    assert_eq!(s.origin.calls("/aged"), 1);
    s.stop().await;
}
