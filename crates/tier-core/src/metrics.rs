//! Metric names (an interface: the dashboards and the CLI depend on them), their help text, and
//! the handles the hierarchy keeps so that the hot path never looks a metric up by name.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tier_requests_total` | counter | cache, tier, op, result (hit/stale/miss/error/timeout/skipped; ok for writes) [, category] |
//! | `tier_op_duration_seconds` | histogram | cache, tier, op |
//! | `tier_backfills_total` | counter | cache, from, to |
//! | `tier_breaker_state` | gauge 0 closed / 1 half-open / 2 open | cache, tier |
//! | `tier_entries`, `tier_bytes`, `tier_capacity_bytes` | gauge | cache, tier |
//! | `tier_evictions_total` | counter | cache, tier, cause |
//! | `tier_decode_errors_total` | counter | cache, tier |
//! | `cache_loads_total` | counter | cache, result (ok/none/error/timeout) |
//! | `cache_load_duration_seconds` | histogram | cache |
//! | `cache_coalesced_total`, `cache_stale_served_total`, `cache_refreshes_total` | counter | cache |
//! | `cache_invalidations_total` | counter | cache, kind (key/tag/namespace/clear), source (local/backplane) |
//! | `cache_backfills_shed_total` | counter | cache (backfills skipped by load shedding) |
//!
//! Durations of in-process (object) tiers are sampled (1 call in [`OBJECT_TIER_TIMING_SAMPLE`])
//! so that timing costs less than the hit it measures; counters are never sampled.

use metrics::{Counter, Gauge, Histogram, Unit};

/// `tier_requests_total`
pub const TIER_REQUESTS: &str = "tier_requests_total";
/// `tier_op_duration_seconds`
pub const TIER_OP_DURATION: &str = "tier_op_duration_seconds";
/// `tier_backfills_total`
pub const TIER_BACKFILLS: &str = "tier_backfills_total";
/// `tier_breaker_state`
pub const TIER_BREAKER_STATE: &str = "tier_breaker_state";
/// `tier_entries`
pub const TIER_ENTRIES: &str = "tier_entries";
/// `tier_bytes`
pub const TIER_BYTES: &str = "tier_bytes";
/// `tier_capacity_bytes`
pub const TIER_CAPACITY_BYTES: &str = "tier_capacity_bytes";
/// `tier_evictions_total`
pub const TIER_EVICTIONS: &str = "tier_evictions_total";
/// `tier_decode_errors_total`
pub const TIER_DECODE_ERRORS: &str = "tier_decode_errors_total";
/// `cache_loads_total`
pub const CACHE_LOADS: &str = "cache_loads_total";
/// `cache_load_duration_seconds`
pub const CACHE_LOAD_DURATION: &str = "cache_load_duration_seconds";
/// `cache_coalesced_total`
pub const CACHE_COALESCED: &str = "cache_coalesced_total";
/// `cache_stale_served_total`
pub const CACHE_STALE_SERVED: &str = "cache_stale_served_total";
/// `cache_refreshes_total`
pub const CACHE_REFRESHES: &str = "cache_refreshes_total";
/// `cache_invalidations_total`
pub const CACHE_INVALIDATIONS: &str = "cache_invalidations_total";
/// `cache_backfills_shed_total` (beyond the design's table: backfills skipped by load shedding)
pub const CACHE_BACKFILLS_SHED: &str = "cache_backfills_shed_total";
/// `tier_fleet_state_unavailable_total{cache, part}`: calls to a part of the fleet state
/// (`generations`, `namespace`, `lock`, `backplane`, `floor`) that failed, timed out or were
/// refused by its open breaker; the cache went on without it.
pub const FLEET_STATE_UNAVAILABLE: &str = "tier_fleet_state_unavailable_total";

/// One in this many calls to an object (in-process) tier is timed.
///
/// A timed L1 hit reads the monotonic clock twice (~25 ns each on a VM, a tenth of the hit) and
/// records a histogram sample: one in 16 cost about 1 % of an L1 hit on average, one in 64 a
/// quarter of that (the `memory` bench). An L1 hit varies little, so 1,000 hits a second still
/// give ~15 samples a second, over 200 per 15 s scrape.
pub const OBJECT_TIER_TIMING_SAMPLE: u64 = 64;

/// Histogram buckets (seconds) that resolve an L1 hit (~100 ns) up to a slow origin (~10 s).
/// Give them to your exporter, e.g.
/// `PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_000_1,
    0.000_000_25,
    0.000_000_5,
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
];

/// Register help text and units of every metric with the installed recorder.
/// Call it once after installing your exporter (the hierarchy also calls it when built).
pub fn describe() {
    metrics::describe_counter!(
        TIER_REQUESTS,
        Unit::Count,
        "Requests to a tier, by operation and result."
    );
    metrics::describe_histogram!(TIER_OP_DURATION, Unit::Seconds, "Duration of tier operations.");
    metrics::describe_counter!(
        TIER_BACKFILLS,
        Unit::Count,
        "Entries copied from a lower tier into an upper tier."
    );
    metrics::describe_gauge!(
        TIER_BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open."
    );
    metrics::describe_gauge!(TIER_ENTRIES, Unit::Count, "Entries held by a tier.");
    metrics::describe_gauge!(TIER_BYTES, Unit::Bytes, "Bytes used by a tier.");
    metrics::describe_gauge!(TIER_CAPACITY_BYTES, Unit::Bytes, "Bytes a tier may use.");
    metrics::describe_counter!(
        TIER_EVICTIONS,
        Unit::Count,
        "Entries evicted from a tier, by cause."
    );
    metrics::describe_counter!(
        TIER_DECODE_ERRORS,
        Unit::Count,
        "Stored bytes that did not decode as an entry."
    );
    metrics::describe_counter!(CACHE_LOADS, Unit::Count, "Loader calls, by result.");
    metrics::describe_histogram!(CACHE_LOAD_DURATION, Unit::Seconds, "Duration of loader calls.");
    metrics::describe_counter!(
        CACHE_COALESCED,
        Unit::Count,
        "Callers that waited for a load already in flight."
    );
    metrics::describe_counter!(
        CACHE_STALE_SERVED,
        Unit::Count,
        "Stale values served (fail-safe, soft timeout, stale-while-revalidate)."
    );
    metrics::describe_counter!(CACHE_REFRESHES, Unit::Count, "Background refreshes started.");
    metrics::describe_counter!(
        CACHE_INVALIDATIONS,
        Unit::Count,
        "Invalidations applied, by kind and source."
    );
    metrics::describe_counter!(
        CACHE_BACKFILLS_SHED,
        Unit::Count,
        "Backfills skipped because too many were pending (load shedding)."
    );
    metrics::describe_counter!(
        FLEET_STATE_UNAVAILABLE,
        Unit::Count,
        "Calls to a part of the fleet state that failed, timed out or were refused by its breaker."
    );
}

/// Results of a tier lookup, in the order of [`LookupCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupResult {
    Hit = 0,
    Stale = 1,
    Miss = 2,
    Error = 3,
    Timeout = 4,
    Skipped = 5,
}

const LOOKUP_RESULTS: [&str; 6] = ["hit", "stale", "miss", "error", "timeout", "skipped"];

/// The `result` counters of one (tier, op, category).
#[derive(Clone)]
pub(crate) struct LookupCounters([Counter; 6]);

impl LookupCounters {
    fn new(cache: &str, tier: &str, op: &'static str, category: Option<&str>) -> Self {
        Self(LOOKUP_RESULTS.map(|result| {
            let mut labels = vec![
                ("cache", cache.to_string()),
                ("tier", tier.to_string()),
                ("op", op.to_string()),
                ("result", result.to_string()),
            ];
            if let Some(c) = category {
                labels.push(("category", c.to_string()));
            }
            metrics::counter!(TIER_REQUESTS, &labels)
        }))
    }

    pub(crate) fn add(&self, r: LookupResult, n: u64) {
        self.0[r as usize].increment(n);
    }
}

/// Handles of one tier in one hierarchy.
pub(crate) struct TierMetrics {
    /// `get` counters, one set per category (index 0 when no classifier).
    pub get: Vec<LookupCounters>,
    pub write_ok: Counter,
    pub write_error: Counter,
    pub write_timeout: Counter,
    pub write_skipped: Counter,
    pub get_duration: Histogram,
    pub write_duration: Histogram,
    pub decode_errors: Counter,
    pub entries: Gauge,
    pub bytes: Gauge,
    pub capacity: Gauge,
    pub breaker: Gauge,
}

impl TierMetrics {
    pub(crate) fn new(cache: &str, tier: &str, categories: &[&'static str]) -> Self {
        let labels = [("cache", cache.to_string()), ("tier", tier.to_string())];
        let get = if categories.is_empty() {
            vec![LookupCounters::new(cache, tier, "get", None)]
        } else {
            categories.iter().map(|c| LookupCounters::new(cache, tier, "get", Some(c))).collect()
        };
        let write = |result: &str| metrics::counter!(TIER_REQUESTS, "cache" => cache.to_string(), "tier" => tier.to_string(), "op" => "insert", "result" => result.to_string());
        Self {
            get,
            write_ok: write("ok"),
            write_error: write("error"),
            write_timeout: write("timeout"),
            write_skipped: write("skipped"),
            get_duration: metrics::histogram!(TIER_OP_DURATION, "cache" => cache.to_string(), "tier" => tier.to_string(), "op" => "get"),
            write_duration: metrics::histogram!(TIER_OP_DURATION, "cache" => cache.to_string(), "tier" => tier.to_string(), "op" => "insert"),
            decode_errors: metrics::counter!(TIER_DECODE_ERRORS, &labels),
            entries: metrics::gauge!(TIER_ENTRIES, &labels),
            bytes: metrics::gauge!(TIER_BYTES, &labels),
            capacity: metrics::gauge!(TIER_CAPACITY_BYTES, &labels),
            breaker: metrics::gauge!(TIER_BREAKER_STATE, &labels),
        }
    }
}

/// Handles of one hierarchy.
pub(crate) struct CacheMetrics {
    pub loads_ok: Counter,
    pub loads_none: Counter,
    pub loads_error: Counter,
    pub loads_timeout: Counter,
    pub load_duration: Histogram,
    pub coalesced: Counter,
    pub stale_served: Counter,
    pub refreshes: Counter,
    pub backfills_shed: Counter,
    cache: String,
}

impl CacheMetrics {
    pub(crate) fn new(cache: &str) -> Self {
        let load = |result: &'static str| metrics::counter!(CACHE_LOADS, "cache" => cache.to_string(), "result" => result);
        Self {
            loads_ok: load("ok"),
            loads_none: load("none"),
            loads_error: load("error"),
            loads_timeout: load("timeout"),
            load_duration: metrics::histogram!(CACHE_LOAD_DURATION, "cache" => cache.to_string()),
            coalesced: metrics::counter!(CACHE_COALESCED, "cache" => cache.to_string()),
            stale_served: metrics::counter!(CACHE_STALE_SERVED, "cache" => cache.to_string()),
            refreshes: metrics::counter!(CACHE_REFRESHES, "cache" => cache.to_string()),
            backfills_shed: metrics::counter!(CACHE_BACKFILLS_SHED, "cache" => cache.to_string()),
            cache: cache.to_string(),
        }
    }

    /// Invalidations are rare: looked up by name.
    pub(crate) fn invalidation(&self, kind: &'static str, source: &'static str) {
        metrics::counter!(CACHE_INVALIDATIONS, "cache" => self.cache.clone(), "kind" => kind, "source" => source).increment(1);
    }

    /// Register every series that only moves on events (invalidations by kind and source,
    /// backfills between each pair of tiers) at 0, so dashboards show 0 rather than no data.
    pub(crate) fn register_event_series(&self, tiers: &[String]) {
        for kind in ["key", "written", "tag", "namespace", "clear"] {
            for source in ["local", "backplane"] {
                metrics::counter!(CACHE_INVALIDATIONS, "cache" => self.cache.clone(), "kind" => kind, "source" => source).increment(0);
            }
        }
        for (from, f) in tiers.iter().enumerate() {
            for t in &tiers[..from] {
                self.backfill(f, t).increment(0);
            }
        }
    }

    pub(crate) fn backfill(&self, from: &str, to: &str) -> Counter {
        metrics::counter!(TIER_BACKFILLS, "cache" => self.cache.clone(), "from" => from.to_string(), "to" => to.to_string())
    }
}
