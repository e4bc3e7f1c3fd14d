//! Helpers shared by the hierarchy's tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tier_core::spi::{Codec, Entry, Meta, Tier};
use tier_core::{Cache, TierPolicy};

pub const MINUTE: Duration = Duration::from_secs(60);

/// A policy with no jitter, so lifetimes are exact.
pub fn exact(fresh: Duration) -> TierPolicy {
    TierPolicy::fresh(fresh).jitter(0.0)
}

/// An envelope entry with the given absolute times.
pub fn envelope_entry(value: &str, fresh_until: u64, stale_until: u64) -> Entry {
    let meta =
        Meta { created_at: tier_core::spi::now_ms(), fresh_until, stale_until, ..Meta::default() };
    let bytes = Codec::default().encode(&meta, Some(&value.to_string())).expect("encode");
    Entry::from_envelope(bytes).expect("decode")
}

/// Put `value` into `tier` under `key` with the given absolute times.
pub async fn put(tier: &dyn Tier, key: &str, value: &str, fresh_until: u64, stale_until: u64) {
    tier.insert(
        Bytes::copy_from_slice(key.as_bytes()),
        envelope_entry(value, fresh_until, stale_until),
    )
    .await
    .expect("insert");
}

/// Wait until the instance whose L1 is `b_l1` has applied every message instance `a` published
/// so far (one sender's messages arrive in order: the invalidation of a key only `b_l1` holds,
/// sent now, is the last of them).
pub async fn settled(a: &Cache<String>, b_l1: &dyn Tier) {
    let now = tier_core::spi::now_ms();
    let meta = Meta {
        created_at: now,
        fresh_until: now + 60_000,
        stale_until: now + 60_000,
        ..Meta::default()
    };
    let value = tier_core::spi::Value::Object(Arc::new("x".to_string()));
    b_l1.insert(Bytes::from_static(b"sync"), Entry { meta, value, size: 1 }).await.expect("insert");
    a.invalidate("sync").await.expect("invalidate");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while meta_of(b_l1, "sync").await.is_some() {
        assert!(std::time::Instant::now() < deadline, "b never applied a's messages");
        tokio::task::yield_now().await;
    }
}

/// The meta of what `tier` holds under `key`, if anything.
pub async fn meta_of(tier: &dyn Tier, key: &str) -> Option<Meta> {
    tier.get(key.as_bytes()).await.expect("get").into_entry().map(|e| e.meta)
}

/// A loader call counter.
#[derive(Clone, Default)]
pub struct Calls(pub Arc<AtomicUsize>);

impl Calls {
    pub fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A loader that counts its calls and returns `value`.
pub fn loader(
    calls: &Calls,
    value: &str,
) -> impl FnOnce() -> std::future::Ready<Result<Option<String>, std::io::Error>> + Send + 'static {
    let calls = calls.clone();
    let value = value.to_string();
    move || {
        calls.bump();
        std::future::ready(Ok(Some(value)))
    }
}

/// A loader that counts its calls and fails.
pub fn failing(
    calls: &Calls,
) -> impl FnOnce() -> std::future::Ready<Result<Option<String>, std::io::Error>> + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.bump();
        std::future::ready(Err(std::io::Error::other("origin down")))
    }
}

/// Wait (yielding, at most 5 s) until `cache.get(key)` answers `expected`: a background load or
/// refresh has landed.
pub async fn landed(cache: &Cache<String>, key: &str, expected: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cache.get(key).await.as_deref().map(String::as_str) != Some(expected) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::task::yield_now().await;
    }
}
