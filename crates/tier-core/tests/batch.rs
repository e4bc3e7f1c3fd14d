//! The batch read (`get_many_or_load`) keeps the rules of the single-key read: the same
//! usability rule (suspect entries are not fresh; fail-safe's age limit).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tier_core::testing::{LocalBackplaneHub, MapTier};
use tier_core::{now_ms, Cache, CacheError, FailSafe, ReconnectPolicy, Tier};
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
