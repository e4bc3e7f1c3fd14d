//! A tier is mounted in its policy's layers, in the policy's order: the breaker by storage (or
//! as set), the timeout inside it, a layer of one's own outside both.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tier_core::spi::{Mount, Tier, TierLayer};
use tier_core::testing::{Fault, FaultHandle, FaultyTier, MapTier};
use tier_core::{Breaker, BreakerConfig, BreakerState, Cache, Storage, TierErrorKind};
use tier_memory::MemoryTier;

/// Wraps the tier in a [`FaultyTier`] and keeps its handle and what the mount said.
#[derive(Default, Clone)]
struct Faults(Arc<Mutex<Option<Mounted>>>);

/// The handle of the wrapper, and the mount's cache, tier, storage and sharing.
type Mounted = (FaultHandle, String, String, Storage, bool);

impl Faults {
    fn handle(&self) -> FaultHandle {
        self.0.lock().unwrap().as_ref().expect("mounted").0.clone()
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faults")
    }
}

impl TierLayer for Faults {
    fn name(&self) -> &'static str {
        "faults"
    }
    fn wrap(&self, tier: Arc<dyn Tier>, mount: &Mount<'_>) -> Arc<dyn Tier> {
        let (tier, handle) = FaultyTier::with_handle(tier);
        let ctx = mount.context;
        *self.0.lock().unwrap() =
            Some((handle, ctx.cache.clone(), ctx.tier.clone(), mount.storage, mount.shared));
        tier
    }
}

#[tokio::test]
async fn a_layer_of_ones_own_wraps_the_tier_outside_its_breaker() {
    let faults = Faults::default();
    let breaker = BreakerConfig { consecutive_failures: 3, ..BreakerConfig::default() };
    let cache = Cache::<String>::builder("t")
        .tier(MapTier::new("l2"), exact(MINUTE).breaker(breaker).layer(faults.clone()))
        .build()
        .unwrap();
    {
        let seen = faults.0.lock().unwrap();
        let (_, cache_label, tier_label, storage, shared) = seen.as_ref().expect("mounted");
        assert_eq!((cache_label.as_str(), tier_label.as_str()), ("t", "l2"));
        assert_eq!((*storage, *shared), (Storage::Envelopes, false));
    }
    let handle = faults.handle();
    handle.set(Fault::Fail(TierErrorKind::Unavailable));
    for _ in 0..10 {
        assert!(cache.get("k").await.is_none());
    }
    assert_eq!(handle.gets(), 10, "the outer layer sees every call");
    assert_eq!(
        cache.tiers()[0].breaker,
        Some(BreakerState::Closed),
        "failures made outside the breaker never reach it (and its state is passed through)"
    );
}

#[tokio::test]
async fn the_breaker_setting_decides_by_storage_unless_told() {
    let breaker_of = |cache: &Cache<String>| cache.tiers()[0].breaker;
    let memory = |p| Cache::<String>::builder("t").tier(MemoryTier::builder().build(), p);
    let map = |p| Cache::<String>::builder("t").tier(MapTier::new("l2"), p);
    assert_eq!(breaker_of(&memory(exact(MINUTE)).build().unwrap()), None, "objects: none");
    assert_eq!(
        breaker_of(&map(exact(MINUTE)).build().unwrap()),
        Some(BreakerState::Closed),
        "envelopes: one"
    );
    let on = exact(MINUTE).breaker(Breaker::On(BreakerConfig::default()));
    assert_eq!(breaker_of(&memory(on).build().unwrap()), Some(BreakerState::Closed));
    assert_eq!(breaker_of(&map(exact(MINUTE).no_breaker()).build().unwrap()), None);
    let shared =
        Cache::<String>::builder("t").tier(MapTier::shared("l3"), exact(MINUTE)).build().unwrap();
    assert_eq!(breaker_of(&shared), Some(BreakerState::Closed), "shared: one");
}

/// Answers every `get` with a miss after a second, and says (or not) that it bounds its calls
/// within the timeout it is told at attach.
struct Slow {
    claims_bounded: bool,
}

#[async_trait::async_trait]
impl Tier for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn storage(&self) -> Storage {
        Storage::Envelopes
    }
    fn bounds_calls(&self) -> bool {
        self.claims_bounded
    }
    async fn get(&self, _key: &[u8]) -> Result<tier_core::spi::Lookup, tier_core::TierError> {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        Ok(tier_core::spi::Lookup::Miss)
    }
    async fn insert(
        &self,
        _key: bytes::Bytes,
        _entry: tier_core::spi::Entry,
    ) -> Result<(), tier_core::TierError> {
        Ok(())
    }
    async fn remove(&self, _key: &[u8]) -> Result<(), tier_core::TierError> {
        Ok(())
    }
    async fn clear(&self) -> Result<(), tier_core::TierError> {
        Ok(())
    }
}

/// A tier that bounds its own calls within the hierarchy's timeout gets no second timer around
/// it (so its slowness here, a lie, goes unbounded); one that does not is cut at the timeout,
/// each late answer a failure of its breaker. The clock is paused: time moves only when every
/// task waits for a timer.
#[tokio::test(start_paused = true)]
async fn a_tier_that_bounds_its_calls_gets_no_timer_of_the_hierarchy() {
    let timeout = std::time::Duration::from_millis(20);
    let breaker = BreakerConfig { consecutive_failures: 3, ..BreakerConfig::default() };
    for claims_bounded in [false, true] {
        let policy = exact(MINUTE).timeout(timeout).breaker(breaker);
        let cache =
            Cache::<String>::builder("t").tier(Slow { claims_bounded }, policy).build().unwrap();
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            assert!(cache.get("k").await.is_none());
        }
        let took = started.elapsed();
        if claims_bounded {
            assert!(
                took >= std::time::Duration::from_secs(3),
                "each get waited the tier: {took:?}"
            );
            assert_eq!(cache.tiers()[0].breaker, Some(BreakerState::Closed));
        } else {
            assert!(took < std::time::Duration::from_secs(1), "cut at the timeout: {took:?}");
            assert_eq!(cache.tiers()[0].breaker, Some(BreakerState::Open), "three timeouts");
        }
    }
}
