//! `get_many` and `insert_many` on `Cache`: one batch call per tier, the same read rule and the
//! same insert rules as their single-key forms (write-through, a notice per key, winning over a
//! load that read before them, tags).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tier_core::spi::{now_ms, Tier};
use tier_core::testing::{Fault, FaultyTier, LocalBackplaneHub, MapTier};
use tier_core::{Cache, ReconnectPolicy, TierErrorKind};
use tier_memory::MemoryTier;
use tokio::sync::Notify;

fn strs(answers: &[Option<Arc<String>>]) -> Vec<Option<&str>> {
    answers.iter().map(|v| v.as_deref().map(String::as_str)).collect()
}

#[tokio::test]
async fn get_many_asks_each_tier_once_serves_only_fresh_entries_and_backfills() {
    let l1 = Arc::new(MemoryTier::builder().build());
    let (l2, handle) = FaultyTier::with_handle(MapTier::new("l2"));
    let cache: Cache<String> = Cache::builder("t")
        .tier(l1.clone(), exact(MINUTE))
        .tier(l2.clone(), exact(MINUTE))
        .synchronous_backfill(true)
        .build()
        .unwrap();
    let now = now_ms();
    for k in ["t:0:a", "t:0:b", "t:0:c"] {
        put(&*l2, k, &k[4..].to_uppercase(), now + 60_000, now + 60_000).await;
    }
    put(&*l2, "t:0:stale", "S", now - 1, now + 60_000).await;
    let keys: Vec<_> = ["a", "stale", "b", "missing", "c"].iter().map(|k| cache.key(k)).collect();
    let answers = cache.get_many(&keys).await;
    assert_eq!(strs(&answers), [Some("A"), None, Some("B"), None, Some("C")]);
    assert_eq!(handle.gets(), 1, "one get_many of the disk-like tier for all five keys");
    // The fresh hits were backfilled: the next batch of them never reaches L2.
    for k in ["t:0:a", "t:0:b", "t:0:c"] {
        assert!(meta_of(&*l1, k).await.is_some(), "{k} backfilled");
    }
    let again = cache.get_many(&keys[..1]).await;
    assert_eq!(strs(&again), [Some("A")]);
    assert_eq!(handle.gets(), 1, "answered by L1");
}

#[tokio::test]
async fn insert_many_writes_each_tier_once_and_sends_a_notice_per_key() {
    let hub = LocalBackplaneHub::new();
    let (l2, handle) = FaultyTier::with_handle(MapTier::new("l2"));
    let cache: Cache<String> = Cache::builder("t")
        .tier(MemoryTier::builder().build(), exact(MINUTE))
        .tier(l2.clone(), exact(MINUTE))
        .backplane(Arc::new(hub.node()), ReconnectPolicy::Clear)
        .build()
        .unwrap();
    let keys: Vec<_> = (0..50).map(|i| cache.key(format!("k{i}"))).collect();
    let before = hub.published();
    cache.insert_many(keys.iter().cloned().zip((0..50).map(|i| format!("v{i}")))).await.unwrap();
    assert_eq!(handle.calls().inserts.load(Ordering::SeqCst), 1, "one insert_many for 50 keys");
    assert_eq!(hub.published() - before, 50, "one notice per key");
    for (i, k) in keys.iter().enumerate() {
        let stored = l2.get(k).await.unwrap().into_entry().unwrap();
        assert!(stored.meta.insert, "flagged as an insert (wins a created_at tie)");
        assert_eq!(stored.decode::<String>().unwrap().as_deref().cloned(), Some(format!("v{i}")));
    }
    // A key given twice keeps its last value; an empty batch writes nothing.
    let k = cache.key("twice");
    cache.insert_many([(k.clone(), "first".into()), (k.clone(), "last".into())]).await.unwrap();
    assert_eq!(cache.get(&k).await.as_deref().map(String::as_str), Some("last"));
    let inserts = handle.calls().inserts.load(Ordering::SeqCst);
    cache.insert_many(Vec::<(Vec<u8>, String)>::new()).await.unwrap();
    assert_eq!(handle.calls().inserts.load(Ordering::SeqCst), inserts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_instances_drop_their_local_copies_of_a_batch() {
    let hub = LocalBackplaneHub::new();
    let shared = Arc::new(MapTier::shared("l3"));
    let instance = |node| {
        let l1 = Arc::new(MemoryTier::builder().build());
        let cache: Cache<String> = Cache::builder("t")
            .tier(l1.clone(), exact(MINUTE))
            .tier(shared.clone(), exact(MINUTE))
            .backplane(Arc::new(node), ReconnectPolicy::Clear)
            .build()
            .unwrap();
        (cache, l1)
    };
    let (a, _) = instance(hub.node());
    let (b, b_l1) = instance(hub.node());
    let keys: Vec<_> = (0..3).map(|i| a.key(format!("k{i}"))).collect();
    b.insert_many(keys.iter().map(|k| (k.clone(), "old".to_string()))).await.unwrap();
    // A copy created in the same millisecond as the notice is kept (it may be that very
    // write): let the clock move on first.
    let t = now_ms();
    while now_ms() <= t {
        tokio::task::yield_now().await;
    }
    a.insert_many(keys.iter().map(|k| (k.clone(), "new".to_string()))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    for k in &keys {
        while b_l1.get(k).await.unwrap().into_entry().is_some() {
            assert!(Instant::now() < deadline, "b never dropped its copy of {k:?}");
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(strs(&b.get_many(&keys).await), [Some("new"); 3], "read from the shared tier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_many_wins_over_a_load_that_read_before_it() {
    let l2 = Arc::new(MapTier::new("l2"));
    let cache: Cache<String> = Cache::builder("t")
        .tier(MemoryTier::builder().build(), exact(MINUTE))
        .tier(l2.clone(), exact(MINUTE))
        .build()
        .unwrap();
    let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let key = cache.key("a");
    let load = {
        let (cache, key, started, gate) =
            (cache.clone(), key.clone(), started.clone(), gate.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(&key, move || async move {
                    started.notify_one();
                    gate.notified().await;
                    Ok::<_, std::io::Error>(Some("loaded before the insert".to_string()))
                })
                .await
        })
    };
    started.notified().await;
    cache.insert_many([(key.clone(), "inserted".to_string())]).await.unwrap();
    gate.notify_one();
    load.await.unwrap().unwrap();
    assert_eq!(cache.get(&key).await.as_deref().map(String::as_str), Some("inserted"));
    let stored = l2.get(&key).await.unwrap().into_entry().unwrap();
    assert_eq!(stored.decode::<String>().unwrap().as_deref().map(String::as_str), Some("inserted"));
}

#[tokio::test]
async fn insert_many_with_tags_is_dropped_by_invalidate_tag() {
    let cache: Cache<String> =
        Cache::builder("t").tier(MapTier::new("l2"), exact(MINUTE)).build().unwrap();
    let team: Vec<_> =
        ["1", "2", "3"].iter().map(|k| (cache.key(k), format!("user {k}"))).collect();
    let keys: Vec<_> = team.iter().map(|(k, _)| k.clone()).collect();
    cache.insert_many_with_tags(team, &["team:7"]).await.unwrap();
    cache.insert(cache.key("other"), "untagged".into()).await.unwrap();
    assert_eq!(
        strs(&cache.get_many(&keys).await),
        [Some("user 1"), Some("user 2"), Some("user 3")]
    );
    cache.invalidate_tag("team:7").await.unwrap();
    assert_eq!(strs(&cache.get_many(&keys).await), [None, None, None]);
    assert!(cache.get(cache.key("other")).await.is_some());
}

#[tokio::test]
async fn a_failing_tier_fails_the_batch_but_the_others_are_written() {
    let (l2, handle) = FaultyTier::with_handle(MapTier::new("l2"));
    let l1 = Arc::new(MemoryTier::builder().build());
    let cache: Cache<String> = Cache::builder("t")
        .tier(l1.clone(), exact(MINUTE))
        .tier(l2, exact(MINUTE))
        .build()
        .unwrap();
    handle.set(Fault::Fail(TierErrorKind::Io));
    let items: Vec<_> = (0..3).map(|i| (cache.key(format!("k{i}")), format!("v{i}"))).collect();
    let err = cache.insert_many(items.clone()).await.expect_err("l2 failed");
    assert!(err.to_string().contains("l2"), "{err}");
    for (k, v) in &items {
        assert_eq!(cache.get(k).await.as_deref(), Some(v), "L1 was written");
    }
}
