//! `tier::prometheus` through a real Prometheus recorder: a cache built *before* the recorder is
//! installed records its metrics once it is (no metric lost to the order of set-up), with the
//! buckets that resolve tier and origin latencies, and with help texts.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tier::{Cache, MemoryTier, TierPolicy};

/// The value of the one series `series` (name and labels as rendered) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn a_cache_built_before_the_recorder_records_into_it() {
    let cache: Cache<String> = Cache::builder("late")
        .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
        .build()
        .unwrap();
    assert!(!tier::metrics::recorder_installed());
    let key = cache.key("1");
    let load = || async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(Some("v".to_string()))
    };
    cache.get_or_load(&key, load).await.unwrap(); // before the recorder: not counted

    let metrics = tier::prometheus::install().unwrap();
    assert!(tier::metrics::recorder_installed());
    cache.invalidate(&key).await.unwrap();
    cache.get_or_load(&key, load).await.unwrap(); // miss, load
    cache.get_or_load(&key, load).await.unwrap(); // hit
                                                  // Hits: one in 64 is timed, at random; 2,048 leave no timed one with a chance of
                                                  // (63/64)^2048 ≈ 1e-14 (256 failed one run in ~55: (63/64)^257 ≈ 1.8 %).
    for _ in 0..2048 {
        cache.get(&key).await.unwrap();
    }
    cache.report_gauges();
    let text = metrics.render();

    let get = |result: &str| {
        let series = format!(
            r#"tier_requests_total{{cache="late",tier="memory",op="get",result="{result}"}}"#
        );
        value(&text, &series)
    };
    assert_eq!(get("hit"), Some(2049.0), "{text}");
    assert_eq!(get("miss"), Some(1.0), "{text}");
    assert_eq!(value(&text, r#"cache_loads_total{cache="late",result="ok"}"#), Some(1.0));
    assert_eq!(
        value(&text, r#"cache_invalidations_total{cache="late",kind="key",source="local"}"#),
        Some(1.0)
    );
    // Registered at 0 by the gauge report although nothing moved them.
    assert_eq!(
        value(&text, r#"cache_invalidations_total{cache="late",kind="tag",source="backplane"}"#),
        Some(0.0),
        "{text}"
    );
    // The 20 ms load is resolved: it is in (0.02, 0.025] or the next bucket, not in (0.01, 0.1].
    let bucket = |le: &str| {
        value(&text, &format!(r#"cache_load_duration_seconds_bucket{{cache="late",le="{le}"}}"#))
    };
    assert_eq!(bucket("0.02"), Some(0.0), "{text}");
    assert_eq!(bucket("0.035"), Some(1.0), "{text}");
    // Tier latencies get the tier buckets (µs).
    assert!(text.contains(
        r#"tier_op_duration_seconds_bucket{cache="late",tier="memory",op="get",le="0.000075"}"#
    ));
    assert!(text.contains("# HELP tier_requests_total Requests to a tier"), "{text}");
    assert!(tier::prometheus::install().is_err(), "a second global recorder is refused");
}
