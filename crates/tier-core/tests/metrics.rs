//! The hierarchy emits ARCHITECTURE.md's metrics with their names and labels (a debugging recorder
//! is installed for this test binary).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

/// One snapshot (taking a snapshot drains the recorder's values).
type Snapshot =
    Vec<(CompositeKey, Option<metrics::Unit>, Option<metrics::SharedString>, DebugValue)>;
use tier_core::testing::MapTier;
use tier_core::{metrics as names, Cache};
use tier_memory::MemoryTier;

fn counter(snap: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snap.iter()
        .filter(|(k, _, _, _)| {
            let key = k.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(l, v)| key.labels().any(|kl| kl.key() == *l && kl.value() == *v))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn the_design_metrics_are_emitted_with_their_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let l2 = Arc::new(MapTier::new("disk"));
    l2.put_raw("m:0:bad", &b"not an envelope"[..]);
    let l1 = Arc::new(MemoryTier::builder().build());
    let cache: Cache<String> = Cache::builder("m")
        .tier(l1.clone(), exact(MINUTE))
        .tier(l2.clone(), exact(MINUTE))
        .synchronous_backfill(true)
        .key_categories(
            &["user"],
            |k: &[u8]| if k.starts_with(b"m:0:user") { "user" } else { "zzz" },
        )
        .build()
        .unwrap();
    let calls = Calls::default();
    let k = cache.key("user:1");
    cache.get_or_load(&k, loader(&calls, "v")).await.unwrap(); // miss, miss, load
    cache.get_or_load(&k, loader(&calls, "v")).await.unwrap(); // L1 hit
    cache.set_tier_enabled("memory", false);
    cache.get(&k).await.unwrap(); // skipped, disk hit
    cache.set_tier_enabled("memory", true);
    tier_core::spi::Tier::clear(&*l1).await.unwrap();
    cache.get(&k).await.unwrap(); // memory miss, disk hit, backfill
    cache.get(cache.key("bad")).await; // decode error in disk: a miss
    cache.invalidate(&k).await.unwrap();
    cache.invalidate_tag("t").await.unwrap();
    cache.report_gauges();
    let snap: Snapshot = snapshotter.snapshot().into_vec();

    let get = |tier: &str, result: &str, category: &str| {
        counter(
            &snap,
            names::TIER_REQUESTS,
            &[
                ("cache", "m"),
                ("tier", tier),
                ("op", "get"),
                ("result", result),
                ("category", category),
            ],
        )
    };
    assert_eq!(get("memory", "miss", "user"), 2);
    assert_eq!(get("memory", "hit", "user"), 1);
    assert_eq!(get("memory", "skipped", "user"), 1);
    assert_eq!(get("disk", "miss", "user"), 1);
    assert_eq!(get("disk", "hit", "user"), 2);
    assert_eq!(get("disk", "miss", "other"), 1, "unknown categories count as other");
    assert_eq!(counter(&snap, names::TIER_DECODE_ERRORS, &[("cache", "m"), ("tier", "disk")]), 1);
    assert_eq!(counter(&snap, names::CACHE_LOADS, &[("cache", "m"), ("result", "ok")]), 1);
    assert_eq!(
        counter(
            &snap,
            names::TIER_BACKFILLS,
            &[("cache", "m"), ("from", "disk"), ("to", "memory")]
        ),
        1
    );
    assert_eq!(
        counter(&snap, names::CACHE_INVALIDATIONS, &[("kind", "key"), ("source", "local")]),
        1
    );
    assert_eq!(
        counter(&snap, names::CACHE_INVALIDATIONS, &[("kind", "tag"), ("source", "local")]),
        1
    );

    let seen: HashSet<String> =
        snap.iter().map(|(k, _, _, _)| k.key().name().to_string()).collect();
    assert!(snap.iter().any(|(k, _, _, _)| k.kind() == MetricKind::Histogram
        && k.key().name() == names::TIER_OP_DURATION));
    for name in [
        names::TIER_REQUESTS,
        names::TIER_OP_DURATION,
        names::TIER_BACKFILLS,
        names::TIER_BREAKER_STATE,
        names::TIER_ENTRIES,
        names::TIER_BYTES,
        names::TIER_CAPACITY_BYTES,
        names::TIER_EVICTIONS,
        names::TIER_DECODE_ERRORS,
        names::CACHE_LOADS,
        names::CACHE_LOAD_DURATION,
        names::CACHE_COALESCED,
        names::CACHE_STALE_SERVED,
        names::CACHE_REFRESHES,
        names::CACHE_INVALIDATIONS,
    ] {
        assert!(seen.contains(name), "{name} is not registered: {seen:?}");
    }
}
