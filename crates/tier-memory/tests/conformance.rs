//! MemoryTier keeps the `Tier` contract (tier-core's conformance kit).

use tier_core::testing::conformance;
use tier_memory::MemoryTier;

#[tokio::test]
async fn memory_tier_keeps_the_tier_contract() {
    if let Err(violations) = conformance::run(|| async { MemoryTier::builder().build() }).await {
        panic!("{violations}");
    }
}
