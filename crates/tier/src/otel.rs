//! OpenTelemetry (feature `opentelemetry`): tier's traces and metrics through an OTel SDK the
//! service sets up (its exporter, resource and sampling are the service's).
//!
//! - **Traces**: [`layer`] is a `tracing-opentelemetry` layer that exports tier's `tracing`
//!   spans — each `get_or_load` (cache, key hashed, result, tier, loaded, duration) and each
//!   Redis call as a client span after the database semantic conventions (span name = the
//!   command, `db.system.name = "redis"`, `db.operation.name`, `db.namespace`,
//!   `db.operation.batch.size` for a pipeline, `error.type` on failure) — nested in the caller's
//!   spans. It keeps the spans of tier's crates at DEBUG and above; for one layer that also
//!   exports the service's own spans, use [`tracing_opentelemetry::layer`] with a filter of
//!   your own (tier's targets start with `tier`).
//! - **Metrics**: [`install_metrics`] installs a `metrics` recorder that records every metric
//!   through an OTel [`opentelemetry::metrics::Meter`] under the same names and labels
//!   as the Prometheus exporter (`tier_requests_total`, `cache_load_duration_seconds`, …; the
//!   histograms with tier's bucket boundaries, [`crate::metrics::BUCKETS`]). It is the global
//!   `metrics` recorder, so it takes the place of the Prometheus one (`tier::prometheus`): a
//!   process exports its metrics one way. Install it before or after building caches.
//!
//! ```
//! use std::time::Duration;
//! use opentelemetry::metrics::MeterProvider as _;
//! use opentelemetry::trace::TracerProvider as _;
//! use tier::{Cache, MemoryTier, TierPolicy};
//! use tracing_subscriber::prelude::*;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // The service's SDK set-up (here with no exporter: an OTLP exporter goes here).
//!     let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//!     let meter_provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
//!     tracing_subscriber::registry()
//!         .with(tier::otel::layer(tracer_provider.tracer("my-service")))
//!         .init();
//!     tier::otel::install_metrics(meter_provider.meter("tier"))?;
//!
//!     let cache: Cache<String> = Cache::builder("users")
//!         .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)))
//!         .build()?;
//!     cache.get_or_load("users:0:42", || async { Ok::<_, std::io::Error>(Some("Ada".into())) }).await?;
//!     Ok(())
//! }
//! ```

use opentelemetry::metrics::Meter;
use tracing::Level;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

pub use metrics_opentelemetry::OpenTelemetryRecorder;
/// The OpenTelemetry API crate this feature is built with (use its types, e.g. `Meter`, from
/// here to be sure of the version).
pub use opentelemetry;
/// The `tracing` → OpenTelemetry bridge this feature is built with.
pub use tracing_opentelemetry;

/// The targets whose spans and events [`layer`] exports: every crate of tier, at DEBUG and
/// above (`get_or_load` spans and Redis calls are DEBUG; the backplane's polling `XREAD` is
/// TRACE, left out).
pub fn targets() -> Targets {
    Targets::new().with_target("tier", Level::DEBUG)
}

/// A `tracing-opentelemetry` layer over `tracer`, filtered to tier's spans ([`targets`]).
pub fn layer<S, T>(
    tracer: T,
) -> Filtered<tracing_opentelemetry::OpenTelemetryLayer<S, T>, Targets, S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    T: opentelemetry::trace::Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer().with_tracer(tracer).with_filter(targets())
}

/// A `metrics` recorder over `meter`: counters, gauges and histograms of the same names and
/// labels, tier's metrics described (unit, help) and its histograms given tier's bucket
/// boundaries ([`crate::metrics::BUCKETS`]). [`install_metrics`] installs it.
pub fn recorder(meter: Meter) -> OpenTelemetryRecorder {
    let metrics = metrics_opentelemetry::OpenTelemetryMetrics::new(meter);
    let mut recorder = OpenTelemetryRecorder::new(metrics);
    for (name, buckets) in crate::metrics::BUCKETS {
        recorder.set_histogram_bounds_mut(std::iter::once(*name), buckets);
    }
    // Described before any instrument is made: the bridge reads the description then.
    metrics::with_local_recorder(&recorder, crate::metrics::describe);
    recorder
}

/// Install [`recorder`]`(meter)` as the process's global `metrics` recorder.
///
/// # Errors
/// [`RecorderInstalled`] when a global recorder is already installed (a process has one).
pub fn install_metrics(meter: Meter) -> Result<(), RecorderInstalled> {
    metrics::set_global_recorder(recorder(meter)).map_err(|_| RecorderInstalled)
}

/// The process already has a global `metrics` recorder (one of its own, or `tier::prometheus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderInstalled;

impl std::fmt::Display for RecorderInstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a global metrics recorder is already installed")
    }
}

impl std::error::Error for RecorderInstalled {}
