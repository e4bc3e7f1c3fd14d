//! Instructions per L1 hit, for callgrind: `Cache::get` of keys one `MemoryTier` holds beside
//! raw `moka::future::Cache::get` of the same `Arc<V>` (the `memory` bench's `moka_raw`), each
//! in a function of its own so that callgrind counts only it. Instruction counts do not move
//! with the machine's load or the code's layout, as the `memory` bench's times do (±5–10 %):
//! use this to tell a change of a few instructions on the hit path from noise, and the
//! `memory` bench (with `scripts/bench-layouts`) for what a hit costs in time.
//!
//! ```text
//! cargo bench -p tier-benches --bench l1_instructions --no-run
//! for side in cache moka; do
//!   L1_SIDE=$side valgrind --tool=callgrind --toggle-collect='*l1_instructions*counted*' \
//!     --callgrind-out-file=/dev/null target/release/deps/l1_instructions-<hash> 2>&1 | grep Collected
//! done
//! ```
//! and divide by `L1_GETS` (100,000): hits over 1,024 keys in turn, no metrics recorder (the
//! counters are no-ops, as for the peer).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tier_core::{Cache, TierPolicy};
use tier_memory::MemoryTier;

/// The counted work of one side: a future polled through a vtable, so that its poll is a
/// function of its own (named `…counted_…::{{closure}}`) whatever the inliner does; the box
/// is one allocation on both sides.
type Counted<'a> = Pin<Box<dyn Future<Output = u64> + 'a>>;

fn counted_cache<'a>(cache: &'a Cache<u64>, key: &'a Bytes) -> Counted<'a> {
    Box::pin(async move { *cache.get(key).await.expect("a hit") })
}

fn counted_moka<'a>(moka: &'a moka::future::Cache<Bytes, Arc<u64>>, key: &'a Bytes) -> Counted<'a> {
    Box::pin(async move { *moka.get(key).await.expect("a hit") })
}

const KEYS: u64 = 1024;

fn main() {
    let gets: u64 = std::env::var("L1_GETS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let moka_side = std::env::var("L1_SIDE").is_ok_and(|s| s == "moka");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let keys: Vec<Bytes> = (0..KEYS).map(|i| Bytes::from(format!("user:{i:011}"))).collect();
        let mut sum = 0;
        if moka_side {
            let moka = moka::future::Cache::builder().max_capacity(1 << 20).build();
            for (i, k) in (0..).zip(&keys) {
                moka.insert(k.clone(), Arc::new(i)).await;
            }
            for n in 0..gets {
                sum += counted_moka(&moka, &keys[(n % KEYS) as usize]).await;
            }
        } else {
            let policy = TierPolicy::fresh(Duration::from_secs(3600));
            let cache: Cache<u64> = Cache::builder("i")
                .tier(MemoryTier::builder().max_bytes(256 << 20).build(), policy)
                .build()
                .unwrap();
            for (i, k) in (0..).zip(&keys) {
                cache.insert(k, i).await.unwrap();
            }
            for n in 0..gets {
                sum += counted_cache(&cache, &keys[(n % KEYS) as usize]).await;
            }
        }
        assert_eq!(sum, (0..gets).map(|n| n % KEYS).sum::<u64>());
    });
}
