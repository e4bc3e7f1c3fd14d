//! MemoryTier on its own: objects only, per-entry expiry, bounded by bytes, evictions counted.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tier_core::spi::{
    now_ms, BreakerTier, Entry, Lookup, Meta, Outcome, ReadyLookup, TagStamp, Tier, TierContext,
    Value,
};
use tier_core::{BreakerConfig, BreakerState, TierErrorKind};
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
async fn an_entry_comes_back_with_the_meta_it_went_in_with() {
    let tier = MemoryTier::builder().build();
    let now = now_ms();
    let meta = Meta {
        created_at: now - 5,
        fresh_until: now + 60_000,
        // Longer than 49 days past fresh_until: kept to the millisecond.
        stale_until: now + 60_000 + 5_000_000_000,
        load_cost_us: 1234,
        negative: true,
        insert: true,
        tombstone: false,
        tags: Some(Arc::from(vec![TagStamp { tag: Arc::from("t"), generation: 7 }])),
        validator: Some(Bytes::from_static(b"W/\"v7\"")),
        sealing: None,
    };
    let e = Entry { meta: meta.clone(), value: Value::Object(Arc::new(())), size: 77 };
    tier.insert(Bytes::from("k"), e).await.unwrap();
    let Lookup::Hit(found) = tier.get(b"k").await.unwrap() else { panic!("expected a hit") };
    assert_eq!(found.meta, meta);
    assert_eq!(found.size, 77);
}

/// `get_ready` must agree with `get`: `Fresh` only for a fresh untagged hit, `Miss` only for a
/// miss, `Ask` for the rest (stale, tagged).
#[tokio::test]
async fn get_ready_agrees_with_get() {
    let tier = MemoryTier::builder().build();
    let value: Arc<String> = Arc::new("shared".into());
    let mut fresh = entry(60_000, 120_000, 10);
    fresh.value = Value::Object(value.clone());
    fresh.meta.load_cost_us = 42;
    tier.insert(Bytes::from("fresh"), fresh.clone()).await.unwrap();
    let mut tagged = entry(60_000, 60_000, 10);
    tagged.meta.tags = Some(Arc::from(vec![TagStamp { tag: Arc::from("t"), generation: 1 }]));
    tier.insert(Bytes::from("tagged"), tagged).await.unwrap();
    tier.insert(Bytes::from("stale"), entry(0, 60_000, 10)).await.unwrap();

    let ReadyLookup::Fresh(hit) = tier.get_ready(b"fresh") else { panic!("expected Fresh") };
    assert!(Arc::ptr_eq(&hit.value().clone().downcast::<String>().unwrap(), &value));
    assert_eq!(
        (
            hit.created_at(),
            hit.fresh_until(),
            hit.stale_until(),
            hit.load_cost_us(),
            hit.is_negative()
        ),
        (fresh.meta.created_at, fresh.meta.fresh_until, fresh.meta.stale_until, 42, false)
    );
    assert!(matches!(tier.get(b"fresh").await.unwrap(), Lookup::Hit(_)));

    assert!(matches!(tier.get_ready(b"tagged"), ReadyLookup::Ask));
    assert!(matches!(tier.get(b"tagged").await.unwrap(), Lookup::Hit(_)));
    assert!(matches!(tier.get_ready(b"stale"), ReadyLookup::Ask));
    assert!(matches!(tier.get(b"stale").await.unwrap(), Lookup::Stale(_)));
    assert!(matches!(tier.get_ready(b"absent"), ReadyLookup::Miss));
    assert!(matches!(tier.get(b"absent").await.unwrap(), Lookup::Miss));
}

fn record_failure(tier: &BreakerTier) {
    let permit = tier.breaker().try_acquire();
    assert!(permit.is_granted(), "the breaker lets the call through");
    tier.breaker().record(permit, Outcome::Failure);
}

/// Behind a breaker, a ready answer counts as a success; an open breaker answers `Ask` even for
/// an entry in memory, so that the async path fails fast (and does the probe accounting).
#[tokio::test]
async fn behind_a_breaker_get_ready_answers_only_while_closed() {
    let memory = MemoryTier::builder().build();
    memory.insert(Bytes::from("k"), entry(60_000, 60_000, 10)).await.unwrap();
    let cfg = BreakerConfig {
        consecutive_failures: 2,
        cooldown: std::time::Duration::from_secs(3600),
        ..BreakerConfig::default()
    };
    let tier = BreakerTier::new(Arc::new(memory), cfg);
    record_failure(&tier);
    assert!(matches!(tier.get_ready(b"k"), ReadyLookup::Fresh(_)));
    record_failure(&tier);
    assert_eq!(tier.breaker().state(), BreakerState::Closed, "the ready hit counted as a success");
    record_failure(&tier);
    assert_eq!(tier.breaker().state(), BreakerState::Open);
    assert!(matches!(tier.get_ready(b"k"), ReadyLookup::Ask));
    assert_eq!(tier.get(b"k").await.unwrap_err().kind(), TierErrorKind::CircuitOpen);
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
    tier.attach(&TierContext::new("c", "memory"));
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

/// The keys of `keys` the tier holds.
async fn held(tier: &MemoryTier, keys: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::new();
    for key in keys {
        if matches!(tier.get(key).await.unwrap(), Lookup::Hit(_)) {
            out.push(key.clone());
        }
    }
    out
}

#[tokio::test]
async fn the_byte_bound_holds_through_hits_and_clears_once_the_sketch_is_sized() {
    // moka's capacity is twice max_bytes, half of it reserved once the tier is 90 % full (the
    // frequency sketch is sized then): the entries never weigh more than max_bytes.
    let tier = MemoryTier::builder().max_bytes(100_000).build();
    let weight = 9 + 900 + u64::from(tier_memory::ENTRY_OVERHEAD); // "key:NNNNN", 900, overhead
    let fits = (100_000 / weight) as usize;
    let keys = |from: u32| -> Vec<Bytes> {
        (from..from + 1000).map(|i| Bytes::from(format!("key:{i:05}"))).collect()
    };
    let fill = |keys: Vec<Bytes>| async {
        for key in &keys {
            tier.insert(key.clone(), entry(60_000, 60_000, 900)).await.unwrap();
        }
        tier.run_pending_tasks();
        keys
    };
    let first = fill(keys(0)).await;
    let kept = held(&tier, &first).await;
    assert!(kept.len() <= fits && kept.len() > fits / 2, "{} of {fits}", kept.len());
    assert_eq!(tier.stats().entries, kept.len() as u64, "the reservation is not counted");
    assert!(tier.stats().bytes <= 100_000, "{:?}", tier.stats());
    // Reads only: every entry moves ahead of the reservation; the inserts after must still
    // evict entries, not the reservation.
    for _ in 0..20 {
        held(&tier, &kept).await;
    }
    tier.run_pending_tasks();
    let second = fill(keys(1000)).await;
    let total = held(&tier, &first).await.len() + held(&tier, &second).await.len();
    assert!(total <= fits, "{total} entries of {weight} bytes in 100,000");
    tier.clear().await.unwrap();
    let third = fill(keys(2000)).await;
    let after_clear = held(&tier, &third).await.len();
    assert!(after_clear <= fits && after_clear > fits / 2, "{after_clear} of {fits} after clear");
}

#[tokio::test]
async fn a_tier_of_any_size_builds_and_serves() {
    // Above 32 GiB and below 4 KiB the tier keeps no reservation (moka sizes its sketch alone).
    for max_bytes in [0, 1, 4 << 10, 64 << 30, u64::MAX] {
        let tier = MemoryTier::builder().max_bytes(max_bytes).build();
        let stored = tier.insert(Bytes::from("k"), entry(60_000, 60_000, 10)).await;
        assert_eq!(stored.is_ok(), max_bytes >= 11, "{max_bytes}: {stored:?}");
        tier.run_pending_tasks();
        assert_eq!(tier.stats().capacity_bytes, max_bytes);
    }
}
