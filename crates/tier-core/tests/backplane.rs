//! Backplane handling in the hierarchy, with the in-process hub (the Redis backplane has its own
//! tests against a real server).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tier_core::spi::Tier;
use tier_core::testing::{LocalBackplane, LocalBackplaneHub, MapTier};
use tier_core::{Cache, ReconnectPolicy};
use tier_memory::MemoryTier;

fn instance(
    bp: &Arc<LocalBackplane>,
    shared: &Arc<MapTier>,
    on_reconnect: ReconnectPolicy,
) -> (Cache<String>, Arc<MemoryTier>) {
    let l1 = Arc::new(MemoryTier::builder().build());
    let cache = Cache::builder("users")
        .tier(l1.clone(), exact(MINUTE))
        .tier(shared.clone(), exact(MINUTE))
        .backplane(bp.clone(), on_reconnect)
        .synchronous_backfill(true)
        .build()
        .unwrap();
    (cache, l1)
}

/// Wait until the local L1 no longer holds `k` (the remote invalidation was applied).
async fn l1_dropped(what: &str, l1: &MemoryTier) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while meta_of(l1, "k").await.is_some() {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::task::yield_now().await;
    }
}

async fn eventually(what: &str, cache: &Cache<String>, expect: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get("k").await.as_deref().map(String::as_str) != expect {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_on_one_instance_reach_the_others_local_tiers() {
    let hub = LocalBackplaneHub::new();
    let shared = Arc::new(MapTier::shared("l3"));
    let (na, nb) = (Arc::new(hub.node()), Arc::new(hub.node()));
    let (a, _) = instance(&na, &shared, ReconnectPolicy::Clear);
    let (b, b_l1) = instance(&nb, &shared, ReconnectPolicy::Clear);
    let calls = Calls::default();
    // insert is write-through: the shared tier has it when it returns (a load's writes to
    // remote tiers land just after its answer).
    a.insert("k", "v1".into()).await.unwrap();
    // B applies the insert's notice first (a's messages arrive in order: the invalidation of a
    // key only b holds is the last of them); else the notice could drop b's backfilled copy
    // below after the loop, and `l1_dropped` would pass before the invalidation arrived — which
    // then dropped b's later insert (1 run in 15).
    settled(&a, &*b_l1).await;
    b.get_or_load("k", loader(&calls, "v1")).await.unwrap();
    assert_eq!(calls.get(), 0, "b found it in the shared tier");
    // A backfill that races with the notice of the value it read is skipped (the notice holds
    // the key's write sequence): read again until b's L1 holds the copy.
    let deadline = Instant::now() + Duration::from_secs(5);
    while meta_of(&*b_l1, "k").await.is_none() {
        assert!(Instant::now() < deadline, "b never backfilled its L1");
        b.get_or_load("k", loader(&calls, "v1")).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.get(), 0, "b found it in the shared tier every time");
    a.invalidate("k").await.unwrap();
    l1_dropped("b dropping its L1 copy", &b_l1).await;

    // Tags: b's entry stamped with tag t is dropped when a invalidates t.
    b.insert_with_tags("k", "tagged".into(), &["t"]).await.unwrap();
    shared.clear().await.unwrap();
    assert!(b.get("k").await.is_some(), "b serves its L1 copy");
    a.invalidate_tag("t").await.unwrap();
    eventually("b dropping the tagged entry", &b, None).await;

    // Clear reaches b's local tiers.
    b.insert("k", "again".into()).await.unwrap();
    shared.clear().await.unwrap();
    a.clear().await.unwrap();
    l1_dropped("b clearing its L1", &b_l1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_clears_or_marks_the_local_tiers() {
    for policy in [ReconnectPolicy::Clear, ReconnectPolicy::MarkStale] {
        let hub = LocalBackplaneHub::new();
        let shared = Arc::new(MapTier::shared("l3"));
        let (na, other) = (Arc::new(hub.node()), hub.node());
        let (a, _) = instance(&na, &shared, policy);
        a.insert("k", "v".into()).await.unwrap();
        // The shared tier loses the entry while a's backplane is down (a cannot hear it).
        shared.clear().await.unwrap();
        other.simulate_reconnect();
        assert!(a.get("k").await.is_some(), "{policy:?}: another node's reconnect changes nothing");
        na.simulate_reconnect();
        eventually("local tiers treated as suspect", &a, None).await;
        let calls = Calls::default();
        let v = a.get_or_load("k", loader(&calls, "fresh")).await.unwrap();
        assert_eq!(v.as_deref().map(String::as_str), Some("fresh"), "{policy:?}");
        assert_eq!(calls.get(), 1);
    }
}
