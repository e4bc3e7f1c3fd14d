//! DiskTier keeps the `Tier` contract (tier-core's conformance kit), each check on a directory
//! of its own.
#![allow(clippy::unwrap_used)]

use tier_core::testing::conformance;
use tier_disk::DiskTier;

#[tokio::test]
async fn disk_tier_keeps_the_tier_contract() {
    let mut dirs = Vec::new();
    let report = conformance::run(|| {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::builder(dir.path())
            .segment_size(1 << 20)
            .capacity_bytes(8 << 20)
            .build()
            .unwrap();
        dirs.push(dir);
        async move { tier }
    })
    .await;
    if let Err(violations) = report {
        panic!("{violations}");
    }
}
