//! Values sealed at rest in a real Redis (tier-core feature `encryption`): the stored value
//! holds no plaintext; every byte of it altered with a raw `SET` (as someone with a dump or
//! write access could) is a miss; an entry copied under another key or into another cache's
//! keyspace is a miss; a rotated keyring reads old entries. Needs `TIER_TEST_REDIS_URL`
//! (scripts/test, or `scripts/redis-env start DIR` then `source DIR/env`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{data_tier, raw, standalone_url, unique_prefix};
use redis::AsyncCommands;
use tier_core::seal::{Keyring, Sealing};
use tier_core::spi::envelope::decode_meta;
use tier_core::testing::sealing::{altered_bytes_are_misses, read_through};
use tier_core::{Cache, TierPolicy};
use tier_memory::MemoryTier;
use tier_redis::{RedisConnection, RedisTier};

const SECRET: &str = "iban DE89 3704 0044 0532 0130 00";
const OLD: [u8; 32] = [0x3c; 32];
const NEW: [u8; 32] = [0xc3; 32];
const HOUR: Duration = Duration::from_secs(3600);

async fn l3(prefix: &str) -> RedisTier {
    let conn = RedisConnection::standalone(standalone_url()).connect().await.unwrap();
    data_tier(&conn, prefix).await
}

/// A cache of only the Redis tier (no L1 in front: every read reaches Redis).
fn cache(name: &str, tier: &RedisTier, keyring: Keyring) -> Cache<String> {
    Cache::builder(name)
        .tier(tier.clone(), TierPolicy::fresh(HOUR).jitter(0.0))
        .keyring(keyring)
        .build()
        .unwrap()
}

async fn set_raw(con: &mut redis::aio::MultiplexedConnection, key: &str, bytes: &[u8]) {
    let _: () = con.pset_ex(key, bytes, 600_000).await.unwrap();
}

#[tokio::test]
async fn redis_holds_no_plaintext_and_every_altered_byte_is_a_miss() {
    let prefix = unique_prefix("seal");
    let tier = l3(&prefix).await;
    let cache = cache("accounts", &tier, Keyring::new(1, &OLD));
    let key = cache.key("1");
    cache.insert(&key, SECRET.to_string()).await.unwrap();
    let redis_key = format!("{prefix}data:{}", String::from_utf8_lossy(&key));
    let mut con = raw(&standalone_url()).await;
    let good: Vec<u8> = con.get(&redis_key).await.unwrap();
    assert!(!good.windows(8).any(|w| w == b"DE89 370"), "plaintext in Redis");
    let (meta, _) = decode_meta(&good).unwrap();
    assert_eq!(Sealing::parse(meta.sealing.as_deref().unwrap()).unwrap().key_id, 1);

    let seen = altered_bytes_are_misses(&cache, &key, &good, SECRET, |bad| {
        let (mut con, redis_key) = (con.clone(), redis_key.clone());
        async move {
            // The tier's compare-and-set write keeps the newest entry: remove the loaded one.
            let _: () = con.del(&redis_key).await.unwrap();
            set_raw(&mut con, &redis_key, &bad).await;
        }
    })
    .await
    .unwrap();
    assert_eq!((seen.misses, seen.times), (good.len() - 16, 16));
    assert!(seen.times_served > 0, "the reads saw the altered bytes: {seen:?}");
    let _: () = con.del(&redis_key).await.unwrap();
    set_raw(&mut con, &redis_key, &good).await;
    assert_eq!(read_through(&cache, &key).await.unwrap(), Some(SECRET.to_string()));
}

#[tokio::test]
async fn an_entry_copied_under_another_key_or_cache_is_a_miss_and_rotation_reads_old_ones() {
    let prefix = unique_prefix("seal-copy");
    let tier = l3(&prefix).await;
    let keyring = Keyring::new(1, &OLD);
    let (a, b) = (cache("a", &tier, keyring.clone()), cache("b", &tier, keyring));
    let key = a.key("1");
    a.insert(&key, SECRET.to_string()).await.unwrap();
    let mut con = raw(&standalone_url()).await;
    let redis_key = |k: &[u8]| format!("{prefix}data:{}", String::from_utf8_lossy(k));
    let good: Vec<u8> = con.get(redis_key(&key)).await.unwrap();
    let (other_key, their_key) = (a.key("2"), b.key("1"));
    set_raw(&mut con, &redis_key(&other_key), &good).await;
    set_raw(&mut con, &redis_key(&their_key), &good).await;
    assert_eq!(read_through(&a, &other_key).await.unwrap(), None);
    assert_eq!(read_through(&b, &their_key).await.unwrap(), None);

    // Another instance, after the rotation, with an L1 in front: it reads the old entry from
    // Redis (backfilled into its L1 as an object) and seals what it writes with key 2.
    let rotated = Keyring::new(2, &NEW).with_old_key(1, &OLD).unwrap();
    let after: Cache<String> = Cache::builder("a")
        .tier(Arc::new(MemoryTier::builder().build()), TierPolicy::fresh(HOUR))
        .tier(tier.clone(), TierPolicy::fresh(HOUR))
        .keyring(rotated)
        .synchronous_backfill(true)
        .build()
        .unwrap();
    assert_eq!(read_through(&after, &key).await.unwrap(), Some(SECRET.to_string()));
    let new_key = after.key("new");
    after.insert(&new_key, "after".to_string()).await.unwrap();
    let stored: Vec<u8> = con.get(redis_key(&new_key)).await.unwrap();
    let (meta, _) = decode_meta(&stored).unwrap();
    assert_eq!(Sealing::parse(meta.sealing.as_deref().unwrap()).unwrap().key_id, 2);
    // The instance that still has only key 1 cannot open it: a miss, never a wrong value.
    assert_eq!(read_through(&a, &new_key).await.unwrap(), None);
}
