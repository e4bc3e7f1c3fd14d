//! Instructions per L3 hit, for callgrind: `Cache::get` of a key only Redis holds (Redis its
//! only tier, a 50 ms timeout, the default breaker) beside raw redis-rs doing the same work
//! (`GET` on a connection of the same kind + decoding the value), each in a function of its
//! own so that callgrind counts only it. Instruction counts do not move with the machine's
//! load, as times on these shared machines do; the driver task of the connection (the same for
//! both) is outside the counted functions.
//!
//! With a server running (`scripts/redis-env start DIR; source DIR/env`):
//! ```text
//! cargo bench -p tier-benches --bench l3_instructions --no-run
//! for side in cache raw; do
//!   L3_SIDE=$side valgrind --tool=callgrind --toggle-collect='*l3_instructions*counted*' \
//!     --callgrind-out-file=/dev/null target/release/deps/l3_instructions-<hash> 2>&1 | grep Collected
//! done
//! ```
//! and divide by `L3_GETS` (3000). `L3_CLUSTER=1` uses `TIER_TEST_REDIS_CLUSTER_URLS`, else
//! `TIER_TEST_REDIS_URL`. Without a server it says so and does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tier_benches::{user, User};
use tier_core::{Cache, TierPolicy};
use tier_redis::{RedisConnection, RedisTier};

/// The counted work of one side: a future polled through a vtable, so that its poll is a
/// function of its own (named `…counted_…::{{closure}}`) whatever the inliner does; the box
/// is one allocation on both sides.
type Counted<'a> = Pin<Box<dyn Future<Output = u64> + 'a>>;

fn counted_cache<'a>(cache: &'a Cache<User>, key: &'a Bytes) -> Counted<'a> {
    Box::pin(async move { cache.get(key).await.expect("a hit").id })
}

fn counted_raw<'a>(raw: &'a mut Raw, key: &'a [u8]) -> Counted<'a> {
    Box::pin(async move { raw_get(raw, key).await })
}

async fn raw_get(raw: &mut Raw, key: &[u8]) -> u64 {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    let bytes: Option<Bytes> = match raw {
        Raw::Standalone(c) => cmd.query_async(c).await.unwrap(),
        Raw::Cluster(c) => cmd.query_async(c).await.unwrap(),
    };
    let bytes = bytes.expect("stored");
    let (meta, at) = tier_core::spi::envelope::decode_meta(&bytes).unwrap();
    tier_core::spi::envelope::decode_value::<User>(&bytes, &meta, at).unwrap().expect("a value").id
}

enum Raw {
    Standalone(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

fn main() {
    let cluster = std::env::var_os("L3_CLUSTER").is_some();
    let var = if cluster { "TIER_TEST_REDIS_CLUSTER_URLS" } else { "TIER_TEST_REDIS_URL" };
    let Ok(urls) = std::env::var(var) else {
        eprintln!(
            "l3_instructions: {var} is not set (scripts/redis-env start DIR; source DIR/env)"
        );
        return;
    };
    let urls: Vec<String> = urls.split(',').map(String::from).collect();
    let gets: u64 = std::env::var("L3_GETS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let raw_side = std::env::var("L3_SIDE").is_ok_and(|s| s == "raw");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let conn = if cluster {
            RedisConnection::cluster(urls.clone()).connect().await.unwrap()
        } else {
            RedisConnection::standalone(urls[0].clone()).connect().await.unwrap()
        };
        let tier = RedisTier::builder(conn).prefix("bench:instructions:").build().await.unwrap();
        let policy =
            TierPolicy::fresh(Duration::from_secs(3600)).timeout(Duration::from_millis(50));
        let cache: Cache<User> = Cache::builder("i").tier(tier.clone(), policy).build().unwrap();
        let key = cache.key("user:1");
        cache.insert(&key, user(1)).await.unwrap();
        if raw_side {
            let mut raw = if cluster {
                let client = redis::cluster::ClusterClient::new(urls).unwrap();
                Raw::Cluster(client.get_async_connection().await.unwrap())
            } else {
                let client = redis::Client::open(urls[0].as_str()).unwrap();
                Raw::Standalone(client.get_connection_manager().await.unwrap())
            };
            let redis_key = tier.redis_key(&key);
            for _ in 0..gets {
                assert_eq!(counted_raw(&mut raw, &redis_key).await, 1);
            }
        } else {
            for _ in 0..gets {
                assert_eq!(counted_cache(&cache, &key).await, 1);
            }
        }
    });
}
