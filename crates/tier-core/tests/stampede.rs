//! Single-flight: 1,000 concurrent cold gets → one loader call; cancelling strands nobody.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tier_core::testing::MapTier;
use tier_core::{Cache, CacheError};
use tier_memory::MemoryTier;
use tokio::sync::Notify;

fn cache() -> Cache<String> {
    Cache::builder("t")
        .tier(MemoryTier::builder().build(), exact(MINUTE))
        .tier(MapTier::new("l2"), exact(MINUTE))
        .build()
        .unwrap()
}

/// A loader gated on `gate`, which says when it started and counts its calls.
fn gated(
    calls: &Calls,
    started: &Arc<Notify>,
    gate: &Arc<Notify>,
    result: Result<&'static str, &'static str>,
) -> impl FnOnce() -> futures_like::BoxFut + Send + 'static {
    let (calls, started, gate) = (calls.clone(), started.clone(), gate.clone());
    move || {
        Box::pin(async move {
            calls.bump();
            started.notify_one();
            gate.notified().await;
            result.map(|v| Some(v.to_string())).map_err(std::io::Error::other)
        })
    }
}

mod futures_like {
    pub type BoxFut = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<String>, std::io::Error>> + Send>,
    >;
}

/// `n` concurrent cold `get_or_load`s of one key, each with its own gated loader.
struct Stampede {
    calls: Calls,
    started: Arc<Notify>,
    gate: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<Result<Option<Arc<String>>, CacheError>>>,
}

impl Stampede {
    fn start(cache: &Cache<String>, n: usize, result: Result<&'static str, &'static str>) -> Self {
        let (calls, started, gate) =
            (Calls::default(), Arc::new(Notify::new()), Arc::new(Notify::new()));
        let tasks = (0..n)
            .map(|_| {
                let cache = cache.clone();
                let loader = gated(&calls, &started, &gate, result);
                tokio::spawn(async move { cache.get_or_load("cold", loader).await })
            })
            .collect();
        Self { calls, started, gate, tasks }
    }
}

async fn wait_for_waiters(cache: &Cache<String>, key: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.load_waiters(key) < n {
        assert!(Instant::now() < deadline, "only {} of {n} joined", cache.load_waiters(key));
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_gets_make_one_load() {
    let cache = cache();
    let Stampede { calls, started, gate, tasks } = Stampede::start(&cache, 1000, Ok("v"));
    started.notified().await;
    wait_for_waiters(&cache, "cold", 1000).await;
    gate.notify_one();
    for t in tasks {
        let v = t.await.unwrap().unwrap();
        assert_eq!(v.as_deref().map(String::as_str), Some("v"));
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_share_the_same_error() {
    let cache = cache();
    let Stampede { calls, started, gate, tasks } =
        Stampede::start(&cache, 1000, Err("origin down"));
    started.notified().await;
    wait_for_waiters(&cache, "cold", 1000).await;
    gate.notify_one();
    let mut first: Option<CacheError> = None;
    for t in tasks {
        let err = t.await.unwrap().expect_err("the origin failed");
        let CacheError::Load(e) = &err else { panic!("{err:?}") };
        match &first {
            None => first = Some(err.clone()),
            Some(CacheError::Load(f)) => assert!(Arc::ptr_eq(f, e), "the very same error"),
            Some(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_loading_caller_strands_nobody() {
    let cache = cache();
    let (calls, started, gate) =
        (Calls::default(), Arc::new(Notify::new()), Arc::new(Notify::new()));
    let first = {
        let cache = cache.clone();
        let loader = gated(&calls, &started, &gate, Ok("v"));
        tokio::spawn(async move { cache.get_or_load("cold", loader).await })
    };
    started.notified().await;
    let others: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            let loader = gated(&calls, &started, &gate, Ok("other"));
            tokio::spawn(async move { cache.get_or_load("cold", loader).await })
        })
        .collect();
    wait_for_waiters(&cache, "cold", 101).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    gate.notify_one();
    for t in others {
        let v = t.await.unwrap().unwrap();
        assert_eq!(v.as_deref().map(String::as_str), Some("v"), "the first load still answers");
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_does_not_poison_the_key() {
    let cache = cache();
    let r = cache
        .get_or_load("k", || async {
            if true {
                panic!("loader bug");
            }
            Ok::<_, std::io::Error>(Some("never".to_string()))
        })
        .await;
    assert!(matches!(r, Err(CacheError::LoadAborted(_))), "{r:?}");
    let calls = Calls::default();
    let v = cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_callers_find_the_value_even_without_an_in_process_tier() {
    for with_l1 in [true, false] {
        let mut b = Cache::<String>::builder("t");
        if with_l1 {
            b = b.tier(MemoryTier::builder().build(), exact(MINUTE));
        }
        let cache = b.tier(MapTier::new("l2"), exact(MINUTE)).build().unwrap();
        let Stampede { calls, started, gate, tasks } = Stampede::start(&cache, 1000, Ok("v"));
        // Release the load at once: callers still arriving must find the value in the tiers.
        started.notified().await;
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().as_deref().map(String::as_str), Some("v"));
        }
        assert_eq!(calls.get(), 1, "with_l1={with_l1}");
    }
}
