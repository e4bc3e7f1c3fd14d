//! The loader's API (issue 17, part 1): the load context (previous value, not modified,
//! lifetimes, late tags, don't cache), `expire` / `expire_all`, per-call options, `try_get`, and
//! bad input (a panicking loader, zero and endless lifetimes, tags over the limits).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tier_core::spi::{now_ms, Tier};
use tier_core::testing::{FaultHandle, FaultyTier, LocalBackplaneHub, LocalLock, MapTier};
use tier_core::{
    Cache, CacheError, CallOptions, EarlyRefresh, FailSafe, LoadContext, Loaded, LockOptions,
    ReconnectPolicy,
};
use tier_memory::MemoryTier;

type Ctx = LoadContext<String>;
type Answer = Result<Loaded<String>, std::io::Error>;

/// L1 memory (1 min fresh, 10 min stale), L2 and L3 (shared) map tiers behind counting wrappers
/// (10 min fresh, 1 h stale), with fail-safe.
struct Three {
    cache: Cache<String>,
    l1: Arc<MemoryTier>,
    l2: Arc<dyn Tier>,
    l3: Arc<dyn Tier>,
    c2: FaultHandle,
    c3: FaultHandle,
}

fn three() -> Three {
    let l1 = Arc::new(MemoryTier::builder().build());
    let (l2, c2) = FaultyTier::with_handle(MapTier::new("l2"));
    let (l3, c3) = FaultyTier::with_handle(MapTier::shared("l3"));
    let cache = Cache::builder("t")
        .tier(l1.clone(), exact(MINUTE).stale(10 * MINUTE))
        .tier_arc(l2.clone(), exact(10 * MINUTE).stale(60 * MINUTE))
        .tier_arc(l3.clone(), exact(10 * MINUTE).stale(60 * MINUTE))
        .fail_safe(FailSafe::up_to(60 * MINUTE))
        .synchronous_backfill(true)
        .build()
        .unwrap();
    Three { cache, l1, l2, l3, c2, c3 }
}

fn bytes_in(h: &FaultHandle) -> u64 {
    h.calls().inserted_bytes.load(Ordering::SeqCst)
}

fn retimes(h: &FaultHandle) -> u64 {
    h.calls().retimes.load(Ordering::SeqCst)
}

fn s(v: Option<Arc<String>>) -> Option<String> {
    v.map(|v| v.as_ref().clone())
}

#[tokio::test]
async fn not_modified_renews_every_tier_without_sending_the_value_again() {
    let t = three();
    // Letters drawn by a xorshift: lz4 leaves them about their size.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let body: String = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let (b2, b3) = (bytes_in(&t.c2), bytes_in(&t.c3));
    let v = t
        .cache
        .get_or_load_ctx("k", {
            let body = body.clone();
            move |ctx: Ctx| async move {
                assert!(ctx.previous().is_none(), "a cold key has nothing to revalidate");
                Answer::Ok(Loaded::value(body).validator(&b"etag-1"[..]))
            }
        })
        .await
        .unwrap();
    assert_eq!(v.map(|v| v.len()), Some(20_000));
    let sent = bytes_in(&t.c2) - b2;
    assert!(sent >= 20_000 && bytes_in(&t.c3) - b3 == sent, "a full load sends the value: {sent}");
    t.cache.expire("k").await.unwrap();
    let before: Vec<_> =
        [meta_of(&*t.l1, "k").await, meta_of(&*t.l2, "k").await, meta_of(&*t.l3, "k").await]
            .into_iter()
            .map(|m| m.expect("kept as stale"))
            .collect();
    let now = now_ms();
    assert!(before.iter().all(|m| m.fresh_until <= now), "expired in every tier: {before:?}");
    let (b2, b3, r2, r3) = (bytes_in(&t.c2), bytes_in(&t.c3), retimes(&t.c2), retimes(&t.c3));

    let started = now_ms();
    let v = t
        .cache
        .get_or_load_ctx("k", |ctx: Ctx| async move {
            let prev = ctx.previous().expect("the expired value");
            assert!(!prev.fresh);
            assert_eq!(prev.tier, "memory", "found first in L1");
            assert!(prev.age < MINUTE);
            assert_eq!(prev.value.as_ref().map(|v| v.len()), Some(20_000));
            assert_eq!(ctx.validator().map(|v| &v[..]), Some(&b"etag-1"[..]));
            Answer::Ok(ctx.not_modified())
        })
        .await
        .unwrap();
    assert_eq!(v.map(|v| v.len()), Some(20_000), "the kept value is answered");
    assert_eq!(bytes_in(&t.c2) - b2, 0, "no value bytes to L2");
    assert_eq!(bytes_in(&t.c3) - b3, 0, "no value bytes to L3");
    assert_eq!((retimes(&t.c2) - r2, retimes(&t.c3) - r3), (1, 1), "one rewrite of the times each");
    let after: Vec<_> =
        [meta_of(&*t.l1, "k").await, meta_of(&*t.l2, "k").await, meta_of(&*t.l3, "k").await]
            .into_iter()
            .map(|m| m.expect("renewed"))
            .collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(a.fresh_until > b.fresh_until, "tier {i}: fresh_until moved: {b:?} → {a:?}");
        assert!(a.created_at >= started, "tier {i}: renewed at the load's start: {a:?}");
    }
    assert!(after[0].fresh_until <= now_ms() + 60_000, "L1 keeps its own policy");
    for (i, m) in after.iter().enumerate() {
        assert_eq!(m.validator.as_deref(), Some(&b"etag-1"[..]), "tier {i} keeps the validator");
    }
    assert!(after[2].fresh_until >= started + 600_000, "L3 keeps its own policy");
    let hit = t.cache.try_get("k").await.expect("fresh again");
    assert!(hit.fresh && hit.tier == "memory");
}

#[tokio::test]
async fn not_modified_without_a_previous_value_is_a_load_error_and_caches_nothing() {
    let t = three();
    let err = t
        .cache
        .get_or_load_ctx("k", |ctx: Ctx| async move { Answer::Ok(ctx.not_modified()) })
        .await
        .expect_err("nothing to keep");
    assert!(err.to_string().contains("not modified"), "{err}");
    assert!(t.cache.try_get("k").await.is_none());
}

#[tokio::test]
async fn lifetimes_set_by_the_loader_are_graduated_per_tier_and_clamped_to_its_maximum() {
    let l1 = Arc::new(MemoryTier::builder().build());
    let l2 = Arc::new(MapTier::new("l2"));
    let l3 = Arc::new(MapTier::shared("l3"));
    let cache: Cache<String> = Cache::builder("t")
        .tier(l1.clone(), exact(MINUTE))
        .tier(l2.clone(), exact(10 * MINUTE))
        .tier(l3.clone(), exact(10 * MINUTE).max_lifetime(30 * MINUTE))
        .build()
        .unwrap();
    let started = now_ms();
    cache
        .get_or_load_ctx("k", |_: Ctx| async {
            Answer::Ok(Loaded::value("v".into()).fresh_for(60 * MINUTE).stale_for(120 * MINUTE))
        })
        .await
        .unwrap();
    let done = now_ms();
    let (m1, m2, m3) = (
        meta_of(&*l1, "k").await.unwrap(),
        meta_of(&*l2, "k").await.unwrap(),
        meta_of(&*l3, "k").await.unwrap(),
    );
    let within = |at: u64, d: Duration| {
        let d = d.as_millis() as u64;
        at >= started + d && at <= done + d
    };
    // L2 (the longest policy) as set; L1 a tenth (its policy is a tenth of L2's).
    assert!(within(m2.fresh_until, 60 * MINUTE) && within(m2.stale_until, 180 * MINUTE), "{m2:?}");
    assert!(within(m1.fresh_until, 6 * MINUTE) && within(m1.stale_until, 18 * MINUTE), "{m1:?}");
    // L3: at most 30 minutes in all.
    assert!(within(m3.fresh_until, 30 * MINUTE) && m3.stale_until == m3.fresh_until, "{m3:?}");

    // Per call, the same (the loader's own setting would win).
    let opts = CallOptions::new().fresh(20 * MINUTE);
    cache.get_or_load_with("p", &opts, loader(&Calls::default(), "v")).await.unwrap();
    let m = meta_of(&*l2, "p").await.unwrap();
    assert!(m.fresh_until >= started + 1_200_000 && m.fresh_until <= now_ms() + 1_200_000);
}

#[tokio::test]
async fn zero_and_endless_lifetimes_are_documented_cases_not_errors() {
    let l2 = Arc::new(MapTier::new("l2"));
    let cache: Cache<String> = Cache::builder("t")
        .tier(l2.clone(), exact(MINUTE).max_lifetime(60 * MINUTE))
        .build()
        .unwrap();
    let set = |f: Duration, s: Duration| {
        move |_: Ctx| async move { Answer::Ok(Loaded::value("v".into()).fresh_for(f).stale_for(s)) }
    };
    // Zero and zero: answered, stored nowhere.
    let v = cache.get_or_load_ctx("a", set(Duration::ZERO, Duration::ZERO)).await.unwrap();
    assert_eq!(s(v).as_deref(), Some("v"));
    assert!(l2.raw(b"a").is_none());
    // Zero fresh: stored as stale only (a fallback).
    cache.get_or_load_ctx("b", set(Duration::ZERO, MINUTE)).await.unwrap();
    let hit = cache.try_get("b").await.expect("stale fallback");
    assert!(!hit.fresh);
    // Endless: clamped to the tier's maximum.
    cache.get_or_load_ctx("c", set(Duration::MAX, Duration::MAX)).await.unwrap();
    let m = meta_of(&*l2, "c").await.unwrap();
    assert!(m.stale_until <= now_ms() + 3_600_000 && m.fresh_until == m.stale_until, "{m:?}");
}

#[tokio::test]
async fn dont_cache_answers_and_stores_nothing_anywhere() {
    let t = three();
    for n in 1..=2 {
        let v = t
            .cache
            .get_or_load_ctx("k", |_: Ctx| async {
                Answer::Ok(Loaded::value("partial".into()).dont_cache())
            })
            .await
            .unwrap();
        assert_eq!(s(v).as_deref(), Some("partial"), "call {n}");
    }
    for tier in [&*t.l2, &*t.l3] {
        assert!(meta_of(tier, "k").await.is_none());
    }
    assert!(meta_of(&*t.l1, "k").await.is_none());
    assert_eq!(bytes_in(&t.c2) + bytes_in(&t.c3), 0);
}

#[tokio::test]
async fn tags_known_only_after_loading_are_invalidated_like_any_other() {
    let t = three();
    t.cache
        .get_or_load_ctx("user:1", |_: Ctx| async {
            Answer::Ok(Loaded::value("ada".into()).tags(["team:7"]))
        })
        .await
        .unwrap();
    assert!(t.cache.get("user:1").await.is_some(), "cached with its late tag");
    t.cache.invalidate_tag("team:7").await.unwrap();
    assert!(t.cache.get("user:1").await.is_none(), "dropped by its late tag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidated_while_the_loader_runs_keeps_its_late_tagged_value_out() {
    let t = three();
    let (gate, started) =
        (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let load = {
        let (cache, gate, started) = (t.cache.clone(), gate.clone(), started.clone());
        tokio::spawn(async move {
            cache
                .get_or_load_ctx("user:1", move |_: Ctx| async move {
                    started.notify_one();
                    gate.notified().await;
                    // Read from the origin before the invalidation: outdated, learns its tag now.
                    Answer::Ok(Loaded::value("old team".into()).tags(["team:7"]))
                })
                .await
        })
    };
    started.notified().await;
    t.cache.invalidate_tag("team:7").await.unwrap();
    gate.notify_one();
    let v = load.await.unwrap().unwrap();
    assert_eq!(s(v).as_deref(), Some("old team"), "answered");
    assert!(t.cache.try_get("user:1").await.is_none(), "but not cached: the tag clock moved");
    for tier in [&*t.l2, &*t.l3] {
        assert!(meta_of(tier, "user:1").await.is_none());
    }
}

#[tokio::test]
async fn tags_and_validators_over_the_limits_are_a_clear_error_and_nothing_is_cached() {
    let t = three();
    let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let long = "x".repeat(2000);
    let opts = CallOptions::new().tags(&many);
    let err = t.cache.get_or_load_with("a", &opts, loader(&Calls::default(), "v")).await;
    assert!(matches!(&err, Err(CacheError::InvalidInput(m)) if m.contains("65 tags")), "{err:?}");
    let err = t.cache.insert_with_tags("b", "v".into(), &[long.as_str()]).await;
    assert!(
        matches!(&err, Err(CacheError::InvalidInput(m)) if m.contains("2000 bytes")),
        "{err:?}"
    );
    let err = t
        .cache
        .get_or_load_ctx("c", move |_: Ctx| async move {
            Answer::Ok(Loaded::value("v".into()).tags(many))
        })
        .await;
    assert!(matches!(&err, Err(CacheError::InvalidInput(_))), "{err:?}");
    let err = t
        .cache
        .get_or_load_ctx("d", |_: Ctx| async {
            Answer::Ok(Loaded::value("v".into()).validator(vec![7u8; 1025]))
        })
        .await;
    assert!(matches!(&err, Err(CacheError::InvalidInput(m)) if m.contains("1025")), "{err:?}");
    for key in ["a", "b", "c", "d"] {
        assert!(t.cache.try_get(key).await.is_none(), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_fails_every_waiter_caches_nothing_and_the_cache_keeps_working() {
    let t = three();
    let gate = Arc::new(tokio::sync::Notify::new());
    let first = {
        let (cache, gate) = (t.cache.clone(), gate.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("k", move || async move {
                    gate.notified().await;
                    if true {
                        panic!("bug in the loader");
                    }
                    Ok::<_, std::io::Error>(Some("never".to_string()))
                })
                .await
        })
    };
    while t.cache.load_waiters("k") == 0 {
        tokio::task::yield_now().await;
    }
    let joined: Vec<_> = (0..8)
        .map(|_| {
            let cache = t.cache.clone();
            tokio::spawn(async move { cache.get_or_load("k", failing(&Calls::default())).await })
        })
        .collect();
    while t.cache.load_waiters("k") < 9 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    for r in std::iter::once(first).chain(joined) {
        let err = r.await.unwrap().expect_err("the loader panicked");
        assert!(err.to_string().contains("bug in the loader"), "{err}");
    }
    assert!(t.cache.try_get("k").await.is_none(), "nothing cached");
    let calls = Calls::default();
    let v = t.cache.get_or_load("k", loader(&calls, "ok")).await.unwrap();
    assert_eq!((s(v).as_deref(), calls.get()), (Some("ok"), 1), "the cache keeps working");
    // With a stale value, fail-safe serves it through a panic too.
    t.cache.expire("k").await.unwrap();
    let v = t
        .cache
        .get_or_load("k", || async {
            if true {
                panic!("again");
            }
            Ok::<_, std::io::Error>(None)
        })
        .await
        .unwrap();
    assert_eq!(s(v).as_deref(), Some("ok"));
}

#[tokio::test]
async fn expire_keeps_a_fallback_where_invalidate_removes() {
    let t = three();
    t.cache.insert("k", "v".into()).await.unwrap();
    t.cache.expire("k").await.unwrap();
    assert!(t.cache.get("k").await.is_none(), "not fresh in any tier");
    let hit = t.cache.try_get("k").await.expect("servable as stale");
    assert!(!hit.fresh && hit.tier == "memory");
    let calls = Calls::default();
    let v = t.cache.get_or_load("k", failing(&calls)).await.unwrap();
    assert_eq!(
        (s(v).as_deref(), calls.get()),
        (Some("v"), 1),
        "fail-safe serves the expired value"
    );
    // An insert after the expiry is fresh.
    t.cache.insert("k", "new".into()).await.unwrap();
    assert_eq!(s(t.cache.get("k").await).as_deref(), Some("new"));
    t.cache.invalidate("k").await.unwrap();
    assert!(t.cache.try_get("k").await.is_none(), "invalidate removes");
    assert!(t.cache.get_or_load("k", failing(&calls)).await.is_err(), "nothing to fall back on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_started_before_an_expiry_does_not_land_as_fresh() {
    let t = three();
    t.cache.insert("k", "old".into()).await.unwrap();
    t.cache.expire("k").await.unwrap();
    let (gate, started) =
        (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let load = {
        let (cache, gate, started) = (t.cache.clone(), gate.clone(), started.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("k", move || async move {
                    started.notify_one();
                    gate.notified().await;
                    Ok::<_, std::io::Error>(Some("read before the second expiry".to_string()))
                })
                .await
        })
    };
    started.notified().await;
    t.cache.expire("k").await.unwrap();
    gate.notify_one();
    load.await.unwrap().unwrap();
    let hit = t.cache.try_get("k").await.expect("the old value, still a fallback");
    assert!(!hit.fresh, "{hit:?}");
}

#[tokio::test]
async fn expire_all_makes_every_entry_stale_and_later_writes_fresh() {
    let t = three();
    t.cache.insert("a", "1".into()).await.unwrap();
    t.cache.insert("b", "2".into()).await.unwrap();
    t.cache.expire_all().await.unwrap();
    for key in ["a", "b"] {
        let hit = t.cache.try_get(key).await.expect("kept");
        assert!(!hit.fresh, "{key}: {hit:?}");
    }
    let calls = Calls::default();
    let v = t.cache.get_or_load("a", loader(&calls, "1b")).await.unwrap();
    assert_eq!((s(v).as_deref(), calls.get()), (Some("1b"), 1), "loaded again");
    assert!(t.cache.try_get("a").await.unwrap().fresh);
    assert!(!t.cache.try_get("b").await.unwrap().fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_reaches_the_other_instances_local_tiers_as_stale_not_gone() {
    let hub = LocalBackplaneHub::new();
    let shared = Arc::new(MapTier::shared("l3"));
    let instance = |bp: tier_core::testing::LocalBackplane| {
        let l1 = Arc::new(MemoryTier::builder().build());
        let cache: Cache<String> = Cache::builder("users")
            .tier(l1.clone(), exact(MINUTE).stale(MINUTE))
            .tier(shared.clone(), exact(MINUTE).stale(MINUTE))
            .backplane(Arc::new(bp), ReconnectPolicy::Clear)
            .build()
            .unwrap();
        (cache, l1)
    };
    let (a, _) = instance(hub.node());
    let (b, b_l1) = instance(hub.node());
    b.insert("k", "v".into()).await.unwrap();
    a.expire("k").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = meta_of(&*b_l1, "k").await.expect("b's L1 copy stays");
        if m.fresh_until <= now_ms() {
            break;
        }
        assert!(Instant::now() < deadline, "b's L1 copy never turned stale");
        tokio::task::yield_now().await;
    }
    let hit = b.try_get("k").await.expect("servable as stale");
    assert!(!hit.fresh);
    // expire_all too: b's entries are stale by the expiry floor.
    b.insert("j", "w".into()).await.unwrap();
    a.expire_all().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.try_get("j").await.expect("kept").fresh {
        assert!(Instant::now() < deadline, "b never applied expire_all");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn per_call_fail_safe_and_load_timeout() {
    let l2 = Arc::new(MapTier::new("l2"));
    let cache: Cache<String> =
        Cache::builder("t").tier(l2.clone(), exact(MINUTE).stale(MINUTE)).build().unwrap();
    cache.insert("k", "v".into()).await.unwrap();
    cache.expire("k").await.unwrap();
    let calls = Calls::default();
    assert!(cache.get_or_load("k", failing(&calls)).await.is_err(), "the cache has no fail-safe");
    let on = CallOptions::new().fail_safe(FailSafe::up_to(MINUTE));
    let v = cache.get_or_load_with("k", &on, failing(&calls)).await.unwrap();
    assert_eq!(s(v).as_deref(), Some("v"), "this call has");

    let with_fs: Cache<String> = Cache::builder("u")
        .tier(MapTier::new("l2"), exact(MINUTE).stale(MINUTE))
        .fail_safe(FailSafe::up_to(MINUTE))
        .build()
        .unwrap();
    with_fs.insert("k", "v".into()).await.unwrap();
    with_fs.expire("k").await.unwrap();
    let off = CallOptions::new().no_fail_safe();
    assert!(
        with_fs.get_or_load_with("k", &off, failing(&calls)).await.is_err(),
        "off for this call"
    );

    let slow = CallOptions::new().load_timeout(Duration::from_millis(20));
    let r = cache
        .get_or_load_with("slow", &slow, || async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(Some("never".to_string()))
        })
        .await;
    assert!(
        matches!(r, Err(CacheError::LoadTimeout(d)) if d == Duration::from_millis(20)),
        "{r:?}"
    );
    let zero = CallOptions::new().load_timeout(Duration::ZERO);
    let r = cache.get_or_load_with("z", &zero, loader(&calls, "v")).await;
    assert!(matches!(r, Err(CacheError::InvalidInput(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refresh_revalidates_the_fresh_value_it_replaces() {
    let l2 = Arc::new(MapTier::new("l2"));
    let (l2c, c2) = FaultyTier::with_handle(Arc::clone(&l2));
    let cache: Cache<String> = Cache::builder("t")
        .tier(MemoryTier::builder().build(), exact(MINUTE))
        .tier_arc(l2c, exact(MINUTE))
        .early_refresh(EarlyRefresh::Ahead(0.0))
        .build()
        .unwrap();
    cache.insert("k", "v".into()).await.unwrap();
    let refreshed = Arc::new(tokio::sync::Notify::new());
    let seen = {
        let refreshed = refreshed.clone();
        cache
            .get_or_load_ctx("k", move |ctx: Ctx| async move {
                let fresh = ctx.previous().map(|p| p.fresh);
                refreshed.notify_one();
                assert_eq!(fresh, Some(true), "an early refresh sees the fresh value");
                Answer::Ok(ctx.not_modified())
            })
            .await
            .unwrap()
    };
    assert_eq!(s(seen).as_deref(), Some("v"), "the hit is answered at once");
    refreshed.notified().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while retimes(&c2) == 0 {
        assert!(Instant::now() < deadline, "the refresh never renewed L2");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_timeout_answers_stale_while_the_context_load_completes() {
    let l2 = Arc::new(MapTier::new("l2"));
    let cache: Cache<String> = Cache::builder("t")
        .tier(l2.clone(), exact(MINUTE).stale(MINUTE))
        .soft_timeout(Duration::from_millis(10))
        .build()
        .unwrap();
    cache.insert("k", "old".into()).await.unwrap();
    cache.expire("k").await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let v = {
        let gate = gate.clone();
        cache
            .get_or_load_ctx("k", move |_: Ctx| async move {
                gate.notified().await;
                Answer::Ok(Loaded::value("new".into()).tags(["late"]))
            })
            .await
            .unwrap()
    };
    assert_eq!(s(v).as_deref(), Some("old"), "slow load: stale answer");
    gate.notify_one();
    landed(&cache, "k", "new", "the background load never landed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_load_under_the_fleet_lock_waits_for_the_holders_value() {
    let shared = Arc::new(MapTier::shared("l3"));
    let lock = Arc::new(LocalLock::new());
    let cache: Cache<String> = Cache::builder("t")
        .tier(MemoryTier::builder().build(), exact(MINUTE))
        .tier(shared.clone(), exact(MINUTE))
        .distributed_lock(lock.clone(), LockOptions::default())
        .build()
        .unwrap();
    let token = tier_core::spi::DistributedLock::try_acquire(&*lock, b"k", MINUTE).await.unwrap();
    let token = token.expect("free");
    let calls = Calls::default();
    let waiting = {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move {
            cache
                .get_or_load_ctx("k", move |_: Ctx| async move {
                    calls.bump();
                    Answer::Ok(Loaded::value("mine".into()))
                })
                .await
        })
    };
    // The holder (another instance) lands its value and releases the lock.
    put(&*shared, "k", "theirs", now_ms() + 60_000, now_ms() + 60_000).await;
    tier_core::spi::DistributedLock::release(&*lock, b"k", &token).await.unwrap();
    let v = waiting.await.unwrap().unwrap();
    assert_eq!((s(v).as_deref(), calls.get()), (Some("theirs"), 0));
}
