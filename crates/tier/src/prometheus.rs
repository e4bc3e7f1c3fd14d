//! A Prometheus exporter set up for tier's metrics (feature `prometheus`).
//!
//! [`install`] installs a Prometheus recorder as the global `metrics` recorder, with the
//! histogram buckets that resolve tier latencies (µs) and origin latencies (1–200 ms)
//! ([`crate::metrics::BUCKETS`]), keeps it tidy on a thread of its own (upkeep every 5 s), and
//! returns the handle whose [`render`](PrometheusHandle::render) is the body of a `/metrics`
//! response: mount it on your own router. Install it before or after building caches: their
//! metrics bind to the recorder when it appears.
//!
//! With axum (any router works the same way):
//!
//! ```rust,ignore
//! let metrics = tier::prometheus::install()?;
//! let app = axum::Router::new()
//!     .route("/metrics", axum::routing::get(move || {
//!         let metrics = metrics.clone();
//!         async move { ([("content-type", tier::prometheus::CONTENT_TYPE)], metrics.render()) }
//!     }));
//! ```
//!
//! A whole program:
//!
//! ```
//! use std::time::Duration;
//! use tier::{Cache, MemoryTier, TierPolicy};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cache: Cache<String> = Cache::builder("users")
//!         .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
//!         .build()?;
//!     let metrics = tier::prometheus::install()?; // after the build: fine
//!     cache.get_or_load("users:0:42", || async { Ok::<_, std::io::Error>(Some("Ada".to_string())) }).await?;
//!     let body = metrics.render();
//!     assert!(body.contains(r#"cache_loads_total{cache="users",result="ok"} 1"#));
//!     Ok(())
//! }
//! ```
//!
//! To add settings of your own (global labels, other buckets), start from [`builder`] and
//! install it yourself (`builder()?.add_global_label(..).install_recorder()?`); then run
//! [`PrometheusHandle::run_upkeep`] every few seconds, or call [`spawn_upkeep`].

use std::time::Duration;

pub use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// The `Content-Type` of the text [`PrometheusHandle::render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often [`install`]'s thread runs the recorder's upkeep (what the exporter's own listener
/// does).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A Prometheus builder with the buckets of every histogram of tier
/// ([`crate::metrics::BUCKETS`], and [`crate::metrics::DURATION_BUCKETS`] for any other name
/// ending in `_seconds`).
///
/// # Errors
/// None in practice: the exporter refuses only an empty list of buckets.
pub fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in crate::metrics::BUCKETS {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)?;
    }
    let seconds = Matcher::Suffix("_seconds".into());
    builder.set_buckets_for_metric(seconds, crate::metrics::DURATION_BUCKETS)
}

/// Install [`builder`]'s recorder as the global `metrics` recorder, describe tier's metrics to
/// it, start its upkeep ([`spawn_upkeep`]) and return its handle.
///
/// # Errors
/// [`BuildError`] when a global recorder is already installed (a process has one).
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = builder()?.install_recorder()?;
    crate::metrics::describe();
    spawn_upkeep(handle.clone(), UPKEEP_INTERVAL);
    Ok(handle)
}

/// Run the recorder's upkeep (draining histogram samples into their buckets) every `interval` on
/// a thread of its own, for as long as the process runs.
pub fn spawn_upkeep(handle: PrometheusHandle, interval: Duration) {
    let spawned =
        std::thread::Builder::new().name("tier-prometheus-upkeep".into()).spawn(move || loop {
            std::thread::sleep(interval);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        // Rendering drains the histograms too, so the figures stay right; only the samples
        // pending between two scrapes take memory.
        tracing::warn!(error = %e, "tier: could not start the Prometheus upkeep thread");
    }
}
