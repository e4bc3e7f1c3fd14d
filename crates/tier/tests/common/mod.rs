//! What the OpenTelemetry tests share: the test Redis and a cache over it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tier::redis::{RedisConnection, RedisTier};
use tier::{Cache, MemoryTier, TierPolicy};

pub fn redis_url() -> String {
    std::env::var("TIER_TEST_REDIS_URL").expect(
        "TIER_TEST_REDIS_URL is not set: run the tests through scripts/test (it starts Redis)",
    )
}

/// memory → Redis, under a key prefix of this test's own.
pub async fn cache(name: &str) -> Cache<String> {
    let conn = RedisConnection::standalone(redis_url()).connect().await.unwrap();
    let prefix = format!("tier-otel-{}-{name}:", std::process::id());
    let l3 = RedisTier::builder(conn).prefix(prefix).build().await.unwrap();
    Cache::builder(name)
        .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
        .tier(l3, TierPolicy::fresh(Duration::from_secs(60)))
        .synchronous_backfill(true)
        .build()
        .unwrap()
}
