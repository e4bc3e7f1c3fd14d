//! The OpenTelemetry integration's traces, exported to the SDK's in-memory exporter (no network):
//! a read through memory → Redis (the test Redis of `scripts/test`) gives a `get_or_load` span
//! with its fields as attributes and, inside it, client spans of the Redis calls after the
//! database semantic conventions. (The metrics are in `otel_metrics.rs`: a process of their own
//! for the global recorder.)
#![allow(clippy::unwrap_used)]

mod common;

use common::cache;

use std::collections::BTreeMap;

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::prelude::*;

fn attributes(span: &SpanData) -> BTreeMap<String, String> {
    span.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()
}

#[tokio::test]
async fn reads_and_redis_calls_are_exported_as_spans_with_the_database_conventions() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber =
        tracing_subscriber::registry().with(tier::otel::layer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let cache = cache("traced").await;
    let key = cache.key("42");
    let loaded = cache.get_or_load(&key, || async { Ok::<_, std::io::Error>(Some("Ada".into())) });
    assert_eq!(loaded.await.unwrap().as_deref().map(String::as_str), Some("Ada"));
    // An insert returns once every tier has it: the write script has been sent.
    cache.insert(cache.key("43"), "Grace".into()).await.unwrap();
    drop(cache);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let read = spans.iter().find(|s| s.name == "get_or_load").unwrap_or_else(|| {
        panic!("no get_or_load span in {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
    });
    let fields = attributes(read);
    assert_eq!(fields["cache"], "traced");
    assert_eq!((fields["result"].as_str(), fields["tier"].as_str()), ("loaded", "origin"));
    assert_eq!(fields["loaded"], "true");
    assert_eq!(fields["key"].len(), 16, "hashed: {fields:?}");
    assert!(fields.contains_key("duration_us"), "{fields:?}");

    // The read looked in Redis (inside its span) before it loaded, then wrote the value there.
    let redis: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.attributes.iter().any(|kv| kv.key.as_str() == "db.system.name"))
        .collect();
    assert!(
        !redis.is_empty(),
        "no Redis span in {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for span in &redis {
        let a = attributes(span);
        assert_eq!(span.span_kind, SpanKind::Client, "{span:?}");
        assert_eq!(a["db.system.name"], "redis");
        assert_eq!(a["db.operation.name"], span.name, "the span is named after its command");
        assert_eq!(a["db.namespace"], "0");
        assert!(!a.contains_key("error.type"), "{a:?}");
    }
    let names: Vec<&str> = redis.iter().map(|s| s.name.as_ref()).collect();
    let lookup =
        redis.iter().find(|s| s.name == "GET").unwrap_or_else(|| panic!("no GET in {names:?}"));
    assert_eq!(
        lookup.parent_span_id,
        read.span_context.span_id(),
        "the lookup is a child of the read"
    );
    assert!(names.contains(&"EVALSHA") || names.contains(&"EVAL"), "the write script: {names:?}");
    for s in &redis {
        let recorded = attributes(s);
        assert!(
            !recorded.values().any(|v| v.contains("traced:0:4") || v.contains("Grace")),
            "no key or value is recorded: {recorded:?}"
        );
    }
}
