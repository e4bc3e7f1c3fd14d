//! The hierarchy's `tracing` output, captured in memory by a subscriber layer of the test's own:
//! one `get_or_load` span per read with its cache, key (hashed unless configured), result, the
//! tier that answered, whether a load ran and its duration; events when a breaker opens, when
//! fail-safe serves a stale value and when an entry does not decode (at most one a second).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tier_core::spi::Tier;
use tier_core::testing::{Fault, FaultyTier, MapTier};
use tier_core::{BreakerConfig, Cache, FailSafe, TierErrorKind, TraceKeys};
use tier_memory::MemoryTier;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

type Fields = BTreeMap<String, String>;

/// What the layer saw: each span (name and fields, in creation order) and each event.
#[derive(Default)]
struct Seen {
    spans: Vec<(String, Fields)>,
    events: Vec<Fields>,
    ids: BTreeMap<u64, usize>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        let mut seen = self.0.lock().unwrap();
        let at = seen.spans.len();
        seen.spans.push((attrs.metadata().name().to_string(), fields));
        seen.ids.insert(id.into_u64(), at);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some(&at) = seen.ids.get(&id.into_u64()) {
            values.record(&mut Collect(&mut seen.spans[at].1));
        }
    }
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        fields.insert("level".into(), event.metadata().level().to_string());
        self.0.lock().unwrap().events.push(fields);
    }
}

impl Capture {
    /// The `get_or_load` spans so far, and forget them.
    fn reads(&self) -> Vec<Fields> {
        let mut seen = self.0.lock().unwrap();
        let reads = seen.spans.iter().filter(|(n, _)| n == "get_or_load").map(|(_, f)| f.clone());
        let reads = reads.collect();
        seen.spans.clear();
        seen.ids.clear();
        reads
    }

    fn events(&self) -> Vec<Fields> {
        std::mem::take(&mut self.0.lock().unwrap().events)
    }
}

/// The first event whose message contains `message`.
fn event<'a>(events: &'a [Fields], message: &str) -> &'a Fields {
    let found = events.iter().find(|e| field(e, "message").contains(message));
    found.unwrap_or_else(|| panic!("no event {message:?} in {events:?}"))
}

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields.get(name).map_or("<absent>", String::as_str)
}

#[tokio::test]
async fn each_read_has_a_span_with_its_answer_and_no_raw_key() {
    let capture = Capture::default();
    let _guard = tracing_subscriber::registry().with(capture.clone()).set_default();
    let l1 = Arc::new(MemoryTier::builder().build());
    let l2 = Arc::new(MapTier::new("disk"));
    let cache: Cache<String> = Cache::builder("traced")
        .tier(l1.clone(), exact(MINUTE))
        .tier(l2.clone(), exact(MINUTE))
        .synchronous_backfill(true)
        .build()
        .unwrap();
    let calls = Calls::default();
    let key = cache.key("user@example.com");

    cache.get_or_load(&key, loader(&calls, "v")).await.unwrap(); // miss, miss: loaded
    cache.get_or_load(&key, loader(&calls, "v")).await.unwrap(); // L1 hit
    l1.clear().await.unwrap();
    cache.get_or_load(&key, loader(&calls, "v")).await.unwrap(); // L2 hit
    let reads = capture.reads();
    assert_eq!(reads.len(), 3, "{reads:?}");
    let summary: Vec<(&str, &str, &str)> =
        reads.iter().map(|r| (field(r, "result"), field(r, "tier"), field(r, "loaded"))).collect();
    assert_eq!(
        summary,
        [("loaded", "origin", "true"), ("hit", "memory", "false"), ("hit", "disk", "false")]
    );
    for r in &reads {
        assert_eq!(field(r, "cache"), "traced");
        let shown = field(r, "key");
        assert_eq!(shown.len(), 16, "a 64-bit hash in hex: {shown}");
        assert!(!shown.contains("example"), "the raw key is never shown by default: {shown}");
        assert!(field(r, "duration_us").parse::<u64>().is_ok(), "{r:?}");
    }
    assert_eq!(field(&reads[0], "key"), field(&reads[2], "key"), "one key, one hash");
}

#[tokio::test]
async fn keys_are_shown_as_configured() {
    let capture = Capture::default();
    let _guard = tracing_subscriber::registry().with(capture.clone()).set_default();
    for (keys, expected) in [
        (TraceKeys::Truncated(8), Some("keys:0:u…")),
        (TraceKeys::Raw, Some("keys:0:user@example.com")),
        (TraceKeys::Off, None),
    ] {
        let cache: Cache<String> = Cache::builder("keys")
            .tier(MemoryTier::builder().build(), exact(MINUTE))
            .trace_keys(keys)
            .build()
            .unwrap();
        cache
            .get_or_load(cache.key("user@example.com"), loader(&Calls::default(), "v"))
            .await
            .unwrap();
        let reads = capture.reads();
        assert_eq!(reads[0].get("key").map(String::as_str), expected, "{keys:?}");
    }
}

#[tokio::test]
async fn fail_safe_and_an_opening_breaker_are_events_and_the_span_says_stale() {
    let capture = Capture::default();
    let _guard = tracing_subscriber::registry().with(capture.clone()).set_default();
    let (l2, faults) = FaultyTier::with_handle(MapTier::new("remote"));
    let cache: Cache<String> = Cache::builder("degraded")
        .tier(
            l2,
            exact(Duration::from_millis(1))
                .stale(MINUTE)
                .breaker(BreakerConfig { consecutive_failures: 1, ..BreakerConfig::default() }),
        )
        .fail_safe(FailSafe::up_to(MINUTE))
        .build()
        .unwrap();
    let key = cache.key("k");
    cache.get_or_load(&key, loader(&Calls::default(), "v")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // the entry goes stale
    capture.reads();
    capture.events();

    cache.get_or_load(&key, failing(&Calls::default())).await.unwrap(); // stale, fail-safe
    let reads = capture.reads();
    assert_eq!(
        (field(&reads[0], "result"), field(&reads[0], "tier"), field(&reads[0], "loaded")),
        ("stale", "remote", "true")
    );
    let events = capture.events();
    let fail_safe = event(&events, "serving stale value");
    assert_eq!(
        (field(fail_safe, "level"), field(fail_safe, "cache"), field(fail_safe, "suppressed")),
        ("WARN", "degraded", "0")
    );

    faults.set(Fault::Fail(TierErrorKind::Unavailable));
    let _ = cache.get(&key).await;
    let events = capture.events();
    let opened = event(&events, "circuit breaker opened");
    assert_eq!(
        (field(opened, "level"), field(opened, "cache"), field(opened, "tier")),
        ("WARN", "degraded", "remote")
    );
}

#[tokio::test]
async fn decode_errors_are_one_warning_a_second_not_one_per_read() {
    let capture = Capture::default();
    let _guard = tracing_subscriber::registry().with(capture.clone()).set_default();
    let (l1, faults) = FaultyTier::with_handle(MapTier::new("damaged"));
    let cache: Cache<String> = Cache::builder("decoding").tier(l1, exact(MINUTE)).build().unwrap();
    faults.set(Fault::Fail(TierErrorKind::Decode));
    for _ in 0..5 {
        assert!(cache.get(cache.key("k")).await.is_none(), "a decode error is a miss");
    }
    let events = capture.events();
    let said: Vec<&Fields> =
        events.iter().filter(|e| field(e, "message").contains("did not decode")).collect();
    assert_eq!(said.len(), 1, "{events:?}");
    assert_eq!(
        (field(said[0], "level"), field(said[0], "tier"), field(said[0], "suppressed")),
        ("WARN", "damaged", "0")
    );
}
