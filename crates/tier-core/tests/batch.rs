//! The batch read (`get_many_or_load`) keeps the rules of the single-key read: the same
//! usability rule (suspect entries are not fresh; fail-safe's age limit), single-flight per key
//! shared with `get_or_load`, and the fleet lock for its misses.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tier_core::spi::{now_ms, Tier};
use tier_core::testing::{LocalBackplaneHub, LocalLock, MapTier};
use tier_core::{Cache, CacheError, FailSafe, LockOptions, ReconnectPolicy};
use tier_memory::MemoryTier;
use tokio::sync::Notify;

type Answers = Result<Vec<Option<Arc<String>>>, CacheError>;
type BatchFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<HashMap<Bytes, String>, std::io::Error>> + Send>,
>;

fn strs(answers: &[Option<Arc<String>>]) -> Vec<Option<&str>> {
    answers.iter().map(|v| v.as_deref().map(String::as_str)).collect()
}

/// A batch loader that records the keys it is asked for, waits for `gate` (when given) and
/// answers `key → value of key` for each.
fn batch_loader(
    asked: &Arc<Mutex<Vec<Vec<Bytes>>>>,
    gate: Option<Arc<Notify>>,
    values: &[(&str, &str)],
) -> impl FnOnce(Vec<Bytes>) -> BatchFuture + Send + 'static {
    let asked = asked.clone();
    let values: HashMap<Bytes, String> =
        values.iter().map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), v.to_string())).collect();
    move |keys: Vec<Bytes>| {
        asked.lock().unwrap().push(keys.clone());
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            Ok(keys.iter().filter_map(|k| values.get(k).map(|v| (k.clone(), v.clone()))).collect())
        })
    }
}

async fn wait_for_waiters(cache: &Cache<String>, key: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.load_waiters(key) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} wait for {key}",
            cache.load_waiters(key)
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_does_not_serve_suspect_local_entries_as_fresh() {
    let hub = LocalBackplaneHub::new();
    let node = Arc::new(hub.node());
    let shared = Arc::new(MapTier::shared("l3"));
    let cache: Cache<String> = Cache::builder("users")
        .tier(MemoryTier::builder().build(), exact(MINUTE))
        .tier(shared.clone(), exact(MINUTE))
        .backplane(node.clone(), ReconnectPolicy::MarkStale)
        .build()
        .unwrap();
    cache.insert("k", "before the gap".into()).await.unwrap();
    // The shared tier loses the entry while the backplane is down; after the reconnect the
    // local copy is suspect: not fresh for a single-key read…
    shared.clear().await.unwrap();
    node.simulate_reconnect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get("k").await.is_some() {
        assert!(Instant::now() < deadline, "the reconnect never marked the local tier suspect");
        tokio::task::yield_now().await;
    }
    // … nor for a batch read.
    let asked = Arc::default();
    let got = cache
        .get_many_or_load(&["k"], batch_loader(&asked, None, &[("k", "reloaded")]))
        .await
        .unwrap();
    assert_eq!(strs(&got), vec![Some("reloaded")]);
    assert_eq!(asked.lock().unwrap().len(), 1, "the suspect key was loaded");
}

#[tokio::test]
async fn batch_fail_safe_keeps_the_stale_age_limit() {
    let now = now_ms();
    for (max_stale_age, expect_stale) in [(Duration::from_secs(5), false), (MINUTE * 60, true)] {
        let l2 = Arc::new(MapTier::new("l2"));
        // Stale for 10 s already, alive for another minute.
        put(&*l2, "k", "old", now - 10_000, now + 60_000).await;
        let cache = Cache::<String>::builder("t")
            .tier(l2.clone(), exact(MINUTE))
            .fail_safe(FailSafe::up_to(max_stale_age))
            .build()
            .unwrap();
        let r: Answers = cache
            .get_many_or_load(&["k"], |_keys: Vec<Bytes>| async {
                Err::<HashMap<Bytes, String>, _>(std::io::Error::other("origin down"))
            })
            .await;
        if expect_stale {
            assert_eq!(strs(&r.unwrap()), vec![Some("old")], "within max_stale_age");
        } else {
            assert!(r.is_err(), "stale beyond max_stale_age ({max_stale_age:?}) served: {r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_joins_a_load_in_flight_and_loads_only_the_others() {
    let cache: Cache<String> =
        Cache::builder("t").tier(MemoryTier::builder().build(), exact(MINUTE)).build().unwrap();
    let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let single = {
        let (cache, started, gate) = (cache.clone(), started.clone(), gate.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("a", move || async move {
                    started.notify_one();
                    gate.notified().await;
                    Ok::<_, std::io::Error>(Some("A".to_string()))
                })
                .await
        })
    };
    started.notified().await;
    let asked = Arc::default();
    let batch = {
        let cache = cache.clone();
        let loader = batch_loader(&asked, None, &[("a", "A from the batch"), ("b", "B")]);
        tokio::spawn(async move { cache.get_many_or_load(&["a", "b"], loader).await })
    };
    wait_for_waiters(&cache, "a", 2).await;
    gate.notify_one();
    assert_eq!(single.await.unwrap().unwrap().as_deref().map(String::as_str), Some("A"));
    assert_eq!(strs(&batch.await.unwrap().unwrap()), vec![Some("A"), Some("B")]);
    assert_eq!(*asked.lock().unwrap(), vec![vec![Bytes::from("b")]], "only b was loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_key_read_joins_the_batch_in_flight() {
    let cache: Cache<String> =
        Cache::builder("t").tier(MemoryTier::builder().build(), exact(MINUTE)).build().unwrap();
    let gate = Arc::new(Notify::new());
    let asked = Arc::default();
    let batch = {
        let cache = cache.clone();
        let loader = batch_loader(&asked, Some(gate.clone()), &[("a", "A"), ("b", "B")]);
        tokio::spawn(async move { cache.get_many_or_load(&["a", "b"], loader).await })
    };
    wait_for_waiters(&cache, "a", 1).await;
    let calls = Calls::default();
    let single = {
        let cache = cache.clone();
        let loader = loader(&calls, "not called");
        tokio::spawn(async move { cache.get_or_load("a", loader).await })
    };
    wait_for_waiters(&cache, "a", 2).await;
    gate.notify_one();
    assert_eq!(strs(&batch.await.unwrap().unwrap()), vec![Some("A"), Some("B")]);
    assert_eq!(single.await.unwrap().unwrap().as_deref().map(String::as_str), Some("A"));
    assert_eq!(calls.get(), 0, "the single read was answered by the batch's load");
    assert_eq!(asked.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_misses_take_the_fleet_lock_and_wait_for_its_holder() {
    let shared = Arc::new(MapTier::shared("l3"));
    let lock = Arc::new(LocalLock::new());
    let instance = || -> Cache<String> {
        Cache::builder("users")
            .tier(MemoryTier::builder().build(), exact(MINUTE))
            .tier(shared.clone(), exact(MINUTE))
            .distributed_lock(lock.clone(), LockOptions::default())
            .build()
            .unwrap()
    };
    let (a, b) = (instance(), instance());

    // Another instance holds the lock of k (it is loading k): the batch waits for its value.
    let token = tier_core::spi::DistributedLock::try_acquire(&*lock, b"k", MINUTE).await.unwrap();
    let token = token.expect("the lock is free");
    let asked = Arc::default();
    let batch = {
        let a = a.clone();
        let loader = batch_loader(&asked, None, &[("k", "loaded by a")]);
        tokio::spawn(async move { a.get_many_or_load(&["k"], loader).await })
    };
    tokio::time::timeout(Duration::from_secs(5), lock.attempted(2))
        .await
        .expect("the batch never asked for the lock of its miss");
    b.insert("k", "loaded by b".into()).await.unwrap();
    tier_core::spi::DistributedLock::release(&*lock, b"k", &token).await.unwrap();
    assert_eq!(strs(&batch.await.unwrap().unwrap()), vec![Some("loaded by b")]);
    assert!(asked.lock().unwrap().is_empty(), "the batch waited for the holder's value");

    // A batch that loads holds the lock of each key it loads while its loader runs.
    let gate = Arc::new(Notify::new());
    let batch = {
        let a = a.clone();
        let loader = batch_loader(&asked, Some(gate.clone()), &[("x", "X"), ("y", "Y")]);
        tokio::spawn(async move { a.get_many_or_load(&["x", "y"], loader).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while asked.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the loader never ran");
        tokio::task::yield_now().await;
    }
    assert!(lock.is_held(b"x") && lock.is_held(b"y"), "the batch's keys are locked while it loads");
    gate.notify_one();
    assert_eq!(strs(&batch.await.unwrap().unwrap()), vec![Some("X"), Some("Y")]);
    assert!(!lock.is_held(b"x") && !lock.is_held(b"y"), "and released after");
}
