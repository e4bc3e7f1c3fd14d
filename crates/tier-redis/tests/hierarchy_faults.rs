//! Faults under a real hierarchy: the cache answers every get (from other tiers or the loader)
//! while Redis is killed, slow, or holds foreign bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use tier_core::{BreakerConfig, BreakerState, Cache, TierPolicy};
use tier_redis::{RedisConnection, RedisTier};

async fn l3_only(
    url: &str,
    prefix: &str,
    timeout: Duration,
    breaker: BreakerConfig,
) -> (Cache<String>, RedisTier) {
    let conn = connect_quick(RedisConnection::standalone(url)).await;
    let l3 = RedisTier::builder(conn).prefix(prefix).build().await.unwrap();
    let cache = Cache::builder("faults")
        .tier(
            l3.clone(),
            TierPolicy::fresh(Duration::from_secs(600)).timeout(timeout).breaker(breaker),
        )
        .build()
        .unwrap();
    (cache, l3)
}

fn breaker_state(cache: &Cache<String>) -> BreakerState {
    cache.tiers()[0].breaker.expect("the redis tier has a breaker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_opens_the_breaker_and_l3_hits_return_after_restart() {
    let mut server = OwnRedis::start();
    let breaker = BreakerConfig {
        consecutive_failures: 3,
        cooldown: Duration::from_millis(200),
        probes: 1,
        ..BreakerConfig::default()
    };
    let (cache, _l3) =
        l3_only(&server.url(), &unique_prefix("kill"), Duration::from_millis(100), breaker).await;
    let loads = Loads::default();
    let ids: Vec<String> = (0..10).map(|i| format!("user:{i}")).collect();
    for id in &ids {
        assert_eq!(get(&cache, &loads, id).await, format!("v:{id}"));
    }
    assert_eq!(loads.get(), 10);
    for id in &ids {
        get(&cache, &loads, id).await;
    }
    assert_eq!(loads.get(), 10, "second pass: all L3 hits");

    server.kill();
    // Every get is answered (by the loader) while Redis is down, and the breaker opens.
    let mut round = 0;
    while breaker_state(&cache) != BreakerState::Open {
        for id in &ids {
            assert_eq!(get(&cache, &loads, id).await, format!("v:{id}"));
        }
        round += 1;
        assert!(round < 50, "breaker never opened");
    }
    let while_open = Instant::now();
    for id in &ids {
        get(&cache, &loads, id).await;
    }
    assert!(
        while_open.elapsed() < Duration::from_millis(50),
        "an open tier costs nothing per request"
    );

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Keep the workload going: probes close the breaker, loads refill L3.
        for id in &ids {
            assert_eq!(get(&cache, &loads, id).await, format!("v:{id}"));
        }
        if breaker_state(&cache) == BreakerState::Closed {
            let before = loads.get();
            for id in &ids {
                get(&cache, &loads, id).await;
            }
            if loads.get() == before {
                break; // every get was an L3 hit again
            }
        }
        assert!(
            Instant::now() < deadline,
            "L3 hits never came back (breaker {:?})",
            breaker_state(&cache)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_opens_the_breaker_then_costs_nothing() {
    let server = OwnRedis::start();
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], server.port))).await;
    let timeout = Duration::from_millis(50);
    let (cache, _l3) =
        l3_only(&proxy.url(), &unique_prefix("slow-open"), timeout, BreakerConfig::default()).await;
    let loads = Loads::default();
    proxy.set_delay(Duration::from_millis(200));
    let mut round = 0;
    while breaker_state(&cache) != BreakerState::Open {
        assert_eq!(get(&cache, &loads, "user:1").await, "v:user:1");
        round += 1;
        assert!(round < 50, "breaker never opened");
    }
    let start = Instant::now();
    for i in 0..100 {
        assert_eq!(get(&cache, &loads, &format!("user:{i}")).await, format!("v:user:{i}"));
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "100 gets past an open breaker took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_bytes_under_our_prefix_are_a_miss() {
    let url = standalone_url();
    let (cache, l3) = l3_only(
        &url,
        &unique_prefix("foreign"),
        Duration::from_millis(500),
        BreakerConfig::default(),
    )
    .await;
    let key = cache.key("user:1");
    let mut raw = raw(&url).await;
    let _: () =
        raw.set(l3.redis_key(&key), br#"{"id":1,"name":"json of another service"}"#).await.unwrap();
    assert!(cache.get(&key).await.is_none(), "foreign bytes are a miss");
    let loads = Loads::default();
    assert_eq!(get(&cache, &loads, "user:1").await, "v:user:1");
    assert_eq!(loads.get(), 1);
    // The load replaced the foreign bytes with an envelope: the next get is an L3 hit.
    assert_eq!(get(&cache, &loads, "user:1").await, "v:user:1");
    assert_eq!(loads.get(), 1);
    assert_eq!(
        breaker_state(&cache),
        BreakerState::Closed,
        "a bad value says nothing of the tier's health"
    );
}
