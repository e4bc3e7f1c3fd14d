//! MemoryTier on its own: objects only, per-entry expiry, bounded by bytes, evictions counted.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tier_core::{now_ms, Entry, Lookup, Meta, Tier, TierContext, TierErrorKind, Value};
use tier_memory::MemoryTier;

fn entry(fresh_in: u64, stale_in: u64, size: u32) -> Entry {
    let now = now_ms();
    Entry {
        meta: Meta {
            created_at: now,
            fresh_until: now + fresh_in,
            stale_until: now + stale_in,
            ..Meta::default()
        },
        value: Value::Object(Arc::new(String::from("v"))),
        size,
    }
}

#[tokio::test]
async fn a_hit_hands_back_the_stored_arc() {
    let tier = MemoryTier::builder().build();
    let value: Arc<String> = Arc::new("shared".into());
    let mut e = entry(60_000, 60_000, 10);
    e.value = Value::Object(value.clone());
    tier.insert(Bytes::from("k"), e).await.unwrap();
    let Lookup::Hit(found) = tier.get(b"k").await.unwrap() else { panic!("expected a hit") };
    let Value::Object(any) = found.value else { panic!("object expected") };
    let back = any.downcast::<String>().unwrap();
    assert!(Arc::ptr_eq(&back, &value), "no copy, no decode");
}

#[tokio::test]
async fn entries_are_classified_and_expire_at_stale_until() {
    let tier = MemoryTier::builder().build();
    tier.insert(Bytes::from("stale"), entry(0, 60_000, 10)).await.unwrap();
    assert!(matches!(tier.get(b"stale").await.unwrap(), Lookup::Stale(_)));
    tier.insert(Bytes::from("gone"), entry(0, 0, 10)).await.unwrap();
    assert!(matches!(tier.get(b"gone").await.unwrap(), Lookup::Miss), "already past stale_until");
    tier.insert(Bytes::from("soon"), entry(20, 30, 10)).await.unwrap();
    assert!(matches!(tier.get(b"soon").await.unwrap(), Lookup::Hit(_)));
    tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    assert!(matches!(tier.get(b"soon").await.unwrap(), Lookup::Miss), "gone after stale_until");
}

#[tokio::test]
async fn envelopes_and_oversized_entries_are_refused() {
    let tier = MemoryTier::builder().max_bytes(1000).build();
    let mut e = entry(60_000, 60_000, 10);
    e.value = Value::Envelope(Bytes::from_static(b"bytes"));
    assert_eq!(tier.insert(Bytes::from("k"), e).await.unwrap_err().kind(), TierErrorKind::Rejected);
    let err = tier.insert(Bytes::from("k"), entry(60_000, 60_000, 5000)).await.unwrap_err();
    assert_eq!(err.kind(), TierErrorKind::TooLarge);
}

#[tokio::test]
async fn capacity_is_bounded_in_bytes_and_evictions_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let tier = MemoryTier::builder().max_bytes(100_000).build();
    tier.attach(&TierContext { cache: "c".into(), tier: "memory".into() });
    for i in 0..1000u32 {
        tier.insert(Bytes::from(format!("key:{i}")), entry(60_000, 60_000, 900)).await.unwrap();
    }
    tier.run_pending_tasks();
    let stats = tier.stats();
    assert!(stats.bytes <= 100_000, "{stats:?}");
    assert!(stats.entries < 1000 && stats.entries > 0, "{stats:?}");
    let evicted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == tier_core::metrics::TIER_EVICTIONS
                && k.key().labels().any(|l| l.key() == "cause" && l.value() == "capacity")
        })
        .map(|(_, _, _, v)| if let DebugValue::Counter(c) = v { c } else { 0 })
        .sum();
    assert_eq!(evicted, 1000 - stats.entries, "every capacity eviction counted");
}
