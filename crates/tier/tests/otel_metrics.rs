//! The OpenTelemetry integration's metrics, exported to the SDK's in-memory exporter (no
//! network): reads through memory → Redis (the test Redis of `scripts/test`) give the metrics
//! under their Prometheus names and labels, the histograms with tier's bucket boundaries.
#![allow(clippy::unwrap_used)]

mod common;

use common::cache;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

#[tokio::test]
async fn metrics_are_exported_under_their_names_with_tiers_buckets() {
    let exporter = InMemoryMetricExporter::default();
    let reader = PeriodicReader::builder(exporter.clone()).build();
    let provider = SdkMeterProvider::builder().with_reader(reader).build();
    tier::otel::install_metrics(provider.meter("tier")).unwrap();

    let cache = cache("metered").await;
    let key = cache.key("7");
    for _ in 0..2 {
        let read = cache.get_or_load(&key, || async { Ok::<_, std::io::Error>(Some("v".into())) });
        read.await.unwrap();
    }
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metrics: Vec<_> =
        exported.iter().flat_map(|r| r.scope_metrics()).flat_map(|s| s.metrics()).collect();
    let names: Vec<&str> = metrics.iter().map(|m| m.name()).collect();
    for name in [
        "tier_requests_total",
        "tier_op_duration_seconds",
        "cache_loads_total",
        "cache_load_duration_seconds",
    ] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    let loads = metrics.iter().find(|m| m.name() == "cache_load_duration_seconds").unwrap();
    assert_eq!(loads.unit(), "s");
    let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = loads.data() else {
        panic!("not an f64 histogram: {:?}", loads.data());
    };
    let point = histogram
        .data_points()
        .find(|p| {
            p.attributes().any(|kv| kv.key.as_str() == "cache" && kv.value.as_str() == "metered")
        })
        .unwrap_or_else(|| panic!("no point of cache=metered in {histogram:?}"));
    let expected = tier::metrics::BUCKETS.iter().find(|(n, _)| *n == "cache_load_duration_seconds");
    assert_eq!(point.bounds().collect::<Vec<_>>(), expected.unwrap().1);
    assert_eq!(point.count(), 1, "one load for two reads");
}
