//! What the L1's eviction policy sees of the hierarchy's reads: one access per caller's
//! request. moka's TinyLFU admits a new entry only when its frequency estimate beats the
//! victim's; a miss counted twice (once by the caller's read, again by the flight's look before
//! loading) made every key read once look read twice, and the L1 behaved almost like LRU.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::{loader, Calls, MINUTE};
use tier_core::spi::{Entry, Lookup, ReadyLookup, Tier};
use tier_core::{Cache, TierError, TierPolicy};
use tier_memory::MemoryTier;

/// Counts, per key read, the reads that reach the memory tier's policy (`get`, `get_ready`,
/// `get_many`) and the lookups that do not (`peek_ready`).
struct Accesses {
    inner: MemoryTier,
    policy: Arc<AtomicU64>,
}

#[async_trait]
impl Tier for Accesses {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn storage(&self) -> tier_core::Storage {
        self.inner.storage()
    }
    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        self.policy.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    fn get_ready(&self, key: &[u8]) -> ReadyLookup {
        self.policy.fetch_add(1, Ordering::SeqCst);
        self.inner.get_ready(key)
    }
    fn peek_ready(&self, key: &[u8]) -> ReadyLookup {
        self.inner.peek_ready(key)
    }
    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        self.policy.fetch_add(keys.len() as u64, Ordering::SeqCst);
        self.inner.get_many(keys).await
    }
    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        self.inner.insert(key, entry).await
    }
    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        self.inner.remove(key).await
    }
    async fn clear(&self) -> Result<(), TierError> {
        self.inner.clear().await
    }
}

fn cache() -> (Cache<String>, Arc<AtomicU64>) {
    let policy = Arc::new(AtomicU64::new(0));
    let tier = Accesses { inner: MemoryTier::builder().build(), policy: policy.clone() };
    let cache = Cache::builder("l1-policy").tier(tier, TierPolicy::fresh(MINUTE)).build().unwrap();
    (cache, policy)
}

#[tokio::test]
async fn a_load_is_one_access_for_the_l1_policy() {
    let (cache, policy) = cache();
    let calls = Calls::default();
    let v = cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("v"));
    assert_eq!(calls.get(), 1);
    assert_eq!(policy.load(Ordering::SeqCst), 1, "a cold get_or_load reads the L1 once");
    cache.get_or_load("k", loader(&calls, "v")).await.unwrap();
    assert_eq!(policy.load(Ordering::SeqCst), 2, "a hit is one more access");
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_batch_load_is_one_access_per_key_for_the_l1_policy() {
    let (cache, policy) = cache();
    let found = cache
        .get_many_or_load(&["a", "b", "c"], |keys: Vec<Bytes>| async move {
            let values = keys.iter().map(|k| (k.clone(), "v".to_string()));
            Ok::<_, std::io::Error>(values.collect::<HashMap<_, _>>())
        })
        .await
        .unwrap();
    assert!(found.iter().all(Option::is_some));
    assert_eq!(policy.load(Ordering::SeqCst), 3, "each cold key of a batch reads the L1 once");
}
