//! Configuration cannot panic: every builder and policy value either builds a cache whose every
//! call answers (values or errors, never a panic, in the caller's task or a background one), or
//! is refused by `build()` with a `CacheError::Config` that names it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use tier_core::testing::{LocalLock, MapTier};
use tier_core::{
    BackfillPolicy, Breaker, BreakerConfig, Cache, CacheBuilder, CacheError, CallOptions,
    EarlyRefresh, FailSafe, LockOptions, TierPolicy,
};
use tier_memory::MemoryTier;

/// Panics anywhere in this test binary (the caller's task or a spawned one) since start.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Every operation of a cache, once; what they answer does not matter, only that they answer.
async fn exercise(cache: &Cache<String>) {
    let calls = Calls::default();
    let _ = cache.get("k").await;
    let _ = cache.get_or_load("k", loader(&calls, "v")).await;
    let _ = cache.get_or_load("k", loader(&calls, "v")).await;
    let _ = cache.get("k").await;
    let _ = cache.get_or_load("f", failing(&calls)).await;
    let none = || std::future::ready(Ok::<_, std::io::Error>(None::<String>));
    let _ = cache.get_or_load("n", none).await;
    let tagged = CallOptions::new().tags(["t"]).skip_tier("l2");
    let _ = cache.get_or_load_with("t", &tagged, loader(&calls, "v")).await;
    let _ = cache.get_or_load_with("b", &CallOptions::new().bypass(true), none).await;
    let _ = cache.insert("k", "w".into()).await;
    let _ = cache.insert_with_tags("i", "w".into(), &["t"]).await;
    let _ = cache.get("i").await;
    let batch = |keys: Vec<Bytes>| async move {
        Ok::<_, std::io::Error>(
            keys.into_iter().map(|k| (k, "m".to_string())).collect::<HashMap<_, _>>(),
        )
    };
    let _ = cache.get_many_or_load(&["k", "m1", "m2", "m1"], batch).await;
    let warm = |key: Bytes| async move { Ok::<_, std::io::Error>(Some(format!("{key:?}"))) };
    let _ = cache.warm(["w1", "w2", "k"], 2, warm, |_| {}).await;
    let _ = cache.invalidate("k").await;
    let _ = cache.invalidate_tag("t").await;
    let _ = cache.invalidate_namespace().await;
    let _ = cache.sync_namespace().await;
    let _ = cache.get(cache.key("k")).await;
    let _ = cache.clear().await;
    let _ = cache.get_or_load("k", loader(&calls, "v")).await;
    let _ = cache.hot_keys(3);
    cache.report_gauges();
}

/// Build `builder` and run every operation on a runtime of its own; the panics seen.
fn panics_of(builder: impl FnOnce() -> CacheBuilder<String>) -> Result<usize, CacheError> {
    count_panics();
    let before = PANICS.load(Ordering::SeqCst);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let built = rt.block_on(async {
        let cache = builder().build()?;
        tokio::time::timeout(Duration::from_secs(30), Box::pin(exercise(&cache)))
            .await
            .expect("every call answers");
        // Let background writes (backfills, the remote half of loads) run.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        Ok::<_, CacheError>(())
    });
    drop(rt);
    built.map(|()| PANICS.load(Ordering::SeqCst) - before)
}

#[test]
fn the_longest_lifetimes_build_and_every_call_answers() {
    for policy in [
        TierPolicy::fresh(Duration::MAX),
        TierPolicy::fresh(Duration::MAX).stale(Duration::MAX).negative_ttl(Duration::MAX),
        TierPolicy::fresh(Duration::from_secs(1)).stale(Duration::MAX).jitter(1.0),
    ] {
        let p = policy.clone();
        let panics = panics_of(|| {
            Cache::builder("c")
                .tier(MemoryTier::builder().build(), p.clone())
                .tier(MapTier::new("l2"), p.clone().timeout(Duration::MAX))
                .tier(MapTier::shared("l3"), p)
                .fail_safe(FailSafe::up_to(Duration::MAX).throttle(Duration::MAX))
                .soft_timeout(Duration::MAX)
                .hard_timeout(Duration::MAX)
                .distributed_lock(
                    Arc::new(LocalLock::new()),
                    LockOptions {
                        ttl: Duration::MAX,
                        wait: Duration::MAX,
                        first_poll: Duration::MAX,
                        max_poll: Duration::MAX,
                    },
                )
        });
        assert_eq!(panics.unwrap(), 0, "{policy:?}");
    }
}

/// `build()` of a one-tier cache with `policy` and `cache`'s settings.
fn build_err(
    policy: TierPolicy,
    cache: impl FnOnce(CacheBuilder<String>) -> CacheBuilder<String>,
) -> String {
    let b = cache(Cache::builder("c").tier(MapTier::new("l2"), policy));
    match b.build() {
        Err(CacheError::Config(why)) => why,
        Err(e) => panic!("not a configuration error: {e}"),
        Ok(_) => panic!("built"),
    }
}

#[test]
fn out_of_range_values_are_refused_by_build_naming_the_setting() {
    let p = || exact(MINUTE);
    let same = |b| b;
    for jitter in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        assert!(build_err(p().jitter(jitter), same).contains("jitter"), "{jitter}");
    }
    for beta in [f64::NAN, f64::INFINITY, -1.0] {
        let why = build_err(p(), |b| b.early_refresh(EarlyRefresh::XFetch { beta }));
        assert!(why.contains("beta"), "{beta}: {why}");
    }
    for ratio in [f64::NAN, -0.5, 1.5] {
        let why = build_err(p(), |b| b.early_refresh(EarlyRefresh::Ahead(ratio)));
        assert!(why.contains("ratio"), "{ratio}: {why}");
    }
    assert!(build_err(p(), |b| b.hard_timeout(Duration::ZERO)).contains("hard timeout"));
    assert!(build_err(p().timeout(Duration::ZERO), same).contains("timeout"));
    assert!(build_err(p().max_value_size(0), same).contains("max_value_size"));
    assert!(build_err(p().name(""), same).contains("name"));
    for failure_ratio in [f64::NAN, 0.0, -1.0, 1.5] {
        let cfg = BreakerConfig { failure_ratio, ..BreakerConfig::default() };
        assert!(build_err(p().breaker(cfg), same).contains("failure_ratio"), "{failure_ratio}");
    }
    let cfg = BreakerConfig { window: Duration::ZERO, ..BreakerConfig::default() };
    assert!(build_err(p().breaker(cfg), same).contains("window"));
    for (field, lock) in [
        ("ttl", LockOptions { ttl: Duration::ZERO, ..LockOptions::default() }),
        ("first_poll", LockOptions { first_poll: Duration::ZERO, ..LockOptions::default() }),
        ("max_poll", LockOptions { max_poll: Duration::ZERO, ..LockOptions::default() }),
    ] {
        let why = build_err(p(), |b| b.distributed_lock(Arc::new(LocalLock::new()), lock));
        assert!(why.contains(field), "{field}: {why}");
    }
    assert!(build_err(TierPolicy::fresh(Duration::ZERO), same).contains("fresh"));
}

fn duration() -> BoxedStrategy<Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_millis(1)),
        Just(Duration::from_secs(1)),
        Just(Duration::from_secs(3600)),
        Just(Duration::MAX),
        (0..u64::MAX).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_nanos),
    ]
    .boxed()
}

fn float() -> BoxedStrategy<f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(0.1),
        Just(1.0),
        Just(2.0),
        any::<f64>(),
    ]
    .boxed()
}

fn small_or_huge_u32() -> BoxedStrategy<u32> {
    prop_oneof![Just(0), Just(1), Just(64), Just(u32::MAX), any::<u32>()].boxed()
}

fn breaker() -> BoxedStrategy<Breaker> {
    let config = (float(), small_or_huge_u32(), duration(), small_or_huge_u32(), duration())
        .prop_map(|(failure_ratio, min_requests, window, consecutive_failures, cooldown)| {
            BreakerConfig {
                failure_ratio,
                min_requests,
                window,
                consecutive_failures,
                cooldown,
                probes: consecutive_failures % 5,
            }
        });
    prop_oneof![Just(Breaker::ByStorage), Just(Breaker::Off), config.prop_map(Breaker::On)].boxed()
}

fn backfill() -> BoxedStrategy<BackfillPolicy> {
    prop_oneof![
        Just(BackfillPolicy::Always),
        Just(BackfillPolicy::Never),
        small_or_huge_u32().prop_map(BackfillPolicy::OnHits),
        small_or_huge_u32().prop_map(BackfillPolicy::MaxSize),
    ]
    .boxed()
}

fn policy() -> BoxedStrategy<TierPolicy> {
    (
        (duration(), duration(), float(), proptest::option::of(duration())),
        (breaker(), proptest::option::of(small_or_huge_u32()), backfill(), duration()),
    )
        .prop_map(|((fresh, stale, jitter, timeout), (breaker, max, backfill, negative))| {
            let mut p = TierPolicy::fresh(fresh)
                .stale(stale)
                .jitter(jitter)
                .breaker(breaker)
                .backfill(backfill)
                .negative_ttl(negative);
            if let Some(t) = timeout {
                p = p.timeout(t);
            }
            if let Some(m) = max {
                p = p.max_value_size(m);
            }
            p
        })
        .boxed()
}

fn early_refresh() -> BoxedStrategy<Option<EarlyRefresh>> {
    proptest::option::of(prop_oneof![
        float().prop_map(|beta| EarlyRefresh::XFetch { beta }),
        float().prop_map(EarlyRefresh::Ahead),
    ])
    .boxed()
}

/// The cache-wide settings a case draws.
#[derive(Debug, Clone)]
struct Settings {
    fail_safe: Option<(Duration, Duration)>,
    soft: Option<Duration>,
    hard: Option<Duration>,
    refresh: Option<EarlyRefresh>,
    flags: (bool, bool),
    backfills: usize,
    compress: usize,
    hot: (usize, u64),
    lock: Option<(Duration, Duration, Duration, Duration)>,
}

fn settings() -> BoxedStrategy<Settings> {
    let size = || prop_oneof![Just(0usize), Just(1), Just(1024), Just(usize::MAX)];
    (
        (
            proptest::option::of((duration(), duration())),
            proptest::option::of(duration()),
            proptest::option::of(duration()),
            early_refresh(),
        ),
        (
            (any::<bool>(), any::<bool>()),
            size(),
            size(),
            (size(), prop_oneof![Just(0u64), Just(1), Just(64), Just(u64::MAX)]),
            proptest::option::of((duration(), duration(), duration(), duration())),
        ),
    )
        .prop_map(|((fail_safe, soft, hard, refresh), (flags, backfills, compress, hot, lock))| {
            Settings { fail_safe, soft, hard, refresh, flags, backfills, compress, hot, lock }
        })
        .boxed()
}

fn builder(settings: &Settings, policies: &[(u8, TierPolicy)]) -> CacheBuilder<String> {
    let mut b = Cache::builder("p");
    for (i, (kind, policy)) in policies.iter().enumerate() {
        let name = format!("l{i}");
        b = match kind % 3 {
            0 => b.tier(MemoryTier::builder().name(name).build(), policy.clone()),
            1 => b.tier(MapTier::new(name), policy.clone()),
            _ => b.tier(MapTier::shared(name), policy.clone()),
        };
    }
    let s = settings;
    if let Some((age, throttle)) = s.fail_safe {
        b = b.fail_safe(FailSafe::up_to(age).throttle(throttle));
    }
    if let Some(t) = s.soft {
        b = b.soft_timeout(t);
    }
    if let Some(t) = s.hard {
        b = b.hard_timeout(t);
    }
    if let Some(r) = s.refresh {
        b = b.early_refresh(r);
    }
    if let Some((ttl, wait, first_poll, max_poll)) = s.lock {
        let opts = LockOptions { ttl, wait, first_poll, max_poll };
        b = b.distributed_lock(Arc::new(LocalLock::new()), opts);
    }
    b.stale_while_revalidate(s.flags.0)
        .synchronous_backfill(s.flags.1)
        .max_pending_backfills(s.backfills)
        .compress_threshold(s.compress)
        .hot_keys(s.hot.0, s.hot.1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn no_configuration_panics_in_build_or_in_any_later_call(
        settings in settings(),
        policies in proptest::collection::vec((any::<u8>(), policy()), 1..4),
    ) {
        // A slow-but-legal configuration could take long: the one-millisecond timeouts and
        // a lock wait of hours on a lock nobody holds long are fine; what is not is a panic.
        match panics_of(|| builder(&settings, &policies)) {
            Ok(panics) => prop_assert_eq!(panics, 0),
            Err(CacheError::Config(_)) => {}
            Err(e) => prop_assert!(false, "build failed with {e}"),
        }
    }
}
