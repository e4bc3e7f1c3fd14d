//! A Redis Cluster that loses a master, under a real hierarchy: the cache answers every get
//! within the tier's timeout, the keys of the other masters stay L3 hits, and the lost
//! master's keys are L3 hits again once it is back.
//!
//! The cluster is the test's own (three masters, no replicas), so that killing a node disturbs
//! no other test. It runs with `cluster-require-full-coverage no`, so that the masters left keep
//! serving their slots; with Redis's default (`yes`) every node refuses every command once the
//! lost master is marked failed (after `cluster-node-timeout`), and the cache then answers
//! everything from the loader, like the killed standalone server of `hierarchy_faults.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tier_core::spi::Tier;
use tier_core::{BreakerConfig, BreakerState, Cache, TierErrorKind, TierPolicy};
use tier_redis::RedisConnection;

const SLOTS: u16 = 16384;

/// Three cluster-enabled servers of the test's own, each holding a third of the slots.
async fn own_cluster() -> Vec<OwnRedis> {
    let args = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "500",
        "--cluster-require-full-coverage",
        "no",
    ];
    let nodes: Vec<OwnRedis> = (0..3).map(|_| OwnRedis::start_with(&args)).collect();
    let mut first_node = raw(&nodes[0].url()).await;
    for (i, node) in nodes.iter().enumerate() {
        let mut c = raw(&node.url()).await;
        let (first, last) = slot_range(i);
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(first)
            .arg(last)
            .query_async(&mut c)
            .await
            .unwrap();
        if i > 0 {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .query_async(&mut first_node)
                .await
                .unwrap();
        }
    }
    for node in &nodes {
        let url = node.url();
        eventually(Duration::from_secs(20), "cluster_state:ok on every node", || {
            let url = url.clone();
            async move { cluster_ok(&url).await }
        })
        .await;
    }
    nodes
}

/// The slots of master `i` of 3.
fn slot_range(i: usize) -> (u16, u16) {
    let third = SLOTS / 3;
    let first = third * i as u16;
    (first, if i == 2 { SLOTS - 1 } else { first + third - 1 })
}

async fn cluster_ok(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else { return false };
    let info: redis::RedisResult<String> =
        redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await;
    info.is_ok_and(|i| i.contains("cluster_state:ok"))
}

/// Get every id once; returns the ids that had to be loaded and the slowest get.
async fn pass(cache: &Cache<String>, ids: &[String]) -> (Vec<String>, Duration) {
    let mut loaded = Vec::new();
    let mut slowest = Duration::ZERO;
    for id in ids {
        let loads = Loads::default();
        let started = Instant::now();
        assert_eq!(get(cache, &loads, id).await, format!("v:{id}"));
        slowest = slowest.max(started.elapsed());
        if loads.get() > 0 {
            loaded.push(id.clone());
        }
    }
    (loaded, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_master_costs_at_most_the_timeout_and_its_keys_come_back() {
    let mut nodes = own_cluster().await;
    let urls: Vec<String> = nodes.iter().map(OwnRedis::url).collect();
    let conn = connect_quick(RedisConnection::cluster(urls.clone())).await;
    let l3 = data_tier(&conn, &unique_prefix("cluster-kill")).await;
    let timeout = Duration::from_millis(150);
    // The breaker the crate docs advise for a Cluster ("Redis Cluster: a lost master"): on the
    // failure ratio alone. The default one (5 failures in a row) soon opens with a master lost,
    // and then the masters that are up are skipped as well.
    let breaker = BreakerConfig {
        failure_ratio: 0.6,
        consecutive_failures: u32::MAX,
        ..BreakerConfig::default()
    };
    let cache = Cache::builder("cluster-faults")
        .tier(
            l3.clone(),
            TierPolicy::fresh(Duration::from_secs(600)).timeout(timeout).breaker(breaker),
        )
        .build()
        .unwrap();
    // Ten ids on master 1 (the one to be killed) and twenty on the others, in the order they
    // come: the cluster says where each one lives.
    let mut admin = raw(&urls[0]).await;
    let (first, last) = slot_range(1);
    let (mut ids, mut on_lost, mut others) = (Vec::new(), Vec::new(), 0);
    for i in 0.. {
        if on_lost.len() == 10 && others == 20 {
            break;
        }
        let id = format!("user:{i}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(l3.redis_key(&cache.key(&id)))
            .query_async(&mut admin)
            .await
            .unwrap();
        if (first..=last).contains(&slot) {
            if on_lost.len() == 10 {
                continue;
            }
            on_lost.push(id.clone());
        } else {
            if others == 20 {
                continue;
            }
            others += 1;
        }
        ids.push(id);
    }

    let (loaded, _) = pass(&cache, &ids).await;
    assert_eq!(loaded.len(), ids.len(), "first pass: every id loaded");
    let (loaded, _) = pass(&cache, &ids).await;
    assert!(loaded.is_empty(), "second pass: all L3 hits, loaded {loaded:?}");

    nodes[1].kill();
    // The tier itself: a lost master's key is an error that says the tier is sick (not a bad
    // value, not a miss), within the connection's own bound (connect + response timeout); the
    // other masters' keys are hits.
    let op_timeout = QUICK_CONNECT + QUICK_RESPONSE;
    for id in &ids {
        let started = Instant::now();
        let got = Tier::get(&l3, &cache.key(id)).await;
        let took = started.elapsed();
        assert!(took < op_timeout + Duration::from_millis(100), "{id}: {took:?}");
        if on_lost.contains(id) {
            let e = got.err().unwrap_or_else(|| panic!("{id} is on the lost master"));
            assert!(
                matches!(e.kind(), TierErrorKind::Unavailable | TierErrorKind::Timeout),
                "{id}: {e:?}"
            );
        } else {
            assert!(got.unwrap().is_hit(), "{id} is on a master that is up");
        }
    }
    // Two passes while master 1 is down: every get answered within the timeout (plus the
    // loader and scheduling), only master 1's ids loaded, the breaker still closed.
    for round in 0..2 {
        let (loaded, slowest) = pass(&cache, &ids).await;
        assert_eq!(loaded, on_lost, "round {round}: exactly the lost master's ids are loaded");
        assert!(
            slowest < timeout + Duration::from_millis(250),
            "round {round}: a get took {slowest:?} with a tier timeout of {timeout:?}"
        );
    }
    assert_eq!(cache.tiers()[0].breaker, Some(BreakerState::Closed));

    // Back (same port, same nodes.conf: same node, same slots, no data): its ids are loaded
    // once more, then they are L3 hits again.
    nodes[1].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        pass(&cache, &on_lost).await;
        let (loaded, _) = pass(&cache, &ids).await;
        if loaded.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted master's ids never became L3 hits again: still loading {loaded:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
