//! One test per rule of the read path (ARCHITECTURE.md, "The read path").
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tier_core::spi::{now_ms, Tier};
use tier_core::testing::{Fault, FaultyTier, MapTier};
use tier_core::{
    BreakerConfig, BreakerState, Cache, CacheBuilder, CallOptions, FailSafe, TierErrorKind,
};
use tier_memory::MemoryTier;

/// A builder of a hierarchy named `t` whose first tier is a new memory tier (entries fresh for a
/// minute).
fn memory_l1() -> CacheBuilder<String> {
    Cache::builder("t").tier(MemoryTier::builder().build(), exact(MINUTE))
}

/// A memory tier over `l2`, both fresh for a minute.
fn memory_over(l2: &Arc<MapTier>) -> Cache<String> {
    memory_l1().tier(l2.clone(), exact(MINUTE)).build().unwrap()
}

fn two_tier(l1: &Arc<MemoryTier>, l2: &Arc<MapTier>) -> Cache<String> {
    Cache::builder("t")
        .tier(l1.clone(), exact(MINUTE).stale(10 * MINUTE))
        .tier(l2.clone(), exact(5 * MINUTE).stale(30 * MINUTE))
        .synchronous_backfill(true)
        .build()
        .unwrap()
}

#[tokio::test]
async fn backfill_never_extends_life() {
    let l1 = Arc::new(MemoryTier::builder().build());
    let l2 = Arc::new(MapTier::new("l2"));
    let cache = two_tier(&l1, &l2);
    let now = now_ms();
    // L2 has little left: the copy in L1 must not outlive it, though L1's policy is longer.
    put(&*l2, "short", "v", now + 2_000, now + 3_000).await;
    assert_eq!(cache.get("short").await.as_deref().map(String::as_str), Some("v"));
    let m = meta_of(&*l1, "short").await.expect("backfilled into L1");
    assert_eq!((m.fresh_until, m.stale_until), (now + 2_000, now + 3_000));

    // L2 has a lot left: the copy in L1 gets L1's own, shorter policy.
    put(&*l2, "long", "v", now + 3_600_000, now + 7_200_000).await;
    cache.get("long").await.expect("hit");
    let m = meta_of(&*l1, "long").await.expect("backfilled into L1");
    let after = now_ms();
    assert!(m.fresh_until <= after + 60_000 && m.fresh_until >= now + 60_000, "{m:?}");
    assert!(m.stale_until <= after + 660_000, "{m:?}");
}

#[tokio::test]
async fn errors_are_never_cached() {
    let l1 = Arc::new(MemoryTier::builder().build());
    let l2 = Arc::new(MapTier::new("l2"));
    let cache = two_tier(&l1, &l2);
    let calls = Calls::default();
    for n in 1..=3 {
        let err = cache.get_or_load("k", failing(&calls)).await.expect_err("origin is down");
        assert!(err.load_error().is_some(), "{err}");
        assert_eq!(calls.get(), n, "every call after an error goes to the origin again");
    }
    assert!(l2.is_empty(), "nothing was written for an error");
    assert!(meta_of(&*l1, "k").await.is_none());
    let v = cache.get_or_load("k", loader(&calls, "ok")).await.unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("ok"));
}

#[tokio::test]
async fn stale_is_served_only_within_stale_until_and_only_with_fail_safe() {
    let now = now_ms();
    let calls = Calls::default();
    for (fail_safe, stale_until, expect_stale) in [
        (true, now + 60_000, true),   // stale, alive, fail-safe on → served
        (false, now + 60_000, false), // fail-safe off → the error
        (true, now - 1, false),       // past stale_until → gone → the error
    ] {
        let l2 = Arc::new(MapTier::new("l2"));
        put(&*l2, "k", "old", now - 10_000, stale_until).await;
        let mut b = Cache::<String>::builder("t").tier(l2.clone(), exact(MINUTE));
        if fail_safe {
            b = b.fail_safe(FailSafe::up_to(Duration::from_secs(3600)));
        }
        let cache = b.build().unwrap();
        let r = cache.get_or_load("k", failing(&calls)).await;
        if expect_stale {
            assert_eq!(r.unwrap().as_deref().map(String::as_str), Some("old"));
        } else {
            assert!(r.is_err(), "fail_safe={fail_safe} stale_until={stale_until}: {r:?}");
        }
    }
    // fail-safe's age limit: stale for longer than max_stale_age is not served.
    let l2 = Arc::new(MapTier::new("l2"));
    put(&*l2, "k", "old", now - 10_000, now + 60_000).await;
    let cache = Cache::<String>::builder("t")
        .tier(l2.clone(), exact(MINUTE))
        .fail_safe(FailSafe::up_to(Duration::from_secs(5)))
        .build()
        .unwrap();
    assert!(cache.get_or_load("k", failing(&calls)).await.is_err());
}

#[tokio::test]
async fn fail_safe_throttles_the_failing_origin() {
    let now = now_ms();
    let l1 = Arc::new(MemoryTier::builder().build());
    let l2 = Arc::new(MapTier::new("l2"));
    put(&*l2, "k", "old", now - 10_000, now + 60_000).await;
    let cache = Cache::<String>::builder("t")
        .tier(l1.clone(), exact(MINUTE))
        .tier(l2.clone(), exact(MINUTE))
        .fail_safe(FailSafe::up_to(Duration::from_secs(3600)).throttle(Duration::from_secs(30)))
        .build()
        .unwrap();
    let calls = Calls::default();
    for _ in 0..5 {
        let v = cache.get_or_load("k", failing(&calls)).await.unwrap();
        assert_eq!(v.as_deref().map(String::as_str), Some("old"));
    }
    assert_eq!(calls.get(), 1, "within the throttle the origin is not called again");
    let m = meta_of(&*l1, "k").await.expect("throttled copy in L1");
    assert!(m.stale_until <= now + 60_000, "throttle never extends life");
}

#[tokio::test]
async fn negative_entries_expire_on_their_own_ttl() {
    let cache = Cache::<String>::builder("t")
        .tier(MemoryTier::builder().build(), exact(MINUTE).negative_ttl(Duration::from_millis(50)))
        .build()
        .unwrap();
    let calls = Calls::default();
    let none = || {
        let calls = calls.clone();
        move || {
            calls.bump();
            std::future::ready(Ok::<_, std::io::Error>(None::<String>))
        }
    };
    assert_eq!(cache.get_or_load("k", none()).await.unwrap(), None);
    assert_eq!(cache.get_or_load("k", none()).await.unwrap(), None);
    assert_eq!(calls.get(), 1, "the negative entry answers the second call");
    // The negative TTL (50 ms), not the tier's fresh TTL (1 min), ends it: wait it out.
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(cache.get_or_load("k", none()).await.unwrap(), None);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn open_breaker_costs_no_call_and_a_half_open_probe_closes_it() {
    let (tier, handle) = FaultyTier::with_handle(MapTier::new("l2"));
    let cooldown = Duration::from_millis(100);
    let cache = Cache::<String>::builder("t")
        .tier(
            tier,
            exact(MINUTE).breaker(BreakerConfig {
                consecutive_failures: 3,
                cooldown,
                probes: 1,
                ..BreakerConfig::default()
            }),
        )
        .build()
        .unwrap();
    handle.set(Fault::Fail(TierErrorKind::Unavailable));
    for _ in 0..3 {
        assert!(cache.get("k").await.is_none());
    }
    assert_eq!(handle.gets(), 3);
    assert_eq!(cache.tiers()[0].breaker, Some(BreakerState::Open));
    let opened = Instant::now();
    for _ in 0..100 {
        cache.get("k").await;
    }
    if opened.elapsed() < cooldown {
        assert_eq!(handle.gets(), 3, "an open breaker makes no call");
    }
    handle.set(Fault::None);
    tokio::time::sleep(cooldown.saturating_sub(opened.elapsed()) + Duration::from_millis(20)).await;
    cache.get("k").await;
    assert_eq!(handle.gets(), 4, "one probe after the cool-down");
    assert_eq!(cache.tiers()[0].breaker, Some(BreakerState::Closed), "a good probe closes it");
}

#[tokio::test]
async fn a_stalled_tier_delays_the_answer_by_at_most_its_timeout() {
    let (tier, handle) = FaultyTier::with_handle(MapTier::new("l2"));
    let timeout = Duration::from_millis(100);
    let cache = memory_l1().tier(tier, exact(MINUTE).timeout(timeout)).build().unwrap();
    handle.set(Fault::Stall);
    let calls = Calls::default();
    let start = Instant::now();
    let v =
        tokio::time::timeout(Duration::from_secs(10), cache.get_or_load("k", loader(&calls, "v")))
            .await
            .expect("the stalled tier must not hang the call")
            .unwrap();
    let took = start.elapsed();
    assert_eq!(v.as_deref().map(String::as_str), Some("v"));
    assert!(handle.gets() >= 1, "the stalled tier was asked");
    // The walk waits the timeout once; the write to the stalled tier happens after the answer.
    assert!(took < timeout * 2 + Duration::from_millis(100), "took {took:?}");
    handle.release();
}

#[tokio::test]
async fn tag_invalidation_reaches_entries_written_before_it_not_after() {
    let l2 = Arc::new(MapTier::new("l2"));
    let cache = memory_over(&l2);
    cache.insert_with_tags("a", "1".into(), &["user:1"]).await.unwrap();
    cache.insert_with_tags("b", "2".into(), &["user:2"]).await.unwrap();
    let calls = Calls::default();
    let opts = CallOptions::new().tags(["user:1"]);
    cache.get_or_load_with("c", &opts, loader(&calls, "3")).await.unwrap();
    assert!(cache.get("a").await.is_some() && cache.get("c").await.is_some());

    cache.invalidate_tag("user:1").await.unwrap();
    assert!(cache.get("a").await.is_none(), "inserted before the invalidation");
    assert!(cache.get("c").await.is_none(), "loaded before the invalidation");
    assert_eq!(
        cache.get("b").await.as_deref().map(String::as_str),
        Some("2"),
        "other tag untouched"
    );

    cache.insert_with_tags("a", "new".into(), &["user:1"]).await.unwrap();
    assert_eq!(cache.get("a").await.as_deref().map(String::as_str), Some("new"), "written after");
}

#[tokio::test]
async fn decode_errors_are_misses_and_the_loader_answers() {
    let l2 = Arc::new(MapTier::new("l2"));
    l2.put_raw("k", &b"{\"another\":\"service\"}"[..]);
    let cache = Cache::<String>::builder("t").tier(l2.clone(), exact(MINUTE)).build().unwrap();
    assert!(cache.get("k").await.is_none());
    let calls = Calls::default();
    let v = cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("v"));
    assert_eq!(calls.get(), 1);
    // A value of another type under our format is a decode error too, not a panic.
    let ints = Cache::<Vec<u64>>::builder("t").tier(l2.clone(), exact(MINUTE)).build().unwrap();
    assert!(ints.get("k").await.is_none());
}

#[tokio::test]
async fn operator_switches_skip_tiers_and_bypass_the_cache() {
    let (tier, handle) = FaultyTier::with_handle(MapTier::new("l2"));
    let cache = Cache::<String>::builder("t").tier(tier, exact(MINUTE)).build().unwrap();
    let calls = Calls::default();
    cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    let seen = handle.gets();
    assert!(cache.set_tier_enabled("l2", false));
    assert!(!cache.set_tier_enabled("nope", false));
    cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    assert_eq!(handle.gets(), seen, "a disabled tier is not read");
    assert_eq!(calls.get(), 2);
    cache.set_tier_enabled("l2", true);
    cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    assert_eq!(calls.get(), 2, "hit again once enabled");

    cache.set_bypass(true);
    cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    assert_eq!(calls.get(), 3, "bypass goes to the origin");
    cache.set_bypass(false);
    let opts = CallOptions::new().bypass(true);
    cache.get_or_load_with("k", &opts, loader(&calls, "v")).await.unwrap();
    assert_eq!(calls.get(), 4, "per-call bypass");
    let opts = CallOptions::new().skip_tier("l2");
    cache.get_or_load_with("k", &opts, loader(&calls, "v")).await.unwrap();
    assert_eq!(calls.get(), 5, "per-call skip");
}

#[tokio::test]
async fn lower_tier_hit_is_backfilled_per_policy() {
    use tier_core::BackfillPolicy;
    let now = now_ms();
    let l1 = Arc::new(MemoryTier::builder().build());
    let l2 = Arc::new(MapTier::new("l2"));
    let cache = Cache::<String>::builder("t")
        .tier(l1.clone(), exact(MINUTE).backfill(BackfillPolicy::OnHits(3)))
        .tier(l2.clone(), exact(MINUTE))
        .synchronous_backfill(true)
        .build()
        .unwrap();
    put(&*l2, "k", "v", now + 60_000, now + 60_000).await;
    for _ in 0..2 {
        cache.get("k").await.expect("hit in L2");
        assert!(meta_of(&*l1, "k").await.is_none(), "not promoted before 3 hits");
    }
    cache.get("k").await.expect("hit in L2");
    assert!(meta_of(&*l1, "k").await.is_some(), "promoted on the third hit");

    let never = Cache::<String>::builder("t2")
        .tier(l1.clone(), exact(MINUTE).backfill(BackfillPolicy::MaxSize(8)))
        .tier(l2.clone(), exact(MINUTE))
        .synchronous_backfill(true)
        .build()
        .unwrap();
    put(&*l2, "big", &"x".repeat(100), now + 60_000, now + 60_000).await;
    never.get("big").await.expect("hit in L2");
    assert!(meta_of(&*l1, "big").await.is_none(), "large values stay low");
}

#[tokio::test]
async fn soft_timeout_answers_stale_while_the_load_completes() {
    let now = now_ms();
    let l2 = Arc::new(MapTier::new("l2"));
    put(&*l2, "k", "old", now - 1, now + 60_000).await;
    let cache = Cache::<String>::builder("t")
        .tier(l2.clone(), exact(MINUTE))
        .soft_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let v = cache
        .get_or_load("k", move || async move {
            g.notified().await;
            Ok::<_, std::io::Error>(Some("new".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("old"), "slow load: stale answer");
    assert_eq!(cache.load_waiters("k"), 0);
    gate.notify_one();
    // The load goes on in the background and lands.
    landed(&cache, "k", "new", "background load never landed").await;
}

#[tokio::test]
async fn hard_timeout_gives_up_and_is_not_cached() {
    let cache = memory_l1().hard_timeout(Duration::from_millis(20)).build().unwrap();
    let r = cache
        .get_or_load("k", || async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(Some("never".to_string()))
        })
        .await;
    assert!(matches!(r, Err(tier_core::CacheError::LoadTimeout(_))), "{r:?}");
    let calls = Calls::default();
    cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn early_refresh_runs_once_in_the_background() {
    use tier_core::EarlyRefresh;
    let cache = memory_l1().early_refresh(EarlyRefresh::Ahead(0.0)).build().unwrap();
    let calls = Calls::default();
    cache.get_or_load("k", loader(&calls, "v1")).await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    for _ in 0..10 {
        let (g, s, c) = (gate.clone(), started.clone(), calls.clone());
        // Every hit is "due" (ratio 0): the first starts a refresh, the others see it in flight.
        let v = cache
            .get_or_load("k", move || async move {
                c.bump();
                s.notify_one();
                g.notified().await;
                Ok::<_, std::io::Error>(Some("v2".to_string()))
            })
            .await
            .unwrap();
        assert_eq!(v.as_deref().map(String::as_str), Some("v1"), "callers are never blocked");
    }
    started.notified().await;
    assert_eq!(calls.get(), 2, "one refresh at a time");
    gate.notify_one();
    landed(&cache, "k", "v2", "refresh never landed").await;
}

/// An early refresh under a fleet lock loads: the instance that takes the lock must not take
/// the still-fresh entry it is renewing for a value another holder just wrote (it did, and the
/// refresh ended without calling the loader: entries were renewed only once they expired).
#[tokio::test]
async fn an_early_refresh_under_a_fleet_lock_calls_the_loader() {
    use tier_core::testing::LocalLock;
    use tier_core::{EarlyRefresh, LockOptions};
    let lock = Arc::new(LocalLock::new());
    let cache = memory_l1()
        .early_refresh(EarlyRefresh::Ahead(0.0))
        .distributed_lock(lock.clone(), LockOptions::default())
        .build()
        .unwrap();
    let calls = Calls::default();
    cache.get_or_load("k", loader(&calls, "v1")).await.unwrap();
    let hit = cache.get_or_load("k", loader(&calls, "v2")).await.unwrap();
    assert_eq!(hit.as_deref().map(String::as_str), Some("v1"), "answered from the L1");
    landed(&cache, "k", "v2", "the refresh never called its loader").await;
    assert_eq!(calls.get(), 2);
}

/// A reload loads although the value is cached fresh, and its write yields to an invalidation
/// made while its loader ran (a purge racing the HTTP layer's refresh must not be undone).
#[tokio::test]
async fn a_reload_loads_past_a_fresh_value_and_yields_to_an_invalidation_made_meanwhile() {
    let cache = memory_l1().build().unwrap();
    cache.insert("k", "v1".to_string()).await.unwrap();
    let reload = CallOptions::new().reload(true);
    let v = cache
        .get_or_load_with("k", &reload, || async {
            Ok::<_, std::io::Error>(Some("v2".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("v2"));
    assert_eq!(cache.get("k").await.as_deref().map(String::as_str), Some("v2"));
    let (entered, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (c, opts) = (cache.clone(), reload.clone());
    let reloading = tokio::spawn(async move {
        c.get_or_load_with("k", &opts, move || async move {
            let _ = entered.send(());
            let _ = go_rx.await;
            Ok::<_, std::io::Error>(Some("v3".to_string()))
        })
        .await
    });
    entered_rx.await.unwrap();
    cache.invalidate("k").await.unwrap();
    go.send(()).unwrap();
    let answered = reloading.await.unwrap().unwrap();
    assert_eq!(answered.as_deref().map(String::as_str), Some("v3"), "its caller gets its answer");
    assert_eq!(cache.get("k").await, None, "the reload's write must not undo the invalidation");
}

#[tokio::test]
async fn get_many_or_load_batches_the_misses() {
    use std::collections::HashMap;
    let l2 = Arc::new(MapTier::new("l2"));
    let cache = memory_over(&l2);
    cache.insert("a", "A".into()).await.unwrap();
    let calls = Calls::default();
    let c = calls.clone();
    let got = cache
        .get_many_or_load(&["a", "b", "c"], move |keys| async move {
            c.bump();
            assert_eq!(keys, vec![bytes::Bytes::from("b"), bytes::Bytes::from("c")]);
            Ok::<_, std::io::Error>(HashMap::from([(bytes::Bytes::from("b"), "B".to_string())]))
        })
        .await
        .unwrap();
    let got: Vec<Option<&str>> = got.iter().map(|v| v.as_deref().map(String::as_str)).collect();
    assert_eq!(got, vec![Some("A"), Some("B"), None]);
    assert_eq!(calls.get(), 1);
    let c = calls.clone();
    let again = cache
        .get_many_or_load(&["a", "b", "c"], move |_| async move {
            c.bump();
            Ok::<_, std::io::Error>(HashMap::new())
        })
        .await
        .unwrap();
    assert_eq!(again.iter().filter(|v| v.is_some()).count(), 2);
    assert_eq!(calls.get(), 1, "c is cached as negative, a and b as values");
}

#[tokio::test]
async fn warm_loads_with_bounded_concurrency_and_reports() {
    let cache = memory_l1().build().unwrap();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let (r, p) = (running.clone(), peak.clone());
    let progress = std::sync::Mutex::new(Vec::new());
    let report = cache
        .warm(
            &keys,
            4,
            move |key| {
                let (r, p) = (r.clone(), p.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = r.fetch_add(1, SeqCst) + 1;
                    p.fetch_max(now, SeqCst);
                    tokio::task::yield_now().await;
                    r.fetch_sub(1, SeqCst);
                    if key.ends_with(b"7") {
                        Err(std::io::Error::other("boom"))
                    } else if key.ends_with(b"3") {
                        Ok(None)
                    } else {
                        Ok(Some(String::from_utf8_lossy(&key).into_owned()))
                    }
                }
            },
            |p| progress.lock().unwrap().push(p.done),
        )
        .await;
    assert_eq!(report, tier_core::WarmReport { loaded: 40, none: 5, failed: 5 });
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 4);
    assert_eq!(progress.lock().unwrap().len(), 50);
    assert!(cache.get("k1").await.is_some());
}

#[tokio::test]
async fn namespace_drop_is_o1_through_the_key_version() {
    let cache = Cache::<String>::builder("users")
        .tier(MemoryTier::builder().build(), exact(MINUTE))
        .build()
        .unwrap();
    let old = cache.key("1");
    cache.insert(&old, "v".into()).await.unwrap();
    assert!(cache.get(cache.key("1")).await.is_some());
    cache.invalidate_namespace().await.unwrap();
    let new = cache.key("1");
    assert_ne!(old, new);
    assert!(cache.get(&new).await.is_none());
}

#[tokio::test]
async fn invalidate_removes_from_every_tier_and_reports_tier_failures() {
    let l2 = Arc::new(MapTier::new("l2"));
    let (faulty, handle) = FaultyTier::with_handle(MapTier::new("l3"));
    let cache =
        memory_l1().tier(l2.clone(), exact(MINUTE)).tier(faulty, exact(MINUTE)).build().unwrap();
    cache.insert("k", "v".into()).await.unwrap();
    handle.set(Fault::Fail(TierErrorKind::Unavailable));
    let err = cache.invalidate("k").await.expect_err("l3 could not be reached");
    assert!(err.to_string().contains("l3"), "{err}");
    assert!(l2.raw(b"k").is_none(), "the other tiers were still cleaned");
    assert!(cache.get("k").await.is_none());
    let _ = Tier::name(&*l2);
}

#[tokio::test]
async fn xfetch_refreshes_early_in_proportion_to_the_load_cost() {
    use tier_core::EarlyRefresh;
    for (beta, expect_refresh) in [(0.0, false), (1e9, true)] {
        let cache = memory_l1().early_refresh(EarlyRefresh::XFetch { beta }).build().unwrap();
        // A slow origin: the load cost (≥ 2 ms) is what XFetch weighs.
        cache
            .get_or_load("k", || async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, std::io::Error>(Some("v1".to_string()))
            })
            .await
            .unwrap();
        let calls = Calls::default();
        let v = cache.get_or_load("k", loader(&calls, "v2")).await.unwrap();
        assert_eq!(v.as_deref().map(String::as_str), Some("v1"), "the hit answers at once");
        if expect_refresh {
            landed(&cache, "k", "v2", &format!("beta={beta}: no early refresh")).await;
            assert_eq!(calls.get(), 1);
        } else {
            assert_eq!(calls.get(), 0, "beta=0: never before fresh_until");
        }
    }
}
