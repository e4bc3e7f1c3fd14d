//! A part of the fleet state that is down is counted in `tier_fleet_state_unavailable_total`
//! (a debugging recorder is installed for this test binary).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tier_core::spi::{Backplane, BackplaneEvent, GenerationStore, Invalidation, LogPosition};
use tier_core::{metrics as names, Cache, ReconnectPolicy, TierError, TierErrorKind};
use tier_memory::MemoryTier;

fn down() -> TierError {
    TierError::new(TierErrorKind::Unavailable, "down")
}

/// A generation store and a backplane that are down.
struct Down(tokio::sync::broadcast::Sender<BackplaneEvent>);

#[async_trait]
impl GenerationStore for Down {
    async fn current(&self, _: &[Arc<str>]) -> Result<Vec<Option<u64>>, TierError> {
        Err(down())
    }
    async fn stamp(&self, _: &[Arc<str>]) -> Result<Vec<u64>, TierError> {
        Err(down())
    }
    async fn bump(&self, _: &str) -> Result<u64, TierError> {
        Err(down())
    }
    async fn raise_floor(&self, _: &str, _: u64) -> Result<u64, TierError> {
        Err(down())
    }
}

#[async_trait]
impl Backplane for Down {
    async fn publish(&self, _: &str, _: &Invalidation) -> Result<Option<LogPosition>, TierError> {
        Err(down())
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BackplaneEvent> {
        self.0.subscribe()
    }
}

#[tokio::test]
async fn each_part_that_is_down_is_counted_and_the_cache_answers() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let down = Arc::new(Down(tokio::sync::broadcast::channel(4).0));
    let cache: Cache<String> = Cache::builder("fleet")
        .tier(MemoryTier::builder().build(), exact(MINUTE))
        .generations(down.clone())
        .backplane(down.clone(), ReconnectPolicy::default())
        .build()
        .unwrap();
    let calls = Calls::default();
    let opts = tier_core::CallOptions::new().tags(["t"]);
    let v = cache.get_or_load_with("k", &opts, loader(&calls, "v")).await.unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("v"), "the load answers");
    assert!(cache.invalidate("k").await.is_err(), "the backplane is down");
    assert!(cache.clear().await.is_err(), "the floor could not be raised");
    assert!(cache.invalidate_namespace().await.is_err());
    let snap = snapshotter.snapshot().into_vec();
    for part in ["generations", "backplane", "floor", "namespace"] {
        let n: u64 = snap
            .iter()
            .filter(|(k, _, _, _)| {
                let key = k.key();
                key.name() == names::FLEET_STATE_UNAVAILABLE
                    && key.labels().any(|l| l.key() == "part" && l.value() == part)
                    && key.labels().any(|l| l.key() == "cache" && l.value() == "fleet")
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum();
        assert!(n >= 1, "{part}: {n}");
    }
}
