//! A metrics recorder of no size (one that forwards to statics of its own, as the coherence
//! checker's node does), installed before the cache is built, gets the hierarchy's counts: the
//! lazy handles do not take it for "no recorder" (its own test binary: one global recorder).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use tier_core::Cache;
use tier_memory::MemoryTier;

static HITS: AtomicU64 = AtomicU64::new(0);

/// Counts `tier_requests_total{result="hit"}` into [`HITS`], drops everything else.
struct Hits;

struct HitFn;

impl metrics::CounterFn for HitFn {
    fn increment(&self, value: u64) {
        HITS.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, _: u64) {}
}

impl metrics::Recorder for Hits {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let hit = key.labels().any(|l| l.key() == "result" && l.value() == "hit");
        if key.name() == tier_core::metrics::TIER_REQUESTS && hit {
            metrics::Counter::from_arc(Arc::new(HitFn))
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[tokio::test]
async fn a_recorder_of_no_size_installed_before_the_build_gets_the_counts() {
    assert_eq!(std::mem::size_of::<Hits>(), 0);
    metrics::set_global_recorder(Hits).unwrap();
    let cache: Cache<String> =
        Cache::builder("zst").tier(MemoryTier::builder().build(), exact(MINUTE)).build().unwrap();
    let calls = Calls::default();
    let key = cache.key("1");
    cache.get_or_load(&key, loader(&calls, "v")).await.unwrap(); // miss, load
    cache.get_or_load(&key, loader(&calls, "v")).await.unwrap(); // hit
    cache.get(&key).await.unwrap(); // hit
    assert_eq!(HITS.load(Ordering::Relaxed), 2);
}
