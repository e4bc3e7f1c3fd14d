//! Write-behind in the hierarchy (queue in memory; the durable queue and kill tests are in
//! tier-disk): batching and coalescing, per-key order, retries and dead letters, backpressure,
//! what `insert` and `invalidate` do to a pending write, and configurations refused at build.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tier_core::testing::{MapTier, RecordingOrigin};
use tier_core::{Cache, CacheError, WhenFull, WriteBehind};

fn cache_with(origin: &RecordingOrigin<u64>, opts: WriteBehind) -> Cache<u64> {
    Cache::builder("wb")
        .tier(MapTier::new("l1"), common::exact(common::MINUTE))
        .write_behind(origin.clone(), opts)
        .build()
        .unwrap()
}

/// Retries fast, so that tests do not wait for backoff.
fn fast() -> WriteBehind {
    WriteBehind::default()
        .max_delay(Duration::ZERO)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
}

fn k(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_while_a_batch_is_in_flight_coalesce_to_the_newest_value_per_key_in_order() {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast());
    origin.hold();
    cache.write_behind("a", 1).await.unwrap();
    origin.entered().await; // the batch of a=1 is in flight
    for v in 2..=5 {
        cache.write_behind("a", v).await.unwrap();
    }
    cache.write_behind("b", 1).await.unwrap();
    // The cache tiers have the newest value at once.
    assert_eq!(cache.get("a").await.as_deref(), Some(&5));
    assert_eq!(cache.write_behind_status().unwrap().pending, 2);
    origin.release();
    cache.flush_write_behind().await.unwrap();
    let writes = origin.writes();
    let got: Vec<(Bytes, u64)> = writes.iter().map(|(k, v, _)| (k.clone(), *v)).collect();
    assert_eq!(got, vec![(k("a"), 1), (k("a"), 5), (k("b"), 1)]);
    assert_eq!(origin.batches(), vec![1, 2]);
    // Sequence numbers grow with the writes.
    assert!(writes.windows(2).all(|w| w[0].2 < w[1].2), "{writes:?}");
    assert_eq!(cache.write_behind_status().unwrap().pending, 0);
    assert!(cache.write_behind_status().unwrap().in_memory);
}

#[tokio::test]
async fn a_batch_waits_for_its_age_limit_or_its_size_limit() {
    let origin = RecordingOrigin::new();
    let opts = WriteBehind::default().max_delay(Duration::from_millis(40)).max_batch(3);
    let cache = cache_with(&origin, opts);
    let started = Instant::now();
    cache.write_behind("a", 1).await.unwrap();
    cache.flush_write_behind().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(35), "{:?}", started.elapsed());
    assert_eq!(origin.batches(), vec![1]);
    // Three writes fill a batch: sent without waiting for the age limit.
    let opts = WriteBehind::default().max_delay(Duration::from_secs(3600)).max_batch(3);
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, opts);
    for key in ["x", "y", "z"] {
        cache.write_behind(key, 1).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), cache.flush_write_behind())
        .await
        .expect("a full batch goes at once")
        .unwrap();
    assert_eq!(origin.batches(), vec![3]);
}

#[tokio::test]
async fn a_failing_origin_is_retried_then_dead_lettered_and_the_dead_letter_is_replayable() {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast().max_attempts(3));
    origin.fail(u32::MAX);
    cache.write_behind("a", 7).await.unwrap();
    cache.flush_write_behind().await.unwrap();
    assert_eq!(origin.calls(), 3);
    let dead = cache.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].write.key.clone(), dead[0].attempts), (k("a"), 3));
    assert!(dead[0].reason.contains("origin down"), "{}", dead[0].reason);
    assert_eq!(cache.write_behind_status().unwrap().dead_letters, 1);
    origin.fail(0);
    assert_eq!(cache.replay_dead_letters().await.unwrap(), 1);
    cache.flush_write_behind().await.unwrap();
    assert_eq!(origin.writes().iter().map(|w| w.1).collect::<Vec<_>>(), vec![7]);
    assert!(cache.dead_letters().unwrap().is_empty());

    // Two failures, then the origin answers: written once, no dead letter.
    origin.fail(2);
    cache.write_behind("b", 1).await.unwrap();
    cache.flush_write_behind().await.unwrap();
    assert_eq!(origin.writes().last().map(|w| (w.0.clone(), w.1)), Some((k("b"), 1)));
    assert!(cache.dead_letters().unwrap().is_empty());
}

#[tokio::test]
async fn a_newer_write_of_a_key_supersedes_its_dead_letter_so_a_replay_never_writes_older_over_newer(
) {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast().max_attempts(1));
    origin.fail(u32::MAX);
    cache.write_behind("a", 1).await.unwrap();
    cache.flush_write_behind().await.unwrap();
    assert_eq!(cache.dead_letters().unwrap().len(), 1);
    origin.fail(0);
    cache.write_behind("a", 2).await.unwrap();
    cache.flush_write_behind().await.unwrap();
    assert!(cache.dead_letters().unwrap().is_empty());
    assert_eq!(cache.replay_dead_letters().await.unwrap(), 0);
    assert_eq!(origin.writes().iter().map(|w| w.1).collect::<Vec<_>>(), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_fails_at_once_when_told_to_and_writes_nothing() {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast().capacity(2).when_full(WhenFull::Fail));
    origin.hold();
    cache.write_behind("a", 1).await.unwrap();
    origin.entered().await;
    cache.write_behind("b", 1).await.unwrap();
    let full = cache.write_behind("c", 1).await;
    assert!(matches!(full, Err(CacheError::WriteBehindFull(_))), "{full:?}");
    assert_eq!(cache.get("c").await, None, "a refused write writes no tier");
    // A key already held needs no room.
    cache.write_behind("b", 2).await.unwrap();
    origin.release();
    cache.flush_write_behind().await.unwrap();
    cache.write_behind("c", 1).await.unwrap();
    cache.flush_write_behind().await.unwrap();
    let keys: Vec<Bytes> = origin.writes().into_iter().map(|w| w.0).collect();
    assert_eq!(keys, vec![k("a"), k("b"), k("c")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_the_caller_wait_until_the_writer_made_room() {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast().capacity(1));
    origin.hold();
    cache.write_behind("a", 1).await.unwrap();
    origin.entered().await;
    let returned = Arc::new(AtomicU32::new(0));
    let waiter = {
        let (cache, returned) = (cache.clone(), returned.clone());
        tokio::spawn(async move {
            cache.write_behind("b", 1).await.unwrap();
            returned.store(1, Ordering::SeqCst);
        })
    };
    // The writer holds the only room: the caller cannot have returned.
    tokio::task::yield_now().await;
    assert_eq!(returned.load(Ordering::SeqCst), 0);
    origin.release();
    waiter.await.unwrap();
    cache.flush_write_behind().await.unwrap();
    assert_eq!(origin.writes().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_supersedes_a_pending_write_of_its_key() {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast());
    origin.hold();
    cache.write_behind("other", 1).await.unwrap();
    origin.entered().await;
    cache.write_behind("a", 1).await.unwrap(); // pending, not in flight
    assert_eq!(cache.write_behind_status().unwrap().pending, 2);
    cache.insert("a", 2).await.unwrap(); // the caller wrote the origin itself
    assert_eq!(cache.write_behind_status().unwrap().pending, 1, "only the batch in flight");
    origin.release();
    cache.flush_write_behind().await.unwrap();
    let keys: Vec<Bytes> = origin.writes().into_iter().map(|w| w.0).collect();
    assert_eq!(keys, vec![k("other")], "the superseded value never reaches the origin");
    assert_eq!(cache.get("a").await.as_deref(), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidate_does_not_cancel_the_origin_write_and_invalidates_again_once_written() {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast());
    origin.hold();
    cache.write_behind("a", 2).await.unwrap();
    origin.entered().await; // in flight: the origin does not have it yet
    cache.invalidate("a").await.unwrap();
    // A read meanwhile answers the write still owed to the origin (read-your-writes), not
    // what the origin still has.
    let meanwhile = cache.get_or_load("a", || async { Ok::<_, std::io::Error>(Some(1)) }).await;
    assert_eq!(meanwhile.unwrap().as_deref(), Some(&2));
    origin.release();
    cache.flush_write_behind().await.unwrap();
    assert_eq!(origin.writes().iter().map(|w| w.1).collect::<Vec<_>>(), vec![2]);
    // The old value loaded before the write landed is gone: the next read loads the new one.
    let now = cache.get_or_load("a", || async { Ok::<_, std::io::Error>(Some(2)) }).await;
    assert_eq!(now.unwrap().as_deref(), Some(&2));
}

#[tokio::test]
async fn absurd_configurations_are_refused_at_build_with_the_setting_named() {
    let bad = [
        (WriteBehind::default().max_batch(0), "max_batch"),
        (WriteBehind::default().max_delay(Duration::MAX), "max_delay"),
        (WriteBehind::default().max_attempts(0), "max_attempts"),
        (WriteBehind::default().backoff(Duration::ZERO, Duration::from_secs(1)), "backoff"),
        (WriteBehind::default().backoff(Duration::from_secs(1), Duration::MAX), "max_backoff"),
        (WriteBehind::default().capacity(0), "capacity"),
    ];
    for (opts, name) in bad {
        let built = Cache::<u64>::builder("wb")
            .tier(MapTier::new("l1"), common::exact(common::MINUTE))
            .write_behind(RecordingOrigin::new(), opts)
            .build();
        match built {
            Err(CacheError::Config(why)) => assert!(why.contains(name), "{why}"),
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
    // A cache that does not write behind says so.
    let plain: Cache<u64> = Cache::builder("plain")
        .tier(MapTier::new("l1"), common::exact(common::MINUTE))
        .build()
        .unwrap();
    assert!(matches!(plain.write_behind("a", 1).await, Err(CacheError::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_many_supersedes_pending_writes_of_its_keys_as_insert_does() {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast());
    origin.hold();
    cache.write_behind("other", 1).await.unwrap();
    origin.entered().await; // in flight
    for key in ["a", "b", "c"] {
        cache.write_behind(key, 1).await.unwrap(); // pending, not in flight
    }
    assert_eq!(cache.write_behind_status().unwrap().pending, 4);
    cache.insert_many([("a", 2), ("b", 2)]).await.unwrap();
    assert_eq!(cache.write_behind_status().unwrap().pending, 2, "the batch in flight and c");
    cache.insert_many_with_tags([("c", 2)], &["t"]).await.unwrap();
    assert_eq!(cache.write_behind_status().unwrap().pending, 1, "only the batch in flight");
    origin.release();
    cache.flush_write_behind().await.unwrap();
    let keys: Vec<Bytes> = origin.writes().into_iter().map(|w| w.0).collect();
    assert_eq!(keys, vec![k("other")], "superseded values never reach the origin");
    assert_eq!(cache.get("a").await.as_deref(), Some(&2));
    assert_eq!(cache.get("c").await.as_deref(), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poisoned_write_is_the_only_dead_letter_of_its_batch_the_rest_is_written() {
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast().max_attempts(3).max_batch(16));
    origin.reject("k05");
    origin.hold();
    cache.write_behind("first", 0).await.unwrap();
    origin.entered().await; // the next batch holds all twelve below
    for i in 0..12u64 {
        cache.write_behind(format!("k{i:02}"), i).await.unwrap();
    }
    origin.release();
    cache.flush_write_behind().await.unwrap();
    let dead = cache.dead_letters().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].write.key, k("k05"));
    assert!(dead[0].reason.contains("rejects"), "{}", dead[0].reason);
    assert!(
        dead[0].attempts > 3,
        "the batch's attempts and the isolated ones: {}",
        dead[0].attempts
    );
    let mut written: Vec<u64> =
        origin.writes().into_iter().filter(|w| w.0 != k("first")).map(|w| w.1).collect();
    written.sort_unstable();
    assert_eq!(written, (0..12).filter(|i| *i != 5).collect::<Vec<_>>());
    // Bisection, not one call per write: 3 tries of the batch, then halves down to k05.
    assert!(origin.calls() <= 1 + 3 + 2 * 4 + 1, "{} calls", origin.calls());
    // The dead letter is replayable once the origin takes it.
    origin.accept();
    assert_eq!(cache.replay_dead_letters().await.unwrap(), 1);
    cache.flush_write_behind().await.unwrap();
    assert!(origin.writes().iter().any(|w| w.0 == k("k05") && w.1 == 5));
}

/// Read-your-writes: a miss (an eviction, an invalidation) of a key whose write-behind is still
/// owed to the origin answers the queued value, never the older one the origin still has —
/// for `get_or_load` and `get_many_or_load` alike; a dead letter (which never reached the
/// origin) is not answered: the origin is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_of_a_key_with_a_pending_write_answers_the_queued_value_not_the_origins_older_one() {
    use std::collections::HashMap;
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast());
    origin.hold();
    cache.write_behind("a", 2).await.unwrap();
    origin.entered().await; // in flight
    cache.write_behind("b", 20).await.unwrap(); // pending
    cache.invalidate("a").await.unwrap();
    cache.invalidate("b").await.unwrap();
    let loads = Arc::new(AtomicU32::new(0));
    let counted = loads.clone();
    let a = cache
        .get_or_load("a", move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(1))
        })
        .await;
    assert_eq!(a.unwrap().as_deref(), Some(&2));
    let counted = loads.clone();
    let many = cache
        .get_many_or_load(&["b", "c"], move |keys: Vec<Bytes>| async move {
            counted.fetch_add(1, Ordering::SeqCst);
            assert_eq!(keys, vec![k("c")], "only the key without a pending write");
            Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, 30u64)).collect::<HashMap<_, _>>())
        })
        .await
        .unwrap();
    let many: Vec<Option<u64>> = many.into_iter().map(|v| v.as_deref().copied()).collect();
    assert_eq!(many, vec![Some(20), Some(30)]);
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the origin was asked for c only");
    origin.release();
    cache.flush_write_behind().await.unwrap();

    // A dead letter is not answered: the origin never got it.
    let origin = RecordingOrigin::new();
    let cache = cache_with(&origin, fast().max_attempts(1));
    origin.fail(u32::MAX);
    cache.write_behind("d", 9).await.unwrap();
    cache.flush_write_behind().await.unwrap();
    assert_eq!(cache.dead_letters().unwrap().len(), 1);
    cache.invalidate("d").await.unwrap();
    let d = cache.get_or_load("d", || async { Ok::<_, std::io::Error>(Some(8)) }).await;
    assert_eq!(d.unwrap().as_deref(), Some(&8));
}
