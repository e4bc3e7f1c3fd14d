//! The conformance kit against the in-process test tier and tier-core's own wrappers around it
//! (a wrapper is a tier: it keeps the contract of the tier it wraps).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use tier_core::spi::{BreakerTier, TimeoutTier};
use tier_core::testing::{conformance, FaultyTier, MapTier};
use tier_core::BreakerConfig;

#[tokio::test]
async fn the_map_tier_and_the_wrappers_keep_the_tier_contract() {
    let map = || async { MapTier::new("map") };
    let timeout =
        || async { TimeoutTier::new(Arc::new(MapTier::new("map")), Duration::from_secs(5)) };
    let breaker =
        || async { BreakerTier::new(Arc::new(MapTier::new("map")), BreakerConfig::default()) };
    let faulty = || async { FaultyTier::new(MapTier::new("map")) };
    for report in [
        conformance::run(map).await,
        conformance::run(timeout).await,
        conformance::run(breaker).await,
        conformance::run(faulty).await,
    ] {
        if let Err(v) = report {
            panic!("{v}");
        }
    }
}

/// A tier that serves whatever it holds as fresh, even past `stale_until`: the kit must say so.
#[tokio::test]
async fn the_kit_catches_a_tier_that_serves_expired_entries() {
    use async_trait::async_trait;
    use bytes::Bytes;
    use tier_core::spi::{Entry, Lookup, Tier};
    use tier_core::{Storage, TierError};

    struct Careless(MapTier);
    #[async_trait]
    impl Tier for Careless {
        fn name(&self) -> &str {
            "careless"
        }
        fn storage(&self) -> Storage {
            Storage::Envelopes
        }
        async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
            Ok(match self.0.raw(key) {
                Some(bytes) => Lookup::Hit(Entry::from_envelope(bytes)?),
                None => Lookup::Miss,
            })
        }
        async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
            self.0.insert(key, entry).await
        }
        async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
            self.0.remove(key).await
        }
        async fn clear(&self) -> Result<(), TierError> {
            self.0.clear().await
        }
    }
    let v = conformance::run(|| async { Careless(MapTier::new("m")) }).await.unwrap_err();
    let failed: Vec<&str> = v.failed.iter().map(|f| f.check).collect();
    assert!(failed.contains(&"classifies fresh, stale and expired entries"), "{v}");
    assert!(failed.contains(&"stale_until is respected over time"), "{v}");
    assert!(!v.passed.checks.is_empty());
}
